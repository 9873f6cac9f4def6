"""`ganserve`: run the service, generate images, train and evaluate GANs — on this machine or through a
server (`--server URL` or GANSERVE_SERVER), on the Python client (ganserve/client.py).

Local work reuses the code the server runs (service.serving.registry for images, `python -m training`'s commands for
training and evaluation), so a local answer is the server's answer for the same settings. Heavy modules
(torch, the service) are imported inside the commands that need them: talking to a server stays quick.
"""

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
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

from ganserve.client import API_KEY_ENV, MAX_SEED, SERVER_ENV, Client, Evaluation, GanserveError, Job, ModelSummary

if TYPE_CHECKING:
    from service.serving.registry import LoadedModel

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown", help=__doc__)

MAX_SEEDS = 100_000  # one command's images; as `python -m training sample --n`
REMOTE_RUN = 16  # consecutive seeds fetched per request (the server's GANSERVE_MAX_COUNT is 64 by default)

Server = Annotated[
    str | None,
    typer.Option(
        "--server", envvar=SERVER_ENV, help="The ganserve URL, e.g. http://127.0.0.1:8000.", show_default=False
    ),
]
LocalOrServer = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar=SERVER_ENV,
        help="Do it through this ganserve (e.g. http://127.0.0.1:8000) instead of on this machine.",
        show_default=False,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar=API_KEY_ENV, help="Sent as `Authorization: Bearer <key>`.", show_default=False),
]
PollS = Annotated[float, typer.Option("--poll", min=0.1, help="Seconds between polls of the server.")]


def connect(server: str | None, api_key: str | None) -> Client:
    """The client every command talks through (tests swap this for one on an in-process app)."""
    return Client(server, api_key)


def _err() -> Console:
    # Made per use rather than at import: the streams and the terminal's width are those of the call.
    return Console(stderr=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    _err().print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def _reported() -> Iterator[None]:
    """A server's (or the connection's) error as one red line and exit code 1, never a traceback."""
    try:
        yield
    except GanserveError as e:
        raise _fail(str(e)) from None


# --- seeds --------------------------------------------------------------------------------------------

_SEED_PART = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_seeds(text: str) -> list[int]:
    """StyleGAN's `--seeds`: `0-15`, `1,5,9`, `0-3,10` (ranges inclusive) → the seeds in order, each once."""
    seeds: dict[int, None] = {}
    for part in text.split(","):
        match = _SEED_PART.match(part.strip())
        if match is None:
            raise typer.BadParameter(
                f"{part.strip()!r} is neither a seed nor a range A-B; write e.g. 0-15, 1,5,9 or 0-3,10",
                param_hint="--seeds",
            )
        lo = int(match[1])
        hi = int(match[2]) if match[2] is not None else lo
        if hi < lo:
            raise typer.BadParameter(f"the range {part.strip()} runs backwards", param_hint="--seeds")
        if hi > MAX_SEED:
            raise typer.BadParameter(f"seeds go from 0 to {MAX_SEED}, got {hi}", param_hint="--seeds")
        if len(seeds) + hi - lo + 1 > MAX_SEEDS:
            raise typer.BadParameter(f"at most {MAX_SEEDS} seeds at once", param_hint="--seeds")
        seeds.update(dict.fromkeys(range(lo, hi + 1)))
    return list(seeds)


def _runs(seeds: list[int], longest: int) -> Iterator[list[int]]:
    """Consecutive seeds in runs of at most `longest`: one /generate request each."""
    run: list[int] = []
    for seed in seeds:
        if run and (seed != run[-1] + 1 or len(run) == longest):
            yield run
            run = []
        run.append(seed)
    if run:
        yield run


# --- generate -------------------------------------------------------------------------------------------


def _local_model(model: str | None, version: int | None) -> "LoadedModel":
    from core.settings import Settings
    from service.serving.registry import ModelNotFound, ModelRegistry

    settings = Settings()  # the server's GANSERVE_* settings: the same volume, default model and batch rows
    try:
        loaded = ModelRegistry.from_settings(settings).get(model or settings.default_model, version)
    except ModelNotFound as e:
        raise _fail(str(e)) from None
    if loaded.kind != "image":
        raise _fail(f"model {loaded.name} makes points, not images: use `python -m training sample`")
    return loaded


def _local_pngs(loaded: "LoadedModel", seeds: list[int], label: int | None) -> Iterator[tuple[int, bytes, str]]:
    # Exactly what /generate does for one seed: the registry's render (forwards of `batch_rows` rows, so a
    # row's pixels do not depend on its neighbours) and the API's own PNG encoding level.
    from service.api.routes.generate import PNG_LEVEL
    from training.images import png_bytes

    for chunk in _runs(seeds, loaded.batch_rows):
        try:
            images = loaded.render_seeds(chunk, label)
        except ValueError as e:  # a label the model does not take
            raise _fail(str(e)) from None
        for seed, image in zip(chunk, images, strict=True):
            yield seed, png_bytes(image, PNG_LEVEL), f"{loaded.name} version {loaded.version}"


def _remote_pngs(
    client: Client, seeds: list[int], model: str | None, version: int | None, label: int | None
) -> Iterator[tuple[int, bytes, str]]:
    for run in _runs(seeds, REMOTE_RUN):
        images = client.images(seed=run[0], count=len(run), model=model, version=version, label=label)
        for seed, image in zip(run, images, strict=True):
            yield seed, image.png, f"{image.model} version {image.version} at {client.base_url}"


@app.command()
def generate(
    seeds: Annotated[str, typer.Option(help="Seeds: 0-15, 1,5,9 or 0-3,10.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Folder for seedNNNN.png.", file_okay=False, show_default=False)],
    model: Annotated[str | None, typer.Option(help="Model name; default the server's default model.")] = None,
    version: Annotated[int | None, typer.Option(min=1, help="Model version; default the newest.")] = None,
    label: Annotated[
        int | None, typer.Option(min=0, help="Class-conditional models: the class of every image.")
    ] = None,
    server: LocalOrServer = None,
    api_key: ApiKey = None,
) -> None:
    """One PNG per seed, DIR/seed0000.png …: the bytes GET /generate?seed=N answers. Without --server the
    model is loaded here, from GANSERVE_CHECKPOINT_DIR's models or the bundled ones, as the API loads it."""
    seed_list = parse_seeds(seeds)
    out.mkdir(parents=True, exist_ok=True)
    columns = (TextColumn("seed {task.fields[seed]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with _reported(), Progress(*columns, TimeRemainingColumn(), console=_err()) as bar:
        task = bar.add_task("generate", total=len(seed_list), seed=seed_list[0])
        if server is None:
            pngs = _local_pngs(_local_model(model, version), seed_list, label)
        else:
            pngs = _remote_pngs(connect(server, api_key), seed_list, model, version, label)
        made_by: dict[str, None] = {}  # without --version, a server may publish a newer one meanwhile
        for seed, png, maker in pngs:
            (out / f"seed{seed:04d}.png").write_bytes(png)
            made_by[maker] = None
            bar.update(task, advance=1, seed=seed)
    _err().print(f"wrote {len(seed_list)} PNGs of {escape(' and '.join(made_by))} to {out}")


def _local_interpolation(
    loaded: "LoadedModel", seeds: tuple[int, int], steps: int, label: int | None, fmt: Any, duration_ms: int
) -> bytes:
    # What /interpolate does: the same latents, the registry's render, the route's own encoder.
    from service.api.routes.interpolate import encode
    from training.latents import interpolation_latents

    try:
        labels = loaded.labels_for([seeds[0]] * steps, label)
    except ValueError as e:  # a label the model does not take
        raise _fail(str(e)) from None
    latents = interpolation_latents(seeds[0], seeds[1], steps, loaded.latent_dim)
    images = loaded.render(latents, labels, loaded.generators_for([seeds[0]] * steps))
    return encode(images, fmt, duration_ms).body


@app.command()
def interpolate(
    seed_from: Annotated[int, typer.Option("--from", min=0, max=MAX_SEED, help="Seed of the first frame.")],
    seed_to: Annotated[int, typer.Option("--to", min=0, max=MAX_SEED, help="Seed of the last frame.")],
    out: Annotated[Path, typer.Option(help="The file to write.", dir_okay=False, show_default=False)],
    steps: Annotated[int, typer.Option(min=2, max=64, help="Frames, both ends included.")] = 8,
    format: Annotated[str, typer.Option(help="png (a strip of the frames), apng or gif (animations).")] = "png",
    duration_ms: Annotated[int, typer.Option(min=20, max=2000, help="Animations: ms per frame.")] = 100,
    model: Annotated[str | None, typer.Option(help="Model name; default the server's default model.")] = None,
    version: Annotated[int | None, typer.Option(min=1, help="Model version; default the newest.")] = None,
    label: Annotated[
        int | None, typer.Option(min=0, help="Class-conditional models: the class of every frame.")
    ] = None,
    server: LocalOrServer = None,
    api_key: ApiKey = None,
) -> None:
    """The slerp from seed --from to seed --to as one file: the bytes GET /interpolate answers. Without
    --server the model is loaded here, as the API loads it."""
    if format not in ("png", "apng", "gif"):
        raise _fail(f"--format must be png, apng or gif, not {format!r}", code=2)
    with _reported():
        if server is None:
            loaded = _local_model(model, version)
            data = _local_interpolation(loaded, (seed_from, seed_to), steps, label, format, duration_ms)
            maker = f"{loaded.name} version {loaded.version}"
        else:
            client = connect(server, api_key)
            fmt: Any = format  # one of the formats, checked above
            answer = client.interpolate(seed_from, seed_to, steps, model, version, label, fmt, duration_ms)
            data, maker = answer.data, f"{answer.model} version {answer.version} at {client.base_url}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    _err().print(f"wrote {steps} frames of {escape(maker)} from seed {seed_from} to {seed_to} to {out}")


# --- training -------------------------------------------------------------------------------------------


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="The job JSON: the body of POST /train.", show_default=False)],
    server: LocalOrServer = None,
    api_key: ApiKey = None,
    follow: Annotated[bool, typer.Option(help="With --server: follow the job until it ends.")] = True,
    poll: PollS = 2.0,
    idempotency_key: Annotated[
        str | None, typer.Option(help="With --server: a retry with the same key returns the first job.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Local: run directory (default runs/<model_name>).")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Local: datasets (default GANSERVE_DATA_ROOT).")] = None,
    device: Annotated[str, typer.Option(help="Local: auto, cpu or cuda[:N].")] = "auto",
    publish: Annotated[
        bool, typer.Option(help="Local: publish the generator to the volume's models, servable at once.")
    ] = True,
) -> None:
    """Train a GAN: here (python -m training train, then published as the worker would) or as a job on a
    server, printing its id (stdout) and, with --follow, its progress and final losses."""
    if server is None:
        from core.settings import Settings
        from training.__main__ import train_cmd

        train_cmd(config, out, data_root, device, publish_to=Settings().models_dir if publish else None)
        return
    try:
        body = json.loads(config.read_bytes())
    except (OSError, ValueError) as e:
        raise _fail(f"cannot read {config} as JSON: {e}", 2) from None
    with _reported():
        client = connect(server, api_key)
        job = client.train(body, idempotency_key=idempotency_key)
        _err().print(f"queued job {job.id}: model {escape(job.config.model_name)} at {client.base_url}")
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
    with Progress(*columns, console=_err()) as bar:
        task = bar.add_task("job", total=None, status="queued", epoch="–", losses="", eta="")

        def show(job: Job) -> None:
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
            _err().print(f"stopped following; job {job_id} goes on (`ganserve cancel {job_id}` stops it)")
            raise typer.Exit(130) from None


def _finish(job: Job) -> None:
    """The job's outcome; exit code 1 unless it succeeded."""
    err = _err()
    colour = {"succeeded": "green", "failed": "red"}.get(job.status, "yellow")
    line = f"job {job.id} [{colour}]{job.status}[/{colour}]"
    if job.model is not None:
        line += f": published {escape(job.model.name)} version {job.model.version}"
    err.print(line)
    if job.error:
        err.print(f"[red]{escape(job.error)}[/red]")
    if job.metrics:
        table = Table("metric", "value", title="final losses")
        for key, value in job.metrics.items():
            table.add_row(key, "n/a" if value is None else f"{value:.4f}")
        Console().print(table)
    if job.status != "succeeded":
        raise typer.Exit(1)


@app.command("job")
def job_cmd(
    job_id: Annotated[str, typer.Argument(help="The id POST /train returned.", show_default=False)],
    server: Server = None,
    api_key: ApiKey = None,
    follow: Annotated[bool, typer.Option(help="Follow it until it ends.")] = False,
    poll: PollS = 2.0,
) -> None:
    """One training job on a server: its status, progress and losses (exit 1 unless it succeeded, once ended)."""
    with _reported():
        client = connect(server, api_key)
        job = _follow(client, job_id, poll) if follow else client.job(job_id)
    if job.finished:
        _finish(job)
    else:
        Console().print(_jobs_table([job]))


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="The id POST /train returned.", show_default=False)],
    server: Server = None,
    api_key: ApiKey = None,
) -> None:
    """Cancel a training job on a server: a queued one never starts, a running one stops at its next step."""
    with _reported():
        job = connect(server, api_key).cancel(job_id)
    _err().print(f"job {job.id}: {job.status}" + (" (stops at its next step)" if job.status == "running" else ""))


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
    for job in jobs:
        p = job.progress
        progress = f"{p.epoch}/{p.epochs} ({p.fraction:.0%})" if p else "–"
        note = job.error or (f"published v{job.model.version}" if job.model else _losses(job.metrics))
        table.add_row(job.id, job.status, job.config.model_name, progress, _when(job), escape(note))
    return table


@app.command()
def jobs(server: Server = None, api_key: ApiKey = None) -> None:
    """The training jobs of a server, newest first (needs a key with scope `train`)."""
    with _reported():
        found = connect(server, api_key).jobs()
    Console().print(_jobs_table(found))


# --- models and evaluation ------------------------------------------------------------------------------


def _local_models() -> list[ModelSummary]:
    from core.settings import Settings
    from service.serving.registry import ModelRegistry

    return [ModelSummary.model_validate(m) for m in ModelRegistry.from_settings(Settings()).list_models()]


@app.command()
def models(server: LocalOrServer = None, api_key: ApiKey = None) -> None:
    """The models that can be served: a server's (GET /models), or without --server those this machine's
    settings point at (the volume's, then the bundled ones), read as the API reads them."""
    with _reported():
        found = _local_models() if server is None else connect(server, api_key).models()
    table = Table(title=f"{len(found)} model(s)")
    table.add_column("name", no_wrap=True, min_width=max((len(m.name) for m in found), default=4))
    for column in ("source", "versions", "kind", "arch", "latent", "shape", "trained on"):
        table.add_column(column)
    for m in found:
        t = m.training
        trained = f"{t.dataset}, {t.epoch} ep." if t and t.dataset else "–"
        if m.conditional:
            trained += f", {m.num_classes} classes"
        shape = "×".join(map(str, m.sample_shape or m.image_shape or [])) or "–"
        versions = ", ".join(map(str, m.versions))
        table.add_row(
            m.name, m.source, versions, m.kind or "–", m.architecture or "–", str(m.latent_dim), shape, trained
        )
        if m.error:
            table.add_row("", "", "", f"[red]{escape(m.error)}[/red]")
    Console().print(table)


def _metrics_table(result: dict[str, Any], title: str) -> Table:
    """`python -m training evaluate`'s table when the result has its fields (it is that result, from the
    worker), else every figure as it came."""
    from dataclasses import fields

    from training.__main__ import metrics_table
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


def _follow_evaluation(client: Client, evaluation: Evaluation, poll_s: float) -> Evaluation:
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=_err()) as bar:
        task = bar.add_task(evaluation.status)

        def show(e: Evaluation) -> None:
            bar.update(task, description=escape(e.stage or e.status))

        try:
            return client.wait_evaluation(evaluation.model, evaluation.id, poll_s=poll_s, on_progress=show)
        except KeyboardInterrupt:
            bar.stop()
            _err().print(f"stopped following; evaluation {evaluation.id} goes on")
            raise typer.Exit(130) from None


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="Model name.", show_default=False)],
    version: Annotated[int | None, typer.Option(min=1, help="Default: the newest.")] = None,
    n: Annotated[int, typer.Option(min=2, max=50_000, help="Generated images (seeds 0..n−1), and real ones.")] = 10_000,
    extractor: Annotated[str, typer.Option(help="auto, mnist-cnn or inception.")] = "auto",
    server: LocalOrServer = None,
    api_key: ApiKey = None,
    follow: Annotated[bool, typer.Option(help="With --server: wait for the result.")] = True,
    poll: PollS = 2.0,
    data_root: Annotated[Path | None, typer.Option(help="Local: datasets (default GANSERVE_DATA_ROOT).")] = None,
) -> None:
    """Sample quality — FID, KID, IS, precision/recall, coverage, nearest neighbours — of a model against its
    training data: here (python -m training evaluate) or as a job on a server (scope `admin`)."""
    if server is None:
        from training.__main__ import evaluate_cmd

        spec = model if version is None else f"{model}:{version}"
        evaluate_cmd(model=spec, n=n, data_root=data_root, extractor=extractor)
        return
    with _reported():
        client = connect(server, api_key)
        evaluation = client.evaluate(model, version=version, n=n, extractor=extractor)
        _err().print(f"queued evaluation {evaluation.id} of {escape(model)} version {evaluation.version}")
        typer.echo(evaluation.id)
        if not follow:
            return
        evaluation = _follow_evaluation(client, evaluation, poll)
    if evaluation.status != "succeeded" or evaluation.result is None:
        raise _fail(f"evaluation {evaluation.id} {evaluation.status}: {evaluation.error or 'no result'}")
    title = f"{evaluation.model} version {evaluation.version} vs its training data"
    Console().print(_metrics_table(evaluation.result, title))


# --- running the service --------------------------------------------------------------------------------


@app.command()
def up() -> None:
    """Start the worker and the API on this machine, without Docker (what `make run` and `python -m service`
    run): the broker is Redis when one answers, else a folder on the volume. Ctrl-C stops both."""
    from service.__main__ import main as run_service

    raise typer.Exit(run_service())


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def keys(ctx: typer.Context) -> None:
    """Make, list and revoke API keys: `ganserve keys create --name me --scopes admin` (python -m service keys)."""
    from core.keys import main as keys_main

    raise typer.Exit(keys_main(list(ctx.args)))


def main() -> None:
    app(prog_name="ganserve")


if __name__ == "__main__":
    main()
