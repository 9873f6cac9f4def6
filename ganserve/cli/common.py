"""What every `ganserve` command shares: the client seam (`connect`), errors as one red line and an exit code,
the `--server`/`--api-key` options, and the `--seeds` syntax."""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ganserve.client import API_KEY_ENV, MAX_SEED, SERVER_ENV, Client, GanserveError

if TYPE_CHECKING:
    from core.db import Database
    from core.settings import Settings

MAX_SEEDS = 100_000  # one command's images or samples

Server = Annotated[
    str | None,
    typer.Option(
        "--server", envvar=SERVER_ENV, help="The ganserve URL, e.g. http://127.0.0.1:8000.", show_default=False
    ),
]
LocalOrServer = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar=SERVER_ENV,
        help="Do it through this ganserve (e.g. http://127.0.0.1:8000) instead of on this machine.",
        show_default=False,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar=API_KEY_ENV, help="Sent as `Authorization: Bearer <key>`.", show_default=False),
]
PollS = Annotated[float, typer.Option("--poll", min=0.1, help="Seconds between polls of the server.")]


def connect(server: str | None, api_key: str | None) -> Client:
    """The client every command talks to a server through: the one seam tests replace (with a client of the
    app in-process)."""
    return Client(server, api_key)


def err() -> Console:
    # Made per use rather than at import: the streams and the terminal's width are those of the call.
    return Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` as one red line on stderr; the Exit to raise (1: it failed, 2: it was asked wrongly)."""
    err().print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def reported() -> Iterator[None]:
    """A server's (or the connection's) error as one red line and exit code 1, never a traceback."""
    try:
        yield
    except GanserveError as e:
        raise fail(str(e)) from None


_SEED_PART = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_seeds(text: str) -> list[int]:
    """StyleGAN's `--seeds`: `0-15`, `1,5,9`, `0-3,10` (ranges inclusive) → the seeds in order, each once."""
    seeds: dict[int, None] = {}
    for part in text.split(","):
        match = _SEED_PART.match(part.strip())
        if match is None:
            raise typer.BadParameter(
                f"{part.strip()!r} is neither a seed nor a range A-B; write e.g. 0-15, 1,5,9 or 0-3,10",
                param_hint="--seeds",
            )
        lo = int(match[1])
        hi = int(match[2]) if match[2] is not None else lo
        if hi < lo:
            raise typer.BadParameter(f"the range {part.strip()} runs backwards", param_hint="--seeds")
        if hi > MAX_SEED:
            raise typer.BadParameter(f"seeds go from 0 to {MAX_SEED}, got {hi}", param_hint="--seeds")
        if len(seeds) + hi - lo + 1 > MAX_SEEDS:
            raise typer.BadParameter(f"at most {MAX_SEEDS} seeds at once", param_hint="--seeds")
        seeds.update(dict.fromkeys(range(lo, hi + 1)))
    return list(seeds)


SeedsOption = Annotated[str, typer.Option("--seeds", help="Seeds: 0-15, 1,5,9 or 0-3,10.", show_default=False)]


def open_database(settings: "Settings") -> "Database":
    """The settings' database, migrated; one red line naming it and exit 1 when it cannot be opened."""
    from core.db import DatabaseUnavailable, connect

    try:
        return connect(settings.effective_database_url)
    except DatabaseUnavailable as e:
        raise fail(str(e), 1) from None
