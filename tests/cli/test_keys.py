"""`ganserve keys create|list|revoke`: a key printed once and only its hash stored, in the file the server reads."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from fastapi.testclient import TestClient
from svc_support import bearer
from typer.testing import CliRunner

from core.keys import ApiKeyEntry, Scope, hash_key, read_key_file
from core.settings import Settings
from ganserve.cli import app

ROOT = Path(__file__).resolve().parents[2]


def keys(*args: str) -> Result:
    return CliRunner().invoke(app, ["keys", *args], prog_name="ganserve")


def write_keys(path: Path, *entries: tuple[str, str, list[str]]) -> None:
    path.write_text(json.dumps([{"name": n, "sha256": hash_key(k), "scopes": s} for n, k, s in entries]))


def test_create_prints_the_key_once_and_stores_its_hash(tmp_path: Path) -> None:
    keys_file = tmp_path / "secrets" / "keys.json"
    result = keys("create", "--name", "ci", "--scopes", "train,generate", "--file", str(keys_file))
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith("gsk_") and len(key) > 40 and key not in result.stderr
    assert "only time" in result.stderr
    assert key not in keys_file.read_text()
    assert read_key_file(keys_file) == [
        ApiKeyEntry(name="ci", sha256=hash_key(key), scopes=[Scope.train, Scope.generate])
    ]
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert keys("create", "--name", "ops", "--scopes", "admin", "--file", str(keys_file)).exit_code == 0  # appends
    assert [e.name for e in read_key_file(keys_file)] == ["ci", "ops"]


def test_a_running_server_takes_a_new_key_at_once(http: TestClient) -> None:
    """Without --file: <GANSERVE_CHECKPOINT_DIR>/api-keys.json, the file the server reads again when it changes."""
    result = keys("create", "--name", "late", "--scopes", "train")
    assert result.exit_code == 0, result.output
    assert http.get("/train", headers=bearer(result.stdout.strip())).status_code == 200
    assert keys("revoke", "--name", "late").exit_code == 0
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
def test_create_refuses_bad_arguments(tmp_path: Path, args: list[str], complaint: str) -> None:
    keys_file = tmp_path / "keys.json"
    write_keys(keys_file, ("taken", "gsk_x", ["train"]))
    before = keys_file.read_text()
    result = keys("create", *args, "--file", str(keys_file))
    assert result.exit_code == 2 and complaint in result.stderr and result.stdout == ""
    assert keys_file.read_text() == before


def test_list_and_revoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys_file = tmp_path / "keys.json"
    write_keys(keys_file, ("a", "gsk_a", ["train"]), ("b", "gsk_b", ["admin"]))
    monkeypatch.setenv("GANSERVE_API_KEYS", json.dumps([{"name": "env", "sha256": "0" * 64, "scopes": ["generate"]}]))
    listed = keys("list", "--file", str(keys_file))
    assert listed.exit_code == 0
    assert "a\ttrain" in listed.stdout and "b\tadmin" in listed.stdout
    assert "env\tgenerate\tGANSERVE_API_KEYS" in listed.stdout and hash_key("gsk_a") not in listed.stdout
    assert keys("revoke", "--name", "a", "--file", str(keys_file)).exit_code == 0
    assert [e.name for e in read_key_file(keys_file)] == ["b"]
    again = keys("revoke", "--name", "a", "--file", str(keys_file))
    assert again.exit_code == 2 and "has no key named 'a'" in again.stderr


def test_list_without_keys_says_how_to_make_one(tmp_path: Path) -> None:
    listed = keys("list", "--file", str(tmp_path / "none.json"))
    assert listed.exit_code == 0 and "ganserve keys create --name NAME --scopes train,generate" in listed.stdout


def test_a_broken_keys_file_is_a_usage_error(tmp_path: Path) -> None:
    broken = tmp_path / "keys.json"
    broken.write_text("{not json")
    result = keys("create", "--name", "ci", "--scopes", "admin", "--file", str(broken))
    assert result.exit_code == 2 and "is not a JSON list" in result.stderr
    assert broken.read_text() == "{not json"


def test_create_writes_the_file_the_server_reads_by_default(tmp_path: Path) -> None:
    """`python -m ganserve keys create` (a real process) with no --file: <GANSERVE_CHECKPOINT_DIR>/api-keys.json."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANSERVE_")}
    env["GANSERVE_CHECKPOINT_DIR"] = str(tmp_path / "volume")
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
    settings = Settings(_env_file=None, checkpoint_dir=tmp_path / "volume")  # type: ignore[call-arg]
    assert settings.effective_api_keys_file == tmp_path / "volume" / "api-keys.json"
    assert read_key_file(settings.effective_api_keys_file)[0].sha256 == hash_key(key)
