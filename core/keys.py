"""API keys: what is stored (a name, the SHA-256 of the key, scopes) and the keys file, which
`ganserve keys create|list|revoke` (ganserve/cli/keys.py) edits.

A key itself is shown once, when it is made, and never stored: the server keeps only its hash, in the
`GANSERVE_API_KEYS` setting and/or the keys file (`GANSERVE_API_KEYS_FILE`, by default
`<GANSERVE_CHECKPOINT_DIR>/api-keys.json`). Both hold the same JSON, a list of
`{"name": …, "sha256": …, "scopes": […]}`. Imported by the settings: keep it free of FastAPI.
"""

import contextlib
import hashlib
import os
import secrets
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from core.train_config import NAME_PATTERN

KEY_PREFIX = "gsk_"  # recognisable in a leaked paste, and to secret scanners
CREATE_COMMAND = "ganserve keys create --name NAME --scopes train,generate"


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


class KeyFileError(ValueError):
    pass


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)  # 256 bits


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def read_key_file(path: Path) -> list[ApiKeyEntry]:
    """The entries of a keys file; [] when it does not exist. Raises KeyFileError when it is malformed
    (the message names the file and the problem, never a value from it)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise KeyFileError(f"cannot read the API keys file {path}: {e.strerror}") from None
    try:
        entries = ENTRIES.validate_json(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors(include_input=False)
        )
        raise KeyFileError(
            f"the API keys file {path} is not a JSON list of {{name, sha256, scopes}}: {problems}"
        ) from None
    names = [e.name for e in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise KeyFileError(f"the API keys file {path} names a key twice: {', '.join(twice)}")
    return entries


def write_key_file(path: Path, entries: list[ApiKeyEntry]) -> None:
    """Replace the file atomically (a running server never reads half of it), readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(ENTRIES.dump_json(entries, indent=2) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


FIRST_KEY_NAME = "local-admin"


def ensure_first_key(configured: list[ApiKeyEntry], path: Path) -> str | None:
    """A server with no key at all (none `configured` in GANSERVE_API_KEYS, the keys file at `path` absent or
    empty) gets one admin key, named FIRST_KEY_NAME, whose hash is written to the file; the key is returned to
    be shown once. None when any key exists, or when the file is unreadable (the operator's to fix: it is
    never overwritten). So the first `make run` can train from the web page with nothing else to run."""
    if configured:
        return None
    try:
        if read_key_file(path):
            return None
    except KeyFileError:
        return None
    key = new_key()
    write_key_file(path, [ApiKeyEntry(name=FIRST_KEY_NAME, sha256=hash_key(key), scopes=[Scope.admin])])
    return key
