"""`python -m training train|sample`: the training loop and the generator from a terminal, no server needed."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import pydantic
import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from training import checkpoint
from training.config import TrainConfig
from training.data import DatasetError
from training.latents import MAX_SEED, latents_from_seeds, seed_generators, seed_labels
from training.loop import TrainProgress, TrainResult, resolve_device, train

if TYPE_CHECKING:
    from service.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)


def _settings() -> "Settings":
    # Imported late so that `--data-root` and explicit paths work even where the settings cannot load.
    from service.settings import get_settings

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


def resolve_model(spec: str) -> Path:
    """A checkpoint stem/.safetensors/.json, a version directory, a model directory (latest version) or a
    model name (latest version in the models dir, else in the bundled models)."""
    path = Path(spec)
    if path.suffix in {".safetensors", ".json"} and path.is_file():
        return path.with_suffix("")
    if path.is_dir() and (path / f"{checkpoint.MODEL_STEM}.json").is_file():
        return path / checkpoint.MODEL_STEM
    if path.with_suffix(".json").is_file():
        return path
    if path.is_dir() and (versions := checkpoint.list_versions(path.parent, path.name)):
        return checkpoint.model_stem(path.parent, path.name, versions[-1])  # a model directory: its latest
    settings = _settings()
    for models_dir in (settings.models_dir, settings.bundled_models_dir):
        versions = checkpoint.list_versions(models_dir, spec)
        if versions:
            return checkpoint.model_stem(models_dir, spec, versions[-1])
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
