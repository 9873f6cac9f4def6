"""Soak: many concurrent clients mixing /generate and /train against a local stack for a few minutes.

    .venv/bin/python -m benchmarks.soak [--duration 180] [--clients 16] [--data-root ../shared/data]

Starts its own redis-server on a free port, one Celery worker (solo, as in production) and the API under
uvicorn, on a temporary volume, with an admin key and the rate limit off (every client here is one IP; the
limiter has tests of its own). Then `--clients` asyncio clients loop until `--duration` is up, each request
drawn at random: GET /generate (1–4 images), POST /generate, GET /train/{id} of a job it submitted, and
now and then POST /train of a small MNIST job (at most one submission every `--train-every` seconds over
all clients: one CPU worker can only run so many). When the time is up it waits for every submitted job to
finish, and reports:

- errors: 5xx answers, transport errors and timeouts (4xx are counted apart: none is expected);
- lost jobs: submitted (202) but not listed by GET /train, or not finished when the wait ends;
- memory: the API's and the worker's resident set size (from /proc), after warm-up and at the end;
- latency percentiles and throughput of /generate.

Writes benchmarks/results/soak.json and the `soak` block of benchmarks/README.md. Exit code 1 when any
error or lost job was seen, or the API's memory grew by more than 20 % after warm-up.
"""

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from experiments.common import update_readme

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "benchmarks" / "README.md"
FINISHED = {"succeeded", "failed", "cancelled"}
JOB = {"dataset": "mnist", "epochs": 1, "max_samples": 512, "batch_size": 64, "eval_samples": 256}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident set size of a process and its children, in MiB (Linux /proc)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            text = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
        total += int(match.group(1)) if match else 0
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(k) for k in kids] + [g for k in kids for g in _children(int(k))]


@dataclass
class Stack:
    base_url: str
    key: str
    procs: dict[str, subprocess.Popen[bytes]]
    workdir: Path

    def answers(self, path: str, timeout_s: float) -> bool:
        """Poll `path` until it answers 200 (True), a process of the stack exits, or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(proc.poll() is not None for proc in self.procs.values()):
                return False
            try:
                if httpx.get(f"{self.base_url}{path}", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        for proc in reversed(self.procs.values()):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def start_stack(data_root: Path, workdir: Path) -> Stack:
    redis_exe = shutil.which("redis-server")
    if redis_exe is None:
        sys.exit("redis-server is not installed (`make test-tools` installs it)")
    key = "gsk_" + secrets.token_urlsafe(32)
    redis_port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANSERVE_")}
    env.update(
        PYTHONUNBUFFERED="1",
        GANSERVE_CHECKPOINT_DIR=str(workdir / "volume"),
        GANSERVE_DATA_ROOT=str(data_root.resolve()),
        GANSERVE_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        GANSERVE_DEVICE="cpu",
        GANSERVE_LOG_LEVEL="warning",
        GANSERVE_API_KEYS=json.dumps(
            [{"name": "soak", "sha256": hashlib.sha256(key.encode()).hexdigest(), "scopes": ["admin"]}]
        ),
        GANSERVE_RATE_LIMIT_PER_MIN="0",
        GANSERVE_MAX_QUEUED_PER_KEY="1000",
    )

    def start(name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = (workdir / f"{name}.log").open("ab")
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    procs = {
        "redis": start(
            "redis",
            [redis_exe, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        )
    }
    time.sleep(0.5)
    ganserve = [sys.executable, "-m", "ganserve"]
    procs["worker"] = start("worker", [*ganserve, "worker", "--name", "soak@%h", "--log-level", "warning"])
    procs["api"] = start(
        "api",
        [*ganserve, "api", "--host", "127.0.0.1", "--port", str(api_port), "--log-level", "warning",
         "--no-access-log"],
    )  # fmt: skip
    stack = Stack(f"http://127.0.0.1:{api_port}", key, procs, workdir)
    if stack.answers("/readyz", 90):
        return stack
    stack.stop()
    sys.exit(f"the stack did not become ready in 90 s; logs in {workdir}")


@dataclass
class Tally:
    codes: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    generate_ms: list[float] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    last_submit: float = 0.0

    def count(self, what: str, status: int) -> None:
        k = f"{what} {status}"
        self.codes[k] = self.codes.get(k, 0) + 1


async def client_loop(client: httpx.AsyncClient, deadline: float, tally: Tally, train_every: float, rng: random.Random):
    while time.monotonic() < deadline:
        roll = rng.random()
        try:
            if roll < 0.05 and time.monotonic() - tally.last_submit >= train_every:
                tally.last_submit = time.monotonic()
                r = await client.post("/train", json={"model_name": f"soak-{rng.randrange(4)}", **JOB})
                tally.count("POST /train", r.status_code)
                if r.status_code == 202:
                    tally.jobs.append(r.json()["id"])
            elif roll < 0.10 and tally.jobs:
                r = await client.get(f"/train/{rng.choice(tally.jobs)}")
                tally.count("GET /train/{id}", r.status_code)
            elif roll < 0.20:
                t0 = time.perf_counter()
                r = await client.post("/generate", json={"seed": rng.randrange(2**32), "count": rng.randint(1, 4)})
                tally.generate_ms.append(1000 * (time.perf_counter() - t0))
                tally.count("POST /generate", r.status_code)
            else:
                t0 = time.perf_counter()
                r = await client.get("/generate", params={"seed": rng.randrange(2**32), "count": rng.randint(1, 4)})
                tally.generate_ms.append(1000 * (time.perf_counter() - t0))
                tally.count("GET /generate", r.status_code)
            if r.status_code >= 500:
                tally.errors.append(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:200]}")
        except httpx.HTTPError as e:
            tally.errors.append(f"{type(e).__name__}: {e}")


async def run_load(stack: Stack, clients: int, duration: float, train_every: float, sample: list) -> Tally:
    tally = Tally()
    headers = {"Authorization": f"Bearer {stack.key}"}
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=stack.base_url, headers=headers, timeout=30, limits=limits) as client:
        deadline = time.monotonic() + duration

        async def sampler() -> None:
            while time.monotonic() < deadline:
                sample.append((time.monotonic(), rss_mb(stack.procs["api"].pid), rss_mb(stack.procs["worker"].pid)))
                await asyncio.sleep(5)

        rngs = [random.Random(i) for i in range(clients)]
        await asyncio.gather(sampler(), *(client_loop(client, deadline, tally, train_every, r) for r in rngs))
    return tally


def wait_for_jobs(stack: Stack, ids: list[str], timeout_s: float) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {stack.key}"}
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=stack.base_url, headers=headers, timeout=30) as client:
        while True:
            listed = {j["id"]: j["status"] for j in client.get("/train").json()["jobs"]}
            statuses = {i: listed.get(i, "missing") for i in ids}
            if all(s in FINISHED for s in statuses.values()) or time.monotonic() > deadline:
                return statuses
            time.sleep(2)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) >= 2 else float("nan")


def report(args: argparse.Namespace, tally: Tally, statuses: dict[str, str], sample: list, wall: float) -> dict:
    warm = [s for s in sample if s[0] - sample[0][0] >= min(30, args.duration / 3)] or sample
    api_start, api_end = warm[0][1], sample[-1][1]
    lost = sorted(i for i, s in statuses.items() if s not in FINISHED)
    n_generate = len(tally.generate_ms)
    return {
        "command": f"python -m benchmarks.soak --duration {args.duration:g} --clients {args.clients}",
        "duration_s": args.duration,
        "clients": args.clients,
        "requests": sum(tally.codes.values()),
        "codes": dict(sorted(tally.codes.items())),
        "errors": len(tally.errors),
        "error_examples": tally.errors[:5],
        "four_xx": sum(n for k, n in tally.codes.items() if k.rsplit(" ", 1)[1].startswith("4")),
        "jobs_submitted": len(tally.jobs),
        "jobs_by_status": {s: list(statuses.values()).count(s) for s in sorted(set(statuses.values()))},
        "jobs_lost": lost,
        "generate_per_s": n_generate / args.duration,
        "generate_ms_p50": percentile(tally.generate_ms, 50),
        "generate_ms_p99": percentile(tally.generate_ms, 99),
        "api_rss_mb_after_warmup": round(api_start, 1),
        "api_rss_mb_end": round(api_end, 1),
        "api_rss_mb_peak": round(max(s[1] for s in sample), 1),
        "api_rss_growth": round(api_end / api_start - 1, 4) if api_start else None,
        "worker_rss_mb_end": round(sample[-1][2], 1),
        "worker_rss_mb_peak": round(max(s[2] for s in sample), 1),
        "wall_s": round(wall, 1),
        "cpu": f"{os.cpu_count()} cores",
    }


def readme_block(r: dict) -> str:
    codes = ", ".join(f"{k}: {n}" for k, n in r["codes"].items())
    return (
        f"`{r['command']}` — {r['clients']} concurrent clients for {r['duration_s']:g} s against a local stack "
        f"(own redis-server, one solo Celery worker on the CPU, uvicorn; {r['cpu']}), then a wait for every "
        f"job to finish; wall {r['wall_s']:g} s.\n\n"
        f"| requests | 5xx / transport errors | 4xx | jobs submitted | jobs lost | /generate per s | "
        f"p50 / p99 ms | API RSS after warm-up → end (peak) | worker RSS end (peak) |\n"
        f"|---|---|---|---|---|---|---|---|---|\n"
        f"| {r['requests']} | {r['errors']} | {r['four_xx']} | {r['jobs_submitted']} "
        f"({', '.join(f'{k} {v}' for k, v in r['jobs_by_status'].items())}) | {len(r['jobs_lost'])} | "
        f"{r['generate_per_s']:.1f} | {r['generate_ms_p50']:.0f} / {r['generate_ms_p99']:.0f} | "
        f"{r['api_rss_mb_after_warmup']:.0f} → {r['api_rss_mb_end']:.0f} MiB ({r['api_rss_mb_peak']:.0f}) | "
        f"{r['worker_rss_mb_end']:.0f} MiB ({r['worker_rss_mb_peak']:.0f}) |\n\n"
        f"Answers by route: {codes}.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=180, help="seconds of load")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--train-every", type=float, default=10, help="seconds between training submissions")
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--no-readme", action="store_true", help="print the results only")
    args = parser.parse_args()
    start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="ganserve-soak-"))
    stack = start_stack(args.data_root, workdir)
    sample: list = []
    try:
        tally = asyncio.run(run_load(stack, args.clients, args.duration, args.train_every, sample))
        statuses = wait_for_jobs(stack, tally.jobs, timeout_s=600)
        sample.append((time.monotonic(), rss_mb(stack.procs["api"].pid), rss_mb(stack.procs["worker"].pid)))
    finally:
        stack.stop()
    result = report(args, tally, statuses, sample, time.monotonic() - start)
    print(json.dumps(result, indent=2))
    if not args.no_readme:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
        update_readme("soak", readme_block(result), README)
    grew = (result["api_rss_growth"] or 0) > 0.20
    if result["errors"] or result["jobs_lost"] or grew:
        print(f"FAILED: {result['errors']} errors, {len(result['jobs_lost'])} lost jobs, API RSS growth "
              f"{result['api_rss_growth']}; logs in {workdir}")  # fmt: skip
        sys.exit(1)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
