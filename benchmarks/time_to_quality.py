"""Time to quality: how many seconds of training each recipe needs before its samples are close to real data.

    python -m benchmarks.time_to_quality                         # the three recipes below, 10 min each
    python -m benchmarks.time_to_quality --minutes 2 --every 30  # a shorter look

The seeds' reference recipe (`seed-reference`), MNIST's default (`mnist-dcgan-conditional`) and its unconditional
twin (`mnist-dcgan`) by default. Each recipe (core/recipes.py) trains on MNIST through `training.loop.train`, the
loop every job runs, with the job defaults otherwise, for `--minutes` of training wall time, keeping a checkpoint of
the served generator (its EMA where the recipe has one) at every epoch end and noting the training seconds there.
Nothing is measured while it trains: afterwards the checkpoint nearest each multiple of `--every` seconds is
measured like a published model (`training.evaluation.evaluate_model`: seeds 0..n−1 against n training digits, in
the `mnist-cnn-v1` feature space), so the time axis is training alone and every recipe is measured with the same
extractor, seeds and real images. The floor is what n held-out real digits score against training digits at the same
n (`training.evaluation.real_floor`); the table gives the first training second at which each recipe's FID is within
2× that floor, or "not within T".

Recipes run one after another with every core (`--parallel`: at once, one thread each); the results go to
benchmarks/results/time_to_quality.json, the curves to benchmarks/results/time_to_quality.png and the summary to
benchmarks/README.md.
"""

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import machine
from core.train_config import TrainConfig
from experiments.common import figure, update_readme
from training import evaluation, run_state
from training.loop import TrainProgress, train

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
RESULTS = HERE / "results" / "time_to_quality.json"
PLOT = HERE / "results" / "time_to_quality.png"
DATA_ROOT = HERE.parent.parent / "shared" / "data"
DEFAULT_RECIPES = ("seed-reference", "mnist-dcgan-conditional", "mnist-dcgan")
FLOOR_FACTOR = 2.0  # the target: FID within 2× the real-vs-real floor at the same n


@dataclass
class Point:
    train_s: float  # training wall seconds at this epoch's end (evaluation excluded: none runs while training)
    epoch: int
    step: int
    metrics: dict[str, Any]


@dataclass
class Curve:
    recipe: str
    config: dict[str, Any]
    images_per_s: float
    train_s: float
    points: list[Point] = field(default_factory=list)
    seconds_to_target: float | None = None  # first point within FLOOR_FACTOR × floor; None: not within train_s


def train_for(recipe: str, seconds: float, out_dir: Path, data_root: Path, threads: int | None) -> dict[str, Any]:
    """Train `recipe` for `seconds` of wall time, a checkpoint every epoch; returns {epoch: training seconds}."""
    if threads:
        torch.set_num_threads(threads)
    config = TrainConfig.model_validate(
        # Epochs far beyond the time limit: the run is stopped by the clock, not by its length.
        {"model_name": f"ttq-{recipe}", "dataset": "mnist", "recipe": recipe, "epochs": 10_000},
        context={"submitted": True},
    )
    config = config.model_copy(update={"eval_extractor": "none", "sample_every": 1})
    ends: dict[int, tuple[float, int]] = {}
    start = time.monotonic()
    last_rate = [0.0]

    def progress(p: TrainProgress) -> None:
        if p.epoch_end:
            ends[p.epoch] = (time.monotonic() - start, p.step)
            last_rate[0] = p.images_per_sec
            print(f"  {recipe}: epoch {p.epoch}, {ends[p.epoch][0]:.0f} s, {p.images_per_sec:.0f} img/s", flush=True)

    train(
        config,
        out_dir,
        data_root=data_root,
        progress_fn=progress,
        should_stop=lambda: time.monotonic() - start >= seconds,
        report_every_s=30.0,
    )
    return {
        "config": config.model_dump(mode="json", exclude_defaults=True),
        "ends": ends,
        "images_per_s": last_rate[0],
        "train_s": time.monotonic() - start,
    }


def measure(recipe: str, run: dict[str, Any], out_dir: Path, every: float, n: int, data_root: Path) -> Curve:
    """The checkpoint at or just after each multiple of `every` seconds (and the last), measured."""
    curve = Curve(recipe, run["config"], run["images_per_s"], run["train_s"])
    ends = sorted((int(e), float(t), int(s)) for e, (t, s) in run["ends"].items())
    chosen: list[tuple[int, float, int]] = []
    mark = every
    for epoch, t, step in ends:
        if t >= mark or epoch == ends[-1][0]:
            chosen.append((epoch, t, step))
            while mark <= t:
                mark += every
    for epoch, t, step in chosen:
        stem = run_state.stem_for(out_dir, epoch)
        m = evaluation.evaluate_model(stem, n=n, data_root=data_root).to_dict()
        curve.points.append(Point(round(t, 1), epoch, step, m))
        print(f"  {recipe}: {t:.0f} s (epoch {epoch}, step {step}): FID {m['fid']:.1f}", flush=True)
    return curve


def plot(curves: list[Curve], floor: float, path: Path) -> None:
    with figure(path, figsize=(7, 4.2)) as fig:
        ax = fig.add_subplot()
        for c in curves:
            ax.plot(
                [p.train_s for p in c.points], [p.metrics["fid"] for p in c.points], marker="o", ms=3, label=c.recipe
            )
        ax.axhline(floor, color="grey", lw=1, ls=":", label=f"real vs real ({floor:.1f})")
        ax.axhline(FLOOR_FACTOR * floor, color="grey", lw=1, ls="--", label=f"{FLOOR_FACTOR:g}× floor")
        ax.set_yscale("log")
        ax.set_xlabel("training wall seconds (evaluation excluded)")
        ax.set_ylabel("FID, mnist-cnn-v1 features (log)")
        ax.set_title("Time to quality on MNIST")
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 0.16), fontsize="small")


def readme_block(curves: list[Curve], floor: dict[str, Any], args: argparse.Namespace, info: dict[str, Any]) -> str:
    target = FLOOR_FACTOR * floor["fid"]
    mode = "at once, one thread each" if args.parallel else "one after another, every core"
    lines = [
        "## Time to quality (`benchmarks/time_to_quality.py`)",
        "",
        f"`python -m benchmarks.time_to_quality --minutes {args.minutes:g} --every {args.every:g} --n {args.n}"
        f"{' --parallel' if args.parallel else ''}` on {info['cpu']} ({info['cores']} cores), torch {info['torch']}; "
        f"the recipes trained {mode}. FID in `mnist-cnn-v1` features, n = {args.n} generated (seeds 0..{args.n - 1}) "
        f"against {args.n} training digits; the real-vs-real floor at that n is {floor['fid']:.2f} (recall "
        f"{floor['recall']:.3f}), so the target is FID ≤ {target:.1f}.",
        "",
        "| recipe | images/s | FID at the end | precision / recall at the end | time to FID ≤ 2× floor |",
        "|---|---|---|---|---|",
    ]
    for c in curves:
        last = c.points[-1].metrics
        reached = (
            f"**{c.seconds_to_target:.0f} s**" if c.seconds_to_target is not None else f"not within {c.train_s:.0f} s"
        )
        lines.append(
            f"| `{c.recipe}` | {c.images_per_s:.0f} | {last['fid']:.1f} ({c.points[-1].train_s:.0f} s, step "
            f"{c.points[-1].step}) | {last['precision']:.3f} / {last['recall']:.3f} | {reached} |"
        )
    lines += ["", "![FID against training seconds](results/time_to_quality.png)", ""]
    lines.append("FID at each measured point (training seconds: FID):")
    lines.append("")
    for c in curves:
        pts = ", ".join(f"{p.train_s:.0f}: {p.metrics['fid']:.1f}" for p in c.points)
        lines.append(f"- `{c.recipe}`: {pts}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), help="Comma-separated recipe names.")
    ap.add_argument("--minutes", type=float, default=10.0, help="Training wall time per recipe.")
    ap.add_argument("--every", type=float, default=30.0, help="Seconds of training between measured points.")
    ap.add_argument("--n", type=int, default=2000, help="Generated and real images per measurement.")
    ap.add_argument("--parallel", action="store_true", help="Train the recipes at once, one thread each.")
    ap.add_argument("--data-root", type=Path, default=DATA_ROOT)
    ap.add_argument("--no-readme", action="store_true", help="Write the JSON and plot only.")
    args = ap.parse_args(argv)
    names = [r.strip() for r in args.recipes.split(",") if r.strip()]
    info = machine()
    with tempfile.TemporaryDirectory(prefix="ttq-") as tmp:
        outs = {r: Path(tmp) / r for r in names}
        seconds = args.minutes * 60
        if args.parallel:
            with ProcessPoolExecutor(len(names)) as pool:
                futures = {r: pool.submit(train_for, r, seconds, outs[r], args.data_root, 1) for r in names}
                runs = {r: f.result() for r, f in futures.items()}
        else:
            runs = {r: train_for(r, seconds, outs[r], args.data_root, None) for r in names}
        floor = evaluation.real_floor("mnist", n=args.n, data_root=args.data_root).to_dict()
        curves = [measure(r, runs[r], outs[r], args.every, args.n, args.data_root) for r in names]
    for c in curves:
        hit = next((p for p in c.points if p.metrics["fid"] <= FLOOR_FACTOR * floor["fid"]), None)
        c.seconds_to_target = None if hit is None else hit.train_s
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": info,
                "args": {k: str(v) for k, v in vars(args).items()},
                "floor": floor,
                "curves": [asdict(c) for c in curves],
            },
            indent=1,
        )
    )
    plot(curves, floor["fid"], PLOT)
    block = readme_block(curves, floor, args, info)
    print(block)
    if not args.no_readme:
        update_readme("time_to_quality", block, README)
    return 0


if __name__ == "__main__":
    sys.exit(main())
