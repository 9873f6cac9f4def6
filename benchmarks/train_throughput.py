"""Training throughput: the project's loop against the seeds' reference loop, in one process on one machine.

    python -m benchmarks.train_throughput                 # throughput of every mode, then the README block
    python -m benchmarks.train_throughput --quality 3     # also: time to a fixed FID, up to 3 epochs each
    python -m benchmarks.train_throughput --cli           # only: what evaluation costs a CLI job, its own block

Both train the seed recipe on the same data (the MNIST images under the data root: the 60,000-image train
split when present, else the 10,000-image test split), with the same architecture (MLP G 100→128→256→512→
1024→784 with LeakyReLU(0.2) then BatchNorm, tanh; MLP D 784→256→128→1), batch 128, Adam 2e-4 (β 0.5,
0.999), one D step per G step on fresh noise (Algorithm 1 with k = 1):

- **baseline**: the loop as the seeds' reference writes it: torchvision's `MNIST` dataset with per-image
  `ToTensor`/`Normalize`, `DataLoader(batch_size=128, shuffle=True)`, separate real and fake D passes, BCE on
  sigmoid outputs, label tensors allocated every step, `.item()` on both losses every step and a print every
  100 steps;
- **ganserve**: `training.loop.train` itself, in each mode it offers on the device: `eager`, `compiled`
  (`compile: default`), and on CUDA also `cuda-graphs` (`compile: reduce-overhead`), `bf16` and
  `bf16+compiled`.

An "epoch" is 60,000 images (the train split once, or six passes over the test split), as in the issue's
300-epoch recipe. Each mode runs `--warmup` steps (compilation happens there), then is timed over `--steps`
steps; images/s is D's real images per second, seconds per epoch and the projected 300-epoch time follow
from it, and every mode's ratio is to the baseline's images/s. `--quality N` also trains the baseline and
each ganserve mode for up to 2N epochs, measuring FID in the MNIST classifier's feature space (1,000 samples
against 1,000 real images, `training.evaluation`) after each epoch, and reports the training seconds each
needed to reach `--fid-target` (default: the reference's FID after its N epochs; evaluation time excluded).

`--cli` measures something else, alone, into a README block of its own: what measuring sample quality costs a
job. It times `ganserve train JOB.json --no-publish --data-root DATA --device cpu` as a subprocess, end to end
(start-up, imports, data loading and checkpoints included), for 3 epochs of MNIST with the `seed-reference`
recipe, three ways: evaluation off (`eval_extractor: none`, the loop alone), the default schedule (at most a
tenth of the wall time, `training.evaluation.EVAL_BUDGET`) and every epoch (`eval_every: 1`, the default
cadence before issue 19), each `--cli-rounds` times, interleaved. Evaluation's share of a run is (its median
wall time - the loop alone's) / its median wall time.
"""

import argparse
import gzip
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision import transforms

from benchmarks.common import machine
from core.train_config import TrainConfig
from experiments.common import update_readme
from training import checkpoint
from training.data import DeviceDataset, load_to_device
from training.evaluation import EVAL_BUDGET, build_evaluator
from training.loop import TrainProgress, resolve_device, train

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
RESULTS = HERE / "results" / "train_throughput.json"
DATA_ROOT = HERE.parent.parent / "shared" / "data"
EPOCH_IMAGES = 60_000
RECIPE_EPOCHS = 300
BATCH = 128
LATENT = 100

# mode → the TrainConfig fields it sets; CUDA-only modes are skipped on the CPU.
MODES: dict[str, dict[str, Any]] = {
    "eager": {},
    "compiled": {"compile": "default"},
    "cuda-graphs": {"compile": "reduce-overhead"},
    "bf16": {"precision": "bfloat16"},
    "bf16+compiled": {"precision": "bfloat16", "compile": "default"},
}
CUDA_ONLY = {"cuda-graphs", "bf16", "bf16+compiled"}


@dataclass
class Measure:
    name: str
    images_per_s: float
    warmup_s: float  # wall time of the warm-up steps (compilation included)
    timed_steps: int
    seconds_per_epoch: float = 0.0
    recipe_minutes: float = 0.0  # projected 300 epochs
    ratio: float = 0.0  # images/s over the baseline's
    fid_by_epoch: list[float] = field(default_factory=list)
    seconds_to_target: float | None = None

    def finish(self, baseline_images_per_s: float) -> None:
        self.seconds_per_epoch = EPOCH_IMAGES / self.images_per_s
        self.recipe_minutes = RECIPE_EPOCHS * self.seconds_per_epoch / 60
        self.ratio = self.images_per_s / baseline_images_per_s


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the baseline ---------------------------------------------------------------------------------------------


def torchvision_mnist(data_root: Path, scratch: Path) -> torchvision.datasets.MNIST:
    """torchvision's MNIST on the files under `<data_root>/mnist`: its own download layout when present, else
    the raw IDX files copied (un-gzipped) into that layout in `scratch`. torchvision refuses a root that lacks
    either split, so with only the test split present the check is narrowed to the split in use."""
    src = data_root / "mnist"
    train_split = any((src / f"train-images-idx3-ubyte{ext}").exists() for ext in ("", ".gz"))
    if (src / "MNIST" / "raw").is_dir():
        root = src
    else:
        raw = scratch / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for path in src.glob("*-idx?-ubyte*"):
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rb") as f, open(raw / path.name.removesuffix(".gz"), "wb") as out:
                shutil.copyfileobj(f, out)
        root = scratch
    prefix = "train" if train_split else "t10k"

    class MNIST(torchvision.datasets.MNIST):  # the class name is torchvision's folder name
        def _check_exists(self) -> bool:
            return all(
                Path(self.raw_folder, f"{prefix}-{kind}").exists()
                for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
            )

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    return MNIST(str(root), train=train_split, download=False, transform=tf)


def reference_models() -> tuple[nn.Module, nn.Module]:
    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Linear(i, o), nn.LeakyReLU(0.2), nn.BatchNorm1d(o)]

    g = nn.Sequential(
        *block(LATENT, 128), *block(128, 256), *block(256, 512), *block(512, 1024), nn.Linear(1024, 784), nn.Tanh()
    )
    d = nn.Sequential(
        nn.Linear(784, 256), nn.LeakyReLU(0.2), nn.Linear(256, 128), nn.LeakyReLU(0.2), nn.Linear(128, 1), nn.Sigmoid()
    )
    return g, d


class AsImages(nn.Module):
    """The reference G as the evaluator calls a generator: G(z, labels=…, generator=…) → N×1×28×28."""

    def __init__(self, g: nn.Module):
        super().__init__()
        self.g = g

    def forward(self, z: torch.Tensor, labels: Any = None, generator: Any = None) -> torch.Tensor:
        return self.g(z).view(-1, 1, 28, 28)


def baseline_steps(
    dataset: torchvision.datasets.MNIST, device: torch.device, seed: int = 0
) -> tuple[nn.Module, Iterator[int]]:
    """The reference G, and an endless iterator that runs one reference training step per `next()` and
    yields the images it consumed."""
    torch.manual_seed(seed)
    g, d = (m.to(device) for m in reference_models())
    criterion = nn.BCELoss()
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True)

    def steps() -> Iterator[int]:
        step = 0
        while True:
            for x, _ in loader:
                x = x.view(-1, 784).to(device)
                bs = x.size(0)
                d.zero_grad()
                d_real_loss = criterion(d(x), torch.ones(bs, 1, device=device))
                fake = g(torch.randn(bs, LATENT, device=device))
                d_fake_loss = criterion(d(fake.detach()), torch.zeros(bs, 1, device=device))
                d_loss = d_real_loss + d_fake_loss
                d_loss.backward()
                opt_d.step()
                g.zero_grad()
                g_loss = criterion(d(g(torch.randn(bs, LATENT, device=device))), torch.ones(bs, 1, device=device))
                g_loss.backward()
                opt_g.step()
                d_value, g_value = d_loss.item(), g_loss.item()
                if step % 100 == 0:
                    print(f"    [baseline] step {step}: d_loss {d_value:.4f} g_loss {g_value:.4f}", flush=True)
                step += 1
                yield bs

    return g, steps()


def measure_baseline(dataset: torchvision.datasets.MNIST, device: torch.device, warmup: int, steps: int) -> Measure:
    _, it = baseline_steps(dataset, device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        next(it)
    sync(device)
    t1 = time.perf_counter()
    images = sum(next(it) for _ in range(steps))
    sync(device)
    return Measure("baseline", images / (time.perf_counter() - t1), t1 - t0, steps)


# --- the project's loop ---------------------------------------------------------------------------------------


def ganserve_config(mode: str, **overrides: Any) -> TrainConfig:
    fields: dict[str, Any] = {
        "model_name": f"bench-{mode.replace('+', '-')}",
        "dataset": "mnist",
        "eval_extractor": "none",
        "sample_every": 10_000,
        **MODES[mode],
    }
    return TrainConfig(**(fields | overrides))


def images_present(data_root: Path) -> int:
    return load_to_device(ganserve_config("eager"), data_root, torch.device("cpu")).n


def measure_ganserve(mode: str, data_root: Path, device: torch.device, warmup: int, steps: int) -> Measure:
    """`train()` end to end, timed between its epoch-end reports: loop epochs of `steps` steps (fewer when the
    data holds fewer batches), the first ones covering `warmup` steps (compilation included), then enough to
    time at least `steps`. What is timed includes everything the loop does per epoch (the shuffle, the loss
    report's one host sync, the resume checkpoint)."""
    per_epoch = min(steps, images_present(data_root) // BATCH)
    warm_epochs = max(1, math.ceil(warmup / per_epoch))
    timed_epochs = max(1, math.ceil(steps / per_epoch))
    config = ganserve_config(mode, max_samples=per_epoch * BATCH, epochs=warm_epochs + timed_epochs)
    marks: list[float] = []

    def on_progress(p: TrainProgress) -> None:
        if p.epoch_end:
            sync(device)
            marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        train(
            config,
            Path(out),
            data_root=data_root,
            device=str(device),
            progress_fn=on_progress,
            report_every_s=math.inf,
        )
    timed = timed_epochs * per_epoch
    t_warm = marks[warm_epochs - 1]
    return Measure(mode, timed * BATCH / (marks[-1] - t_warm), t_warm - start, timed)


# --- time to quality ------------------------------------------------------------------------------------------


def fid_evaluator(data_root: Path, device: torch.device) -> Callable[[nn.Module], float]:
    """FID of a generator's seeds 0..999 against 1,000 real training images, in the MNIST classifier's feature
    space: the evaluation the loop itself runs (`eval_every`), so both loops are scored identically."""
    config = TrainConfig(model_name="fid", dataset="mnist", eval_samples=1000)
    data: DeviceDataset = load_to_device(config, data_root, device)
    plan = build_evaluator(config, data, None, device)
    if plan.evaluator is None:
        raise SystemExit(f"cannot measure FID: {plan.skipped_because}")
    evaluator = plan.evaluator

    def fid(g: nn.Module) -> float:
        was_training = g.training
        try:
            return float(evaluator.run(g)["fid"])
        finally:
            g.train(was_training)

    return fid


def quality_baseline(
    dataset: torchvision.datasets.MNIST, device: torch.device, epochs: int, fid: Callable[[nn.Module], float]
) -> list[tuple[float, float]]:
    """(training seconds so far, FID) after each 60,000-image epoch of the reference loop."""
    g, it = baseline_steps(dataset, device)
    points, trained_s = [], 0.0
    for _ in range(epochs):
        t = time.perf_counter()
        images = 0
        while images < EPOCH_IMAGES:
            images += next(it)
        sync(device)
        trained_s += time.perf_counter() - t
        points.append((trained_s, fid(AsImages(g))))
        print(f"    [baseline] epoch {len(points)}: {trained_s:.1f} s, FID {points[-1][1]:.2f}", flush=True)
    return points


def quality_ganserve(
    mode: str, data_root: Path, device: torch.device, epochs: int, fid: Callable[[nn.Module], float]
) -> list[tuple[float, float]]:
    """(training seconds so far, FID) after each 60,000-image epoch of `train()`: it checkpoints at each such
    epoch (six loop epochs over the 10,000-image split), and the checkpoints are scored after the run, so the
    training time holds no evaluation."""
    per_loop_epoch = min(images_present(data_root), EPOCH_IMAGES)
    every = EPOCH_IMAGES // per_loop_epoch
    config = ganserve_config(mode, max_samples=per_loop_epoch, epochs=every * epochs, sample_every=every)
    times: list[float] = []
    stems: list[Path] = []
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()

        def on_progress(p: TrainProgress) -> None:
            if p.epoch_end and p.samples is not None:  # a kept epoch, timed before its checkpoint is written
                sync(device)
                times.append(time.perf_counter() - start)
            if p.checkpoint is not None:  # reported once that checkpoint is whole
                stems.append(p.checkpoint)

        train(
            config,
            Path(out),
            data_root=data_root,
            device=str(device),
            progress_fn=on_progress,
            report_every_s=math.inf,
        )
        points = []
        for elapsed, stem in zip(times, stems, strict=True):
            g, _ = checkpoint.load_generator(stem, device)
            points.append((elapsed, fid(g)))
            print(f"    [{mode}] epoch {len(points)}: {elapsed:.1f} s, FID {points[-1][1]:.2f}", flush=True)
    return points


def full_recipe(mode: str, data_root: Path, device: torch.device, fid: Callable[[nn.Module], float]) -> dict:
    """The whole seed recipe through `train()`: 300 epochs of 60,000 images at batch 128 (140,400 G steps; over
    the 10,000-image split that is 1,800 passes), timed from the call to its return (data loading, compilation,
    a resume checkpoint every 60 s and the final checkpoint all included), then FID of the final generator."""
    steps = RECIPE_EPOCHS * (EPOCH_IMAGES // BATCH)
    n = images_present(data_root)
    config = ganserve_config(mode, max_samples=min(n, EPOCH_IMAGES), steps=steps)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = train(
            config, Path(out), data_root=data_root, device=str(device), report_every_s=math.inf, resume_every_s=60
        )
        sync(device)
        wall = time.perf_counter() - start
        assert result.final_checkpoint is not None
        g, _ = checkpoint.load_generator(result.final_checkpoint, device)
        return {"mode": mode, "steps": steps, "wall_s": wall, "fid": fid(g)}


def first_reaching(points: list[tuple[float, float]], target: float) -> float | None:
    return next((s for s, f in points if f <= target), None)


# --- what evaluation costs a CLI job ---------------------------------------------------------------------------

CLI_EPOCHS = 3
CLI_RESULTS = HERE / "results" / "train_throughput_cli.json"
# label → the job's evaluation fields; "off" first, the loop alone, which the others are read against
CLI_RUNS: dict[str, dict[str, Any]] = {
    "off": {"eval_extractor": "none"},
    "default": {},
    "every-epoch": {"eval_every": 1},
}
CLI_LABELS = {
    "off": "off (`eval_extractor: none`): the loop alone",
    "default": "default (`eval_every` unset): the budget schedule",
    "every-epoch": "every epoch (`eval_every: 1`): the old default's cadence",
}


def time_cli(fields: dict[str, Any], data_root: Path, epochs: int = CLI_EPOCHS) -> float:
    """Wall seconds of `ganserve train JOB.json --no-publish` on the CPU for `epochs` epochs of MNIST with the
    seed-reference recipe and `fields`, in a scratch directory (its runs/ go there)."""
    job = {"model_name": "bench-cli", "dataset": "mnist", "epochs": epochs, "recipe": "seed-reference", **fields}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "job.json"
        path.write_text(json.dumps(job))
        command = [sys.executable, "-m", "ganserve", "train", str(path), "--no-publish"]
        command += ["--data-root", str(data_root.resolve()), "--device", "cpu"]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=scratch, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return wall


def measure_cli(data_root: Path, rounds: int, epochs: int = CLI_EPOCHS) -> dict[str, Any]:
    """Each way `rounds` times, interleaved (so that a busy spell of a shared machine falls on all three), and
    the median of each."""
    walls: dict[str, list[float]] = {name: [] for name in CLI_RUNS}
    for _ in range(rounds):
        for name, fields in CLI_RUNS.items():
            walls[name].append(time_cli(fields, data_root, epochs))
            print(f"  {name}: {walls[name][-1]:.1f} s", flush=True)
    median = {name: statistics.median(w) for name, w in walls.items()}
    runs = [
        {
            "name": name,
            "walls_s": walls[name],
            "wall_s": median[name],
            "ratio": median[name] / median["off"],
            "evaluation_share": max(0.0, (median[name] - median["off"]) / median[name]),
        }
        for name in CLI_RUNS
    ]
    return {"epochs": epochs, "rounds": rounds, "runs": runs}


def cli_block(r: dict[str, Any]) -> str:
    m = r["machine"]
    default = next(x for x in r["runs"] if x["name"] == "default")
    met = "met" if default["evaluation_share"] <= EVAL_BUDGET else "not met"
    lines = [
        f"`{r['command']}` — {m['cpu']}, {m['cores']} cores, CPU, torch {m['torch']}, "
        f"OMP_NUM_THREADS={r['omp_threads']}; {r['data']}."
        + (
            " The machine was shared with other training runs at the time: read the ratios, which hold better than "
            "the absolute seconds."
            if r.get("shared_machine", True)
            else " Nothing else ran on the machine."
        ),
        "",
        f"`ganserve train JOB.json --no-publish --data-root DATA --device cpu`, timed as a subprocess: "
        f"{r['epochs']} epochs of MNIST, recipe `seed-reference`, median of {r['rounds']} interleaved "
        f"round(s).",
        "",
        "| evaluation | CLI wall s | × off | evaluation's share of the wall time |",
        "|---|---|---|---|",
    ]
    for x in r["runs"]:
        share = "—" if x["name"] == "off" else f"{100 * x['evaluation_share']:.0f} %"
        lines.append(f"| {CLI_LABELS[x['name']]} | {x['wall_s']:.1f} | {x['ratio']:.2f} | {share} |")
    lines += [
        "",
        f"Default schedule: evaluation {100 * default['evaluation_share']:.0f} % of the job's wall time "
        f"(target ≤ {100 * EVAL_BUDGET:.0f} %: {met}).",
    ]
    return "\n".join(lines)


def main_cli(args: argparse.Namespace) -> None:
    result = {
        "command": " ".join(["python -m benchmarks.train_throughput", *sys.argv[1:]]),
        "machine": machine(),
        "omp_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "data": f"{images_present(args.data_root):,} MNIST images under the data root",
        "shared_machine": args.shared_machine,
        **measure_cli(args.data_root, args.cli_rounds, args.cli_epochs),
    }
    block = cli_block(result)
    print(block)
    CLI_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.cli_epochs == CLI_EPOCHS else f"-{args.cli_epochs}-epochs"
    CLI_RESULTS.with_stem(CLI_RESULTS.stem + suffix).write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_readme:
        update_readme(f"train_throughput-cli{suffix}", block, README)


# --- report ---------------------------------------------------------------------------------------------------


def readme_block(r: dict[str, Any]) -> str:
    m = r["machine"]
    where = f"{m['gpu']} (CUDA)" if r["device"] == "cuda" else f"{m['cpu']}, {m['cores']} cores, CPU"
    lines = [
        f"`{r['command']}` — {where}, torch {m['torch']}; data: {r['data']}; {r['warmup']} warm-up steps, then "
        f"{r['steps']} timed steps per mode.",
        "",
        "| loop | mode | images/s | × baseline | s per 60k-image epoch | 300 epochs | warm-up s |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in r["measures"]:
        loop = "reference" if x["name"] == "baseline" else "ganserve"
        mode = "DataLoader, per-image transforms" if x["name"] == "baseline" else x["name"]
        lines.append(
            f"| {loop} | {mode} | {x['images_per_s']:,.0f} | {x['ratio']:.2f} | {x['seconds_per_epoch']:.1f} | "
            f"{x['recipe_minutes']:.1f} min | {x['warmup_s']:.1f} |"
        )
    best = max((x for x in r["measures"] if x["name"] != "baseline"), key=lambda x: x["ratio"])
    lines += [
        "",
        f"Best: `{best['name']}` at {best['ratio']:.2f}× the reference loop "
        f"(target on this machine's CPU: ≥ 3×: {'met' if best['ratio'] >= 3 else 'not met'}).",
    ]
    if r.get("quality"):
        q = r["quality"]
        lines += [
            "",
            f"Time to FID ≤ {q['target']} (the reference loop's FID after its last epoch unless `--fid-target` "
            f"says otherwise; MNIST-classifier features, 1,000 vs 1,000; training time only; the reference ran "
            f"{q['epochs']} epochs of 60,000 images, ganserve's modes up to {2 * q['epochs']}):",
            "",
            "| loop | FID after each epoch | training s to the target |",
            "|---|---|---|",
        ]
        for name, row in q["runs"].items():
            fids = ", ".join(f"{f:.1f}" for _, f in row["points"])
            reached = row["seconds_to_target"]
            lines.append(f"| {name} | {fids} | {'not reached' if reached is None else f'{reached:.1f}'} |")
    if r.get("recipe"):
        x = r["recipe"]
        lines += [
            "",
            f"Full recipe, `{x['mode']}`: {x['steps']:,} G steps (300 epochs of 60,000 images) in "
            f"**{x['wall_s']:.1f} s** wall, end to end; final FID {x['fid']:.2f}.",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=150, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=150, help="warm-up steps per mode (whole epochs of --steps)")
    parser.add_argument("--modes", default=",".join(MODES), help="ganserve modes, comma-separated")
    parser.add_argument("--quality", type=int, default=0, metavar="EPOCHS", help="also time to --fid-target")
    parser.add_argument(
        "--fid-target",
        type=float,
        help="the quality to reach; default: the reference loop's FID after its last --quality epoch",
    )
    parser.add_argument("--recipe", metavar="MODE", help="also train the full 300-epoch recipe in MODE, timed")
    parser.add_argument("--cli", action="store_true", help="only: what evaluation costs a CLI job, its own block")
    # One round on a shared machine can put a busy spell on one run (seen: the loop alone 1.2x the default's time).
    parser.add_argument("--cli-rounds", type=int, default=3, help="with --cli: rounds of the three runs")
    parser.add_argument("--cli-epochs", type=int, default=CLI_EPOCHS, help="with --cli: the job's epochs")
    parser.add_argument("--shared-machine", action="store_true", help="with --cli: say other work shared the CPU")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    if args.cli:
        main_cli(args)
        return

    device = resolve_device(args.device)
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)  # what the loop itself does: both get every core
    modes = [m for m in args.modes.split(",") if m and (device.type == "cuda" or m not in CUDA_ONLY)]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")

    with tempfile.TemporaryDirectory() as scratch:
        dataset = torchvision_mnist(args.data_root, Path(scratch))
        print(f"data: torchvision MNIST {'train' if dataset.train else 'test'} split, {len(dataset)} images")
        measures = [measure_baseline(dataset, device, args.warmup, args.steps)]
        print(f"  baseline: {measures[0].images_per_s:,.0f} images/s", flush=True)
        for mode in modes:
            measures.append(measure_ganserve(mode, args.data_root, device, args.warmup, args.steps))
            print(f"  {mode}: {measures[-1].images_per_s:,.0f} images/s", flush=True)
        for x in measures:
            x.finish(measures[0].images_per_s)

        quality = None
        if args.quality:
            fid = fid_evaluator(args.data_root, device)
            runs = {"reference": quality_baseline(dataset, device, args.quality, fid)}
            for mode in modes:
                # Twice the epochs: another RNG stream may need a little longer to reach the reference's quality.
                runs[f"ganserve {mode}"] = quality_ganserve(mode, args.data_root, device, 2 * args.quality, fid)
            target = args.fid_target if args.fid_target is not None else runs["reference"][-1][1]
            quality = {
                "target": round(target, 2),
                "epochs": args.quality,
                "runs": {k: {"points": v, "seconds_to_target": first_reaching(v, target)} for k, v in runs.items()},
            }

        recipe = None
        if args.recipe:
            recipe = full_recipe(args.recipe, args.data_root, device, fid_evaluator(args.data_root, device))
            print(f"  full recipe ({args.recipe}): {recipe['wall_s']:.1f} s, FID {recipe['fid']:.2f}", flush=True)

    split = "train" if dataset.train else "test"
    result = {
        "command": " ".join(["python -m benchmarks.train_throughput", *sys.argv[1:]]),
        "device": device.type,
        "machine": machine(),
        "data": f"torchvision MNIST {split} split, {len(dataset):,} images",
        "warmup": args.warmup,
        "steps": args.steps,
        "measures": [asdict(x) for x in measures],
        "quality": quality,
        "recipe": recipe,
    }
    block = readme_block(result)
    print(block)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_readme:
        update_readme("train_throughput", block, README)


if __name__ == "__main__":
    main()
