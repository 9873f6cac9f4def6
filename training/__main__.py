"""`python -m training train|sample|evaluate|classifier`: the training loop, the generator, its sample-quality
metrics and the MNIST classifier behind them, from a terminal, no server needed."""

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import pydantic
import torch
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from core.train_config import TrainConfig
from training import checkpoint, classifier, evaluation, features
from training.data import DatasetError
from training.latents import MAX_SEED, latents_from_seeds, seed_generators, seed_labels
from training.loop import TrainProgress, TrainResult, resolve_device, train

if TYPE_CHECKING:
    from core.settings import Settings
    from training.metrics import ImageMetrics

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)


def _settings() -> "Settings":
    # Imported late so that `--data-root` and explicit paths work even where the settings cannot load.
    from core.settings import get_settings

    return get_settings()


def _fail(message: str, code: int) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def read_config(path: Path) -> TrainConfig:
    """The job file, validated exactly as the body of POST /train; exit code 2 when it is not valid."""
    try:
        return TrainConfig.model_validate_json(path.read_bytes())
    except OSError as e:
        raise _fail(f"cannot read {path}: {e}", 2) from None
    except pydantic.ValidationError as e:
        raise _fail(f"{path} is not a valid training config:\n{e}", 2) from None


@app.command("train")
def train_cmd(
    config: Annotated[Path, typer.Option("--config", help="Job JSON, the same body as POST /train.")],
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<model_name>).")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Default: GANSERVE_DATA_ROOT.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    publish_to: Annotated[Path | None, typer.Option(help="Publish the final generator into this models dir.")] = None,
) -> None:
    """Train a GAN from a job JSON; checkpoints and sample grids go to the run directory."""
    cfg = read_config(config)
    out = out or Path("runs") / cfg.model_name
    data_root = data_root or _settings().data_root
    try:
        resolve_device(device)
    except ValueError as e:
        raise _fail(str(e), 2) from None
    try:
        result = _train_with_bar(cfg, out, data_root, device)
    except DatasetError as e:
        raise _fail(str(e), 1) from None
    losses = ", ".join(f"{k} {v:.4f}" for k, v in result.losses.items())
    console.print(f"{result.status}: {result.epochs_done} epochs, {result.steps_done} steps; {losses}")
    console.print(f"checkpoint {result.final_checkpoint}, samples {result.samples}")
    if publish_to is not None and result.final_checkpoint is not None:
        version = checkpoint.publish(publish_to, cfg.model_name, result.final_checkpoint, result.samples)
        console.print(f"published {cfg.model_name} version {version} to {publish_to}")
        typer.echo(version)


def _train_with_bar(cfg: TrainConfig, out: Path, data_root: Path, device: str) -> TrainResult:
    columns = (
        TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[losses]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("train", total=None, epoch=0, epochs=cfg.epochs, losses="")

        def on_progress(p: TrainProgress) -> None:
            text = f"D {p.losses['d_loss']:.3f} G {p.losses['g_loss']:.3f} {p.images_per_sec:.0f} img/s"
            bar.update(task, completed=p.step, total=p.total_steps, epoch=p.epoch, losses=text)
            if p.samples is not None:
                bar.console.log(f"epoch {p.epoch}: {text}, samples {p.samples}")

        return train(cfg, out, data_root=data_root, device=device, progress_fn=on_progress)


NAME_VERSION = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]{0,63}):(?P<version>[0-9]+)$")


def resolve_model(spec: str, models_dir: Path | None = None) -> Path:
    """A checkpoint stem/.safetensors/.json, a version directory, a model directory (latest version) or a
    model name — `NAME` for its latest version, `NAME:VERSION` for that one — looked up in the models dir
    (`models_dir`, default the settings') and then in the bundled models, the first that has the name winning
    (as the API's registry does)."""
    path = Path(spec)
    if path.suffix in {".safetensors", ".json"} and path.is_file():
        return path.with_suffix("")
    if path.is_dir() and (path / f"{checkpoint.MODEL_STEM}.json").is_file():
        return path / checkpoint.MODEL_STEM
    if path.with_suffix(".json").is_file():
        return path
    if path.is_dir() and (versions := checkpoint.list_versions(path.parent, path.name)):
        return checkpoint.model_stem(path.parent, path.name, versions[-1])  # a model directory: its latest
    match = NAME_VERSION.match(spec)
    name, version = (match["name"], int(match["version"])) if match else (spec, None)
    settings = _settings()
    for root in (models_dir or settings.models_dir, settings.bundled_models_dir):
        versions = checkpoint.list_versions(root, name)
        if not versions:
            continue
        if version is None:
            return checkpoint.model_stem(root, name, versions[-1])
        if version in versions:
            return checkpoint.model_stem(root, name, version)
        raise _fail(f"model {name!r} has no version {version} in {root}; it has {versions}", 2)
    raise _fail(f"no checkpoint, model directory or model named {spec!r}", 2)


@app.command("sample")
def sample_cmd(
    model: Annotated[str, typer.Option(help="Checkpoint path, model version directory or model name.")],
    n: Annotated[int, typer.Option(min=1, max=100_000, help="Number of samples.")],
    out: Annotated[Path, typer.Option(help="Output .npy (see below).")],
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="First seed; samples use seeds S..S+N-1.")] = 0,
    label: Annotated[int | None, typer.Option(min=0, help="Class-conditional models: this class for all.")] = None,
) -> None:
    """Write N samples for seeds S..S+N-1 to a .npy file: images as float32 N×C×H×W in [0, 1] (the interface
    external evaluators read), toy points as their raw float32 N×D coordinates. Seeds map to latents,
    classes and MAD-GAN generators exactly as in /generate."""
    if seed + n - 1 > MAX_SEED:
        raise _fail(f"seeds {seed}..{seed + n - 1} exceed {MAX_SEED}", 2)
    try:
        generator, meta = checkpoint.load_generator(resolve_model(model))
    except checkpoint.CheckpointError as e:
        raise _fail(str(e), 1) from None
    seeds = list(range(seed, seed + n))
    try:
        labels = seed_labels(seeds, meta.get("num_classes") if meta.get("conditional") else None, label)
    except ValueError as e:
        raise _fail(str(e), 2) from None
    generators = seed_generators(seeds, getattr(generator, "num_generators", None))
    z = latents_from_seeds(seeds, int(meta["latent_dim"]))
    chunks = []
    with torch.inference_mode():
        for start in range(0, n, 1024):
            part = slice(start, start + 1024)
            chunks.append(
                generator(
                    z[part],
                    labels=None if labels is None else torch.tensor(labels[part]),
                    generator=None if generators is None else torch.tensor(generators[part]),
                )
            )
    samples = torch.cat(chunks)
    if meta.get("kind", "image") == "image":
        lo, hi = meta.get("value_range", [-1, 1])
        samples = ((samples - lo) / (hi - lo)).clamp(0, 1)
    array = samples.numpy().astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, array)
    console.print(f"wrote {n} samples {tuple(array.shape)} to {out}")


@app.command("evaluate")
def evaluate_cmd(
    model: Annotated[
        str | None, typer.Option(help="Model name (NAME or NAME:VERSION), version directory or checkpoint path.")
    ] = None,
    real: Annotated[
        str | None, typer.Option(help="Instead of a model: the floor of this dataset (held-out real vs real).")
    ] = None,
    n: Annotated[int, typer.Option(min=2, max=50_000, help="Generated images (seeds 0..N-1), and real ones.")] = 10_000,
    models_dir: Annotated[Path | None, typer.Option(help="Default: the settings' models dir.")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Default: GANSERVE_DATA_ROOT.")] = None,
    extractor: Annotated[str, typer.Option(help="auto, mnist-cnn or inception.")] = "auto",
    nn_png: Annotated[Path | None, typer.Option(help="Write generated images beside their nearest real ones.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
) -> None:
    """Sample-quality metrics of a published model against its training data — FID, KID, IS, precision/recall,
    class coverage, nearest-neighbour distances — in the feature space of a named extractor; or, with --real,
    the same metrics of held-out real images, the floor a GAN can reach."""
    if (model is None) == (real is None):
        raise _fail("give exactly one of --model NAME_OR_PATH and --real DATASET", 2)
    if extractor not in features.EXTRACTOR_NAMES:
        raise _fail(f"unknown extractor {extractor!r}; known: {', '.join(features.EXTRACTOR_NAMES)}", 2)
    data_root = data_root or _settings().data_root
    stem = resolve_model(model, models_dir) if model is not None else None
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("starting")

        def on_progress(stage: str) -> None:
            bar.update(task, description=stage)

        try:
            if stem is not None:
                result = evaluation.evaluate_model(
                    stem, n=n, data_root=data_root, extractor=extractor, nn_png=nn_png, progress_fn=on_progress
                )
            else:
                assert real is not None
                on_progress(f"measuring held-out {real} images against its training images")
                result = evaluation.real_floor(real, n=n, data_root=data_root, extractor=extractor)
        except (features.ExtractorUnavailable, ValueError) as e:
            raise _fail(str(e), 2) from None
        except (checkpoint.CheckpointError, DatasetError) as e:
            raise _fail(str(e), 1) from None
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    title = f"{model} vs its training data" if model is not None else f"{real} floor: held-out vs training images"
    Console().print(metrics_table(result, title))
    if nn_png is not None:
        console.print(f"nearest neighbours: {nn_png}")


def metrics_table(m: "ImageMetrics", title: str) -> Table:
    def num(x: float | None, digits: int = 3) -> str:
        return "n/a" if x is None else f"{x:.{digits}f}"

    table = Table(title=f"{title}\n{m.n_fake} vs {m.n_real} images, features: {m.extractor}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("note", style="dim")
    table.add_row("FID", num(m.fid), "lower is better")
    table.add_row("KID", f"{num(m.kid_mean)} ± {num(m.kid_std)}", "mean ± std over subsets; 0 is best")
    best_is = f"at most {m.num_classes}" if m.num_classes else "higher is better"
    table.add_row("IS", f"{num(m.inception_score)} ± {num(m.inception_score_std)}", best_is)
    table.add_row("precision", num(m.precision), f"generated images on the real manifold (k = {m.k})")
    table.add_row("recall", num(m.recall), "real images on the generated manifold")
    if m.classes_covered is not None:
        table.add_row("coverage", f"{m.classes_covered}/{m.num_classes}", f"classes; KL to uniform {num(m.class_kl)}")
    table.add_row("NN distance (pixels)", num(m.nn_pixel), "generated → nearest real, mean; 0 = copies")
    table.add_row("NN distance (features)", num(m.nn_feature), "the same in feature space")
    return table


@app.command("classifier")
def classifier_cmd(
    data_root: Annotated[Path | None, typer.Option(help="Default: GANSERVE_DATA_ROOT.")] = None,
    epochs: Annotated[int, typer.Option(min=1, max=1000, help="Passes over the training part.")] = 20,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED)] = 0,
    out: Annotated[Path, typer.Option(help="Weights file (safetensors).")] = features.MNIST_CNN_WEIGHTS,
) -> None:
    """Train the MNIST CNN whose features and logits the `mnist-cnn` metrics use, on a fixed split (the
    official train split, or t10k images 0..7999 when only t10k is present) and report its accuracy on the
    held-out part (the test split, or t10k 8000..9999)."""
    data_root = data_root or _settings().data_root
    columns = (
        TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("classifier", total=None, epoch=0, epochs=epochs, status="")

        def on_progress(p: classifier.ClassifierProgress) -> None:
            bar.update(task, completed=p.step, total=p.total_steps, epoch=p.epoch, status=f"loss {p.loss:.3f}")
            if p.heldout_accuracy is not None:
                bar.console.log(f"epoch {p.epoch}: loss {p.loss:.4f}, held-out accuracy {p.heldout_accuracy:.2%}")

        try:
            result = classifier.train_mnist_cnn(data_root, epochs=epochs, seed=seed, progress_fn=on_progress)
        except DatasetError as e:
            raise _fail(str(e), 1) from None
    classifier.save_mnist_cnn(out, result)
    per_class = ", ".join(f"{c}: {a:.2%}" for c, a in enumerate(result.per_class_accuracy))
    console.print(f"split: {result.split} ({result.n_train} train, {result.n_heldout} held out)")
    console.print(f"held-out accuracy {result.accuracy:.2%} ({per_class})")
    console.print(f"{result.epochs} epochs, seed {result.seed}, {result.seconds:.0f} s; wrote {out}")
    typer.echo(f"{result.accuracy:.4f}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
