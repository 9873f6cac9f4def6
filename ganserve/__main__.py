"""`python -m ganserve …`: the `ganserve` command without its console script."""

from ganserve.cli import main

main()
