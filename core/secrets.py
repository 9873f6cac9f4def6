"""A deployment's secrets, generated on its first start into a folder (`ganserve secrets init`), and read back.

docker-compose.yml needs no `.env`: its one-shot `secrets` service runs `ganserve secrets init` as root into a
named volume, which only the services that need a secret mount (read-only). Each secret is a file holding one
line of hex; a secret given in the environment (REDIS_PASSWORD …) wins and is written over its file, a file
already there is kept, and a missing one is generated. Two more files are derived from them at every start:
`redis.conf` (for `redis-server`, which reads no password from a file otherwise) and `aws-credentials` (the
standard AWS shared-credentials file, for botocore and so for s3fs: `AWS_SHARED_CREDENTIALS_FILE`).

ganserve reads the folder through `GANSERVE_SECRETS_DIR` (core/settings.py): a Redis or database URL that
carries no password gets the file's.
"""

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from core.files import atomic_write_bytes

# Who reads what, in docker-compose.yml. ganserve runs as 10001:10001 (Dockerfile); the redis images run
# redis-server as uid 999; PostgreSQL's and MinIO's entrypoints read their files as root, as do the
# healthchecks and minio-init; Flower joins group 10001 (`group_add`).
ROOT = 0
GANSERVE_GID = 10001
REDIS_UID = 999


@dataclass(frozen=True)
class Secret:
    name: str  # its file's name
    env: str  # the variable that, set and not empty, is written over the file
    uid: int
    gid: int
    mode: int


SECRETS = (
    Secret("redis_password", "REDIS_PASSWORD", ROOT, GANSERVE_GID, 0o440),
    Secret("postgres_password", "POSTGRES_PASSWORD", ROOT, GANSERVE_GID, 0o440),
    Secret("minio_root_password", "MINIO_ROOT_PASSWORD", ROOT, ROOT, 0o400),
    Secret("s3_secret_access_key", "S3_SECRET_ACCESS_KEY", ROOT, ROOT, 0o400),
)
REDIS_CONF = "redis.conf"
AWS_CREDENTIALS = "aws-credentials"
S3_ACCESS_KEY_ID = "ganserve"  # MinIO's user for ganserve, made by minio-init
# What a given secret may hold: it goes as it is into URLs, redis.conf and an INI file.
ALLOWED = re.compile(r"[A-Za-z0-9._~+/=-]{8,256}")


def generate() -> str:
    return secrets.token_hex(24)  # 192 bits; hex fits in a URL as it is


def _write(path: Path, text: str, uid: int, gid: int, mode: int) -> None:
    """Write `text` to `path` whole, with its owner and mode set before a byte is written. The owner is set only
    as root (elsewhere: tests, a folder of one's own)."""
    atomic_write_bytes(path, text.encode(), mode, (uid, gid) if os.geteuid() == 0 else None)


def init_secrets(folder: Path, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """Make every secret of `folder` exist: from the environment when given there, else the file's when it has
    one, else generated. Returns (name, where it came from) for each, never the value."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)  # names are not secret; each file's mode guards its value
    report: list[tuple[str, str]] = []
    values: dict[str, str] = {}
    for secret in SECRETS:
        path = folder / secret.name
        given = environ.get(secret.env, "")
        if given:
            if not ALLOWED.fullmatch(given):
                raise ValueError(
                    f"{secret.env} must be 8 to 256 letters, digits or ._~+/=- (it goes into URLs and config "
                    "files as it is); e.g. `openssl rand -hex 24`, or unset it to have one generated"
                )
            value, source = given, f"from {secret.env}"
        else:
            old = path.read_text().strip() if path.is_file() else ""
            value, source = (old, "kept") if old else (generate(), "generated")
        _write(path, value + "\n", secret.uid, secret.gid, secret.mode)  # also re-asserts owner and mode
        values[secret.name] = value
        report.append((secret.name, source))
    _write(
        folder / REDIS_CONF,
        "# Written by `ganserve secrets init` at every start; set REDIS_PASSWORD instead.\n"
        f"requirepass {values['redis_password']}\n",
        REDIS_UID,
        ROOT,
        0o400,
    )
    _write(
        folder / AWS_CREDENTIALS,
        f"[default]\naws_access_key_id = {S3_ACCESS_KEY_ID}\n"
        f"aws_secret_access_key = {values['s3_secret_access_key']}\n",
        ROOT,
        GANSERVE_GID,
        0o440,
    )
    return report


def read_secret(folder: Path, name: str) -> str | None:
    """The secret `name` of `folder`; None when the file is not there. An unreadable file is an error naming it."""
    path = folder / name
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ValueError(
            f"cannot read the secret {path} ({e.strerror}): check GANSERVE_SECRETS_DIR and its modes"
        ) from None
    return value or None


def with_password(url: str, password: str | None) -> str:
    """`url` with `password` in it, unless it carries one already (an explicit password wins) or names no host
    (sqlite:///…, unix sockets) or no password is given."""
    if not password:
        return url
    parts = urlsplit(url)
    if not parts.netloc or parts.password:
        return url
    user, _, host = parts.netloc.rpartition("@")
    user = user.split(":", 1)[0]  # `user:` (an empty password) is no password
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))
