"""Serving throughput: requests/s and p50/p99 latency of /generate next to a ceiling and a naive handler.

    .venv/bin/python -m benchmarks.serve_load [--duration 10] [--warmup 2] [--clients 1,16,64]
        [--cases ceiling,naive,ganserve | a model name | a case id] [--workers 1] [--repeat 1]
        [--set GANSERVE_NAME=VALUE] [--baseline REV]

Starts the API (`benchmarks/serve_app.py`: the service's own app plus two benchmark-only routes) under
uvicorn on a free port of 127.0.0.1, on a temporary volume, with the rate limit off (every client here is
one IP) and the service's defaults otherwise. Into that volume it publishes `dcgan64`, a 64×64 colour DCGAN
generator built as training builds one (`architecture: dcgan`, `image_size: 64`, 3 channels) and saved
with the project's checkpoint code, with random-initialised weights: enough to measure throughput, not
images anyone wants. Then, for each case and each number of concurrent clients, `wrk` (a C load
generator: Debian package `wrk`) runs a warm-up pass and then `--duration` seconds of load, every request
with a seed never used before in the run. The cases:

- `ceiling` — `GET /_bench/ceiling?seed=`: a PNG of the bundled model's size, made at startup and returned
  as bytes, on the same app, server and middleware: what the framework can answer here at most;
- `naive/<model>` — `GET /_bench/naive?seed=`: the tutorial handler (one latent per request, Pillow PNG,
  no batching), kept in the benchmark, not in the product;
- `ganserve/<model>` — `GET /generate?seed=`, the product;

for `mnist-mlp` (a bundled model, the one the targets were set for) and `dcgan64` (the heavier case). Any
non-2xx answer or socket error (connect, read, write, timeout) fails the run (exit 1).

`--baseline REV` serves the same cases from git revision REV too (a worktree), starting each checkout's API
in turn within every round, and reports both and their ratio: the check that a change costs no speed.

Writes benchmarks/results/serve_load.json and the `serve_load` block of benchmarks/README.md (with `--set` or
`--baseline`, a file and a block of their own, named after them): the command,
the machine, the table, and at 64 clients the ratios ganserve/ceiling and ganserve/naive for each model and
whether the targets are met (bundled model, 64 clients: ≥ 0.70 of the ceiling's requests/s, ≥ 3× the naive
handler's, p99 ≤ 50 ms).
"""

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from benchmarks.common import machine
from benchmarks.soak import Stack, free_port
from core.db import connect
from core.model_versions import ModelVersions
from core.settings import Settings
from core.storage import open_storage
from core.train_config import TrainConfig
from experiments.common import update_readme
from ganserve.cli.processes import UVICORN_LOOP
from training import checkpoint
from training.architectures import build_models
from training.latents import MAX_SEED

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "benchmarks" / "README.md"

BUNDLED = "mnist-mlp"  # the bundled MLP, the model issue 7's targets were set for (named in every request)
DCGAN = "dcgan64"
KINDS = ("ceiling", "naive", "ganserve")
CASES = ("ceiling", f"naive/{BUNDLED}", f"ganserve/{BUNDLED}", f"naive/{DCGAN}", f"ganserve/{DCGAN}")
CLIENTS = (1, 16, 64)
TARGET_CLIENTS = 64
TARGET_OF_CEILING = 0.70
TARGET_OVER_NAIVE = 3.0
TARGET_P99_MS = 50.0

# Seeds: wrk run k (k = 1, 2, … over every case × clients × warm-up/measure) starts at k·RUN_STRIDE, its
# thread i at k·RUN_STRIDE + i·THREAD_STRIDE, so no seed is asked twice in a whole benchmark (nor the seed 1
# of the checks before it): 255 runs fit in the 2³² seeds, each thread with 4 M seeds (35 min at 2,000/s).
THREAD_STRIDE = 2**22
RUN_STRIDE = 2**24
MAX_RUNS = (MAX_SEED + 1) // RUN_STRIDE - 1

WRK_SCRIPT = r"""
-- One wrk run: GET <prefix><seed> with a seed never used before; thread i counts up from base + i * stride.
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  prefix = args[1]
  seed = tonumber(args[2]) + id * tonumber(args[3])
  non2xx = 0
end

function request()
  seed = seed + 1
  return wrk.format("GET", prefix .. string.format("%d", seed))
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do
    bad = bad + t:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format(
    "SERVE_LOAD requests=%d duration_us=%d bytes=%d non2xx=%d connect=%d read=%d write=%d timeout=%d " ..
    "p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f\n",
    summary.requests, summary.duration, summary.bytes, bad, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""
WRK_LINE = re.compile(r"^SERVE_LOAD (.*)$", re.MULTILINE)


@dataclass
class Measure:
    case: str
    clients: int
    threads: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non2xx: int
    socket_errors: int
    warmup_errors: int

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket_errors + self.warmup_errors


# --- the load generator -------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    exe = shutil.which("wrk")
    if exe:
        return exe
    if os.geteuid() != 0:
        sys.exit("wrk is not installed: `sudo apt-get install -y wrk` (Debian/Ubuntu), then run again")
    print("wrk is not installed; installing it (apt-get install -y wrk)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"], check=True, env=env)
    return shutil.which("wrk") or sys.exit("apt-get installed wrk, but it is not on PATH")


def run_wrk(
    wrk: str, script: Path, base_url: str, prefix: str, clients: int, seconds: int, first_seed: int
) -> dict[str, float]:
    threads = min(clients, 2)
    cmd = [wrk, "-t", str(threads), "-c", str(clients), "-d", f"{seconds}s", "--timeout", "30s", "-s", str(script),
           base_url, "--", prefix, str(first_seed), str(THREAD_STRIDE)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    match = WRK_LINE.search(proc.stdout)
    if proc.returncode != 0 or match is None:
        sys.exit(f"wrk failed (exit {proc.returncode}): {shlex.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return {k: float(v) for k, v in (kv.split("=") for kv in match.group(1).split())}


def prefix_of(case: str) -> str:
    kind, _, model = case.partition("/")
    query = f"model={model}&" if model else ""  # named even when it is the default: the default may change
    path = {"ceiling": "/_bench/ceiling", "naive": "/_bench/naive", "ganserve": "/generate"}[kind]
    return f"{path}?{query}seed="


def measure(
    wrk: str, script: Path, base_url: str, case: str, clients: int, args: argparse.Namespace, run: int
) -> Measure:
    prefix = prefix_of(case)
    warm_errors = 0
    if args.warmup > 0:
        warm = run_wrk(wrk, script, base_url, prefix, clients, args.warmup, (2 * run + 1) * RUN_STRIDE)
        warm_errors = int(warm["non2xx"] + warm["connect"] + warm["read"] + warm["write"] + warm["timeout"])
    r = run_wrk(wrk, script, base_url, prefix, clients, args.duration, (2 * run + 2) * RUN_STRIDE)
    seconds = r["duration_us"] / 1e6
    return Measure(
        case=case,
        clients=clients,
        threads=min(clients, 2),
        requests=int(r["requests"]),
        seconds=round(seconds, 2),
        rps=round(r["requests"] / seconds, 1),
        p50_ms=round(r["p50_us"] / 1000, 2),
        p90_ms=round(r["p90_us"] / 1000, 2),
        p99_ms=round(r["p99_us"] / 1000, 2),
        max_ms=round(r["max_us"] / 1000, 2),
        non2xx=int(r["non2xx"]),
        socket_errors=int(r["connect"] + r["read"] + r["write"] + r["timeout"]),
        warmup_errors=warm_errors,
    )


# --- the service under test ---------------------------------------------------------------------------------


def publish_dcgan(volume: Path, scratch: Path) -> int:
    """Publish a random-initialised 64×64 RGB DCGAN as model `dcgan64` on `volume`, the way a finished training
    job is: a training checkpoint written with `checkpoint.save` (the loop's metadata fields), then
    `checkpoint.publish` into the volume's storage and database. It is also laid out as `models/dcgan64/1/`, the
    folder a baseline from before the database reads (this tree imports nothing from it: version 1 exists).
    Returns its version."""
    config = TrainConfig(model_name=DCGAN, dataset="cifar10", architecture="dcgan", image_size=64)
    shape = (3, 64, 64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        g, d = build_models(config, shape, None)
    meta = {
        "generator": dict(g.spec),
        "discriminator": dict(d.spec),
        "architecture": config.architecture,
        "kind": "image",
        "sample_shape": list(shape),
        "num_classes": None,
        "conditional": False,
        "loss": config.loss,
        "served_weights": "raw",
        "latent_dim": config.latent_dim,
        "dataset": config.dataset,
        "epoch": 0,
        "step": 0,
        "losses": {},
        "train_config": config.model_dump(mode="json"),
        "model_name": config.model_name,
        "image_shape": list(shape),
        "value_range": [-1, 1],
        "note": "random-initialised weights, published by benchmarks/serve_load.py for throughput only",
    }
    stem = scratch / "dcgan64-final"
    checkpoint.save(stem, {**checkpoint.prefixed(g, "generator"), **checkpoint.prefixed(d, "discriminator")}, meta)
    settings = Settings(_env_file=None, checkpoint_dir=volume)
    storage = open_storage(settings.effective_storage_url)
    version = checkpoint.publish(storage, ModelVersions(connect(settings.effective_database_url)), DCGAN, stem)
    checkpoint.write_model(stem, checkpoint.model_stem(volume / "models", DCGAN, version))
    return version


def start_api(workdir: Path, workers: int, overrides: dict[str, str] | None = None, tree: Path = ROOT) -> Stack:
    """The API of the checkout at `tree` (this one, or a baseline's: its own code first on the path)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANSERVE_")}
    env.update(
        PYTHONUNBUFFERED="1",
        GANSERVE_CHECKPOINT_DIR=str(workdir / "volume"),
        GANSERVE_LOG_LEVEL="warning",
        GANSERVE_RATE_LIMIT_PER_MIN="0",
    )
    if tree != ROOT:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    env.update(overrides or {})
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "benchmarks.serve_app:create_bench_app",
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
           "--workers", str(workers), "--loop", UVICORN_LOOP]  # fmt: skip
    log = (workdir / "api.log").open("ab")
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stack = Stack(f"http://127.0.0.1:{port}", "", {"api": proc}, workdir)
    # No /readyz: it also wants the broker, which serving does not need. The default model is loaded (and the
    # ceiling's PNG made) before the server answers anything.
    if stack.answers("/healthz", 120):
        return stack
    stack.stop()
    sys.exit(f"the API did not start in 120 s; log: {workdir / 'api.log'}\n{(workdir / 'api.log').read_text()[-3000:]}")


def _image(r: httpx.Response, what: str) -> np.ndarray:
    if r.status_code != 200 or r.headers.get("content-type") != "image/png":
        sys.exit(f"{what}: {r.status_code} {r.headers.get('content-type')} {r.text[:300]}")
    with Image.open(BytesIO(r.content)) as im:
        return np.asarray(im.convert("RGB" if im.mode == "RGB" else "L")).astype(np.int16)


def check_service(base_url: str, models: list[str]) -> dict[str, list[int]]:
    """Before measuring: every model is listed and /generate, the naive route and the ceiling answer PNGs of
    the model's size (the naive one with the same pixels, ±1, as /generate for the same seed). Returns the
    answered image shape (H, W[, C]) per model."""
    shapes: dict[str, list[int]] = {}
    with httpx.Client(base_url=base_url, timeout=60) as client:
        listed = {m["name"] for m in client.get("/models").json()["models"]}
        for model in models:
            if model not in listed:
                sys.exit(f"GET /models does not list {model}: {sorted(listed)}")
            q = {"seed": 1, "model": model}
            product = _image(client.get("/generate", params=q), f"GET /generate?model={model}&seed=1")
            naive = _image(client.get("/_bench/naive", params=q), f"GET /_bench/naive?model={model}&seed=1")
            ceiling = _image(client.get("/_bench/ceiling", params=q), f"GET /_bench/ceiling?model={model}")
            if product.shape != naive.shape or product.shape != ceiling.shape:
                sys.exit(f"{model}: /generate {product.shape}, naive {naive.shape}, ceiling {ceiling.shape} differ")
            if int(np.abs(product - naive).max()) > 1:
                sys.exit(f"{model}: the naive handler's image of seed 1 differs from /generate's")
            shapes[model] = list(product.shape)
    if DCGAN in shapes and shapes[DCGAN] != [64, 64, 3]:
        sys.exit(f"{DCGAN}: /generate answered a {shapes[DCGAN]} image, not 64×64 RGB")
    return shapes


# --- report ---------------------------------------------------------------------------------------------------


def ratios(measures: list[Measure], clients: list[int]) -> dict[str, Any]:
    at = TARGET_CLIENTS if TARGET_CLIENTS in clients else max(clients)
    by = {m.case: m for m in measures if m.clients == at}
    out: dict[str, Any] = {"clients": at, "models": {}}
    for model in (BUNDLED, DCGAN):
        ours, naive, ceiling = by.get(f"ganserve/{model}"), by.get(f"naive/{model}"), by.get("ceiling")
        if ours is None:
            continue
        entry: dict[str, Any] = {
            "of_ceiling": round(ours.rps / ceiling.rps, 3) if ceiling and ceiling.rps else None,
            "over_naive": round(ours.rps / naive.rps, 2) if naive and naive.rps else None,
            "p99_ms": ours.p99_ms,
        }
        if model == BUNDLED:  # the targets are for the bundled model
            of, over = entry["of_ceiling"], entry["over_naive"]
            entry["targets"] = {
                f"≥ {TARGET_OF_CEILING:.2f} of ceiling": None if of is None else of >= TARGET_OF_CEILING,
                f"≥ {TARGET_OVER_NAIVE:g}× naive": None if over is None else over >= TARGET_OVER_NAIVE,
                f"p99 ≤ {TARGET_P99_MS:g} ms": ours.p99_ms <= TARGET_P99_MS,
            }
            if at != TARGET_CLIENTS:
                entry["targets_note"] = f"the targets are for {TARGET_CLIENTS} clients; this run stopped at {at}"
        out["models"][model] = entry
    return out


def medians(rounds: list[Measure]) -> list[Measure]:
    """One row per case and clients: the median of its rounds' requests/s and latencies, their errors summed."""
    groups: dict[tuple[str, int], list[Measure]] = {}
    for m in rounds:
        groups.setdefault((m.case, m.clients), []).append(m)
    out = []
    for ms in groups.values():
        first = ms[0]
        mid = {k: round(float(np.median([getattr(m, k) for m in ms])), 2) for k in MEDIAN_FIELDS}
        summed = {k: sum(getattr(m, k) for m in ms) for k in ("requests", "non2xx", "socket_errors", "warmup_errors")}
        out.append(replace(first, **mid, **summed, seconds=round(sum(m.seconds for m in ms), 2)))
    return out


MEDIAN_FIELDS = ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms")


def table(measures: list[Measure]) -> str:
    lines = ["| case | clients | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {m.case} | {m.clients} | {m.rps:.1f} | {m.p50_ms:.1f} | {m.p99_ms:.1f} | {m.errors} |" for m in measures
    ]
    return "\n".join(lines)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**not met**")


def readme_block(r: dict[str, Any]) -> str:
    m = r["machine"]
    hw = f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}" + (f", GPU {m['gpu']}" if m["gpu"] else ", no GPU")
    rat = r["ratios"]
    rows = []
    for model, e in rat["models"].items():
        of = "—" if e["of_ceiling"] is None else f"{e['of_ceiling']:.2f}"
        over = "—" if e["over_naive"] is None else f"{e['over_naive']:.2f}×"
        verdicts = "; ".join(f"{k}: {_verdict(v)}" for k, v in e["targets"].items()) if "targets" in e else "no target"
        rows.append(f"| {model} | {of} | {over} | {e['p99_ms']:.1f} | {verdicts} |")
    notes = [e["targets_note"] for e in rat["models"].values() if "targets_note" in e]
    rounds = f", in {r['repeat']} rounds (medians shown)" if r.get("repeat", 1) > 1 else ""
    changed = "".join(f", `{k}={v}`" for k, v in sorted(r.get("settings", {}).items()))
    return (
        f"`{r['command']}` — uvicorn with {r['workers']} worker(s) on 127.0.0.1, the service's defaults (rate limit "
        f"off{changed}); `wrk` on the same machine ({hw}), threads = min(clients, 2), a distinct seed per request, "
        f"{r['warmup_s']} s warm-up then {r['duration_s']} s per row{rounds}; wall {r['wall_s']:.0f} s. `{DCGAN}` is a "
        f"64×64 RGB DCGAN generator with random-initialised weights (throughput only); `{BUNDLED}` is the bundled "
        f"model. One image per request, so req/s is images/s.\n\n"
        f"{table([Measure(**x) for x in r['measures']])}\n\n"
        f"At {rat['clients']} clients:\n\n"
        f"| model | ganserve / ceiling | ganserve / naive | ganserve p99 ms | targets |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + ("\n\n" + " ".join(notes) if notes else "")
        + "\n"
    )


def short_hash(rev: str) -> str:
    """`rev`'s abbreviated commit hash in this repository ("" when it names none)."""
    git = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True, check=False)
    return git.stdout.strip()


def checkout(rev: str, into: Path) -> Path:
    """A worktree of revision `rev` of this repository at `into`."""
    if not short_hash(rev):
        sys.exit(f"--baseline {rev}: not a revision of this repository")
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(into), rev], cwd=ROOT, check=True)
    if not (into / "benchmarks" / "serve_app.py").is_file():
        sys.exit(f"--baseline {rev}: that revision has no benchmarks/serve_app.py to serve")
    return into


def comparison_block(r: dict[str, Any]) -> str:
    """The medians of this checkout beside the baseline's, case by case, with their ratio."""
    base = {(m["case"], m["clients"]): m for m in r["baseline"]["measures"]}
    rows = ["| case | clients | baseline req/s | this req/s | this / baseline | baseline p99 ms | this p99 ms |"]
    rows.append("|---|---|---|---|---|---|---|")
    for m in r["measures"]:
        b = base[(m["case"], m["clients"])]
        ratio = f"{m['rps'] / b['rps']:.3f}" if b["rps"] else "—"
        rows.append(
            f"| {m['case']} | {m['clients']} | {b['rps']:.1f} | {m['rps']:.1f} | {ratio} | {b['p99_ms']:.1f} | "
            f"{m['p99_ms']:.1f} |"
        )
    m = r["machine"]
    return (
        f"`{r['command']}` — this checkout ({r['head']}) against `{r['baseline']['rev']}` "
        f"({r['baseline']['head']}), each started in turn on the same volume, {r['repeat']} alternating round(s), "
        f"medians; {m['cpu']}, {m['cores']} cores; {r['warmup_s']} s warm-up then {r['duration_s']} s per row; "
        f"wall {r['wall_s']:.0f} s.\n\n" + "\n".join(rows) + "\n"
    )


def select_cases(spec: str) -> list[str]:
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in {*CASES, *KINDS, BUNDLED, DCGAN}]
    if unknown:
        sys.exit(f"unknown case(s) {unknown}: give case ids {', '.join(CASES)}, kinds or model names")
    return [c for c in CASES if any(w in (c, c.partition("/")[0], c.partition("/")[2]) for w in wanted)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds of measured load per case and clients")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load before each (0: none)")
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)), help="concurrent connections, e.g. 1,16")
    parser.add_argument("--cases", default=",".join(CASES), help="case ids, kinds (naive) or models (dcgan64)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over every case; the table shows medians")
    parser.add_argument(
        "--set", action="append", default=[], metavar="GANSERVE_NAME=VALUE", help="a setting of the API (repeatable)"
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also serve the same cases from git revision REV (a worktree), in alternating rounds, and compare",
    )
    parser.add_argument("--no-readme", action="store_true", help="print the results only")
    args = parser.parse_args()
    if args.duration < 1 or args.warmup < 0 or args.workers < 1 or args.repeat < 1:
        parser.error("--duration ≥ 1, --warmup ≥ 0, --workers ≥ 1 and --repeat ≥ 1 (whole seconds)")
    overrides = dict(item.partition("=")[::2] for item in args.set)
    if any(not name.startswith("GANSERVE_") or not value for name, value in overrides.items()):
        parser.error("--set GANSERVE_NAME=VALUE, e.g. --set GANSERVE_RENDER_THREADS=2")
    clients = sorted({int(c) for c in args.clients.split(",") if c.strip()})
    if not clients or min(clients) < 1:
        parser.error("--clients: positive integers, e.g. 1,16,64")
    cases = select_cases(args.cases)
    models = sorted({c.partition("/")[2] or BUNDLED for c in cases})
    trees = 2 if args.baseline else 1
    if 2 * len(cases) * len(clients) * args.repeat * trees > MAX_RUNS:
        parser.error(f"{len(cases)} cases × {len(clients)} client counts: too many runs for distinct seeds")
    wrk = ensure_wrk()

    start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="ganserve-serve-load-"))
    script = workdir / "seeds.lua"
    script.write_text(WRK_SCRIPT)
    if DCGAN in models:
        publish_dcgan(workdir / "volume", workdir)
    sources = [("this", ROOT)]
    if args.baseline:
        sources.insert(0, ("baseline", checkout(args.baseline, workdir / "baseline")))
    measured: dict[str, list[Measure]] = {name: [] for name, _ in sources}
    run = 0
    try:
        # Rounds: every case once per round (and each source in turn), so that a drift of the machine's speed
        # (one's ceiling moved between 1,500 and 2,050 requests/s from one run to the next) reaches all alike.
        for _ in range(args.repeat):
            for name, tree in sources:
                stack = start_api(workdir, args.workers, overrides, tree)
                try:
                    shapes = check_service(stack.base_url, models)
                    for case in cases:
                        for c in clients:
                            m = measure(wrk, script, stack.base_url, case, c, args, run)
                            run += 1
                            measured[name].append(m)
                            print(f"{name:8} {m.case:20} {m.clients:3} clients  {m.rps:8.1f} req/s  "
                                  f"p50 {m.p50_ms:7.1f} ms  p99 {m.p99_ms:7.1f} ms  errors {m.errors}",
                                  flush=True)  # fmt: skip
                finally:
                    stack.stop()
    finally:
        if args.baseline:
            subprocess.run(["git", "worktree", "remove", "--force", str(workdir / "baseline")], cwd=ROOT, check=False)
    measures = measured["this"]
    rounds = measures
    measures = medians(rounds)
    result = {
        "command": shlex.join(["python", "-m", "benchmarks.serve_load", *sys.argv[1:]]),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "workers": args.workers,
        "settings": overrides,
        "clients": clients,
        "machine": machine(),
        "image_shapes": shapes,
        "repeat": args.repeat,
        "measures": [asdict(m) for m in measures],
        "rounds": [asdict(m) for m in rounds],
        "ratios": ratios(measures, clients),
        "wall_s": round(time.monotonic() - start, 1),
    }
    if args.baseline:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        base_head = subprocess.run(
            ["git", "rev-parse", "--short", args.baseline], cwd=ROOT, capture_output=True, text=True
        )
        result["head"] = head.stdout.strip()
        result["baseline"] = {
            "rev": args.baseline,
            "head": base_head.stdout.strip(),
            "measures": [asdict(m) for m in medians(measured["baseline"])],
            "rounds": [asdict(m) for m in measured["baseline"]],
        }
    print()
    print(comparison_block(result) if args.baseline else table(measures))
    print(json.dumps(result["ratios"], indent=2, ensure_ascii=False))
    if not args.no_readme:
        RESULTS.mkdir(parents=True, exist_ok=True)
        # A run with other settings, or against a baseline, has a block (and a results file) of its own.
        suffix = "".join(f"-{k.removeprefix('GANSERVE_').lower()}={v}" for k, v in sorted(overrides.items()))
        suffix += f"-vs-{args.baseline}" if args.baseline else ""
        (RESULTS / f"serve_load{suffix}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        block = comparison_block(result) if args.baseline else readme_block(result)
        update_readme(f"serve_load{suffix}", block, README)
    errors = sum(m.errors for bucket in measured.values() for m in bucket)
    if errors:
        print(f"FAILED: {errors} non-2xx answers or socket errors; log in {workdir / 'api.log'}")
        sys.exit(1)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
