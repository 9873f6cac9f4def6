"""Alembic's environment for ganserve: migrations run on the connection `core.db.Database.upgrade` passes in
(inside its transaction, under its lock), or on `sqlalchemy.url` for Alembic's own command line."""

from alembic import context
from sqlalchemy import create_engine

from core.db import metadata

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
if connection is not None:
    run(connection)
elif context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    with create_engine(config.get_main_option("sqlalchemy.url") or "").begin() as conn:
        run(conn)
