"""The database of record: every process's connection to it, its tables, and its migrations.

`GANSERVE_DATABASE_URL` chooses it: by default an embedded SQLite file on the volume (`make run` needs nothing),
or PostgreSQL (`postgresql+psycopg://…`) when several hosts share the state. The same SQLAlchemy Core code runs
on both. Each kind of record keeps its pydantic form (core/records.py) as JSON, beside the columns that are
queried or claimed; a claim is one transaction (docs/architecture.md says which guarantee each gives).

Migrations are Alembic's (core/migrations/), applied at start-up by the API and the worker (`upgrade`) or by
`ganserve db upgrade`; concurrent starts take turns.
"""

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000  # a writer waits this long for another process's transaction before failing
MIGRATION_LOCK = 7_361_526_501  # PostgreSQL advisory lock id: one process migrates at a time


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached or used; the message names GANSERVE_DATABASE_URL (never its password)."""


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("status", String(16), nullable=False, index=True),
    Column("owner", String(64), index=True),  # the API key's name that submitted it; None: the CLI
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("record", JSON, nullable=False),  # the JobRecord
    # The uploaded dataset it trains on (core/datasets.py), set at submission: DELETE /datasets/{id} asks which
    # queued or running jobs use one. A column, not the JSON config: indexed alike on SQLite and PostgreSQL, and
    # the config holds the name as typed, which may later name another dataset.
    Column("dataset_id", String(64), index=True),
    # Bytes its run files (checkpoints, sample grids) hold in object storage, kept by the worker as it uploads and
    # prunes them: a key's usage is then one sum (core/quota.py), not a listing of storage.
    Column("storage_bytes", BigInteger, nullable=False, server_default="0"),
)

job_attempts = Table(
    "job_attempts",
    metadata,
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("attempt", Integer, primary_key=True),  # the primary key is the claim: one insert of each succeeds
    Column("worker", String(255), nullable=False),
    Column("claimed_at", DateTime(timezone=True), nullable=False),
)

webhook_outbox = Table(
    "webhook_outbox",
    metadata,
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("delivery", String(64), nullable=False),  # X-Ganserve-Delivery: the same for every attempt
    Column("state", String(16), nullable=False, index=True),  # pending | sending | delivered | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False, default=0.0),  # Unix time of the next attempt
    Column("claimed_at", Float),  # Unix time of the claim of a `sending` entry
)

evaluations = Table(
    "evaluations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("status", String(16), nullable=False, index=True),
    Column("owner", String(64), index=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("model", String(64), nullable=False, index=True),
    Column("version", Integer, nullable=False),
    Column("record", JSON, nullable=False),  # the EvaluationRecord
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key_name", String(64), primary_key=True),  # the API key's name
    Column("key_sha256", String(64), primary_key=True),  # of the Idempotency-Key, never the key itself
    Column("job_id", String(64), nullable=False),
    Column("request_sha256", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
)

submission_locks = Table(
    "submission_locks",
    metadata,
    Column("key_name", String(64), primary_key=True),  # locked FOR UPDATE: one submission of a key at a time
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),  # the primary key is the claim of a version number
    Column("owner", String(64)),  # the API key's name whose job published it; None: not over HTTP
    Column("weights_sha256", String(64), nullable=False),
    Column("metadata", JSON, nullable=False),  # the published model.json
    Column("location", String(512), nullable=False),  # the storage key of its folder (model.*, samples.png)
    Column("has_samples", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("storage_bytes", BigInteger, nullable=False, server_default="0"),  # of its folder's files
)

model_names = Table(
    "model_names",
    metadata,
    # Who a model name belongs to (core/model_names.py): its first publisher (the key that first trained it), and
    # who may be served it. Bundled models' names are never claimed.
    Column("name", String(64), primary_key=True),  # the primary key is the claim
    Column("owner", String(64)),  # the API key's name; None: claimed not over HTTP (the operator's)
    Column("visibility", String(16), nullable=False),  # public | private
    Column("created_at", DateTime(timezone=True), nullable=False),
)

model_grants = Table(
    "model_grants",
    metadata,
    # Read access to a private model name for another key (served and listed to it, never changed by it).
    Column("name", String(64), ForeignKey("model_names.name", ondelete="CASCADE"), primary_key=True),
    Column("grantee", String(64), primary_key=True),  # an API key's name
    Column("created_at", DateTime(timezone=True), nullable=False),
)

datasets = Table(
    "datasets",
    metadata,
    Column("id", String(64), primary_key=True),  # ds-<12 hex>
    Column("owner", String(64), index=True),  # the API key's name that uploaded it
    Column("name", String(64)),  # unique per owner; None: known by its id only
    Column("sha256", String(64), nullable=False, index=True),  # of the canonical safetensors file
    Column("format", String(16), nullable=False),  # images | idx: what was uploaded
    Column("count", Integer, nullable=False),
    Column("shape", JSON, nullable=False),  # [C, H, W]
    Column("classes", JSON),  # class names, label i ↔ classes[i]; None: unlabelled
    Column("size_bytes", BigInteger, nullable=False),  # of the canonical file
    Column("location", String(512), nullable=False),  # its storage key: datasets/<sha256>.safetensors
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    UniqueConstraint("owner", "name"),
)

workers = Table(
    "workers",
    metadata,
    # What each worker process advertises (core/workers.py): the API routes jobs and answers GET /workers from it.
    Column("name", String(255), primary_key=True),  # its Celery node name, e.g. gpu0@host
    Column("worker_class", String(16), nullable=False),  # cpu | gpu
    Column("devices", JSON, nullable=False),  # CUDA device ids, [] for cpu
    Column("queues", JSON, nullable=False),  # the broker queues it consumes, in its order
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False, index=True),  # refreshed every few seconds
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("sha256", String(64), nullable=False, unique=True),
    Column("scopes", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


class Database:
    """An engine and its transactions. `begin()` is the only way in: every statement runs in a transaction,
    committed at the end of the block, rolled back on an exception."""

    def __init__(self, url: str):
        self.url = url
        self.engine: Engine = _engine(url)
        self.dialect = self.engine.dialect.name

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except OSError as e:  # a path that cannot hold the SQLite file
            raise DatabaseUnavailable(f"{describe(self.url)}: {e}") from None

    def revision(self) -> str | None:
        """The revision the database is at (None: not migrated yet). Raises DatabaseUnavailable."""
        try:
            with self.begin() as conn:
                return MigrationContext.configure(conn).get_current_revision()
        except OperationalError as e:
            raise DatabaseUnavailable(f"{describe(self.url)} cannot be opened: {reason(e)}") from None

    def upgrade(self, revision: str = "head") -> None:
        """Migrate to `revision`; a no-op when it is there. One process at a time (concurrent starts wait).
        Raises DatabaseUnavailable, naming the URL, when the database cannot be reached."""
        try:
            with self.begin() as conn:
                if self.dialect == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK})
                config = alembic_config(self.url)
                config.attributes["connection"] = conn
                command.upgrade(config, revision)
        except OperationalError as e:
            raise DatabaseUnavailable(f"{describe(self.url)} cannot be opened and migrated: {reason(e)}") from None

    def dispose(self) -> None:
        self.engine.dispose()


def aware(when: datetime) -> datetime:
    """A time read back from the database, in UTC: SQLite gives back the UTC times it was given without their zone."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser interpolation
    return config


def describe(url: str) -> str:
    """The URL as it may be logged: GANSERVE_DATABASE_URL without its password."""
    return f"GANSERVE_DATABASE_URL={make_url(url).render_as_string(hide_password=True)}"


def _engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, connect_args=_connect_timeout(parsed.get_backend_name()))
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    # pysqlite begins transactions lazily and in DEFERRED mode, so a transaction that reads and then writes can
    # fail at once when another process wrote meanwhile; BEGIN IMMEDIATE takes the write lock up front, and
    # another process waits for it (busy timeout) rather than failing. Writes are short: one writer suffices.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy, not pysqlite, says BEGIN
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers do not wait for the writer
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _connect_timeout(backend: str) -> dict[str, Any]:
    # A request must not hang on a dead database: connect briefly, then answer 503.
    return {"connect_timeout": 5} if backend == "postgresql" else {}


@functools.cache
def database(url: str) -> Database:
    """This process's `Database` for `url`: one engine (and its pool) per process, whoever asks."""
    return Database(url)


@functools.cache
def connect(url: str) -> Database:
    """This process's `Database` for `url`, migrated to the newest revision (once per process; a failure is
    tried again by the next call). Raises DatabaseUnavailable, naming the URL, when it cannot be reached."""
    db = database(url)
    db.upgrade()
    return db


def reason(e: Exception) -> str:
    """A database error's first line, without SQLAlchemy's background link."""
    original = getattr(e, "orig", None)
    return str(original if original is not None else e).strip().splitlines()[0]
