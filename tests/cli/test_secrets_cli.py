"""`ganserve secrets init` (ganserve/cli/secrets.py): what docker-compose.yml's one-shot service `secrets` runs."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.secrets import SECRETS
from ganserve.cli import app

NAMES = [s.name for s in SECRETS]


def test_init_reports_where_each_secret_came_from_and_never_its_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for secret in SECRETS:
        monkeypatch.delenv(secret.env, raising=False)
    folder = tmp_path / "run" / "ganserve-secrets"
    first = CliRunner().invoke(app, ["secrets", "init", "--dir", str(folder)])
    assert first.exit_code == 0, first.output
    assert [line for line in first.output.splitlines() if ": generated" in line] == [f"{n}: generated" for n in NAMES]
    monkeypatch.setenv("POSTGRES_PASSWORD", "operator-chosen")
    second = CliRunner().invoke(app, ["secrets", "init"], env={"GANSERVE_SECRETS_DIR": str(folder)})
    assert second.exit_code == 0, second.output
    assert "postgres_password: from POSTGRES_PASSWORD" in second.output
    assert "redis_password: kept" in second.output
    for name in NAMES:
        value = (folder / name).read_text().strip()
        assert value not in first.output + second.output, name


def test_init_refuses_a_bad_variable_in_one_line_and_without_a_folder_asks_for_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("MINIO_ROOT_PASSWORD", "short")
    bad = CliRunner().invoke(app, ["secrets", "init", "--dir", str(tmp_path)])
    assert bad.exit_code == 1 and "MINIO_ROOT_PASSWORD must be" in bad.output
    monkeypatch.delenv("GANSERVE_SECRETS_DIR", raising=False)
    missing = CliRunner().invoke(app, ["secrets", "init"])
    assert missing.exit_code == 2 and "--dir" in missing.output
