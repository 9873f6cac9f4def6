"""Jobs per hour with one worker and with two, on N equal training jobs, in one run on one machine.

    .venv/bin/python -m benchmarks.multi_host [--jobs 8] [--epochs 3] [--max-samples 4096] [--batch-size 64]
        [--threads 1] [--rounds 1] [--data-root ../shared/data]

Each case is a cluster as benchmarks/cluster.py starts it across hosts: a PostgreSQL database, moto's S3 server
and a redis-server of its own, one API process and one or two workers, each with a private folder and cache (no
shared folder but the read-only data root). Every worker (in both cases) gets the same `--threads` torch threads
(OMP_NUM_THREADS), so that two workers do not oversubscribe the cores; the API's render process gets as many.

Per case: first one 1-epoch warm-up job per worker (submitted together, so each worker takes one: torch's import
and the first job's set-up are not in the figure), then the N jobs, submitted at once through the API. The
figure is N over the makespan, from the first job's `created_at` to the last one's `finished_at` (the records'
own timestamps), in jobs per hour; `--rounds` repeats both cases, alternating their order, and reports the
median. Any job that does not succeed fails the run (exit 1).

Writes benchmarks/results/multi_host.json and the `multi_host` block of benchmarks/README.md.
"""

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.cluster import cluster, wait_until
from benchmarks.common import machine
from experiments.common import update_readme

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "benchmarks" / "README.md"
FINISHED = {"succeeded", "failed", "cancelled"}


@dataclass
class Case:
    workers: int
    jobs: int
    makespan_s: float
    jobs_per_hour: float
    job_s_mean: float  # a job's own time, started → finished, averaged
    per_worker: list[int]  # how many of the N jobs each worker ran


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def run_jobs(client, bodies: list[dict[str, Any]], timeout_s: float) -> list[dict[str, Any]]:
    """Submit every body at once, wait until each job has finished; their records (exit 1 unless all succeed)."""
    ids = []
    for body in bodies:
        r = client.post("/train", json=body)
        if r.status_code != 202:
            sys.exit(f"POST /train answered {r.status_code}: {r.text}")
        ids.append(r.json()["id"])

    def finished() -> list[dict[str, Any]] | None:
        records = [client.get(f"/train/{job_id}").json() for job_id in ids]
        return records if all(r["status"] in FINISHED for r in records) else None

    records = wait_until(finished, timeout_s, f"{len(ids)} jobs", every_s=0.5)
    failed = [f"{r['id']}: {r['status']} ({r['error']})" for r in records if r["status"] != "succeeded"]
    if failed:
        sys.exit("jobs that did not succeed:\n" + "\n".join(failed))
    return records


def measure(args: argparse.Namespace, workers: int, workdir: Path) -> Case:
    job = {
        "dataset": "mnist",
        "epochs": args.epochs,
        "max_samples": args.max_samples,
        "batch_size": args.batch_size,
        "eval_extractor": "none",
    }
    with (
        cluster(workdir, args.data_root, apis=1, workers=workers, threads=args.threads) as c,
        c.client(c.apis[0]) as api,
    ):
        warm = [{**job, "model_name": f"warm-up-{i}", "epochs": 1} for i in range(workers)]
        run_jobs(api, warm, args.timeout)
        records = run_jobs(
            api, [{**job, "model_name": f"bench-{i}", "seed": i} for i in range(args.jobs)], args.timeout
        )
        by_worker = Counter(c.running(r).name for r in records)
    start = min(parse_time(r["created_at"]) for r in records)
    end = max(parse_time(r["finished_at"]) for r in records)
    makespan = (end - start).total_seconds()
    own = [(parse_time(r["finished_at"]) - parse_time(r["started_at"])).total_seconds() for r in records]
    return Case(
        workers=workers,
        jobs=args.jobs,
        makespan_s=round(makespan, 2),
        jobs_per_hour=round(3600 * args.jobs / makespan, 1),
        job_s_mean=round(statistics.mean(own), 2),
        per_worker=sorted(by_worker.values(), reverse=True),
    )


def median_case(cases: list[Case]) -> Case:
    """The round with the median jobs/hour (an actual round, so its columns belong together)."""
    ranked = sorted(cases, key=lambda c: c.jobs_per_hour)
    return ranked[(len(ranked) - 1) // 2]


def readme_block(r: dict[str, Any]) -> str:
    m = r["machine"]
    hw = f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}" + (f", GPU {m['gpu']}" if m["gpu"] else ", no GPU")
    job = r["job"]
    rounds = f"; {r['rounds']} rounds, alternating, the median round shown" if r["rounds"] > 1 else ""
    rows = "\n".join(
        f"| {c['workers']} | {c['jobs']} | {c['makespan_s']:.1f} | {c['jobs_per_hour']:,.0f} | {c['job_s_mean']:.1f} | "
        f"{' + '.join(map(str, c['per_worker']))} |"
        for c in r["cases"]
    )
    return (
        f"`{r['command']}` — {hw}. Each case: its own PostgreSQL database, moto S3 server, redis-server, one API "
        f"and 1 or 2 workers with private folders; every worker with OMP_NUM_THREADS={r['threads']} in both cases. "
        f"{r['jobs']} equal jobs (MNIST, {job['max_samples']} images, {job['epochs']} epochs of batch "
        f"{job['batch_size']}, no evaluation), submitted at once after one warm-up job per worker{rounds}; "
        f"wall {r['wall_s']:.0f} s; load average {r['load_before']:.1f} before, {r['load_after']:.1f} after.\n\n"
        "| workers | jobs | makespan s | jobs/hour | s per job (start → finish) | jobs per worker |\n"
        "|---|---|---|---|---|---|\n"
        f"{rows}\n\n"
        f"Two workers vs one: **{r['ratio']:.2f}×** the jobs per hour"
        + (f" (round by round: {', '.join(f'{x:.2f}×' for x in r['round_ratios'])})" if r["rounds"] > 1 else "")
        + ".\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=8, help="equal jobs per case")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-samples", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every worker (OMP_NUM_THREADS)")
    parser.add_argument("--rounds", type=int, default=1, help="both cases this many times, alternating")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for a case's jobs")
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--no-readme", action="store_true", help="print the results only")
    args = parser.parse_args()
    if not (args.data_root / "mnist").is_dir():
        sys.exit(f"no MNIST under {args.data_root}/mnist (--data-root)")
    start, load_before = time.monotonic(), os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="ganserve-multi-host-"))
    print(f"logs in {workdir} (removed after a run that succeeds)", flush=True)
    measured: dict[int, list[Case]] = {1: [], 2: []}
    for round_ in range(args.rounds):
        for workers in (1, 2) if round_ % 2 == 0 else (2, 1):
            case = measure(args, workers, workdir / f"round{round_}-workers{workers}")
            measured[workers].append(case)
            print(f"round {round_ + 1}: {case}", flush=True)
    one, two = median_case(measured[1]), median_case(measured[2])
    result = {
        "command": shlex.join(["python", "-m", "benchmarks.multi_host", *sys.argv[1:]]),
        "machine": machine(),
        "jobs": args.jobs,
        "job": {"epochs": args.epochs, "max_samples": args.max_samples, "batch_size": args.batch_size},
        "threads": args.threads,
        "rounds": args.rounds,
        "cases": [asdict(one), asdict(two)],
        "all_rounds": {str(k): [asdict(c) for c in v] for k, v in measured.items()},
        "ratio": round(two.jobs_per_hour / one.jobs_per_hour, 3),
        "round_ratios": [round(b.jobs_per_hour / a.jobs_per_hour, 3) for a, b in zip(*measured.values(), strict=True)],
        "wall_s": round(time.monotonic() - start, 1),
        # Anything else running on the machine shares its cores with the cases: the 1-minute load average.
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }
    print(readme_block(result))
    if not args.no_readme:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "multi_host.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        update_readme("multi_host", readme_block(result), README)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
