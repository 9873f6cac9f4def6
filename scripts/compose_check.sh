#!/usr/bin/env bash
# docker-compose.yml, run for real: `make compose-check` (not part of `make test`; it needs root and ~15 GB).
#
# On a machine with no Docker engine and no registry to pull from, this runs the compose file unchanged under
# podman and podman-compose, as a new user types it: no .env (the secrets are generated on first start, see
# `ganserve secrets init`), `--profile cpu up -d api worker-cpu` (there is no GPU here, so the CPU worker).
#
#   1. tools: podman, runc and debootstrap (apt), podman-compose (PyPI, in its own venv); podman set to runc, as
#      this VM refuses crun's cgroup set-up, with raised nofile/nproc limits (/etc/containers/containers.conf).
#   2. stand-ins for the base images, tagged with the names the Dockerfile and the compose file use
#      (scripts/standins/README.md: Debian bookworm from debootstrap, Debian's Python, Redis and PostgreSQL,
#      moto's S3 server for MinIO). STAND-INS, not the real images.
#   3. the real Dockerfile, built (the host's local package indexes mounted at build time, when it has them).
#   4. `up`, then the walk: /readyz, /generate → PNG, a key made inside the api container, a tiny job to
#      `succeeded`, /generate from the new model; `down`; the secrets kept by a second start; the volumes removed.
#   5. docker-compose.onebox.yml the same way: its secrets generated, /readyz, /generate; down.
#
# Podman 4.3 runs no healthcheck by itself (it would need systemd timers): this script runs `podman healthcheck
# run` for every container of the project every 2 s while the stack is up. Differences from Docker:
# docs/operations.md, "Compose checked for real".
#
# Usage: scripts/compose_check.sh [images]   (images: steps 1-3 only). Exit status non-zero on any failed step;
# the stack is always taken down. Re-runs reuse the debootstrap root and podman's layer cache.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${GANSERVE_STANDINS_DIR:-/var/tmp/ganserve-standins}
PROJECT=ganserve-compose-check  # its own project: never the containers or volumes of a real deployment here
PORT=8000                       # what docker-compose.yml publishes
DATASETS_DIR=${DATASETS_DIR:-$(cd "$ROOT/.." && pwd)/shared/data}
PODMAN_COMPOSE_VERSION=1.6.0
BASE=localhost/ganserve-standin/bookworm:latest
# The image names docker-compose.yml and the Dockerfile use, read from them (a renamed image fails here).
PYTHON_IMAGE=$(sed -n 's/^FROM \([^ ]*\).*/\1/p' "$ROOT/Dockerfile" | head -n 1)
compose_image() { sed -n "s|^ *image: \\(${1}[^ ]*\\)|\\1|p" "$ROOT/docker-compose.yml" | head -n 1; }
REDIS_IMAGE=$(compose_image redis:)
POSTGRES_IMAGE=$(compose_image postgres:)
MINIO_IMAGE=$(compose_image minio/minio:)
MC_IMAGE=$(compose_image minio/mc:)
START=$SECONDS

step() { printf '\n==> [%s, +%ss] %s\n' "$(date -u +%H:%M:%S)" "$((SECONDS - START))" "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
fail() {
    printf '    FAILED: %s\n' "$*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || fail "run as root: rootful podman (this VM's cgroups refuse rootless containers)"
mkdir -p "$CACHE"

# --- 1. tools -------------------------------------------------------------------------------------------------
step "tools: podman, runc, debootstrap, podman-compose $PODMAN_COMPOSE_VERSION"
missing=()
for cmd in podman runc debootstrap; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends podman runc debootstrap
fi
# Podman's defaults (nofile and nproc 1048576) are above what this VM lets runc set ("error setting rlimit …:
# operation not permitted"): nofile is this shell's hard limit, nproc at most 32768 (measured here: 65536 is
# refused even below the shell's hard limit, 32768 is accepted). Both far above the 1024 of a bare container.
NOFILE=$(ulimit -Hn)
NPROC=$(ulimit -Hu)
[ "$NPROC" = unlimited ] || [ "$NPROC" -gt 32768 ] && NPROC=32768
if ! grep -qs "nofile=$NOFILE:$NOFILE" /etc/containers/containers.conf \
    || ! grep -qs "nproc=$NPROC:$NPROC" /etc/containers/containers.conf \
    || ! grep -qs '^runtime = "runc"' /etc/containers/containers.conf; then
    cat >/etc/containers/containers.conf <<EOF
# Written by ganserve's scripts/compose_check.sh: this VM refuses crun's cgroup set-up, so podman runs runc;
# the file and process limits are what this VM lets runc set (podman's own defaults are above them).
[containers]
default_ulimits = [
  "nofile=$NOFILE:$NOFILE",
  "nproc=$NPROC:$NPROC",
]

[engine]
runtime = "runc"
EOF
fi
if ! "$CACHE/tools/bin/podman-compose" --version 2>/dev/null | grep -q "$PODMAN_COMPOSE_VERSION"; then
    python3 -m venv "$CACHE/tools"
    "$CACHE/tools/bin/pip" install -q "podman-compose==$PODMAN_COMPOSE_VERSION"
fi
ok "$(podman --version), runtime $(podman info --format '{{.Host.OCIRuntime.Name}}'), $("$CACHE/tools/bin/podman-compose" --version | head -n 1)"

# --- 2. stand-ins ----------------------------------------------------------------------------------------------
step "stand-ins (NOT the real images) for $PYTHON_IMAGE, $REDIS_IMAGE, $POSTGRES_IMAGE, $MINIO_IMAGE, $MC_IMAGE"
if ! podman image exists "$BASE"; then
    if [ ! -x "$CACHE/rootfs/bin/sh" ]; then
        rm -rf "$CACHE/rootfs"
        debootstrap --variant=minbase --include=ca-certificates bookworm "$CACHE/rootfs" http://deb.debian.org/debian
    fi
    tar -C "$CACHE/rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
fi
ok "base: $BASE (debootstrap bookworm minbase, cached in $CACHE/rootfs)"

# pip in the stand-ins trusts the host's certificate authorities and uses its local indexes when it has them.
context() { # a build context: the stand-in's folder, the host's CA bundle, a pip.conf
    local ctx
    ctx=$(mktemp -d "$CACHE/context.XXXXXX")
    cp -r "$ROOT/scripts/standins/$1/." "$ctx/"
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
    {
        echo "[global]"
        echo "cert = /etc/ssl/certs/ca-certificates.crt"
        [ -d /opt/wheels ] && echo "find-links = /opt/wheels"
        local indexes=""
        for d in /opt/pypi /opt/pypi-more; do [ -d "$d/simple" ] && indexes="$indexes file://$d/simple"; done
        [ -n "$indexes" ] && echo "extra-index-url =$indexes"
    } >"$ctx/pip.conf"
    echo "$ctx"
}
HOST_INDEXES=()
for d in /opt/wheels /opt/pypi /opt/pypi-more; do [ -d "$d" ] && HOST_INDEXES+=(-v "$d:$d:ro"); done
qualified() { # Docker's reading of an image name: docker.io/library/redis:7-alpine, docker.io/minio/mc:…
    case "$1" in
        */*/*) echo "$1" ;;
        */*) echo "docker.io/$1" ;;
        *) echo "docker.io/library/$1" ;;
    esac
}
build_standin() { # build_standin FOLDER IMAGE [extra Containerfile lines]
    local folder=$1 image=$2 ctx
    ctx=$(context "$folder")
    if [ $# -gt 2 ]; then printf '%s\n' "${@:3}" >>"$ctx/Containerfile"; fi
    podman build -q --network host --pull=never "${HOST_INDEXES[@]}" -t "$(qualified "$image")" \
        -t "localhost/${image#*/}" -t "localhost/$image" "$ctx" >/dev/null
    rm -rf "$ctx"
    ok "$image  <-  scripts/standins/$folder"
}
build_standin python "$PYTHON_IMAGE"
build_standin redis "$REDIS_IMAGE"
build_standin postgres "$POSTGRES_IMAGE"
build_standin s3 "$MINIO_IMAGE" 'ENTRYPOINT ["/usr/local/bin/minio"]' 'CMD ["server", "/data"]'
build_standin s3 "$MC_IMAGE" 'ENTRYPOINT ["/usr/local/bin/mc"]'

# --- 3. the real Dockerfile ------------------------------------------------------------------------------------
step "the image: the real Dockerfile as ganserve:latest"
t0=$SECONDS
podman build --network host --pull=never "${HOST_INDEXES[@]}" -t localhost/ganserve:latest "$ROOT" 2>&1 |
    grep -E '^(STEP|COMMIT|Successfully)' || true
podman image exists localhost/ganserve:latest || fail "the Dockerfile did not build"
where=$(podman run --rm --entrypoint /bin/sh localhost/ganserve:latest -c 'command -v ganserve')
podman run --rm localhost/ganserve:latest ganserve --help >/dev/null || fail "ganserve --help fails in the image"
ok "built in $((SECONDS - t0)) s, $(podman image inspect --format '{{.Size}}' localhost/ganserve:latest | numfmt --to=iec) bytes; the ganserve command is $where"
[ "${1:-all}" = images ] && exit 0

# --- 4. up and the walk ----------------------------------------------------------------------------------------
[ -d "$DATASETS_DIR/mnist" ] || fail "no MNIST under DATASETS_DIR=$DATASETS_DIR"
if python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null; then
    fail "something already listens on 127.0.0.1:$PORT, the port docker-compose.yml publishes: stop it first"
fi
ENV_FILE=$(mktemp "$CACHE/empty-env.XXXXXX") # no .env: what a new user has (a .env in the checkout is not read)
unset REDIS_PASSWORD POSTGRES_PASSWORD MINIO_ROOT_PASSWORD S3_SECRET_ACCESS_KEY
export DATASETS_DIR
PC=("$CACHE/tools/bin/podman-compose" -p "$PROJECT" --env-file "$ENV_FILE" -f "$ROOT/docker-compose.yml")
SERVICES=(api worker-cpu)
HEALTH_PID=""

containers() { podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}'; }
container_of() { podman ps --filter "label=io.podman.compose.project=$PROJECT" --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | head -n 1; }
state_of() { podman inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$(container_of_any "$1")" 2>/dev/null; }
container_of_any() { podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | head -n 1; }
ANON_VOLUMES=$(mktemp "$CACHE/anonymous-volumes.XXXXXX")
note_anonymous_volumes() { # `down` keeps anonymous volumes (Docker's too): note the project's, for the teardown
    for c in $(containers); do
        podman inspect --format '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}}{{"\n"}}{{end}}{{end}}' "$c" 2>/dev/null
    done | grep -E '^[0-9a-f]{64}$' >>"$ANON_VOLUMES" || true
}
teardown() {
    local rc=$?
    set +e # every step of the teardown runs, whatever fails
    if [ -n "$HEALTH_PID" ]; then kill "$HEALTH_PID" 2>/dev/null; wait "$HEALTH_PID" 2>/dev/null; fi
    if [ $rc -ne 0 ]; then
        for c in $(containers); do
            printf '\n---- %s (%s), last lines of its log ----\n' "$c" "$(podman inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$c")"
            podman logs --tail 25 "$c" 2>&1 || true
        done
    fi
    step "down (always)"
    note_anonymous_volumes
    "${PC[@]}" --profile cpu down -t 20 >/dev/null 2>&1 || true
    podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT" | xargs -r podman volume rm -f >/dev/null
    sort -u "$ANON_VOLUMES" | xargs -r podman volume rm -f >/dev/null 2>&1
    rm -f "$ENV_FILE" "$ANON_VOLUMES"
    ok "containers and the project's volumes removed"
    if [ $rc -eq 0 ]; then printf '\ncompose check PASSED in %s s\n' "$((SECONDS - START))"; else printf '\ncompose check FAILED\n'; fi
    exit $rc
}
trap teardown EXIT
trap 'exit 143' TERM INT # a signal, too, goes through teardown
# A previous run stopped hard: start from nothing, as a new user does.
"${PC[@]}" --profile cpu down -t 5 >/dev/null 2>&1 || true
podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT" | xargs -r podman volume rm -f >/dev/null

health_loop() { # what Docker's engine does by itself: run each container's healthcheck, every 2 s
    while true; do
        for c in $(podman ps --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}'); do
            podman healthcheck run "$c" >/dev/null 2>&1 || true
        done
        sleep 2
    done
}
health_loop &
HEALTH_PID=$!

step "up: podman-compose --profile cpu up -d ${SERVICES[*]}   (no .env, no secret in the environment)"
t0=$SECONDS
"${PC[@]}" --profile cpu up -d "${SERVICES[@]}" 2>&1 | grep -v -E '^(podman|[0-9a-f]{64}$)|systemd connection' || true
ok "up returned in $((SECONDS - t0)) s; containers: $(containers | tr '\n' ' ')"
# podman starts a container's --requires with it, so `secrets` may run more than once: its first run generates.
secrets_log=$(podman logs "$(container_of_any secrets)" 2>&1)
printf '%s\n' "$secrets_log" | head -n 5 | sed 's/^/    secrets: /'
[ "$(printf '%s\n' "$secrets_log" | head -n 5 | grep -c ': generated')" -eq 4 ] || fail "the four secrets were not generated on first start"
ok "runs of secrets: $(printf '%s\n' "$secrets_log" | grep -c '^redis_password'), each after the first keeping what the first generated: $(printf '%s\n' "$secrets_log" | grep -c ': kept') kept, $(printf '%s\n' "$secrets_log" | grep -c ': generated') generated"

wait_healthy() { # wait_healthy SERVICE SECONDS
    local c deadline=$((SECONDS + $2)) status=""
    while [ $SECONDS -lt $deadline ]; do
        c=$(container_of "$1")
        status=$([ -n "$c" ] && podman inspect --format '{{.State.Health.Status}}' "$c" 2>/dev/null || true)
        [ "$status" = healthy ] && { ok "$1 healthy, $((SECONDS - t0)) s after up"; return 0; }
        sleep 2
    done
    fail "$1 not healthy within $2 s (last: ${status:-no container})"
}
wait_completed() { # wait_completed SERVICE SECONDS: exited 0 (Docker's service_completed_successfully)
    local deadline=$((SECONDS + $2)) state=""
    while [ $SECONDS -lt $deadline ]; do
        state=$(state_of "$1")
        case "$state" in
            "exited 0") ok "$1 completed (exit 0), $((SECONDS - t0)) s after up"; return 0 ;;
            exited*) fail "$1 exited: $state" ;;
        esac
        sleep 2
    done
    fail "$1 did not complete within $2 s (last: ${state:-no container})"
}
wait_completed secrets 120
for s in redis postgres minio; do wait_healthy "$s" 300; done
wait_completed minio-init 120

# Podman 4.3 cannot start a container whose --requires chain runs through an exited one-shot to a running
# container (api -> minio-init, exited -> minio, running): "generating dependency graph … depends on container …
# not found in input list" (libpod's getAllDependencies leaves running containers out of the graph it builds).
# Docker has no such step. The servers are up and minio-init has succeeded (checked above), so the containers
# are made again without --requires.
for s in "${SERVICES[@]}"; do
    if [ "$(state_of "$s")" = "created 0" ]; then
        step "podman 4.3's dependency-graph bug left $s created, not started: podman-compose up -d --no-deps --force-recreate ${SERVICES[*]}"
        "${PC[@]}" --profile cpu up -d --no-deps --force-recreate "${SERVICES[@]}" 2>&1 | grep -v -E '^(podman|[0-9a-f]{64}$)|systemd connection' || true
        break
    fi
done
wait_healthy api 300
state=$(state_of worker-cpu)
[ "${state%% *}" = running ] || fail "worker-cpu is $state"
ok "worker-cpu running"

step "no secret in any container's configuration; what the internal network gives"
SECRETS_DIR=$(podman volume inspect --format '{{.Mountpoint}}' "${PROJECT}_secrets")
leaks=0
for c in $(containers); do
    config=$(podman inspect "$c")
    for f in redis_password postgres_password minio_root_password s3_secret_access_key; do
        if printf '%s' "$config" | grep -qF "$(cat "$SECRETS_DIR/$f")"; then echo "    $f is in $c's configuration"; leaks=$((leaks + 1)); fi
    done
done
[ "$leaks" = 0 ] || fail "secrets in podman inspect"
ok "none of the four secrets in \`podman inspect\` of $(containers | wc -l) containers"
REDIS_IP=$(podman inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$(container_of redis)" | awk '{print $1}')
python3 - "$REDIS_IP" "$(cat "$SECRETS_DIR/redis_password")" <<'PY' || fail "Redis at its container address did not behave as the compose comments say"
import socket, sys
ip, password = sys.argv[1:]
def ask(*commands):
    with socket.create_connection((ip, 6379), 3) as s:
        s.sendall(b"".join(c.encode() + b"\r\n" for c in commands))
        s.settimeout(3)
        data = b""
        while data.count(b"\r\n") < len(commands):
            data += s.recv(200)
        return data.decode().split("\r\n")[:-1]
without = ask("PING")
with_it = ask(f"AUTH {password}", "PING")
print(f"    ok: the host reaches Redis at its container address {ip}:6379 (no published port): without the password {without}, with it {with_it}")
sys.exit(0 if without[0].startswith("-NOAUTH") and with_it == ["+OK", "+PONG"] else 1)
PY

BASE_URL=http://127.0.0.1:$PORT
# wait_ready LABEL: poll /readyz for up to 120 s; fails naming LABEL and the last answer. Healthy (/healthz) comes
# first; ready once the render process has loaded its models.
wait_ready() {
    local t0=$SECONDS
    while :; do
        code=$(curl -s -o "$CACHE/readyz.json" -w '%{http_code}' "$BASE_URL/readyz")
        [ "$code" = 200 ] || [ $((SECONDS - t0)) -ge 120 ] && break
        sleep 1
    done
    [ "$code" = 200 ] || fail "$1 answered $code: $(cat "$CACHE/readyz.json")"
    ready_after=$((SECONDS - t0))
}

step "GET /readyz"
wait_ready "/readyz"
echo "    (ready after $ready_after s of polling)"
ok "200 $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: (v.get("ok", v) if isinstance(v, dict) else v) for k, v in d.get("checks", d).items()})' "$CACHE/readyz.json" 2>/dev/null || head -c 300 "$CACHE/readyz.json")"

png_check() { # png_check QUERY LABEL
    local t=$SECONDS code
    code=$(curl -s -o "$CACHE/walk.png" -w '%{http_code} %{content_type}' "$BASE_URL/generate?$1")
    [ "${code%% *}" = 200 ] || fail "/generate?$1 answered $code: $(head -c 300 "$CACHE/walk.png")"
    [ "$(head -c 8 "$CACHE/walk.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "/generate?$1 is not a PNG"
    ok "$2: $code, $(stat -c %s "$CACHE/walk.png") bytes of PNG ($((SECONDS - t)) s)"
}
step "GET /generate?seed=1 (the bundled model)"
png_check "seed=1" "bundled mnist-mlp"

step "a key, made inside the api container: ganserve keys create --name walk --scopes train,generate"
API=$(container_of api)
KEY=$(podman exec "$API" ganserve keys create --name walk --scopes train,generate 2>/dev/null | tail -n 1)
case "$KEY" in gsk_*) ok "key ${KEY:0:8}… made in $API" ;; *) fail "no key printed: $KEY" ;; esac

step "POST /train: one epoch over 256 MNIST digits, on the CPU worker"
t0=$SECONDS
body='{"model_name": "walk", "dataset": "mnist", "epochs": 1, "max_samples": 256}'
# The API reads new keys from the database within a second (docs/operations.md): a 401 just after is retried.
for _ in $(seq 10); do
    answer=$(curl -s -w '\n%{http_code}' -X POST "$BASE_URL/train" -H "Authorization: Bearer $KEY" \
        -H 'content-type: application/json' -d "$body")
    code=$(printf '%s\n' "$answer" | tail -n 1)
    [ "$code" = 401 ] || break
    sleep 1
done
[ "$code" = 202 ] || fail "POST /train answered $code: $(printf '%s\n' "$answer" | head -n 1)"
JOB=$(printf '%s\n' "$answer" | head -n 1 | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
ok "202, job $JOB"
status=""
while [ $((SECONDS - t0)) -lt 900 ]; do
    status=$(curl -s -H "Authorization: Bearer $KEY" "$BASE_URL/train/$JOB" | python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])')
    case "$status" in succeeded) break ;; failed | cancelled) break ;; esac
    sleep 3
done
[ "$status" = succeeded ] || fail "job $JOB ended $status: $(curl -s -H "Authorization: Bearer $KEY" "$BASE_URL/train/$JOB" | head -c 600)"
ok "job $JOB succeeded in $((SECONDS - t0)) s"

step "GET /generate?model=walk&seed=1 (the model the job published)"
png_check "model=walk&seed=1" "model walk"

step "down, then the secrets service again: the volume keeps what the first start generated"
note_anonymous_volumes
"${PC[@]}" --profile cpu down -t 20 >/dev/null 2>&1
ok "down"
again=$("${PC[@]}" run --rm secrets 2>&1 | grep -E ': (kept|generated|from)' || true)
printf '%s\n' "$again" | sed 's/^/    secrets: /'
[ "$(printf '%s\n' "$again" | grep -c ': kept')" -eq 4 ] || fail "a second start did not keep the four secrets"

# --- 5. docker-compose.onebox.yml: the same secrets service, SQLite and folders on one volume --------------------
step "docker-compose.onebox.yml: podman-compose -f docker-compose.onebox.yml --profile cpu up -d api worker-cpu"
note_anonymous_volumes
podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT" | xargs -r podman volume rm -f >/dev/null
PROJECT=ganserve-compose-check-onebox # teardown now takes this project down
PC=("$CACHE/tools/bin/podman-compose" -p "$PROJECT" --env-file "$ENV_FILE" -f "$ROOT/docker-compose.onebox.yml")
kill "$HEALTH_PID" && wait "$HEALTH_PID" 2>/dev/null || true # the loop runs the healthchecks of one project
health_loop &
HEALTH_PID=$!
t0=$SECONDS
"${PC[@]}" --profile cpu up -d "${SERVICES[@]}" 2>&1 | grep -v -E '^(podman|[0-9a-f]{64}$)|systemd connection|^ganserve-compose-check' || true
[ "$(podman logs "$(container_of_any secrets)" 2>&1 | head -n 5 | grep -c ': generated')" -eq 4 ] || fail "onebox: the secrets were not generated"
ok "secrets generated into the onebox project's own volume"
wait_completed secrets 120
wait_healthy redis 300
wait_healthy api 300
wait_ready "onebox /readyz"
ok "/readyz 200 after $ready_after s of polling"
png_check "seed=1" "onebox, bundled mnist-mlp"
