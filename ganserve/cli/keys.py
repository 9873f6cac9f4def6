"""`ganserve keys create|list|revoke`: the API keys in the database of GANSERVE_DATABASE_URL (core/keys.py)."""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from core.keys import (
    CREATE_COMMAND,
    KeyExists,
    KeyFileError,
    Scope,
    create_key,
    import_key_file,
    old_key_file,
    revoke_key,
    stored_keys,
)
from core.settings import Settings
from core.train_config import NAME_PATTERN
from ganserve.cli.common import err, fail

if TYPE_CHECKING:
    from core.db import Database

app = typer.Typer(
    help="Make, list and revoke API keys, in the database (GANSERVE_DATABASE_URL; default the volume's SQLite "
    "file).\n\nA key is shown once, when it is made; only its SHA-256 is stored.",
    no_args_is_help=True,
)

Name = Annotated[str, typer.Option("--name", help="Who holds the key (a-z 0-9 . _ -), e.g. ci or alice.")]
NAME_RULE = "1–64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
TAKES_EFFECT = "every API process applies it within a second"


def parse_scopes(text: str) -> list[Scope]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ValueError("give at least one scope")
    unknown = [s for s in names if s not in Scope.__members__]
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; choose from {', '.join(Scope)}")
    return list(dict.fromkeys(Scope(s) for s in names))


@app.command()
def create(
    name: Name,
    scopes: Annotated[str, typer.Option(help=f"Comma-separated, of: {', '.join(Scope)} (admin: all of them).")],
) -> None:
    """Make a key, print it once (stdout) and store its hash in the database."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise fail(f"--name {name!r}: {NAME_RULE}", 2)
    try:
        chosen = parse_scopes(scopes)
    except ValueError as e:
        raise fail(str(e), 2) from None
    with _database() as db:
        try:
            key = create_key(db, name, chosen)
        except KeyExists as e:
            raise fail(str(e), 2) from None
    typer.echo(key)
    err().print(
        f"API key {name!r} (scopes: {', '.join(chosen)}) stored in the database; {TAKES_EFFECT}.\n"
        "This is the only time the key is shown: only its SHA-256 is stored.\n"
        "Send it as `Authorization: Bearer <key>`, e.g. "
        'export API_KEY=<key>; curl -H "Authorization: Bearer $API_KEY" …',
        markup=False,
        highlight=False,
    )


@app.command("list")
def list_keys() -> None:
    """The keys' names, scopes and where each is configured: the database or GANSERVE_API_KEYS (never a key or
    its hash)."""
    settings = Settings()
    with _database(settings) as db:
        stored = stored_keys(db)
    stored_names = {e.name for e in stored}
    rows = [(e, "database") for e in stored]
    rows += [(e, "GANSERVE_API_KEYS") for e in settings.api_keys if e.name not in stored_names]
    if not rows:
        typer.echo(f"no API keys (none in GANSERVE_API_KEYS, none in the database); make one with: {CREATE_COMMAND}")
    for entry, source in rows:
        typer.echo(f"{entry.name}\t{','.join(entry.scopes)}\t{source}")


@app.command()
def revoke(name: Name) -> None:
    """Delete a key from the database.

    Every API process refuses it within a second."""
    settings = Settings()
    with _database(settings) as db:
        revoked = revoke_key(db, name)
    if not revoked:
        configured = any(e.name == name for e in settings.api_keys)
        where = "; it is in GANSERVE_API_KEYS: remove it there" if configured else ""
        raise fail(f"the database has no key named {name!r}{where}", 2)
    err().print(f"revoked {name!r} in the database; {TAKES_EFFECT}", markup=False)


@contextmanager
def _database(settings: Settings | None = None) -> Iterator["Database"]:
    """The database of GANSERVE_DATABASE_URL, migrated, with an older version's keys file imported first (a key
    stored before would stop the import for good: core/keys.py `import_key_file`); a malformed one is a usage
    error. A database that cannot be opened, or that fails while in use, is one red line naming it, exit code 1."""
    # Here, not at the top: SQLAlchemy and Alembic take 0.2 s to import, which the other commands need not pay.
    from sqlalchemy.exc import SQLAlchemyError

    from core.db import DatabaseUnavailable, connect, describe

    settings = settings or Settings()
    url = settings.effective_database_url
    try:
        db = connect(url)
        try:
            imported = import_key_file(db, old_key_file(settings.checkpoint_dir))
        except KeyFileError as e:
            # Refused rather than skipped: a key stored now would stop the file's keys from ever being imported.
            raise fail(f"{e}. Fix it (its keys are then imported into the database) or delete it", 2) from None
        if imported is not None:
            err().print(imported.message, markup=False, highlight=False, soft_wrap=True)
        yield db
    except (DatabaseUnavailable, SQLAlchemyError) as e:
        message = str(e) if isinstance(e, DatabaseUnavailable) else f"{describe(url)}: {_reason(e)}"
        raise fail(message, 1) from None


def _reason(e: Exception) -> str:
    original = getattr(e, "orig", None)
    lines = str(original if original is not None else e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
