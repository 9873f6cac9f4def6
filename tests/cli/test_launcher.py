"""The service's processes: `ganserve api` and `ganserve worker` start uvicorn and Celery as the deployment
needs them, and `ganserve serve` (ganserve/launcher.py, what `make run` runs) makes one admin key on a first
start with no key at all (core/keys.py)."""

import json
import os
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import Result
from typer.testing import CliRunner

from core.db import Database, connect
from core.keys import FIRST_KEY_NAME, ApiKeyEntry, Scope, ensure_first_key, hash_key, stored_keys
from core.settings import Settings
from ganserve import launcher
from ganserve.cli import app
from ganserve.cli.processes import APP_FACTORY, UVICORN_LOOP
from ganserve.launcher import announce_first_key


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), prog_name="ganserve")


@pytest.fixture(autouse=True)
def flags_stay_in_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """`api` and `worker` write their flags to the environment: set here first, so that they are undone after."""
    for name, value in {"HOST": "127.0.0.1", "PORT": "8000", "WORKERS": "1", "LOG_LEVEL": "info"}.items():
        monkeypatch.setenv(f"GANSERVE_{name}", value)
    # `worker` sets its devices' variables in its own process (worker/registry.py process_env): undone after.
    monkeypatch.setenv("GANSERVE_DEVICE", "cpu")
    monkeypatch.delenv("GANSERVE_DEVICES", raising=False)
    monkeypatch.delenv("GANSERVE_GPUS_PER_WORKER", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def test_api_is_uvicorn_with_the_app_factory_on_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda target, **options: started.append((target, options)))
    monkeypatch.setenv("GANSERVE_WORKERS", "3")
    assert run("api").exit_code == 0
    assert run("api", "--host", "0.0.0.0", "--port", "8311", "--workers", "2", "--no-access-log").exit_code == 0
    (target, defaults), (_, flagged) = started
    assert target == APP_FACTORY and defaults["factory"] is True
    assert (defaults["host"], defaults["port"], defaults["workers"]) == ("127.0.0.1", 8000, 3)
    assert defaults["loop"] == flagged["loop"] == UVICORN_LOOP and defaults["access_log"] is True
    assert (flagged["host"], flagged["port"], flagged["workers"], flagged["access_log"]) == ("0.0.0.0", 8311, 2, False)


def test_a_flag_is_the_setting_the_app_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app (in every uvicorn worker process) builds its settings from the environment: a flag lands there."""
    monkeypatch.setattr(uvicorn, "run", lambda target, **options: None)
    assert run("api", "--port", "8311", "--log-level", "warning").exit_code == 0
    assert (Settings().port, Settings().log_level) == (8311, "warning")


def test_worker_is_one_solo_celery_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.app import celery_app

    argvs: list[list[str]] = []
    monkeypatch.setattr(celery_app, "worker_main", lambda argv: argvs.append(argv) or 0)
    assert run("worker", "--name", "w1@%h", "--log-level", "warning").exit_code == 0
    [argv] = argvs
    assert argv[0] == "worker" and argv[argv.index("--pool") + 1] == "solo"
    assert argv[argv.index("--concurrency") + 1] == "1" and argv[argv.index("-Q") + 1] == "evaluate,cpu,training"
    assert argv[argv.index("-n") + 1] == "w1@%h" and argv[argv.index("-l") + 1] == "warning"


def test_a_worker_on_one_group_of_devices_sees_those_devices_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.app import celery_app

    monkeypatch.setenv("GANSERVE_DEVICE", "auto")
    monkeypatch.setenv("GANSERVE_DEVICES", "2,3")
    monkeypatch.setenv("GANSERVE_GPUS_PER_WORKER", "2")
    argvs: list[list[str]] = []
    monkeypatch.setattr(celery_app, "worker_main", lambda argv: argvs.append(argv) or 0)
    assert run("worker").exit_code == 0
    [argv] = argvs
    assert argv[argv.index("-Q") + 1] == "evaluate,gpu-2,gpu-1,training" and argv[argv.index("-n") + 1] == "gpu2-3@%h"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_a_worker_per_device_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """GANSERVE_DEVICES=0,1,2,3 with 2 per worker: two `ganserve worker` children, devices 0,1 and 2,3."""
    monkeypatch.setenv("GANSERVE_DEVICE", "auto")
    monkeypatch.setenv("GANSERVE_DEVICES", "0,1,2,3")
    monkeypatch.setenv("GANSERVE_GPUS_PER_WORKER", "2")
    started: list[dict[str, dict[str, str]]] = []
    monkeypatch.setattr(launcher, "run_workers", lambda children, settings: started.append(children) or 0)
    assert run("worker", "--name", "big@%h").exit_code == 0
    assert started == [
        {
            "big-0-1@%h": {"GANSERVE_DEVICES": "0,1", "GANSERVE_GPUS_PER_WORKER": "2"},
            "big-2-3@%h": {"GANSERVE_DEVICES": "2,3", "GANSERVE_GPUS_PER_WORKER": "2"},
        }
    ]
    monkeypatch.setenv("GANSERVE_DEVICES", "0,1,2")
    result = run("worker")
    assert result.exit_code == 2 and "GANSERVE_GPUS_PER_WORKER=2" in result.output


def test_serve_exits_with_the_launchers_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "serve", lambda settings: 3)
    assert run("serve").exit_code == 3


def test_first_key_is_made_once_and_only_its_hash_is_stored(sqlite_db: Database) -> None:
    key = ensure_first_key([], sqlite_db)
    assert key is not None and key.startswith("gsk_")
    assert stored_keys(sqlite_db) == [ApiKeyEntry(name=FIRST_KEY_NAME, sha256=hash_key(key), scopes=[Scope.admin])]
    assert ensure_first_key([], sqlite_db) is None  # a key exists now: nothing more is made
    assert len(stored_keys(sqlite_db)) == 1


def test_no_first_key_when_keys_are_configured(sqlite_db: Database) -> None:
    configured = [ApiKeyEntry(name="ops", sha256=hash_key("k"), scopes=[Scope.train])]
    assert ensure_first_key(configured, sqlite_db) is None
    assert stored_keys(sqlite_db) == []


def test_the_launcher_prints_the_key_once_and_can_be_told_not_to(tmp_path: Path, capsys) -> None:
    settings = Settings(checkpoint_dir=tmp_path / "var", api_keys=[])
    key = announce_first_key(settings)
    err = capsys.readouterr().err
    assert key is not None and f"    {key}\n" in err and "ganserve keys revoke --name local-admin" in err
    assert f"kept, in the database: GANSERVE_DATABASE_URL=sqlite:///{tmp_path / 'var' / 'ganserve.db'})" in err
    assert [e.sha256 for e in stored_keys(connect(settings.effective_database_url))] == [hash_key(key)]
    assert announce_first_key(settings) is None and capsys.readouterr().err == ""
    off = Settings(checkpoint_dir=tmp_path / "other", api_keys=[], first_key=False)
    assert announce_first_key(off) is None
    assert not (tmp_path / "other").exists()  # not even a database


def test_the_launcher_imports_an_old_keys_file_instead_of_making_a_key(tmp_path: Path, capsys, caplog) -> None:
    """An older version's volume: its keys file is imported before the first key would be made, so there is
    none to make, and the file's keys are not lost."""
    settings = Settings(checkpoint_dir=tmp_path / "var", api_keys=[])
    settings.checkpoint_dir.mkdir()
    old = settings.checkpoint_dir / "api-keys.json"
    old.write_text(json.dumps([{"name": "ops", "sha256": hash_key("gsk_ops"), "scopes": ["admin"]}]))
    assert announce_first_key(settings) is None and capsys.readouterr().err == ""
    assert "imported 1 API key(s) [ops (admin)]" in caplog.text
    assert [e.name for e in stored_keys(connect(settings.effective_database_url))] == ["ops"]


def test_serve_stops_at_once_when_the_database_cannot_be_opened(tmp_path: Path, caplog) -> None:
    url = "postgresql+psycopg://postgres:s3cret@127.0.0.1:1/ganserve"
    settings = Settings(checkpoint_dir=tmp_path / "var", api_keys=[], database_url=url)
    assert launcher.serve(settings) == 1
    assert (
        "GANSERVE_DATABASE_URL=postgresql+psycopg://postgres:***@127.0.0.1:1/ganserve cannot be opened" in caplog.text
    )
    assert "s3cret" not in caplog.text
