"""The deployment files agree with the code: both compose files are valid with no variable set (docker-compose.yml,
the API and workers on PostgreSQL and MinIO with no folder in common; docker-compose.onebox.yml, everything on one
volume), the Dockerfile passes hadolint, their commands are `ganserve` commands that exist, the ports agree with the
default port, the servers are pinned, health-checked, persistent and internal, the secrets are generated into a
volume that the services needing one mount read-only, and the settings the containers get, with those secrets,
are the ones that reach those servers. (The `GANSERVE_*` variables they name, like those the docs name, are
checked with the docs: tests/test_docs.py. The files run for real under podman: scripts/compose_check.sh.)"""

import configparser
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from core.secrets import AWS_CREDENTIALS, REDIS_CONF, SECRETS, init_secrets
from core.settings import Settings
from ganserve.cli import app
from ganserve.cli.processes import APP_FACTORY, UVICORN_LOOP, uvicorn_options, worker_argv
from ganserve.launcher import child_command

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"  # as on several hosts: PostgreSQL, MinIO, nothing shared by API and workers
ONEBOX = ROOT / "docker-compose.onebox.yml"  # one host, one volume
COMPOSE_FILES = [COMPOSE, ONEBOX]
DOCKERFILE = ROOT / "Dockerfile"
DEFAULT_PORT = Settings.model_fields["port"].default

# The variables that, when set, replace a generated secret (none is needed), and the services each file defines
# (with every profile on).
SECRET_VARIABLES = [s.env for s in SECRETS]
SECRETS_MOUNT = "secrets:/run/ganserve-secrets:ro"  # the volume of generated secrets, read-only
SECRETS_IN_CONTAINER = Path("/run/ganserve-secrets")
SERVICES = {
    COMPOSE: {
        "secrets",
        "redis",
        "postgres",
        "minio",
        "minio-init",
        "api",
        "worker",
        "worker-gpu1",
        "worker-cpu",
        "flower",
    },
    ONEBOX: {"secrets", "redis", "api", "worker", "worker-gpu1", "worker-cpu", "flower"},
}
GPU_WORKERS = {"worker": "0", "worker-gpu1": "1"}  # a service per GPU: the device id each reserves
GANSERVE_SERVICES = ("api", "worker", "worker-gpu1", "worker-cpu")
SERVERS = ("redis", "postgres", "minio")
PROFILES = ([], ["--profile", "cpu"], ["--profile", "gpu1"], ["--profile", "flower"])
# A release, not a moving tag: PostgreSQL major.minor, MinIO's dated releases.
PINNED = {
    "postgres": r"postgres:\d+\.\d+(-[a-z0-9.]+)?",
    "minio": r"minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ",
    "minio-init": r"minio/mc:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ",
    "flower": r"mher/flower:\d+\.\d+\.\d+",
}


def ids(path: Path) -> str:
    return path.name


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.fixture
def compose(tmp_path: Path) -> Any:
    """Runs `docker-compose -f FILE ARGS…` as a new user would, with no .env (an empty env file: a developer's
    .env is not read) and none of the secret variables, unless `given`; its CompletedProcess."""
    cmd = compose_command()
    if cmd is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed (`make test` installs it)")
    env_file = tmp_path / "empty.env"
    env_file.write_text("")

    def run(path: Path, *args: str, given: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES} | (given or {})
        argv = [*cmd, "--env-file", str(env_file), "-f", str(path), *args]
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env)

    return run


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=ids)
def test_compose_file_is_valid_with_no_variable_set(path: Path, compose: Any):
    # `config` validates and interpolates without a Docker engine; the optional profiles are checked too. No .env
    # and no secret in the environment: the secrets are generated at the first `up`.
    for extra in PROFILES:
        proc = compose(path, *extra, "config", "-q")
        assert proc.returncode == 0, proc.stderr
    every = [arg for extra in PROFILES for arg in extra]
    proc = compose(path, *every, "config", "--services")
    assert proc.returncode == 0, proc.stderr
    assert set(proc.stdout.split()) == SERVICES[path]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=ids)
def test_a_secret_set_in_the_environment_reaches_only_the_secrets_service(path: Path, compose: Any):
    """REDIS_PASSWORD and the others, when set (environment or .env), go to `secrets`, which writes them over the
    generated files; no other service's configuration holds them, and unset they are empty, not an error."""
    given = {name: f"{i:x}-given-0123abcd" for i, name in enumerate(SECRET_VARIABLES)}
    every = [arg for extra in PROFILES for arg in extra]
    proc = compose(path, *every, "config", given=given)
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert services["secrets"]["environment"] == given
    for name, service in services.items():
        if name != "secrets":
            assert not any(value in yaml.safe_dump(service) for value in given.values()), name
    unset = yaml.safe_load(compose(path, "config").stdout)["services"]["secrets"]["environment"]
    assert all(unset.get(v) in ("", None) for v in SECRET_VARIABLES), unset
    raw = path.read_text()
    assert "${" + "REDIS_PASSWORD:?" not in raw and ":?" not in raw.split("x-ganserve-env")[1], "nothing is required"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=ids)
def test_the_secrets_are_made_first_and_mounted_read_only_by_the_services_that_need_them(path: Path):
    """The one-shot `secrets` runs `ganserve secrets init` as root with no network, alone writing the volume;
    every other service reads its secret there, read-only, after `secrets` completed."""
    compose = load(path)
    services = compose["services"]
    init = services["secrets"]
    assert init["command"] == ["ganserve", "secrets", "init", "--dir", str(SECRETS_IN_CONTAINER)]
    assert init["user"] == "0:0" and init["network_mode"] == "none" and init["restart"] == "no"
    assert init["volumes"] == [f"secrets:{SECRETS_IN_CONTAINER}"] and "secrets" in compose["volumes"]
    for name, service in services.items():
        if name == "secrets":
            continue
        assert SECRETS_MOUNT in service["volumes"], name  # each of them needs one
        assert service["depends_on"]["secrets"] == {"condition": "service_completed_successfully"}, name
        assert not any(v.startswith("secrets:") and v != SECRETS_MOUNT for v in service["volumes"]), name


def ganserve_settings(env: dict[str, str], secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a ganserve container makes from `env`, its secrets folder being `secrets_dir` here."""
    for key in list(os.environ):
        if key.startswith(("GANSERVE_", "AWS_")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value.replace(str(SECRETS_IN_CONTAINER), str(secrets_dir)))
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_the_containers_settings_reach_the_servers(compose: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Interpolated as compose does, with the secrets a first start generates, each ganserve service's environment
    makes Settings that name PostgreSQL with its user, the password PostgreSQL reads and its database, Redis with
    its password, and the bucket that minio-init makes, through MinIO, as the user and secret minio-init gives it."""
    proc = compose(COMPOSE, "--profile", "cpu", "config")
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    init_secrets(tmp_path, {})
    secret = {s.name: (tmp_path / s.name).read_text().strip() for s in SECRETS}
    postgres = services["postgres"]["environment"]
    assert postgres["POSTGRES_PASSWORD_FILE"] == str(SECRETS_IN_CONTAINER / "postgres_password")
    minio = services["minio"]["environment"]
    assert minio["MINIO_ROOT_PASSWORD_FILE"] == str(SECRETS_IN_CONTAINER / "minio_root_password")
    script = " ".join(services["minio-init"]["command"]).replace("$$", "$")  # config may print it escaped
    for name in GANSERVE_SERVICES:
        env = services[name]["environment"]
        assert env["GANSERVE_SECRETS_DIR"] == str(SECRETS_IN_CONTAINER), name
        settings = ganserve_settings(env, tmp_path, monkeypatch)
        url = make_url(settings.effective_database_url)
        assert url.drivername == "postgresql+psycopg", name
        assert (url.host, url.port, url.username, url.database) == (
            "postgres",
            5432,
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_DB"],
        ), name
        assert url.password == secret["postgres_password"], name
        assert settings.redis_url == f"redis://:{secret['redis_password']}@redis:6379/0", name
        bucket = settings.effective_storage_url.removeprefix("s3://").split("/")[0]
        assert settings.effective_storage_url.startswith("s3://") and bucket, name
        assert settings.s3_endpoint_url == "http://minio:9000", name
        assert "AWS_SECRET_ACCESS_KEY" not in env and "AWS_ACCESS_KEY_ID" not in env, name  # in the file instead
        assert env["AWS_SHARED_CREDENTIALS_FILE"] == str(SECRETS_IN_CONTAINER / AWS_CREDENTIALS), name
        aws = configparser.ConfigParser()
        aws.read(os.environ["AWS_SHARED_CREDENTIALS_FILE"])
        user, key = aws["default"]["aws_access_key_id"], aws["default"]["aws_secret_access_key"]
        assert key == secret["s3_secret_access_key"], name
        assert f"mc mb --ignore-existing store/{bucket}\n" in script, name
        assert f'mc admin user add store {user} "$(cat {SECRETS_IN_CONTAINER}/s3_secret_access_key)"' in script, name
        assert user != minio["MINIO_ROOT_USER"], name
    assert f'ganserve-admin "$(cat {SECRETS_IN_CONTAINER}/minio_root_password)"' in script


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=ids)
def test_redis_has_a_password_and_only_the_internal_network(path: Path, tmp_path: Path):
    """Redis reads its password from redis.conf, written by `secrets` with the same password ganserve's URL gets;
    the URL in the file carries none."""
    compose = load(path)
    redis = compose["services"]["redis"]
    assert redis["command"][:2] == ["redis-server", str(SECRETS_IN_CONTAINER / REDIS_CONF)]
    init_secrets(tmp_path, {})
    password = (tmp_path / "redis_password").read_text().strip()
    assert f"requirepass {password}\n" in (tmp_path / REDIS_CONF).read_text()
    assert "redis_password" in " ".join(redis["healthcheck"]["test"])  # the healthcheck authenticates too
    assert redis["networks"] == ["backend"] and compose["networks"]["backend"]["internal"] is True
    url = compose["x-ganserve-env"]["GANSERVE_REDIS_URL"]
    assert url == "redis://redis:6379/0"  # the password comes from GANSERVE_SECRETS_DIR
    for name in GANSERVE_SERVICES:  # each client of Redis can reach it
        service = compose["services"][name]
        assert "backend" in service["networks"], name
        assert service["environment"]["GANSERVE_REDIS_URL"] == url, name
        assert service["environment"]["GANSERVE_SECRETS_DIR"] == str(SECRETS_IN_CONTAINER), name
    flower = " ".join(compose["services"]["flower"]["command"])
    assert f"$(cat {SECRETS_IN_CONTAINER}/redis_password)" in flower
    assert compose["services"]["flower"]["group_add"] == ["10001"]  # the password file's group


def test_the_compose_comments_say_what_the_network_gives():
    """What the internal network gives, and not more: no route out, no published port; the host still reaches the
    containers by their addresses, so the passwords are what protect the servers (no claim of the contrary)."""
    header = " ".join(line.lstrip("# ") for line in COMPOSE.read_text().splitlines() if line.startswith("#"))
    assert "can still reach every container at its address on the bridge" in header
    assert "the passwords protect the servers, not the network" in header
    for path in COMPOSE_FILES:
        assert "none in from the host" not in path.read_text(), path.name


def test_env_files_stay_out_of_git_and_of_the_image():
    assert "/.env" in (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in (ROOT / ".dockerignore").read_text().splitlines()


@pytest.mark.parametrize("name", SERVERS)
def test_each_server_is_pinned_health_checked_persistent_and_internal(name: str):
    """PostgreSQL and MinIO, like Redis: a health check the clients wait for, data on a named volume, no port on
    the host, the internal network only; their images pinned to a release."""
    compose = load(COMPOSE)
    service = compose["services"][name]
    if name in PINNED:
        assert re.fullmatch(PINNED[name], service["image"]), service["image"]
    test = service["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1
    data = [volume for volume in service["volumes"] if volume != SECRETS_MOUNT]
    sources = [volume.split(":")[0] for volume in data]
    assert len(sources) == 1 and sources[0] in compose["volumes"], "a named volume, not a bind mount"
    assert "ports" not in service
    assert service["networks"] == ["backend"]
    # The API and the workers wait for it (for MinIO: for minio-init, which waits for it).
    waiter = "minio-init" if name == "minio" else None
    for client in GANSERVE_SERVICES if waiter is None else (waiter,):
        assert compose["services"][client]["depends_on"][name] == {"condition": "service_healthy"}, client


def test_where_the_servers_keep_their_data():
    services = load(COMPOSE)["services"]
    assert services["postgres"]["volumes"] == ["postgres-data:/var/lib/postgresql/data", SECRETS_MOUNT]  # PGDATA
    assert services["minio"]["command"] == ["server", "/data"]
    assert services["minio"]["volumes"] == ["minio-data:/data", SECRETS_MOUNT]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=ids)
def test_every_image_is_pinned(path: Path):
    for name, service in load(path)["services"].items():
        image = service["image"]
        if "build" in service:
            assert image == "ganserve:latest", name  # built here, from this checkout
            continue
        assert ":" in image and not image.endswith(":latest"), (name, image)
        if name in PINNED:
            assert re.fullmatch(PINNED[name], image), (name, image)


def test_the_bucket_is_made_once_before_the_api_and_workers_start():
    """minio-init, MinIO's client, runs to completion after MinIO is healthy; the API and the workers wait for it.
    Its script is compose-escaped (`$$`), so the secrets are read in the container, never written into the file."""
    services = load(COMPOSE)["services"]
    init = services["minio-init"]
    assert init["restart"] == "no" and init["depends_on"]["minio"] == {"condition": "service_healthy"}
    assert init["entrypoint"][0] == "/bin/sh" and init["networks"] == ["backend"] and init["volumes"] == [SECRETS_MOUNT]
    [script] = init["command"]
    assert "$" not in script.replace("$$", ""), "an unescaped $ is interpolated by compose"
    assert "mc admin user add" in script and "mc admin policy attach" in script
    for name in GANSERVE_SERVICES:
        assert services[name]["depends_on"]["minio-init"] == {"condition": "service_completed_successfully"}, name


def named_volumes(compose: dict[str, Any], service: str) -> set[str]:
    volumes = compose["services"][service].get("volumes", [])
    return {v.split(":")[0] for v in volumes if ":" in v and v.split(":")[0] in compose.get("volumes", {})}


def test_the_api_and_workers_share_no_folder():
    """Several hosts: the API and each worker (each replica of --scale) have a private anonymous volume for scratch
    and cache, the workers a read-only dataset folder; no named volume is mounted by any of them but the secrets,
    read-only."""
    compose = load(COMPOSE)
    for name in GANSERVE_SERVICES:
        volumes = compose["services"][name]["volumes"]
        assert "/data/ganserve" in volumes, name  # anonymous: one per container
        assert named_volumes(compose, name) == {"secrets"} and SECRETS_MOUNT in volumes, name
        assert all(v == "/data/ganserve" or v.endswith(":ro") for v in volumes), name
    assert compose["services"]["api"]["volumes"] == ["/data/ganserve", SECRETS_MOUNT]  # no dataset folder


def test_the_onebox_api_and_workers_share_one_volume():
    compose = load(ONEBOX)
    for name in GANSERVE_SERVICES:
        assert named_volumes(compose, name) == {"ganserve-data", "secrets"}, name
        assert "GANSERVE_DATABASE_URL" not in compose["services"][name]["environment"], name  # SQLite on it
        assert "GANSERVE_STORAGE_URL" not in compose["services"][name]["environment"], name  # folders on it


def test_the_onebox_file_is_the_same_deployment_on_one_volume():
    """What both files have, they have alike: Redis and Flower the same, and the API and workers differ only in
    where state lives (their environment's servers, their volumes, what they wait for)."""
    several, one = load(COMPOSE), load(ONEBOX)
    for name in ("secrets", "redis", "flower"):
        assert several["services"][name] == one["services"][name], name
    where_state_lives = {"environment", "volumes", "depends_on"}
    for name in GANSERVE_SERVICES:
        a, b = several["services"][name], one["services"][name]
        assert {k: v for k, v in a.items() if k not in where_state_lives} == {
            k: v for k, v in b.items() if k not in where_state_lives
        }, name
        assert set(b["environment"].items()) <= set(a["environment"].items()), name
    assert several["networks"] == one["networks"]


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


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=ids)
def test_the_image_and_compose_run_ganserve_commands_that_exist(path: Path):
    dockerfile, compose = DOCKERFILE.read_text(), path.read_text()
    assert ganserve_commands(dockerfile) == [["ganserve", "api", "--host", "0.0.0.0", "--port", str(DEFAULT_PORT)]]
    commands = ganserve_commands(compose)
    assert {c[1] for c in commands} == {"api", "worker", "secrets"}
    for command in commands + ganserve_commands(dockerfile):
        result = CliRunner().invoke(app, [*command[1:], "--help"])  # an unknown option fails the parse
        assert result.exit_code == 0, (command, result.output)
    assert re.findall(r"^CMD \[", dockerfile, re.MULTILINE) == ["CMD ["]
    assert "COPY ganserve ./ganserve" in dockerfile and "COPY core ./core" in dockerfile  # the CLI is in the image
    # … as the `ganserve` command, pyproject's console script, which `pip install .` puts on PATH (that it runs
    # in the built image is checked by scripts/compose_check.sh).
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ganserve"] == "ganserve.cli:main"
    assert re.search(r"^RUN pip install --no-cache-dir --no-deps \.$", dockerfile, re.MULTILINE)


def test_the_image_has_the_database_and_storage_drivers():
    """The image installs pyproject's dependencies, among them PostgreSQL's and S3's drivers."""
    assert "['project']['dependencies']" in DOCKERFILE.read_text()
    import tomllib

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[\[<>=~ ]", d)[0] for d in dependencies}
    assert {"psycopg", "s3fs", "sqlalchemy", "alembic"} <= names


def test_the_launcher_starts_the_same_commands():
    assert child_command("api")[1:] == ["-m", "ganserve", "api"]
    assert child_command("worker")[1:] == ["-m", "ganserve", "worker"]


def test_commands_reference_objects_that_exist():
    module, attr = APP_FACTORY.split(":")
    assert hasattr(importlib.import_module(module), attr), APP_FACTORY
    assert hasattr(importlib.import_module("worker.app"), "celery_app")


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=ids)
def test_ports_agree_with_the_default_port(path: Path):
    compose = path.read_text()
    assert re.findall(r'-\s*"(\d+):(\d+)"', compose) == [(str(DEFAULT_PORT), str(DEFAULT_PORT))]
    assert set(re.findall(r'"--port",\s*"(\d+)"', compose)) == {str(DEFAULT_PORT)}
    assert set(re.findall(r"127\.0\.0\.1:(\d+)/healthz", compose)) == {str(DEFAULT_PORT)}
    dockerfile = DOCKERFILE.read_text()
    assert re.findall(r"^EXPOSE (\d+)$", dockerfile, re.MULTILINE) == [str(DEFAULT_PORT)]
    assert set(re.findall(r'"--port", "(\d+)"', dockerfile)) == {str(DEFAULT_PORT)}


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=ids)
def test_redis_is_not_published_and_persists_on_a_named_volume(path: Path):
    """Queued jobs survive a Redis restart: append-only file on, kept in a named volume, not in the container."""
    compose = load(path)
    redis = compose["services"]["redis"]
    assert "ports" not in redis
    command = redis["command"]
    assert command[0] == "redis-server" and command[command.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in redis["volumes"]  # /data: the redis image's working directory, where the AOF goes
    assert "redis-data" in compose["volumes"]  # named (a volume of its own), not a bind mount


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=ids)
def test_worker_runs_one_job_at_a_time(path: Path):
    argv = worker_argv(Settings())
    assert argv[0] == "worker"
    assert argv[argv.index("--pool") + 1] == "solo"
    assert argv[argv.index("--concurrency") + 1] == "1"
    compose = load(path)
    for name in (*GPU_WORKERS, "worker-cpu"):
        assert compose["services"][name]["command"] == ["ganserve", "worker"], name


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=ids)
def test_one_worker_service_per_gpu_each_reserving_its_own_device(path: Path):
    """Each GPU worker reserves one device by id (never by count, which gives every replica GPU 0), a different one
    each, and sees it as its device 0 (GANSERVE_DEVICES "0", class gpu); the CPU worker reserves none and says
    it has none (class cpu)."""
    services = load(path)["services"]
    reserved = []
    for name, device in GPU_WORKERS.items():
        (reservation,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert reservation["driver"] == "nvidia" and reservation["capabilities"] == ["gpu"], name
        assert reservation["device_ids"] == [device] and "count" not in reservation, name
        environment = services[name]["environment"]
        assert environment["GANSERVE_DEVICES"] == "0" and environment["GANSERVE_DEVICE"] == "cuda", name
        reserved.append(device)
    assert len(set(reserved)) == len(reserved)
    assert "profiles" not in services["worker"] and services["worker-gpu1"]["profiles"] == ["gpu1"]
    cpu = services["worker-cpu"]
    assert "deploy" not in cpu and cpu["environment"]["GANSERVE_DEVICES"] == ""
    assert cpu["environment"]["GANSERVE_DEVICE"] == "cpu"


def test_every_api_command_runs_the_same_event_loop():
    """Every API server is `ganserve api`, whose uvicorn runs UVICORN_LOOP (benchmarks/serve_load.py uses it too)."""
    assert uvicorn_options(Settings())["loop"] == UVICORN_LOOP
    for text in (COMPOSE.read_text(), ONEBOX.read_text(), DOCKERFILE.read_text()):
        assert not re.findall(r'\["uvicorn"', text), "an API started otherwise than by `ganserve api`"
