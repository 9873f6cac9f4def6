"""Training: `ganserve train JOB.json` here (training/loop.py, then published as the worker publishes) or as a
job on a server, and a server's jobs (`jobs`, `job`, `cancel`)."""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from core.settings import Settings
from ganserve.cli import common
from ganserve.cli.common import ApiKey, LocalOrServer, PollS, Server, err, fail, open_database, reported
from ganserve.client import Client, Job

if TYPE_CHECKING:
    from core.train_config import TrainConfig
    from training.loop import TrainResult

JobId = Annotated[str, typer.Argument(help="The id POST /train returned.", metavar="JOB_ID", show_default=False)]


def train(
    config: Annotated[
        Path, typer.Argument(help="The job JSON: the body of POST /train.", metavar="JOB.json", show_default=False)
    ],
    server: LocalOrServer = None,
    api_key: ApiKey = None,
    follow: Annotated[bool, typer.Option(help="With --server: follow the job until it ends.")] = True,
    poll: PollS = 2.0,
    idempotency_key: Annotated[
        str | None, typer.Option(help="With --server: a retry with the same key returns the first job.")
    ] = None,
    gpus: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=64,
            help="With --server: GPUs the job needs on one worker (0: a CPU worker); default: the job file's "
            "`resources`, else the server's choice (1 when a live GPU worker is advertised, else 0).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Here: run directory (default runs/<model_name>).")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Here: datasets (default GANSERVE_DATA_ROOT).")] = None,
    device: Annotated[str, typer.Option(help="Here: auto, cpu or cuda[:N].")] = "auto",
    publish: Annotated[
        bool, typer.Option(help="Here: publish the generator to the volume's models, servable at once.")
    ] = True,
) -> None:
    """Train a GAN from a job file (the body of POST /train), here or on a server.

    Here: checkpoints and sample grids go to the run directory, and the final generator is published to
    GANSERVE_CHECKPOINT_DIR's models (its version printed on stdout). With --server: a job on that server, its
    id printed on stdout and, with --follow, its progress and final losses."""
    if server is None:
        if gpus is not None:
            raise fail("--gpus is for a job on a server (--server); here, --device chooses the device", 2)
        _train_here(config, out, data_root, device, publish)
    else:
        _train_on_server(config, server, api_key, follow, poll, idempotency_key, gpus)


# --- here -----------------------------------------------------------------------------------------------


def read_config(path: Path) -> "TrainConfig":
    """The job file, validated exactly as the body of POST /train; exit code 2 when it is not valid."""
    import pydantic

    from core.recipes import SUBMITTED
    from core.train_config import TrainConfig

    try:  # as submitted: a job naming neither a recipe nor an architecture gets its dataset's default recipe
        return TrainConfig.model_validate_json(path.read_bytes(), context={SUBMITTED: True})
    except OSError as e:
        raise fail(f"cannot read {path}: {e}", 2) from None
    except pydantic.ValidationError as e:
        raise fail(f"{path} is not a valid training config:\n{e}", 2) from None


def _train_here(config: Path, out: Path | None, data_root: Path | None, device: str, publish: bool) -> None:
    from training import checkpoint
    from training.data import DatasetError
    from training.loop import resolve_device

    cfg = read_config(config)
    settings = Settings()
    out = out or Path("runs") / cfg.model_name
    try:
        resolve_device(device)
    except ValueError as e:
        raise fail(str(e), 2) from None
    try:
        result = _train_with_bar(cfg, out, data_root or settings.data_root, device)
    except DatasetError as e:
        raise fail(str(e), 1) from None
    console = err()
    losses = ", ".join(f"{k} {v:.4f}" for k, v in result.losses.items())
    console.print(f"{result.status}: {result.epochs_done} epochs, {result.steps_done} steps; {losses}")
    console.print(f"checkpoint {result.final_checkpoint}, samples {result.samples}")
    if publish and result.final_checkpoint is not None:
        from core.model_versions import ModelVersions
        from core.storage import open_storage

        storage = open_storage(settings.effective_storage_url, settings.s3_endpoint_url)
        versions = ModelVersions(open_database(settings))
        version = checkpoint.publish(storage, versions, cfg.model_name, result.final_checkpoint, result.samples)
        console.print(f"published {cfg.model_name} version {version} to {settings.effective_storage_url}")
        typer.echo(version)


def _train_with_bar(cfg: "TrainConfig", out: Path, data_root: Path, device: str) -> "TrainResult":
    from training.loop import TrainProgress, train

    columns = (
        TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[losses]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err()) as bar:
        task = bar.add_task("train", total=None, epoch=0, epochs=cfg.epochs, losses="")

        def on_progress(p: TrainProgress) -> None:
            text = f"D {p.losses['d_loss']:.3f} G {p.losses['g_loss']:.3f} {p.images_per_sec:.0f} img/s"
            bar.update(task, completed=p.step, total=p.total_steps, epoch=p.epoch, losses=text)
            if p.samples is not None:
                bar.console.log(f"epoch {p.epoch}: {text}, samples {p.samples}")

        return train(cfg, out, data_root=data_root, device=device, progress_fn=on_progress)


# --- on a server ----------------------------------------------------------------------------------------


def _train_on_server(
    config: Path,
    server: str,
    api_key: str | None,
    follow: bool,
    poll: float,
    idempotency_key: str | None,
    gpus: int | None = None,
) -> None:
    try:
        body = json.loads(config.read_bytes())
    except (OSError, ValueError) as e:
        raise fail(f"cannot read {config} as JSON: {e}", 2) from None
    if gpus is not None:
        if not isinstance(body, dict):
            raise fail(f"{config} is not a JSON object", 2)
        body["resources"] = {"gpus": gpus}
    with reported():
        client = common.connect(server, api_key)
        job = client.train(body, idempotency_key=idempotency_key)
        where = f" on queue {job.resources.queue}" if job.resources is not None else ""
        err().print(f"queued job {job.id}: model {escape(job.config.model_name)} at {client.base_url}{where}")
        if job.waiting_for:
            err().print(f"[yellow]{escape(job.waiting_for)}[/yellow]")
        typer.echo(job.id)
        if follow:
            _finish(_follow(client, job.id, poll))


def _losses(metrics: dict[str, float | None]) -> str:
    shown = {k: v for k, v in metrics.items() if v is not None and k in ("d_loss", "g_loss")} or metrics
    return " ".join(f"{k} {v:.3f}" for k, v in shown.items() if v is not None)


def _follow(client: Client, job_id: str, poll_s: float) -> Job:
    columns = (
        TextColumn("{task.fields[status]}"),
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[losses]}"),
        TextColumn("{task.fields[eta]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err()) as bar:
        task = bar.add_task("job", total=None, status="queued", epoch="–", losses="", eta="")
        said: list[str | None] = [None]

        def show(job: Job) -> None:
            if job.waiting_for != said[0]:  # once each time it changes, not at every poll
                said[0] = job.waiting_for
                if job.waiting_for:
                    bar.console.log(f"[yellow]{escape(job.waiting_for)}[/yellow]")
            p = job.progress
            eta = f"ETA {p.eta_seconds:.0f} s" if p and p.eta_seconds is not None and not job.finished else ""
            fields: dict[str, Any] = {"status": job.status, "losses": _losses(job.metrics), "eta": eta}
            if p is not None:
                fields |= {"completed": p.step, "total": p.total_steps, "epoch": f"{p.epoch}/{p.epochs}"}
            bar.update(task, **fields)

        try:
            return client.wait(job_id, poll_s=poll_s, on_progress=show)
        except KeyboardInterrupt:
            bar.stop()
            err().print(f"stopped following; job {job_id} goes on (`ganserve cancel {job_id}` stops it)")
            raise typer.Exit(130) from None


def _finish(job: Job) -> None:
    """The job's outcome; exit code 1 unless it succeeded."""
    console = err()
    colour = {"succeeded": "green", "failed": "red"}.get(job.status, "yellow")
    line = f"job {job.id} [{colour}]{job.status}[/{colour}]"
    if job.model is not None:
        line += f": published {escape(job.model.name)} version {job.model.version}"
    console.print(line)
    if job.error:
        console.print(f"[red]{escape(job.error)}[/red]")
    if job.metrics:
        table = Table("metric", "value", title="final losses")
        for key, value in job.metrics.items():
            table.add_row(key, "n/a" if value is None else f"{value:.4f}")
        Console().print(table)
    if job.status != "succeeded":
        raise typer.Exit(1)


def job(
    job_id: JobId,
    server: Server = None,
    api_key: ApiKey = None,
    follow: Annotated[bool, typer.Option(help="Follow it until it ends.")] = False,
    poll: PollS = 2.0,
) -> None:
    """One training job on a server: its status, progress and losses.

    Exit code 1 once it has ended unless it succeeded."""
    with reported():
        client = common.connect(server, api_key)
        found = _follow(client, job_id, poll) if follow else client.job(job_id)
    if found.finished:
        _finish(found)
    else:
        Console().print(_jobs_table([found]))


def cancel(job_id: JobId, server: Server = None, api_key: ApiKey = None) -> None:
    """Cancel a training job on a server.

    A queued job never starts; a running one stops at its next step."""
    with reported():
        found = common.connect(server, api_key).cancel(job_id)
    err().print(f"job {found.id}: {found.status}" + (" (stops at its next step)" if found.status == "running" else ""))


def _when(job: Job) -> str:
    return job.created_at.astimezone().strftime("%m-%d %H:%M")


def _jobs_table(jobs: list[Job]) -> Table:
    table = Table(title=f"{len(jobs)} training job(s), newest first")
    table.add_column("id", no_wrap=True, min_width=max((len(j.id) for j in jobs), default=2))
    table.add_column("status", no_wrap=True)
    table.add_column("model")
    table.add_column("epochs", justify="right", no_wrap=True)
    table.add_column("created")
    table.add_column("note")
    for j in jobs:
        p = j.progress
        progress = f"{p.epoch}/{p.epochs} ({p.fraction:.0%})" if p else "–"
        note = j.error or j.waiting_for or (f"published v{j.model.version}" if j.model else _losses(j.metrics))
        table.add_row(j.id, j.status, j.config.model_name, progress, _when(j), escape(note))
    return table


def jobs(server: Server = None, api_key: ApiKey = None) -> None:
    """A server's training jobs, newest first.

    Needs a key with scope `train`."""
    with reported():
        found = common.connect(server, api_key).jobs()
    Console().print(_jobs_table(found))
