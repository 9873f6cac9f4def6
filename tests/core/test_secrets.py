"""Generated secrets (core/secrets.py) and how the settings read them: a variable beats the file, a file beats a new
one; a password in a URL beats the folder's; S3's secret reaches botocore through the standard credentials file."""

import configparser
import os
import stat
from pathlib import Path

import botocore.session
import pytest
from pydantic import ValidationError

from core.secrets import AWS_CREDENTIALS, GANSERVE_GID, REDIS_CONF, REDIS_UID, SECRETS, init_secrets, with_password
from core.settings import Settings

NAMES = [s.name for s in SECRETS]
ENVS = {s.name: s.env for s in SECRETS}


def values(folder: Path) -> dict[str, str]:
    return {name: (folder / name).read_text().strip() for name in NAMES}


def test_a_first_start_generates_every_secret_and_a_later_one_keeps_them(tmp_path: Path):
    folder = tmp_path / "secrets"
    assert init_secrets(folder, {}) == [(name, "generated") for name in NAMES]
    first = values(folder)
    assert all(len(v) == 48 and int(v, 16) >= 0 for v in first.values())
    assert len(set(first.values())) == len(NAMES)
    assert init_secrets(folder, {}) == [(name, "kept") for name in NAMES]
    assert values(folder) == first


def test_a_variable_wins_over_the_file_and_stays_when_it_is_unset(tmp_path: Path):
    init_secrets(tmp_path, {})
    before = values(tmp_path)
    report = init_secrets(tmp_path, {"REDIS_PASSWORD": "given-by-the-operator", "POSTGRES_PASSWORD": ""})
    assert dict(report) == {n: "from REDIS_PASSWORD" if n == "redis_password" else "kept" for n in NAMES}
    assert values(tmp_path) == before | {"redis_password": "given-by-the-operator"}  # empty is not given
    init_secrets(tmp_path, {})
    assert values(tmp_path)["redis_password"] == "given-by-the-operator"


@pytest.mark.parametrize("bad", ["short", "has space-inside", "new\nline-in-it", 'quote"in-it'])
def test_a_variable_that_cannot_go_into_a_url_or_config_file_is_refused(tmp_path: Path, bad: str):
    init_secrets(tmp_path, {})
    before = values(tmp_path)
    with pytest.raises(ValueError, match=r"REDIS_PASSWORD must be .*openssl rand -hex 24"):
        init_secrets(tmp_path, {"REDIS_PASSWORD": bad})
    assert values(tmp_path) == before


def test_redis_conf_and_the_aws_file_hold_the_same_secrets(tmp_path: Path):
    init_secrets(tmp_path, {})
    secrets = values(tmp_path)
    conf = [line for line in (tmp_path / REDIS_CONF).read_text().splitlines() if not line.startswith("#")]
    assert conf == [f"requirepass {secrets['redis_password']}"]
    aws = configparser.ConfigParser()
    aws.read(tmp_path / AWS_CREDENTIALS)
    assert dict(aws["default"]) == {
        "aws_access_key_id": "ganserve",
        "aws_secret_access_key": secrets["s3_secret_access_key"],
    }


def test_each_file_is_readable_only_by_who_needs_it(tmp_path: Path):
    """ganserve (group 10001) reads the Redis and PostgreSQL passwords and the AWS file; Redis's user (999) its
    config; MinIO's root password and the S3 secret only root (MinIO, minio-init). Nobody else reads anything,
    nobody writes."""
    init_secrets(tmp_path, {})
    expected = {
        "redis_password": (0, GANSERVE_GID, 0o440),
        "postgres_password": (0, GANSERVE_GID, 0o440),
        "minio_root_password": (0, 0, 0o400),
        "s3_secret_access_key": (0, 0, 0o400),
        REDIS_CONF: (REDIS_UID, 0, 0o400),
        AWS_CREDENTIALS: (0, GANSERVE_GID, 0o440),
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)  # no temporary file left behind
    for name, (uid, gid, mode) in expected.items():
        st = (tmp_path / name).stat()
        assert stat.S_IMODE(st.st_mode) == mode, name
        if os.geteuid() == 0:  # owners are set only as root (as the compose service runs)
            assert (st.st_uid, st.st_gid) == (uid, gid), name
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


@pytest.mark.parametrize(
    ("url", "password", "expected"),
    [
        ("redis://redis:6379/0", "abc", "redis://:abc@redis:6379/0"),
        ("redis://:@redis:6379/0", "abc", "redis://:abc@redis:6379/0"),
        ("redis://:explicit@redis:6379/0", "abc", "redis://:explicit@redis:6379/0"),
        (
            "postgresql+psycopg://ganserve@postgres:5432/db",
            "p/w",
            "postgresql+psycopg://ganserve:p%2Fw@postgres:5432/db",
        ),
        (
            "postgresql+psycopg://ganserve:explicit@postgres/db",
            "abc",
            "postgresql+psycopg://ganserve:explicit@postgres/db",
        ),
        ("sqlite:////data/ganserve.db", "abc", "sqlite:////data/ganserve.db"),
        ("redis://redis:6379/0", None, "redis://redis:6379/0"),
    ],
)
def test_with_password(url: str, password: str | None, expected: str):
    assert with_password(url, password) == expected


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("GANSERVE_", "AWS_")):
            monkeypatch.delenv(key)


def test_settings_fill_urls_that_carry_no_password_from_the_folder(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
):
    init_secrets(tmp_path, {})
    secrets = values(tmp_path)
    monkeypatch.setenv("GANSERVE_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("GANSERVE_REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setenv("GANSERVE_BROKER_URL", "redis://redis:6379/1")
    monkeypatch.setenv("GANSERVE_DATABASE_URL", "postgresql+psycopg://ganserve@postgres:5432/ganserve")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.redis_url == f"redis://:{secrets['redis_password']}@redis:6379/0"
    assert settings.effective_broker_url == f"redis://:{secrets['redis_password']}@redis:6379/1"
    assert (
        settings.database_url == f"postgresql+psycopg://ganserve:{secrets['postgres_password']}@postgres:5432/ganserve"
    )


def test_a_password_in_the_url_wins_over_the_folder(tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch):
    init_secrets(tmp_path, {})
    monkeypatch.setenv("GANSERVE_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("GANSERVE_REDIS_URL", "redis://:mine@redis:6379/0")
    monkeypatch.setenv("GANSERVE_DATABASE_URL", "postgresql+psycopg://ganserve:mine@postgres/ganserve")
    monkeypatch.setenv("GANSERVE_BROKER_URL", "filesystem://")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.redis_url == "redis://:mine@redis:6379/0"
    assert settings.database_url == "postgresql+psycopg://ganserve:mine@postgres/ganserve"
    assert settings.effective_broker_url == "filesystem://"


def test_without_the_folder_or_its_files_the_urls_are_left_alone(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("GANSERVE_REDIS_URL", "redis://redis:6379/0")
    assert Settings(_env_file=None).redis_url == "redis://redis:6379/0"  # type: ignore[call-arg]
    monkeypatch.setenv("GANSERVE_SECRETS_DIR", str(tmp_path))  # an empty folder: nothing to fill in
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.redis_url == "redis://redis:6379/0" and settings.database_url is None


def test_an_unreadable_secret_is_an_error_naming_it(tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "redis_password").mkdir()  # unreadable as a file, even by root
    monkeypatch.setenv("GANSERVE_SECRETS_DIR", str(tmp_path))
    with pytest.raises(ValidationError, match=r"cannot read the secret .*redis_password.*GANSERVE_SECRETS_DIR"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def s3_credentials() -> tuple[str, str]:
    credentials = botocore.session.Session().get_credentials()
    assert credentials is not None
    return credentials.access_key, credentials.secret_key


def test_botocore_reads_the_s3_secret_from_the_folder_and_the_variables_win(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
):
    """What docker-compose.yml gives ganserve for S3: AWS_SHARED_CREDENTIALS_FILE at the folder's aws-credentials,
    which botocore (under s3fs) reads; AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the other route, still win."""
    init_secrets(tmp_path, {"S3_SECRET_ACCESS_KEY": "from-the-operator"})
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / AWS_CREDENTIALS))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-such-config"))
    assert s3_credentials() == ("ganserve", "from-the-operator")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    assert s3_credentials() == ("env-id", "env-secret")
