# ganserve — the two commands a fresh machine needs: `make run` and `make test`.
# Everything installs itself: the virtualenv, the package (torch pinned in pyproject.toml), and for the
# tests redis-server, PostgreSQL's binaries and docker-compose (apt, when missing).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ganserve-installed
# Where `make run` reads datasets: ../shared/data when it exists, else ./data. GANSERVE_DATA_ROOT wins.
DATA_ROOT_DEFAULT := $(if $(wildcard ../shared/data),../shared/data,data)
# apt needs root: sudo when we are not.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends
# Whether a PostgreSQL server takes TCP connections where the tests look first (tests/conftest.py).
POSTGRES_ANSWERS := $(PYTHON) -c "import socket; socket.create_connection(('127.0.0.1', 5432), 2).close()" 2>/dev/null

.PHONY: install run test lint format test-tools docker-config compose-check clean distclean

install: $(STAMP)

# Rebuilt when pyproject.toml changes; a second `make` is a no-op.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

run: install
	GANSERVE_DATA_ROOT="$${GANSERVE_DATA_ROOT:-$(DATA_ROOT_DEFAULT)}" $(BIN)/ganserve serve

# redis-server is needed (the e2e tests start their own), and chromium for the web page's browser test (driven
# by Playwright, which never downloads a browser of its own); docker-compose is wanted (the compose file
# check skips, saying why, if it cannot be had). PostgreSQL: the tests use the server on 127.0.0.1:5432 when
# one answers, else start their own from initdb/pg_ctl, which the Debian package brings. (The S3 server,
# moto's, comes with the dev extras.)
test-tools:
	@command -v redis-server >/dev/null || { $(SUDO) apt-get update && $(APT_INSTALL) redis-server; }
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || $(POSTGRES_ANSWERS) \
		|| { $(SUDO) apt-get update && $(APT_INSTALL) postgresql; }
	@command -v chromium >/dev/null || { $(SUDO) apt-get update && $(APT_INSTALL) chromium chromium-driver; }
	@command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 \
		|| { $(SUDO) apt-get update && $(APT_INSTALL) docker-compose; } \
		|| echo "warning: docker-compose could not be installed; the compose file check will be skipped"

test: install test-tools
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest -m "not gpu"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Both compose files: several hosts' (docker-compose.yml) and one volume's (docker-compose.onebox.yml). They need
# no variable: the secrets are generated at the first `up` (the service `secrets`).
docker-config:
	compose=$$(command -v docker-compose >/dev/null && echo docker-compose || echo docker compose); \
	for f in docker-compose.yml docker-compose.onebox.yml; do $$compose -f $$f config -q || exit 1; done

# docker-compose.yml run for real under podman, with local stand-ins for the base images: build, `up` with no
# .env, /readyz, /generate, a key, a job to `succeeded`, `down` (scripts/compose_check.sh). Root, ~15 GB of disk
# and some minutes; not part of `make test`.
compose-check:
	scripts/compose_check.sh

clean:
	rm -rf var .pytest_cache .ruff_cache test-artifacts
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
