"""The deployment files agree with the code: the compose file is valid, the Dockerfile passes hadolint, their
commands are `ganserve` commands that exist, and the ports agree with the default port. (The `GANSERVE_*`
variables they name, like those the docs name, are checked with the docs: tests/test_docs.py.)"""

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.settings import Settings
from ganserve.cli import app
from ganserve.cli.processes import APP_FACTORY, UVICORN_LOOP, uvicorn_options, worker_argv
from ganserve.launcher import child_command

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DEFAULT_PORT = Settings.model_fields["port"].default


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_compose_file_is_valid():
    cmd = compose_command()
    if cmd is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed (`make test` installs it)")
    # `config` validates and interpolates without a Docker engine; the optional profiles are checked too.
    env = {**os.environ, "REDIS_PASSWORD": "0123abcd"}
    for extra in ([], ["--profile", "cpu"], ["--profile", "flower"]):
        proc = subprocess.run([*cmd, *extra, "config", "-q"], cwd=ROOT, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
    services = subprocess.run(
        [*cmd, "--profile", "cpu", "--profile", "flower", "config", "--services"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.split()
    assert set(services) == {"redis", "api", "worker", "worker-cpu", "flower"}


def test_compose_refuses_to_start_without_a_redis_password():
    cmd = compose_command()
    if cmd is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed (`make test` installs it)")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_PASSWORD"}
    proc = subprocess.run([*cmd, "config", "-q"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "REDIS_PASSWORD" in proc.stderr


def test_redis_has_a_password_and_only_the_internal_network():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load(COMPOSE.read_text())
    redis = compose["services"]["redis"]
    assert redis["command"][redis["command"].index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    assert redis["networks"] == ["backend"] and compose["networks"]["backend"]["internal"] is True
    url = compose["x-ganserve-env"]["GANSERVE_REDIS_URL"]
    assert url.startswith("redis://:${REDIS_PASSWORD:?") and url.endswith("@redis:6379/0")
    for name in ("api", "worker", "worker-cpu"):  # each client of Redis can reach it
        service = compose["services"][name]
        assert "backend" in service["networks"], name
        assert service["environment"]["GANSERVE_REDIS_URL"] == url, name


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).with_name("hadolint")
    exe = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not found (it comes with the dev extras: `pip install -e '.[dev]'`)")
    proc = subprocess.run([exe, str(DOCKERFILE)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def ganserve_commands(text: str) -> list[list[str]]:
    """Every exec-form command of a Dockerfile or compose file that runs `ganserve`."""
    return [json.loads(found) for found in re.findall(r'\["ganserve",[^\]]*\]', text)]


def test_the_image_and_compose_run_ganserve_commands_that_exist():
    dockerfile, compose = DOCKERFILE.read_text(), COMPOSE.read_text()
    assert ganserve_commands(dockerfile) == [["ganserve", "api", "--host", "0.0.0.0", "--port", str(DEFAULT_PORT)]]
    commands = ganserve_commands(compose)
    assert {c[1] for c in commands} == {"api", "worker"}
    for command in commands + ganserve_commands(dockerfile):
        result = CliRunner().invoke(app, [*command[1:], "--help"])  # an unknown option fails the parse
        assert result.exit_code == 0, (command, result.output)
    assert re.findall(r"^CMD \[", dockerfile, re.MULTILINE) == ["CMD ["]
    assert "COPY ganserve ./ganserve" in dockerfile and "COPY core ./core" in dockerfile  # the CLI is in the image


def test_the_launcher_starts_the_same_commands():
    assert child_command("api")[1:] == ["-m", "ganserve", "api"]
    assert child_command("worker")[1:] == ["-m", "ganserve", "worker"]


def test_commands_reference_objects_that_exist():
    module, attr = APP_FACTORY.split(":")
    assert hasattr(importlib.import_module(module), attr), APP_FACTORY
    assert hasattr(importlib.import_module("worker.app"), "celery_app")


def test_ports_agree_with_the_default_port():
    compose = COMPOSE.read_text()
    assert re.findall(r'-\s*"(\d+):(\d+)"', compose) == [(str(DEFAULT_PORT), str(DEFAULT_PORT))]
    assert set(re.findall(r'"--port",\s*"(\d+)"', compose)) == {str(DEFAULT_PORT)}
    assert set(re.findall(r"127\.0\.0\.1:(\d+)/healthz", compose)) == {str(DEFAULT_PORT)}
    dockerfile = DOCKERFILE.read_text()
    assert re.findall(r"^EXPOSE (\d+)$", dockerfile, re.MULTILINE) == [str(DEFAULT_PORT)]
    assert set(re.findall(r'"--port", "(\d+)"', dockerfile)) == {str(DEFAULT_PORT)}


def test_redis_is_not_published_and_persists_on_a_named_volume():
    """Queued jobs survive a Redis restart: append-only file on, kept in a named volume, not in the container."""
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load(COMPOSE.read_text())
    redis = compose["services"]["redis"]
    assert "ports" not in redis
    command = redis["command"]
    assert command[0] == "redis-server" and command[command.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in redis["volumes"]  # /data: the redis image's working directory, where the AOF goes
    assert "redis-data" in compose["volumes"]  # named (a volume of its own), not a bind mount


def test_worker_runs_one_job_at_a_time():
    argv = worker_argv(Settings())
    assert argv[0] == "worker"
    assert argv[argv.index("--pool") + 1] == "solo"
    assert argv[argv.index("--concurrency") + 1] == "1"
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load(COMPOSE.read_text())
    for name in ("worker", "worker-cpu"):
        assert compose["services"][name]["command"] == ["ganserve", "worker"], name


def test_every_api_command_runs_the_same_event_loop():
    """Every API server is `ganserve api`, whose uvicorn runs UVICORN_LOOP (benchmarks/serve_load.py uses it too)."""
    assert uvicorn_options(Settings())["loop"] == UVICORN_LOOP
    for text in (COMPOSE.read_text(), DOCKERFILE.read_text()):
        assert not re.findall(r'\["uvicorn"', text), "an API started otherwise than by `ganserve api`"
