"""Fixtures every test package shares: databases. `sqlite_db` is a migrated SQLite file of the test's own;
`postgres_url` a PostgreSQL database of the session's own, created on the server at GANSERVE_TEST_POSTGRES
(default: the machine's, 127.0.0.1:5432, trust auth) or, when none answers there, on a private server the
session starts from the PostgreSQL binaries (`make test-tools` installs them) and stops at its end; `any_db`
runs a test on both."""

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from core.db import Database, metadata

POSTGRES_SERVER = os.environ.get("GANSERVE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def postgres_answers(url: str) -> str | None:
    """None when the server at `url` takes a connection, else why not."""
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            return None
    except OperationalError as e:
        return str(e.orig).strip()
    finally:
        engine.dispose()


def postgres_bin_dir() -> Path | None:
    """The folder of `initdb` and `pg_ctl`: from PATH, else Debian's newest /usr/lib/postgresql/<major>/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl") if (p.parent / "initdb").exists()]
    return max(found, key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0), default=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def private_postgres(bin_dir: Path, folder: Path) -> Iterator[str]:
    """A PostgreSQL server of this session's own in `folder` (trust auth, 127.0.0.1, a free port), stopped on
    leaving; its admin URL. As root, the server runs as `nobody`: initdb and postgres refuse root."""
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        as_user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    data, log, port = folder / "data", folder / "server.log", free_port()
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data)]

    def run(*args: str) -> None:
        env = {**os.environ, "LC_ALL": "C"}
        proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=folder, **as_user)
        if proc.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            pytest.fail(f"{' '.join(args)} failed:\n{proc.stdout}{proc.stderr}{tail}")

    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--locale=C", "-E", "UTF8", "-N")
    # fsync off: a test server's data must survive its processes, never the machine.
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    run(*pg_ctl, "-l", str(log), "-o", options, "-w", "-t", "60", "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(*pg_ctl, "-m", "fast", "-w", "stop")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The admin URL of a PostgreSQL server for this session: the one at GANSERVE_TEST_POSTGRES when it answers,
    else a private one started here and stopped at the session's end."""
    why = postgres_answers(POSTGRES_SERVER)
    if why is None:
        yield POSTGRES_SERVER
        return
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip(
            f"no PostgreSQL server at {POSTGRES_SERVER} (GANSERVE_TEST_POSTGRES: {why}) and no initdb/pg_ctl to start "
            "one (`make test-tools` installs them)"
        )
    folder = Path(tempfile.mkdtemp(prefix="ganserve-postgres-"))
    try:
        with private_postgres(bin_dir, folder) as url:
            yield url
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A database of this test session's own on the PostgreSQL server, migrated to the newest revision."""
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    name = f"ganserve_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
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
