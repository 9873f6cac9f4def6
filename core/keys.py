"""API keys: what is stored (a name, the SHA-256 of the key, scopes), the keys file, and the
`python -m service keys …` commands that make, list and revoke keys.

A key itself is shown once, when it is made, and never stored: the server keeps only its hash, in the
`GANSERVE_API_KEYS` setting and/or the keys file (`GANSERVE_API_KEYS_FILE`, by default
`<GANSERVE_CHECKPOINT_DIR>/api-keys.json`). Both hold the same JSON, a list of
`{"name": …, "sha256": …, "scopes": […]}`. Imported by the settings: keep it free of FastAPI.
"""

import argparse
import contextlib
import hashlib
import os
import re
import secrets
import sys
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from core.train_config import NAME_PATTERN

NAME_RULE = "1–64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
KEY_PREFIX = "gsk_"  # recognisable in a leaked paste, and to secret scanners
CREATE_COMMAND = "python -m service keys create --name NAME --scopes train,generate"


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


def parse_scopes(text: str) -> list[Scope]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ValueError("give at least one scope")
    unknown = [s for s in names if s not in Scope.__members__]
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; choose from {', '.join(Scope)}")
    return list(dict.fromkeys(Scope(s) for s in names))


# --- python -m service keys … -------------------------------------------------------------------------


def _default_file() -> Path:
    from core.settings import Settings

    return Settings().effective_api_keys_file


def _create(args: argparse.Namespace) -> int:
    path: Path = args.file or _default_file()
    if not re.fullmatch(NAME_PATTERN, args.name):
        print(f"error: --name {args.name!r}: {NAME_RULE}", file=sys.stderr)
        return 2
    try:
        scopes = parse_scopes(args.scopes)
        entries = read_key_file(path)
    except (ValueError, KeyFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if any(e.name == args.name for e in entries):
        print(
            f"error: {path} already has a key named {args.name!r}; choose another name, or revoke it first "
            f"(python -m service keys revoke --name {args.name})",
            file=sys.stderr,
        )
        return 2
    key = new_key()
    write_key_file(path, [*entries, ApiKeyEntry(name=args.name, sha256=hash_key(key), scopes=scopes)])
    print(key)
    print(
        f"API key {args.name!r} (scopes: {', '.join(scopes)}) added to {path}.\n"
        "This is the only time the key is shown: only its SHA-256 is stored. A running server reads the file "
        "again on its next request.\nSend it as `Authorization: Bearer <key>`, e.g. "
        'export API_KEY=<key>; curl -H "Authorization: Bearer $API_KEY" …',
        file=sys.stderr,
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    from core.settings import Settings

    settings = Settings()
    path: Path = args.file or settings.effective_api_keys_file
    try:
        from_file = read_key_file(path)
    except KeyFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    file_names = {e.name for e in from_file}
    rows = [(e, str(path)) for e in from_file]
    rows += [(e, "GANSERVE_API_KEYS") for e in settings.api_keys if e.name not in file_names]
    if not rows:
        print(f"no API keys (none in GANSERVE_API_KEYS, none in {path}); make one with: {CREATE_COMMAND}")
    for entry, source in rows:
        print(f"{entry.name}\t{','.join(entry.scopes)}\t{source}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    path: Path = args.file or _default_file()
    try:
        entries = read_key_file(path)
    except KeyFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    kept = [e for e in entries if e.name != args.name]
    if len(kept) == len(entries):
        print(f"error: {path} has no key named {args.name!r}", file=sys.stderr)
        return 2
    write_key_file(path, kept)
    print(f"revoked {args.name!r} in {path}; a running server refuses it from its next request", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service keys",
        description="Make, list and revoke ganserve's API keys (only their SHA-256 is stored).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    file_help = "the keys file (default: GANSERVE_API_KEYS_FILE, else <GANSERVE_CHECKPOINT_DIR>/api-keys.json)"

    create = sub.add_parser("create", help="make a key, print it once, and add its hash to the keys file")
    create.add_argument("--name", required=True, help="who holds the key (a-z 0-9 . _ -), e.g. 'ci' or 'alice'")
    create.add_argument("--scopes", required=True, help=f"comma-separated, of: {', '.join(Scope)} (admin: all)")
    create.add_argument("--file", type=Path, help=file_help)
    create.set_defaults(run=_create)

    listing = sub.add_parser("list", help="the keys' names, scopes and where each is configured")
    listing.add_argument("--file", type=Path, help=file_help)
    listing.set_defaults(run=_list)

    revoke = sub.add_parser("revoke", help="remove a key from the keys file")
    revoke.add_argument("--name", required=True)
    revoke.add_argument("--file", type=Path, help=file_help)
    revoke.set_defaults(run=_revoke)

    args = parser.parse_args(argv)
    return args.run(args)
