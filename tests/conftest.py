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


# --- an S3 server ---------------------------------------------------------------------------------------------

S3_ENV = {"AWS_ACCESS_KEY_ID": "ganserve-test", "AWS_SECRET_ACCESS_KEY": "ganserve-test-secret"}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3 API on 127.0.0.1 (moto's server mode, a process of its own), for the session; its URL."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto's S3 server did not start on {url}")
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def s3_bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty bucket on the S3 server, the AWS credentials set for this test; its `s3://` URL."""
    import s3fs

    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    bucket = f"ganserve-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(endpoint_url=s3_server, skip_instance_cache=True).mkdir(bucket)
    return f"s3://{bucket}/blobs"
