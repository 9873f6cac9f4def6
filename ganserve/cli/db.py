"""`ganserve db upgrade|current|history`: the database of record's migrations (core/migrations/), for the
operator who migrates before starting the service rather than at its start-up."""

import typer
from alembic.script import ScriptDirectory

from core.db import Database, DatabaseUnavailable, alembic_config, database, describe
from core.settings import Settings
from ganserve.cli.common import err, fail

app = typer.Typer(
    help="The database's migrations (GANSERVE_DATABASE_URL; default the volume's SQLite file).",
    no_args_is_help=True,
)


def _database() -> Database:
    return database(Settings().effective_database_url)


@app.command()
def upgrade(revision: str = typer.Argument("head", help="The revision to reach.")) -> None:
    """Migrate the database to the newest revision (what the API and the worker do when they start)."""
    db = _database()
    try:
        db.upgrade(revision)
        now = db.revision()
    except DatabaseUnavailable as e:
        raise fail(str(e), 1) from None
    err().print(f"{describe(db.url)} is at revision {now}")


@app.command()
def current() -> None:
    """The revision the database is at (`none`: never migrated)."""
    try:
        typer.echo(_database().revision() or "none")
    except DatabaseUnavailable as e:
        raise fail(str(e), 1) from None


@app.command()
def history() -> None:
    """Every revision, newest first, with what it does."""
    script = ScriptDirectory.from_config(alembic_config(_database().url))
    for rev in script.walk_revisions():
        typer.echo(f"{rev.down_revision or 'base'} -> {rev.revision}{' (head)' if rev.is_head else ''}: {rev.doc}")
