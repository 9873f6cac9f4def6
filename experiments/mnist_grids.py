"""MNIST sample grids over epochs for the seed MLP, DCGAN (28×28) and a class-conditional model, plus a
figure of the conditional model drawing each digit on request.

Each run is the project's own loop (`training.loop.train`, `sample_every=1`) on the MNIST split(s) under
the data root; the loop writes `samples/epoch-NNNN.png` (fixed seeds 0..63; a conditional grid is 10
wide with class s % 10 in column s % 10). This script puts the grids of the first, ~1/8, ~1/2 and the last
epoch side by side. The conditional model's last checkpoint is then published into a scratch models
folder and loaded through `service.serving.registry.ModelRegistry`, and rendered with `render_seeds(seeds,
label)` — the same path as `GET /generate?label=` — for labels 0..9 × seeds 0..7, one row per label.

Within-class diversity of the conditional model: for each label, the mean pairwise L2 distance (pixels in
[-1, 1], 784 of them) between the served model's samples for seeds 0..63, next to the same measure on the
first 64 training images of that class. A G that ignores z scores ≈ 0; real digits score ≈ 17.

`--only` re-runs some of the runs: the others' rows are kept from results/mnist_grids.json, each row with
the command that made it, so the pages always show all three.

    .venv/bin/python -m experiments.mnist_grids [--mlp-epochs 40] [--dcgan-epochs 12] [--cond-epochs 40]
        [--only mlp,dcgan,conditional]
"""

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.train_config import TrainConfig
from experiments.common import DATA_ROOT, RESULTS, figure, single_thread, update_readme
from service.serving.catalogues import FolderCatalogue
from service.serving.registry import ModelRegistry
from training import checkpoint, data, images
from training.loop import TrainProgress, train

DIGIT_SEEDS = list(range(8))
DIVERSITY_SEEDS = list(range(64))  # seeds per label for the within-class diversity
DEFAULT_EPOCHS = {"mlp": 40, "dcgan": 12, "conditional": 40}  # ≈ 15 min on one CPU thread
SUMMARY = RESULTS / "mnist_grids.json"


@dataclass(frozen=True)
class Run:
    key: str
    title: str
    fields: dict[str, Any]


RUNS = {
    "mlp": Run("mlp", "seed MLP (tanh)", {}),
    "dcgan": Run("dcgan", "DCGAN 28×28", {"architecture": "dcgan"}),
    "conditional": Run("conditional", "conditional MLP", {"architecture": "mlp", "conditional": True}),
}


@dataclass
class Outcome:
    run: Run
    config: TrainConfig
    epochs: int
    steps: int
    wall_s: float
    epoch_s: list[float]  # wall time of each epoch (checkpoint and sample grid included)
    shown: list[int]  # epochs whose grids are in the strip
    losses: dict[str, float]
    digits_png: Path | None = None
    diversity: dict[str, list[float]] | None = None  # conditional: per label, generated and real


def shown_epochs(epochs: int) -> list[int]:
    """First, ~1/8, ~1/2 and last epoch (40 epochs → 1, 5, 20, 40), duplicates dropped."""
    return sorted({1, max(1, round(epochs / 8)), max(1, round(epochs / 2)), epochs})


def strip(outcome: Outcome, samples: Path, path: Path) -> None:
    """The grids of `outcome.shown` side by side, each captioned with its epoch and G steps."""
    per_epoch = outcome.steps // outcome.epochs
    grids = [np.asarray(Image.open(samples / f"epoch-{e:04d}.png").convert("L")) for e in outcome.shown]
    with figure(path, figsize=(4.2 * len(grids), 4.6)) as fig:
        for i, (epoch, img) in enumerate(zip(outcome.shown, grids, strict=True)):
            ax = fig.add_subplot(1, len(grids), i + 1)
            ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(f"epoch {epoch} ({epoch * per_epoch} G steps)")
            ax.axis("off")
        fig.suptitle(f"{outcome.run.title}: seeds 0..63" + (", column = class" if outcome.config.conditional else ""))


def mean_pairwise_l2(x: torch.Tensor) -> float:
    """Mean L2 distance between the distinct pairs of the N samples in `x` (flattened)."""
    flat = x.flatten(1).double()
    n = flat.shape[0]
    return float(torch.cdist(flat, flat).sum() / (n * (n - 1)))


def real_diversity(data_root: Path, per_class: int) -> list[float]:
    """Per class, the mean pairwise L2 of its first `per_class` images of the MNIST split(s) trained on."""
    x, y = data.load_idx_dataset(data_root, "mnist")
    if y is None:
        raise RuntimeError("the MNIST files under the data root have no labels")
    real = torch.from_numpy(x).float() / 127.5 - 1  # the model range, as training sees it
    return [mean_pairwise_l2(real[torch.from_numpy(y == k)][:per_class]) for k in range(10)]


def digits_figure(stem: Path, path: Path) -> list[float]:
    """Lay out `stem` as a version, load it as the API does and render labels 0..9 × DIGIT_SEEDS, one row per label.
    Returns each label's within-class diversity over DIVERSITY_SEEDS, from the same loaded model."""
    with tempfile.TemporaryDirectory(prefix="ganserve-models-") as models:
        checkpoint.write_model(stem, checkpoint.model_stem(Path(models), "mnist-conditional", 1))
        model = ModelRegistry([FolderCatalogue(Path(models))]).get("mnist-conditional")
        rows = [model.render_seeds(DIGIT_SEEDS, label=label) for label in range(10)]
        diversity = [mean_pairwise_l2(model.sample_seeds(DIVERSITY_SEEDS, label=label)) for label in range(10)]
    tile = images.grid(torch.cat(rows), nrow=len(DIGIT_SEEDS))[0].numpy()
    cell = 28 + 2
    with figure(path, figsize=(4.6, 5.6)) as fig:
        ax = fig.add_subplot()
        ax.imshow(tile, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_yticks([2 + cell * i + 14 for i in range(10)], [str(i) for i in range(10)])
        ax.set_xticks([2 + cell * i + 14 for i in range(len(DIGIT_SEEDS))], [str(s) for s in DIGIT_SEEDS])
        ax.set_ylabel("requested label")
        ax.set_xlabel("seed")
        ax.set_title("conditional MLP: /generate?label=L, seeds 0..7")
    return diversity


def run_one(run: Run, epochs: int, data_root: Path) -> Outcome:
    config = TrainConfig(model_name=f"mnist-{run.key}", epochs=epochs, sample_every=1, **run.fields)
    ends: list[float] = []

    def on_progress(p: TrainProgress) -> None:
        if p.samples is not None:
            ends.append(time.monotonic())

    with tempfile.TemporaryDirectory(prefix="ganserve-exp-") as tmp:
        start = time.monotonic()
        result = train(config, Path(tmp), data_root=data_root, device="cpu", progress_fn=on_progress)
        wall = time.monotonic() - start
        if result.final_checkpoint is None or result.samples is None:
            raise RuntimeError(f"{run.key}: training wrote no checkpoint ({result.status})")
        epoch_s = list(np.diff([start, *ends]))
        out = Outcome(run, config, result.epochs_done, result.steps_done, wall, epoch_s, shown_epochs(epochs), {})
        out.losses = result.losses
        samples = Path(tmp) / "samples"
        strip(out, samples, RESULTS / f"mnist_{run.key}_epochs.png")
        if config.conditional:
            out.digits_png = RESULTS / "mnist_conditional_digits.png"
            generated = digits_figure(result.final_checkpoint, out.digits_png)
            out.diversity = {"generated": generated, "real": real_diversity(data_root, len(DIVERSITY_SEEDS))}
    print(f"{run.key}: {epochs} epochs, {result.steps_done} G steps, {wall:.0f} s", flush=True)
    return out


# What the default run's figures show, written after looking at them (see the report that added this
# script); printed under the table only when the run used the default epochs, since other runs differ.
OBSERVED: dict[str, str] = {
    "mlp": (
        "Looked at by eye: epoch 1 is pixel noise; epoch 5 shows dim round blobs in heavy salt noise; by epoch "
        "20 digit strokes appear (many 0s, 5/9-like shapes, 1s); at epoch 40 most cells are legible digits "
        "(0, 1, 2, 3, 6, 8, 9 and some 5/7), still speckled with isolated white pixels and with malformed "
        "ones; 0s are over-represented. Varied across seeds: no full collapse, but not clean digits."
    ),
    "dcgan": (
        "Looked at by eye: epochs 1–2 are checkerboard-textured blobs (transposed-convolution artefacts); at "
        "epoch 6 smooth, thick white strokes with little noise, a few digit-like (5, 3, 7, 9); at epoch 12 "
        "shapes are sharper and varied per seed, some read as 0, 1, 2, 3, 5, 9, but many are broken "
        "strokes that are no digit. Cleaner backgrounds than the MLP, fewer recognisable digits: 12 epochs "
        "of the 10k split (936 G steps) is too short for DCGAN here."
    ),
    "conditional": (
        "G is conditioned through class-conditional BatchNorm (training/architectures.py, `ConditionalBatchNorm`). "
        "Before that it concatenated a label embedding to z and each class collapsed to one image: "
        "within-class diversity 1.28 against 17.55 for real digits (per label 1.33, 0.74, 1.30, 0.40, "
        "1.56, 1.60, 1.24, 1.46, 1.53, 1.62), every row of the digits figure eight copies of one speckled "
        "digit. Looked at by eye now: epoch 1 is noise; at epoch 5 faint blobs, the 0 and 1 columns "
        "recognisable, much of the grid still noise; by epoch 20 most columns show their digit and the "
        "seeds differ. At epoch 40 the digits figure shows the requested digit in all 80 cells, and "
        "they differ across seeds in slant, stroke width, size and style (open and looped 2s, upright "
        "and slanted 1s): 0, 1, 3, 5, 6, 7 and 9 are clean, some 2s and 4s scribbly, the 8s the weakest "
        "(two of eight blotchy). The loop's grid agrees except for two of its 64 cells: a 5 that reads as "
        "an 8 and a 7 that reads as a 3. Light speckle remains around the strokes, less than in the seed "
        "MLP's grid at the same 3120 G steps."
    ),
}


def row(o: Outcome, command: str) -> dict[str, Any]:
    return {
        "key": o.run.key,
        "title": o.run.title,
        "fields": o.run.fields,
        "command": command,
        "defaults": o.epochs == DEFAULT_EPOCHS[o.run.key],
        "epochs": o.epochs,
        "steps": o.steps,
        "s_per_epoch": round(float(np.median(o.epoch_s)), 2),
        "wall_s": round(o.wall_s, 1),
        "shown": o.shown,
        "losses": {k: round(v, 4) for k, v in o.losses.items()},
        "digits_png": o.digits_png.name if o.digits_png is not None else None,
        "diversity": (
            {k: [round(v, 3) for v in vs] for k, vs in o.diversity.items()} if o.diversity is not None else None
        ),
    }


def merge(previous: dict[str, Any] | None, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This run's rows, and the previous summary's rows of the runs not re-run, in RUNS order. A row stored
    before rows carried their own command takes its summary's command and defaults flag."""
    kept: dict[str, dict[str, Any]] = {}
    if previous is not None:
        for r in previous["runs"]:
            kept[r["key"]] = {"command": previous["command"], "defaults": previous["defaults"], **r}
    kept |= {r["key"]: r for r in rows}
    return [kept[k] for k in RUNS if k in kept]


def diversity_table(d: dict[str, list[float]]) -> list[str]:
    gen, real = d["generated"], d["real"]
    return [
        f"Within-class diversity: per requested label, the mean pairwise L2 distance between the served "
        f"model's samples for seeds {DIVERSITY_SEEDS[0]}..{DIVERSITY_SEEDS[-1]} (pixels in [-1, 1]), and the "
        f"same over the first {len(DIVERSITY_SEEDS)} training images of that class. Mean over labels: "
        f"generated {np.mean(gen):.2f}, real {np.mean(real):.2f} (ratio {np.mean(gen) / np.mean(real):.2f}).",
        "",
        "| label | " + " | ".join(str(k) for k in range(len(gen))) + " |",
        "|---|" + "---|" * len(gen),
        "| generated | " + " | ".join(f"{v:.2f}" for v in gen) + " |",
        "| real | " + " | ".join(f"{v:.2f}" for v in real) + " |",
    ]


def describe(summary: dict[str, Any]) -> tuple[str, str]:
    """(results page, README block) from the summary `main` stores in mnist_grids.json."""
    rows = summary["runs"]
    per_epoch = rows[0]["steps"] // rows[0]["epochs"] if rows else 78
    commands = list(dict.fromkeys(r["command"] for r in rows))
    made_by = "; ".join(f"`{c}` ({', '.join(r['title'] for r in rows if r['command'] == c)})" for c in commands)
    head = [
        f"Made by {made_by} — the project's loop on every MNIST split under the data root (here t10k "
        f"only: 10,000 images, batch 128, {per_epoch} G steps per epoch), non-saturating loss, Adam 2e-4 "
        f"(0.5, 0.999), seed 0, one CPU thread, a sample grid and checkpoint every epoch. s/epoch is the "
        f"median wall time of one epoch, grid and checkpoint included; wall s is the whole run's.",
        "",
        "| run | config | epochs | G steps | s/epoch | wall s | shown epochs |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fields = ", ".join(f"{k}={v}" for k, v in r["fields"].items()) or "defaults"
        shown = ", ".join(map(str, r["shown"]))
        head.append(
            f"| {r['title']} | {fields} | {r['epochs']} | {r['steps']} | {r['s_per_epoch']:.1f} | "
            f"{r['wall_s']:.0f} | {shown} |"
        )
    sections = []
    for r in rows:
        figs = [f"![{r['key']} epochs](mnist_{r['key']}_epochs.png)"]
        if r["digits_png"]:
            figs.append(f"![each digit on request]({r['digits_png']})")
        if r.get("diversity"):
            figs.append("\n".join(diversity_table(r["diversity"])))
        seen = OBSERVED.get(r["key"]) if r["defaults"] else None
        text = f"\n\n{seen}" if seen else ""
        sections.append(f"### {r['title']}\n\n" + "\n\n".join(figs) + text)
    page = "# MNIST sample grids\n\n" + "\n".join(head) + "\n\n" + "\n\n".join(sections) + "\n"
    block = (
        "\n".join(head)
        + "\n\n"
        + "\n\n".join(sections).replace("](mnist_", "](results/mnist_").replace("### ", "#### ")
        + "\n\nAlso in [results/mnist_grids.md](results/mnist_grids.md)."
    )
    return page, block


def write_pages(summary: dict[str, Any]) -> None:
    page, block = describe(summary)
    (RESULTS / "mnist_grids.md").write_text(page)
    update_readme("mnist_grids", block)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mlp-epochs", type=int, default=DEFAULT_EPOCHS["mlp"])
    parser.add_argument("--dcgan-epochs", type=int, default=DEFAULT_EPOCHS["dcgan"])
    parser.add_argument("--cond-epochs", type=int, default=DEFAULT_EPOCHS["conditional"])
    parser.add_argument("--only", default="mlp,dcgan,conditional", help="comma-separated: mlp, dcgan, conditional")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite the markdown from results/mnist_grids.json, no training"
    )
    args = parser.parse_args(argv)
    single_thread()
    epochs = {"mlp": args.mlp_epochs, "dcgan": args.dcgan_epochs, "conditional": args.cond_epochs}
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = set(keys) - set(RUNS)
    if unknown:
        parser.error(f"unknown run(s) {sorted(unknown)}; choose from {', '.join(RUNS)}")
    if args.render_only:
        write_pages(json.loads(SUMMARY.read_text()))
        return
    start = time.monotonic()
    outcomes = [run_one(RUNS[k], epochs[k], args.data_root) for k in keys]
    total = time.monotonic() - start
    flags = {"mlp": f"--mlp-epochs {args.mlp_epochs}", "dcgan": f"--dcgan-epochs {args.dcgan_epochs}"}
    flags["conditional"] = f"--cond-epochs {args.cond_epochs}"
    command = f"python -m experiments.mnist_grids {' '.join(flags[k] for k in keys)} --only {','.join(keys)}"
    previous = json.loads(SUMMARY.read_text()) if SUMMARY.exists() else None
    runs = merge(previous, [row(o, command) for o in outcomes])
    defaults = all(r["defaults"] for r in runs) and [r["key"] for r in runs] == list(RUNS)
    summary = {"command": command, "total_s": round(total, 1), "defaults": defaults, "runs": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    SUMMARY.write_text(json.dumps(summary, indent=2) + "\n")
    write_pages(summary)


if __name__ == "__main__":
    main()
