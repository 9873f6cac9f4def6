"""Sample quality: `ganserve evaluate` (FID, KID, IS, precision/recall, coverage, nearest neighbours) here
(training/evaluation.py) or as an evaluation job on a server, and `ganserve classifier`, the MNIST CNN those
metrics use."""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
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

from core.settings import Settings
from ganserve.cli import common
from ganserve.cli.common import ApiKey, LocalOrServer, PollS, err, fail, reported
from ganserve.cli.models import MODEL_HELP, find_checkpoint, parse_name
from ganserve.client import MAX_SEED, Client, Evaluation

if TYPE_CHECKING:
    from training.metrics import ImageMetrics

DataRoot = Annotated[Path | None, typer.Option(help="Here: datasets (default GANSERVE_DATA_ROOT).")]


def evaluate(
    model: Annotated[
        str | None,
        typer.Argument(help=f"{MODEL_HELP} With --server: NAME or NAME:VERSION.", metavar="MODEL", show_default=False),
    ] = None,
    real: Annotated[
        str | None,
        typer.Option(help="Here, instead of a model: the floor of this dataset (held-out vs training images)."),
    ] = None,
    n: Annotated[int, typer.Option(min=2, max=50_000, help="Generated images (seeds 0..n−1), and real ones.")] = 10_000,
    extractor: Annotated[str, typer.Option(help="auto, mnist-cnn or inception.")] = "auto",
    server: LocalOrServer = None,
    api_key: ApiKey = None,
    follow: Annotated[bool, typer.Option(help="With --server: wait for the result.")] = True,
    poll: PollS = 2.0,
    data_root: DataRoot = None,
    nn_png: Annotated[
        Path | None, typer.Option(help="Here: write generated images beside their nearest real ones.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
) -> None:
    """A model's sample quality against its training data, here or on a server.

    FID, KID, IS, precision/recall, class coverage and nearest-neighbour distances, in the feature space of a
    named extractor: here, or as an evaluation job on a server (scope `admin`). With --real DATASET: the same
    metrics of held-out real images, the floor a GAN can reach."""
    if server is None:
        _evaluate_here(model, real, n, extractor, data_root, nn_png, as_json)
        return
    named = parse_name(model) if model is not None and real is None else None
    if named is None:
        raise fail("with --server, give a model as NAME or NAME:VERSION (and no --real)", 2)
    _evaluate_on_server(*named, n, extractor, server, api_key, follow, poll, as_json)


def _evaluate_here(
    model: str | None,
    real: str | None,
    n: int,
    extractor: str,
    data_root: Path | None,
    nn_png: Path | None,
    as_json: bool,
) -> None:
    from training import evaluation, features
    from training.checkpoint import CheckpointError
    from training.data import DatasetError

    if (model is None) == (real is None):
        raise fail("give exactly one of MODEL and --real DATASET", 2)
    if extractor not in features.EXTRACTOR_NAMES:
        raise fail(f"unknown extractor {extractor!r}; known: {', '.join(features.EXTRACTOR_NAMES)}", 2)
    settings = Settings()
    data_root = data_root or settings.data_root
    stem = find_checkpoint(model, settings).stem if model is not None else None
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err()) as bar:
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
            raise fail(str(e), 2) from None
        except (CheckpointError, DatasetError) as e:
            raise fail(str(e), 1) from None
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    title = f"{model} vs its training data" if model is not None else f"{real} floor: held-out vs training images"
    Console().print(metrics_table(result, title))
    if nn_png is not None:
        err().print(f"nearest neighbours: {nn_png}")


def _evaluate_on_server(
    model: str,
    version: int | None,
    n: int,
    extractor: str,
    server: str,
    api_key: str | None,
    follow: bool,
    poll: float,
    as_json: bool,
) -> None:
    with reported():
        client = common.connect(server, api_key)
        evaluation = client.evaluate(model, version=version, n=n, extractor=extractor)
        err().print(f"queued evaluation {evaluation.id} of {escape(model)} version {evaluation.version}")
        typer.echo(evaluation.id)
        if not follow:
            return
        evaluation = _follow(client, evaluation, poll)
    if evaluation.status != "succeeded" or evaluation.result is None:
        raise fail(f"evaluation {evaluation.id} {evaluation.status}: {evaluation.error or 'no result'}")
    if as_json:
        typer.echo(json.dumps(evaluation.result, indent=2))
        return
    title = f"{evaluation.model} version {evaluation.version} vs its training data"
    Console().print(_result_table(evaluation.result, title))


def _follow(client: Client, evaluation: Evaluation, poll_s: float) -> Evaluation:
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err()) as bar:
        task = bar.add_task(evaluation.status)

        def show(e: Evaluation) -> None:
            bar.update(task, description=escape(e.stage or e.status))

        try:
            return client.wait_evaluation(evaluation.model, evaluation.id, poll_s=poll_s, on_progress=show)
        except KeyboardInterrupt:
            bar.stop()
            err().print(f"stopped following; evaluation {evaluation.id} goes on")
            raise typer.Exit(130) from None


def _result_table(result: dict[str, Any], title: str) -> Table:
    """`metrics_table` when the server's result has ImageMetrics' fields (it is that result, from the worker),
    else every figure as it came."""
    from dataclasses import fields

    from training.metrics import ImageMetrics

    names = [f.name for f in fields(ImageMetrics)]
    if all(name in result for name in names):
        values = {name: result[name] for name in names}
        if values["class_histogram"] is not None:
            values["class_histogram"] = tuple(values["class_histogram"])
        return metrics_table(ImageMetrics(**values), title)
    table = Table("metric", "value", title=title)
    for key, value in result.items():
        table.add_row(key, escape(json.dumps(value)))
    return table


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
    if m.label_agreement is not None:
        table.add_row("label agreement", num(m.label_agreement), "samples the classifier puts in the class asked for")
        for c in m.per_class or ():
            table.add_row(
                f"  class {c['label']}",
                f"{num(c['agreement'])}",
                f"n {c['n_fake']}; FID {num(c['fid'], 1)}, precision {num(c['precision'])}, recall {num(c['recall'])}",
            )
    return table


def classifier(
    data_root: DataRoot = None,
    epochs: Annotated[int, typer.Option(min=1, max=1000, help="Passes over the training part.")] = 20,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED)] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Weights file (safetensors); default the one the metrics load.")
    ] = None,
) -> None:
    """Train the MNIST CNN that the `mnist-cnn` metrics use.

    On a fixed split (the official train split, or t10k images 0..7999 when only t10k is present); its accuracy
    on the held-out part (the test split, or t10k 8000..9999) is reported, and printed on stdout."""
    from training import classifier as mnist_cnn
    from training.data import DatasetError
    from training.features import MNIST_CNN_WEIGHTS

    data_root = data_root or Settings().data_root
    out = out or MNIST_CNN_WEIGHTS
    columns = (
        TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    console = err()
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("classifier", total=None, epoch=0, epochs=epochs, status="")

        def on_progress(p: mnist_cnn.ClassifierProgress) -> None:
            bar.update(task, completed=p.step, total=p.total_steps, epoch=p.epoch, status=f"loss {p.loss:.3f}")
            if p.heldout_accuracy is not None:
                bar.console.log(f"epoch {p.epoch}: loss {p.loss:.4f}, held-out accuracy {p.heldout_accuracy:.2%}")

        try:
            result = mnist_cnn.train_mnist_cnn(data_root, epochs=epochs, seed=seed, progress_fn=on_progress)
        except DatasetError as e:
            raise fail(str(e), 1) from None
    mnist_cnn.save_mnist_cnn(out, result)
    per_class = ", ".join(f"{c}: {a:.2%}" for c, a in enumerate(result.per_class_accuracy))
    console.print(f"split: {result.split} ({result.n_train} train, {result.n_heldout} held out)")
    console.print(f"held-out accuracy {result.accuracy:.2%} ({per_class})")
    console.print(f"{result.epochs} epochs, seed {result.seed}, {result.seconds:.0f} s; wrote {out}")
    typer.echo(f"{result.accuracy:.4f}")
