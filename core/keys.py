"""API keys: what is stored of a key (its name, the SHA-256 of the key, its scopes), in the database's `api_keys`
table (core/db.py), which `ganserve keys create|list|revoke` (ganserve/cli/keys.py) edits and every API process
reads (service/security/keyring.py).

A key itself is shown once, when it is made, and never stored: the server keeps only its hash, in the database
and/or in the `GANSERVE_API_KEYS` setting (a JSON list of `{"name": …, "sha256": …, "scopes": […]}`). The keys
file an older version kept on the volume is imported once (`import_key_file`). Imported by the settings: keep it
free of FastAPI, and import SQLAlchemy only where a key is read or written (below), so that a `ganserve` command
that never touches a key does not pay for it.
"""

import hashlib
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from core.train_config import NAME_PATTERN

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from core.db import Database

KEY_PREFIX = "gsk_"  # recognisable in a leaked paste, and to secret scanners
CREATE_COMMAND = "ganserve keys create --name NAME --scopes train,generate"
FIRST_KEY_NAME = "local-admin"
OLD_KEY_FILE = "api-keys.json"  # under GANSERVE_CHECKPOINT_DIR: where versions before the database kept the keys
IMPORTED_SUFFIX = ".imported"  # the old keys file once imported: kept for the operator, never read again


class Scope(StrEnum):
    generate = "generate"
    train = "train"
    admin = "admin"  # implies every other scope


def _lower(value: str) -> str:
    return value.lower()


class ApiKeyEntry(BaseModel):
    """One key as the server stores it. `extra="forbid"`: a plain `"key"` field is refused, never kept."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Who holds the key; logged and recorded with their jobs.")
    sha256: Annotated[str, AfterValidator(_lower)] = Field(
        pattern=r"^[0-9a-fA-F]{64}$", description="Hex SHA-256 of the key's UTF-8 bytes."
    )
    scopes: list[Scope] = Field(min_length=1, description="`generate`, `train` and/or `admin` (all of them).")


ENTRIES = TypeAdapter(list[ApiKeyEntry])


class KeyExists(ValueError):
    """A key of that name is stored already."""


class KeyFileError(ValueError):
    """The old keys file cannot be read; the message names the file and the problem, never a value from it."""


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)  # 256 bits


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


# --- the keys in the database ------------------------------------------------------------------------------


def stored_keys(db: "Database") -> list[ApiKeyEntry]:
    """The keys in the database, oldest first (one query of a small table)."""
    from sqlalchemy import select

    from core.db import api_keys

    query = select(api_keys.c.name, api_keys.c.sha256, api_keys.c.scopes).order_by(
        api_keys.c.created_at, api_keys.c.name
    )
    with db.begin() as conn:
        rows = conn.execute(query).all()
    return [ApiKeyEntry(name=name, sha256=sha256, scopes=scopes) for name, sha256, scopes in rows]


def create_key(db: "Database", name: str, scopes: Iterable[Scope]) -> str:
    """Make a key named `name`, store its hash and return the key, to be shown once. Raises KeyExists when the
    database has a key of that name already (even one stored by another process a moment before)."""
    from sqlalchemy.exc import IntegrityError

    key = new_key()
    entry = ApiKeyEntry(name=name, sha256=hash_key(key), scopes=list(scopes))
    exists = KeyExists(
        f"the database already has a key named {name!r}; choose another name, or revoke it first "
        f"(ganserve keys revoke --name {name})"
    )
    try:
        with db.begin() as conn:
            if _has_key(conn, name):
                raise exists
            _insert(conn, [entry])
    except IntegrityError:  # stored by another process between the check and the insert: the primary key says no
        raise exists from None
    return key


def revoke_key(db: "Database", name: str) -> bool:
    """Delete the key named `name`; False when there is none."""
    from sqlalchemy import delete

    from core.db import api_keys

    with db.begin() as conn:
        return conn.execute(delete(api_keys).where(api_keys.c.name == name)).rowcount > 0


def ensure_first_key(configured_from_settings: list[ApiKeyEntry], db: "Database") -> str | None:
    """A server with no key at all (none in GANSERVE_API_KEYS, none in the database) gets one admin key named
    FIRST_KEY_NAME, whose hash is stored; the key is returned, to be shown once. None when any key exists. So
    the first `make run` can train from the web page with nothing else to run. Two first starts at once make one
    key: both insert FIRST_KEY_NAME, and the primary key lets one of them through."""
    from sqlalchemy.exc import IntegrityError

    if configured_from_settings:
        return None
    key = new_key()
    entry = ApiKeyEntry(name=FIRST_KEY_NAME, sha256=hash_key(key), scopes=[Scope.admin])
    try:
        with db.begin() as conn:
            if _has_key(conn):
                return None
            _insert(conn, [entry])
    except IntegrityError:
        return None
    return key


def _has_key(conn: "Connection", name: str | None = None) -> bool:
    from sqlalchemy import select

    from core.db import api_keys

    query = select(api_keys.c.name).limit(1)
    if name is not None:
        query = query.where(api_keys.c.name == name)
    return conn.execute(query).first() is not None


def _insert(conn: "Connection", entries: list[ApiKeyEntry]) -> None:
    from sqlalchemy import insert

    from core.db import api_keys

    created_at = datetime.now(UTC)
    rows: list[dict[str, Any]] = [
        {"name": e.name, "sha256": e.sha256, "scopes": [s.value for s in e.scopes], "created_at": created_at}
        for e in entries
    ]
    conn.execute(insert(api_keys), rows)


# --- the keys file of older versions ------------------------------------------------------------------------


def old_key_file(checkpoint_dir: Path) -> Path:
    return checkpoint_dir / OLD_KEY_FILE


@dataclass(frozen=True)
class KeyFileImport:
    """What `import_key_file` moved into the database."""

    source: Path
    entries: list[ApiKeyEntry]
    kept_as: Path | None  # where the file is now; None: it could not be renamed, and stays where it was

    @property
    def message(self) -> str:
        names = ", ".join(f"{e.name} ({','.join(e.scopes)})" for e in self.entries)
        done = f"imported {len(self.entries)} API key(s) [{names}] into the database from {self.source}, the keys file"
        if self.kept_as is not None:
            return f"{done} of an older version; the file is kept as {self.kept_as} and no longer read"
        return (
            f"{done} of an older version, which could not be renamed: delete it, or it is imported again whenever "
            "the database holds no key"
        )


def import_key_file(db: "Database", path: Path) -> KeyFileImport | None:
    """The keys of the file `path` (an older version's keys file) into the database, once: only while the
    database holds no key, and the file is then renamed `<path>.imported`, so that revoking every key later does
    not bring its keys back. None when there was nothing to import. Raises KeyFileError when the file cannot be
    read (nothing is imported; the file stays for the operator to fix).

    Called where a process first uses the keys: the API's key ring on its first read, `ganserve keys` and
    `ganserve serve` before they read or store one. One of these places would not do: a database that holds a
    key never imports the file, and `ganserve serve` stores its first key before the API starts, `ganserve keys
    create` may run before any API did, and an API (Docker) may start with neither having run. Concurrent
    imports store the file's keys once: the other's inserts fail on the primary key, and it imports nothing."""
    from sqlalchemy.exc import IntegrityError

    if not path.is_file():
        return None
    kept_as: Path | None = None
    try:
        with db.begin() as conn:
            if _has_key(conn):
                return None
            try:
                entries = read_key_file(path)
            except FileNotFoundError:  # imported meanwhile by another process, whose transaction is not committed
                return None
            if not entries:
                return None
            _insert(conn, entries)
            # Renamed last, inside the transaction: a failed insert leaves the file as it was.
            kept_as = _rename(path, path.with_name(path.name + IMPORTED_SUFFIX))
    except IntegrityError:
        _undo_rename(path, kept_as)
        return None
    except BaseException:
        _undo_rename(path, kept_as)
        raise
    return KeyFileImport(path, entries, kept_as)


def _rename(path: Path, target: Path) -> Path | None:
    try:
        os.replace(path, target)
    except OSError:  # a read-only volume: the keys are imported all the same, and the message says so
        return None
    return target


def _undo_rename(path: Path, kept_as: Path | None) -> None:
    if kept_as is not None:
        os.replace(kept_as, path)


def read_key_file(path: Path) -> list[ApiKeyEntry]:
    """The entries of an older version's keys file (a JSON list of {name, sha256, scopes}). Raises KeyFileError
    when it is unreadable or malformed, FileNotFoundError when it is not there."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise KeyFileError(f"cannot read the old API keys file {path}: {e.strerror}") from None
    try:
        entries = ENTRIES.validate_json(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors(include_input=False)
        )
        raise KeyFileError(
            f"the old API keys file {path} is not a JSON list of {{name, sha256, scopes}}: {problems}"
        ) from None
    names = [e.name for e in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise KeyFileError(f"the old API keys file {path} names a key twice: {', '.join(twice)}")
    if len({e.sha256 for e in entries}) < len(entries):
        raise KeyFileError(f"the old API keys file {path} has two entries with the same sha256")
    return entries
