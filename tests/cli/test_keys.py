"""`ganserve keys create|list|revoke`: a key printed once and only its hash stored, in the database the server
reads (GANSERVE_DATABASE_URL; by default the volume's SQLite file)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from fastapi import FastAPI
from fastapi.testclient import TestClient
from svc_support import bearer
from typer.testing import CliRunner

from core.db import Database, connect
from core.keys import ApiKeyEntry, Scope, hash_key, stored_keys
from core.settings import Settings
from ganserve.cli import app as cli_app
from service.state import app_state

ROOT = Path(__file__).resolve().parents[2]


def keys(*args: str) -> Result:
    return CliRunner().invoke(cli_app, ["keys", *args], prog_name="ganserve")


@pytest.fixture
def db() -> Database:
    """The database the commands use: GANSERVE_CHECKPOINT_DIR's (tests/cli/conftest.py), as the server's."""
    return connect(Settings().effective_database_url)


def test_create_prints_the_key_once_and_stores_its_hash(db: Database, tmp_path: Path) -> None:
    result = keys("create", "--name", "ci", "--scopes", "train,generate")
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith("gsk_") and len(key) > 40 and key not in result.stderr
    assert "only time" in result.stderr and "stored in the database" in result.stderr
    assert stored_keys(db) == [ApiKeyEntry(name="ci", sha256=hash_key(key), scopes=[Scope.train, Scope.generate])]
    on_disk = b"".join(p.read_bytes() for p in (tmp_path / "volume").glob("ganserve.db*"))  # with the WAL
    assert hash_key(key).encode() in on_disk and key.encode() not in on_disk
    assert keys("create", "--name", "ops", "--scopes", "admin").exit_code == 0
    assert [e.name for e in stored_keys(db)] == ["ci", "ops"]


def test_a_running_server_accepts_a_new_key_and_refuses_a_revoked_one(app: FastAPI, http: TestClient) -> None:
    """The command writes where the server reads; the server reads again within a second
    (tests/service/test_auth.py), here at once."""
    ring = app_state(app).keyring
    result = keys("create", "--name", "late", "--scopes", "train")
    assert result.exit_code == 0, result.output
    assert ring.load()
    assert http.get("/train", headers=bearer(result.stdout.strip())).status_code == 200
    assert keys("revoke", "--name", "late").exit_code == 0
    assert ring.load()
    assert http.get("/train", headers=bearer(result.stdout.strip())).status_code == 401


@pytest.mark.parametrize(
    "args, complaint",
    [
        (["--name", "ci", "--scopes", "train,root"], "unknown scope(s) root"),
        (["--name", "Not A Name", "--scopes", "train"], "--name 'Not A Name'"),
        (["--name", "ci", "--scopes", ","], "at least one scope"),
        (["--name", "taken", "--scopes", "train"], "already has a key named 'taken'"),
    ],
)
def test_create_refuses_bad_arguments(db: Database, args: list[str], complaint: str) -> None:
    assert keys("create", "--name", "taken", "--scopes", "admin").exit_code == 0
    before = stored_keys(db)
    result = keys("create", *args)
    assert result.exit_code == 2 and complaint in result.stderr and result.stdout == ""
    assert stored_keys(db) == before


def test_list_and_revoke(monkeypatch: pytest.MonkeyPatch, db: Database) -> None:
    for name, scopes in (("a", "train"), ("b", "admin")):
        assert keys("create", "--name", name, "--scopes", scopes).exit_code == 0
    env = [
        {"name": "env", "sha256": "0" * 64, "scopes": ["generate"]},
        {"name": "b", "sha256": "1" * 64, "scopes": ["train"]},
    ]
    monkeypatch.setenv("GANSERVE_API_KEYS", json.dumps(env))
    listed = keys("list")
    assert listed.exit_code == 0
    assert listed.stdout.splitlines() == [
        "a\ttrain\tdatabase",
        "b\tadmin\tdatabase",
        "env\tgenerate\tGANSERVE_API_KEYS",
    ]
    assert "0" * 64 not in listed.stdout and all(e.sha256 not in listed.stdout for e in stored_keys(db))
    revoked = keys("revoke", "--name", "a")
    assert revoked.exit_code == 0 and "revoked 'a' in the database" in revoked.stderr
    assert [e.name for e in stored_keys(db)] == ["b"]
    again = keys("revoke", "--name", "a")
    assert again.exit_code == 2 and "the database has no key named 'a'" in again.stderr
    in_settings = keys("revoke", "--name", "env")
    assert in_settings.exit_code == 2 and "it is in GANSERVE_API_KEYS: remove it there" in in_settings.stderr


def test_list_without_keys_says_how_to_make_one() -> None:
    listed = keys("list")
    assert listed.exit_code == 0 and "ganserve keys create --name NAME --scopes train,generate" in listed.stdout


@pytest.mark.parametrize(
    "command", [["list"], ["create", "--name", "ci", "--scopes", "train"], ["revoke", "--name", "ci"]]
)
def test_a_database_that_cannot_be_opened_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, command) -> None:
    monkeypatch.setenv("GANSERVE_DATABASE_URL", "postgresql+psycopg://postgres:s3cret@127.0.0.1:1/ganserve")
    result = keys(*command)
    assert result.exit_code == 1 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: GANSERVE_DATABASE_URL=postgresql+psycopg://postgres:***@127.0.0.1:1/ganserve")
    assert "s3cret" not in line


def test_an_old_keys_file_is_imported_by_the_first_command(tmp_path: Path, db: Database) -> None:
    """A volume from a version that kept the keys in `<GANSERVE_CHECKPOINT_DIR>/api-keys.json`: whichever comes
    first, a command or the API, imports its keys into the database before storing any."""
    old = tmp_path / "volume" / "api-keys.json"
    old.write_text(json.dumps([{"name": "old-ci", "sha256": hash_key("gsk_old"), "scopes": ["train"]}]))
    created = keys("create", "--name", "new", "--scopes", "admin")
    assert created.exit_code == 0, created.output
    assert f"imported 1 API key(s) [old-ci (train)] into the database from {old}" in created.stderr
    assert [e.name for e in stored_keys(db)] == ["old-ci", "new"]
    assert not old.exists() and old.with_name("api-keys.json.imported").exists()
    assert "imported" not in keys("list").stderr  # once


def test_a_broken_old_keys_file_is_a_usage_error(tmp_path: Path, db: Database) -> None:
    """Nothing is stored meanwhile: a stored key would stop the file's keys from ever being imported."""
    broken = tmp_path / "volume" / "api-keys.json"
    broken.write_text("{not json")
    result = keys("create", "--name", "ci", "--scopes", "admin")
    assert result.exit_code == 2 and "is not a JSON list" in result.stderr and "Fix it" in result.stderr
    assert broken.read_text() == "{not json" and stored_keys(db) == []


def test_create_stores_the_key_in_the_volumes_database_by_default(tmp_path: Path) -> None:
    """`python -m ganserve keys create` (a real process) with only GANSERVE_CHECKPOINT_DIR set: the SQLite file
    on the volume, which the server reads by default."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANSERVE_")}
    env["GANSERVE_CHECKPOINT_DIR"] = str(tmp_path / "elsewhere")
    proc = subprocess.run(
        [sys.executable, "-m", "ganserve", "keys", "create", "--name", "me", "--scopes", "admin"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    key = proc.stdout.strip()
    settings = Settings(_env_file=None, checkpoint_dir=tmp_path / "elsewhere")  # type: ignore[call-arg]
    assert settings.effective_database_url == f"sqlite:///{tmp_path / 'elsewhere' / 'ganserve.db'}"
    assert stored_keys(connect(settings.effective_database_url))[0].sha256 == hash_key(key)
