"""Alembic's environment for ganserve: migrations run on the connection `core.db.Database.upgrade` passes in
(inside its transaction, under its lock), or, for Alembic's own command line (configured in pyproject.toml), on
the database that GANSERVE_DATABASE_URL names (its default: the SQLite file on the volume)."""

from alembic import context
from alembic.util import CommandError
from sqlalchemy import create_engine

from core.db import metadata
from core.settings import Settings

config = context.config
target_metadata = metadata  # what `alembic revision --autogenerate` compares the database with


def run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters a table by copying it
    )
    context.run_migrations()


connection = config.attributes.get("connection")
try:
    url = config.get_main_option("sqlalchemy.url")
except CommandError:  # Alembic's command line, configured by pyproject.toml alone: no alembic.ini to read
    url = None
url = url or Settings().effective_database_url
if connection is not None:
    run(connection)
elif context.is_offline_mode():
    context.configure(url=url, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    with create_engine(url).begin() as conn:
        run(conn)
