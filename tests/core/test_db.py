"""The database's migrations: an empty database and one at the previous revision both reach the newest, the
newest makes exactly the tables the code uses, and a database that cannot be reached is an error naming
GANSERVE_DATABASE_URL, without its password."""

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import insert, inspect, select, text

from core import db as tables
from core.db import Database, DatabaseUnavailable, alembic_config, connect, metadata
from core.records import now

HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """A database with no table at all: a new SQLite file, or the session's PostgreSQL one downgraded to base."""
    if request.param == "sqlite":
        return Database(f"sqlite:///{tmp_path / 'new.db'}")
    db = Database(request.getfixturevalue("postgres_url"))
    with db.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    request.addfinalizer(db.upgrade)  # the session's database back at the newest revision for the next tests
    return db


def test_an_empty_database_is_migrated_to_the_code_s_tables(empty: Database) -> None:
    assert empty.revision() is None
    empty.upgrade()
    assert empty.revision() == HEAD
    with empty.begin() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []  # nothing the code lacks
    empty.upgrade()  # again: nothing to do
    assert empty.revision() == HEAD


def test_a_database_at_the_previous_revision_keeps_its_rows(empty: Database) -> None:
    script = ScriptDirectory.from_config(alembic_config(empty.url))
    previous = script.get_revision(HEAD).down_revision
    assert isinstance(previous, str)
    empty.upgrade(previous)
    record = {"id": "j1", "status": "queued", "created_at": now(), "cancel_requested": False, "record": {"x": 1}}
    with empty.begin() as conn:
        conn.execute(insert(tables.jobs).values(**record))
        assert compare_metadata(MigrationContext.configure(conn), metadata) != []  # the newest revision's change
    empty.upgrade()
    assert empty.revision() == HEAD
    with empty.begin() as conn:
        assert conn.execute(select(tables.jobs.c.record).where(tables.jobs.c.id == "j1")).scalar() == {"x": 1}
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_every_revision_goes_down_and_up_again(empty: Database) -> None:
    from alembic import command

    empty.upgrade()
    with empty.begin() as conn:
        config = alembic_config(empty.url)
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    empty.upgrade()
    assert empty.revision() == HEAD


def test_an_unreachable_database_is_named_without_its_password() -> None:
    url = "postgresql+psycopg://ganserve:s3cret@127.0.0.1:1/ganserve"
    with pytest.raises(DatabaseUnavailable) as caught:
        connect(url)
    message = str(caught.value)
    assert "GANSERVE_DATABASE_URL=postgresql+psycopg://ganserve:***@127.0.0.1:1/ganserve" in message
    assert "s3cret" not in message and "Connection refused" in message


def test_concurrent_starts_migrate_once(tmp_path: Path) -> None:
    """An API and a worker starting together on one new SQLite file: both end at the newest revision."""
    from concurrent.futures import ThreadPoolExecutor

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: Database(url).upgrade(), range(4)))
    assert Database(url).revision() == HEAD
