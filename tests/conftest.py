"""Fixtures every test package shares: databases. `sqlite_db` is a migrated SQLite file of the test's own;
`postgres_url` a PostgreSQL database of the session's own, created on the server at GANSERVE_TEST_POSTGRES
(default: the machine's, 127.0.0.1:5432, trust auth) and dropped at the end; `any_db` runs a test on both."""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from core.db import Database, metadata

POSTGRES_SERVER = os.environ.get("GANSERVE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of this test session's own on the PostgreSQL server, migrated to the newest revision."""
    admin = create_engine(POSTGRES_SERVER, isolation_level="AUTOCOMMIT")
    name = f"ganserve_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as e:
        pytest.skip(f"no PostgreSQL server at {POSTGRES_SERVER} (GANSERVE_TEST_POSTGRES): {e.orig}")
    url = make_url(POSTGRES_SERVER).set(database=name).render_as_string(hide_password=False)
    Database(url).upgrade()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        conn.execute(text(f'DROP DATABASE "{name}"'))
    admin.dispose()


def sqlite_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'ganserve.db'}"


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    db = Database(sqlite_url(tmp_path))
    db.upgrade()
    yield db
    db.dispose()


def emptied(url: str) -> Database:
    """The session's PostgreSQL database, every table emptied: each test starts from nothing."""
    db = Database(url)
    with db.begin() as conn:
        names = ", ".join(f'"{table.name}"' for table in metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {names} CASCADE"))
    return db


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """The test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        db = Database(sqlite_url(tmp_path))
        db.upgrade()
    else:
        db = emptied(request.getfixturevalue("postgres_url"))
    yield db
    db.dispose()
