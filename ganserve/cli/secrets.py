"""`ganserve secrets init`: a deployment's secrets, generated on its first start (core/secrets.py).

docker-compose.yml runs it as a one-shot service into a volume, so that `docker compose up` needs no `.env`.
"""

import os
from pathlib import Path
from typing import Annotated

import typer

from core.secrets import AWS_CREDENTIALS, REDIS_CONF, init_secrets
from ganserve.cli.common import fail

app = typer.Typer(help="A deployment's secrets, in a folder the services mount.", no_args_is_help=True)


@app.command()
def init(
    folder: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            envvar="GANSERVE_SECRETS_DIR",
            help="The folder (made if missing), e.g. a volume at /run/ganserve-secrets.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Make each secret exist, one file each: from its variable when set (written over the file), else the file's
    own, else generated (48 hex digits). Also writes redis.conf and aws-credentials from them. Prints where each
    came from, never a value. Owners are set when run as root (the compose file's service is)."""
    if folder is None:
        raise fail("say where: --dir FOLDER (or GANSERVE_SECRETS_DIR)", 2)
    try:
        report = init_secrets(folder, os.environ)
    except (ValueError, OSError) as e:
        raise fail(str(e)) from None
    for name, source in report:
        typer.echo(f"{name}: {source}")
    typer.echo(f"{REDIS_CONF}, {AWS_CREDENTIALS}: written from them, in {folder}")
