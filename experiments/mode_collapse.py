"""Mode collapse on the 8-Gaussian ring and the 25-Gaussian grid, scored with PacGAN's metrics.

    .venv/bin/python -m experiments.mode_collapse [--seeds 3] [--steps 1000] [--only NAME[,NAME]] [--workers 2]

Every (dataset, config, seed) is one run of the project's training loop; 2,500 samples (latent seeds
0..2499) of the final G are scored with training/metrics.py; the table shows mean ± standard error over
training seeds, beside the published numbers. Writes experiments/results/mode_collapse.md, one scatter
PNG per (dataset, config) under experiments/results/mode_collapse/, and the README's summary block.
"""

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from experiments import common
from training import toy
from training.config import TrainConfig
from training.metrics import mode_metrics

DATASETS = ("ring-2d", "grid-2d")
N_SAMPLES = 2500
SCATTER_DIR = common.RESULTS / "mode_collapse"

# Config name → TrainConfig fields beyond dataset/steps/seed. Each objective keeps its paper's optimiser
# defaults (training/config.py). "best" is a slot for a tuned recipe; empty until someone tunes one.
CONFIGS: dict[str, dict[str, Any]] = {
    "non-saturating": {"loss": "non-saturating"},
    "minimax": {"loss": "minimax"},
    "wasserstein": {"loss": "wasserstein"},
    "wgan-gp": {"loss": "wgan-gp"},
    "unrolled-5": {"loss": "non-saturating", "unrolled_steps": 5},
    "mad-gan": {"loss": "non-saturating", "architecture": "mad-gan"},
    "instance-noise": {"loss": "non-saturating", "regularizers": [{"name": "instance-noise", "sigma": 0.1}]},
    "r1": {"loss": "non-saturating", "regularizers": [{"name": "r1", "gamma": 1.0}]},
    "hinge+sn": {"loss": "hinge", "regularizers": [{"name": "spectral-norm"}]},
    "best": {},
}

# (method, ring modes, ring HQ %, ring KL, grid modes, grid HQ %, grid KL); None where not reported.
PUBLISHED = [
    ("GAN (PacGAN Table 1)", 6.3, 98.2, 0.45, 17.3, 94.8, 0.70),
    ("PacGAN4 (PacGAN Table 1)", 7.8, 95.9, 0.07, 24.8, 93.6, 0.04),
    ("VEEGAN (VEEGAN Table 1)", 8.0, 52.9, None, 24.6, 40.0, None),
    ("Unrolled GAN (VEEGAN Table 1)", 7.6, 35.6, None, 23.6, 16.0, None),
]


@dataclass(frozen=True)
class Job:
    dataset: str
    config_name: str
    seed: int
    steps: int


@dataclass(frozen=True)
class Outcome:
    job: Job
    modes: int
    hq: float
    kl: float
    seconds: float
    samples: list[list[float]] | None  # kept for seed 0 only, for the scatter


def run_job(job: Job) -> Outcome:
    common.single_thread()
    config = TrainConfig(
        model_name=f"{job.dataset}-{job.config_name}-{job.seed}".replace("+", "-"),
        dataset=job.dataset,
        steps=job.steps,
        seed=job.seed,
        **CONFIGS[job.config_name],
    )
    start = time.monotonic()
    trained = common.train_and_load(config)
    samples = common.generate(trained, list(range(N_SAMPLES)))
    m = mode_metrics(samples, job.dataset)
    kept = samples.tolist() if job.seed == 0 else None
    return Outcome(job, m.modes_captured, m.high_quality_fraction, m.reverse_kl, time.monotonic() - start, kept)


def run_all(jobs: list[Job], workers: int) -> list[Outcome]:
    if workers <= 1:
        return [run_job(j) for j in jobs]
    # spawn, not fork: a forked child inherits the parent's OpenMP state, which can hang torch.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        return list(pool.map(run_job, jobs))


def _cell(values: list[float], fmt: str) -> str:
    mean, se = common.mean_and_se(values)
    return f"{mean:{fmt}} ± {se:{fmt}}" if se == se else f"{mean:{fmt}}"  # se is NaN with one seed


def _row(outcomes: list[Outcome], dataset: str, name: str) -> list[str]:
    mine = [o for o in outcomes if o.job.dataset == dataset and o.job.config_name == name]
    if not mine:
        return ["–", "–", "–"]
    return [
        _cell([o.modes for o in mine], ".1f"),
        _cell([100 * o.hq for o in mine], ".1f"),
        _cell([o.kl for o in mine], ".2f"),
    ]


def _published_rows() -> list[str]:
    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:g}"

    return [f"| {row[0]} | " + " | ".join(fmt(v) for v in row[1:]) + " |" for row in PUBLISHED]


def table(outcomes: list[Outcome], names: list[str]) -> str:
    head = "| method | ring modes (/8) | ring HQ % | ring KL | grid modes (/25) | grid HQ % | grid KL |"
    lines = [head, "|" + "---|" * 7]
    for name in names:
        cells = _row(outcomes, "ring-2d", name) + _row(outcomes, "grid-2d", name)
        lines.append(f"| ours: {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines + _published_rows())


def scatter(outcome: Outcome) -> Path:
    dist = toy.TOY[outcome.job.dataset]
    path = SCATTER_DIR / f"{outcome.job.dataset}-{outcome.job.config_name.replace('+', '-')}.png"
    pts = torch.tensor(outcome.samples)
    with common.figure(path, figsize=(4, 4)) as fig:
        ax = fig.add_subplot()
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.4, color="tab:orange", label="generated (seed 0)")
        ax.scatter(dist.means[:, 0], dist.means[:, 1], s=30, marker="x", color="black", label="mode means")
        lim = float(dist.means.abs().max()) * 1.5
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(f"{outcome.job.dataset}: {outcome.job.config_name}")
        ax.legend(loc="upper right", fontsize=7)
    return path


def summary(outcomes: list[Outcome], names: list[str], args: argparse.Namespace, wall: float) -> str:
    cpu = sum(o.seconds for o in outcomes)
    return (
        f"`python -m experiments.mode_collapse --seeds {args.seeds} --steps {args.steps}"
        f"{' --only ' + args.only if args.only else ''}` — {args.steps} G steps, batch 128, "
        f"{args.seeds} training seed(s) per cell, {N_SAMPLES} samples each; mean ± standard error over seeds. "
        f"Wall time {wall:.0f} s ({cpu:.0f} s of single-thread training, {args.workers} worker(s)).\n\n"
        f"Metrics (PacGAN): a sample is high quality (HQ) within 3σ of its nearest mean; a mode is captured "
        f"when it is the nearest mean of ≥ 1 HQ sample; KL is KL(q‖uniform) of all samples' nearest-mode "
        f"histogram. The published rows train far longer (and PacGAN's G/D are larger): compare trends, "
        f"not digits, unless `--steps` matches.\n\n"
        f"{table(outcomes, names)}\n"
    )


def report(body: str) -> str:
    images = "\n".join(f"![{p.stem}](mode_collapse/{p.name})" for p in sorted(SCATTER_DIR.glob("*.png")))
    return f"# Mode collapse: ring-2d and grid-2d\n\n{body}\n{images}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per (dataset, config)")
    parser.add_argument("--steps", type=int, default=1000, help="generator steps per run")
    parser.add_argument("--only", default="", help="comma-separated config names (default: all but an empty 'best')")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--workers", type=int, default=2, help="parallel single-threaded trainings")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else [n for n, c in CONFIGS.items() if c]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; known: {list(CONFIGS)}")
    jobs = [Job(ds, n, s, args.steps) for ds in args.datasets.split(",") for n in names for s in range(args.seeds)]
    start = time.monotonic()
    outcomes = run_all(jobs, args.workers)
    wall = time.monotonic() - start
    for o in outcomes:
        if o.samples is not None:
            scatter(o)
    body = summary(outcomes, names, args, wall)
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    (common.RESULTS / "mode_collapse.md").write_text(report(body))
    common.update_readme("mode_collapse", f"{body}\nScatters: [results/mode_collapse.md](results/mode_collapse.md).")
    print(table(outcomes, names))
    print(f"wall {wall:.0f} s; details in {common.RESULTS / 'mode_collapse.md'}")


if __name__ == "__main__":
    main()
