"""`python -m ganserve …`: the `ganserve` command without its console script."""

from ganserve.cli import main

if __name__ == "__main__":
    main()
