"""Images: `ganserve sample` renders on this machine with /generate's forward and encoding, `ganserve
generate` asks a server, `ganserve interpolate` does either, with /interpolate's render and encoding."""

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from core.settings import Settings
from ganserve.cli import common
from ganserve.cli.common import ApiKey, LocalOrServer, SeedsOption, Server, err, fail, parse_seeds, reported
from ganserve.cli.models import MODEL_HELP, described, load_model, served_model
from ganserve.client import MAX_SEED

if TYPE_CHECKING:
    from service.serving.registry import LoadedModel

REMOTE_RUN = 16  # consecutive seeds fetched per request (the server's GANSERVE_MAX_COUNT is 64 by default)

Label = Annotated[int | None, typer.Option(min=0, help="Class-conditional models: the class of every image.")]
ModelName = Annotated[str | None, typer.Option(help="Model name; default the server's default model.")]
Version = Annotated[int | None, typer.Option(min=1, help="Model version; default the newest.")]


def _bar(total: int, first_seed: int) -> tuple[Progress, TaskID]:
    columns = (TextColumn("seed {task.fields[seed]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    bar = Progress(*columns, TimeRemainingColumn(), console=err())
    return bar, bar.add_task("seeds", total=total, seed=first_seed)


def _runs(seeds: list[int], longest: int) -> Iterator[list[int]]:
    """Consecutive seeds in runs of at most `longest`."""
    run: list[int] = []
    for seed in seeds:
        if run and (seed != run[-1] + 1 or len(run) == longest):
            yield run
            run = []
        run.append(seed)
    if run:
        yield run


def sample(
    model: Annotated[str, typer.Argument(help=MODEL_HELP, metavar="MODEL", show_default=False)],
    seeds: SeedsOption,
    out: Annotated[
        Path, typer.Option(help="A folder for seedNNNN.png, or a .npy file for the float samples.", show_default=False)
    ],
    label: Label = None,
) -> None:
    """Render a model's samples on this machine, as /generate does.

    One PNG per seed, OUT/seed0000.png …: the bytes GET /generate?seed=N answers for the same model and version
    (the same forward and encoding). With --out FILE.npy: the samples as float32, rows in the order of --seeds
    (images N×C×H×W in [0, 1], toy points their raw N×D coordinates)."""
    seed_list = parse_seeds(seeds)
    loaded = load_model(model, Settings())
    to_npy = out.suffix == ".npy"
    if loaded.kind != "image" and not to_npy:
        raise fail(f"model {loaded.name} makes points, not images: write them to a .npy file (--out points.npy)", 2)
    try:
        loaded.labels_for(seed_list, label)
    except ValueError as e:  # a label the model does not take
        raise fail(str(e), 2) from None
    floats: list[np.ndarray] = []
    if not to_npy:
        out.mkdir(parents=True, exist_ok=True)
    rows = loaded.batch_rows  # a forward's rows: one chunk is one forward
    bar, task = _bar(len(seed_list), seed_list[0])
    with bar:
        for chunk in (seed_list[i : i + rows] for i in range(0, len(seed_list), rows)):
            if to_npy:
                floats.append(_floats(loaded, chunk, label))
            else:
                for seed, png in zip(chunk, _pngs(loaded, chunk, label), strict=True):
                    (out / f"seed{seed:04d}.png").write_bytes(png)
            bar.update(task, advance=len(chunk), seed=chunk[-1])
    what = described(loaded)
    if to_npy:
        array = np.concatenate(floats)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, array)
        err().print(f"wrote {len(seed_list)} samples {tuple(array.shape)} of {escape(what)} to {out}")
    else:
        err().print(f"wrote {len(seed_list)} PNGs of {escape(what)} to {out}")


def _pngs(loaded: "LoadedModel", seeds: list[int], label: int | None) -> list[bytes]:
    """/generate's bytes: the registry's render (forwards of `batch_rows` rows, so a row's pixels do not depend on
    its neighbours) and the API's own PNG encoding."""
    from service.serving.encoding import finish

    pngs = finish("pngs", loaded.render_seeds(seeds, label))
    assert isinstance(pngs, list)
    return pngs


def _floats(loaded: "LoadedModel", seeds: list[int], label: int | None) -> np.ndarray:
    """The samples `_pngs` quantises: images mapped from the model's value range to [0, 1], points as they are."""
    samples = loaded.sample_seeds(seeds, label)
    if loaded.kind == "image":
        lo, hi = loaded.value_range
        samples = ((samples - lo) / (hi - lo)).clamp(0, 1)
    return samples.numpy().astype("float32")


def generate(
    seeds: SeedsOption,
    out: Annotated[Path, typer.Option(help="Folder for seedNNNN.png.", file_okay=False, show_default=False)],
    model: ModelName = None,
    version: Version = None,
    label: Label = None,
    server: Server = None,
    api_key: ApiKey = None,
) -> None:
    """Images from a server's /generate.

    One PNG per seed, OUT/seed0000.png …: the bytes GET /generate?seed=N answers. To render on this machine
    instead: `ganserve sample MODEL --seeds … --out DIR`."""
    seed_list = parse_seeds(seeds)
    if server is None:
        raise fail(
            "generate asks a server: give --server URL (or set GANSERVE_SERVER); to render on this machine, "
            "use `ganserve sample MODEL --seeds … --out DIR`",
            2,
        )
    out.mkdir(parents=True, exist_ok=True)
    made_by: dict[str, None] = {}  # without --version, the server may publish a newer one meanwhile
    bar, task = _bar(len(seed_list), seed_list[0])
    with reported(), bar:
        client = common.connect(server, api_key)
        for run in _runs(seed_list, REMOTE_RUN):
            images = client.images(seed=run[0], count=len(run), model=model, version=version, label=label)
            for seed, image in zip(run, images, strict=True):
                (out / f"seed{seed:04d}.png").write_bytes(image.png)
                made_by[f"{image.model} version {image.version}"] = None
            bar.update(task, advance=len(run), seed=run[-1])
    err().print(f"wrote {len(seed_list)} PNGs of {escape(' and '.join(made_by))} at {client.base_url} to {out}")


def interpolate(
    seed_from: Annotated[int, typer.Option("--from", min=0, max=MAX_SEED, help="Seed of the first frame.")],
    seed_to: Annotated[int, typer.Option("--to", min=0, max=MAX_SEED, help="Seed of the last frame.")],
    out: Annotated[Path, typer.Option(help="The file to write.", dir_okay=False, show_default=False)],
    steps: Annotated[int, typer.Option(min=2, max=64, help="Frames, both ends included.")] = 8,
    format: Annotated[str, typer.Option(help="png (a strip of the frames), apng or gif (animations).")] = "png",
    duration_ms: Annotated[int, typer.Option(min=20, max=2000, help="Animations: ms per frame.")] = 100,
    model: ModelName = None,
    version: Version = None,
    label: Annotated[
        int | None, typer.Option(min=0, help="Class-conditional models: the class of every frame.")
    ] = None,
    server: LocalOrServer = None,
    api_key: ApiKey = None,
) -> None:
    """The walk from one seed's image to another's, as a strip or an animation.

    The slerp from seed --from to seed --to as one file: the bytes GET /interpolate answers. Without --server
    the model is loaded here (GANSERVE_CHECKPOINT_DIR's models, then the bundled ones), and rendered and
    encoded, as the API does."""
    if format not in ("png", "apng", "gif"):
        raise fail(f"--format must be png, apng or gif, not {format!r}", code=2)
    with reported():
        if server is None:
            settings = Settings()
            loaded = served_model(model or settings.default_model, version, settings)
            data = _interpolation(loaded, (seed_from, seed_to), steps, label, format, duration_ms)
            maker = described(loaded)
        else:
            client = common.connect(server, api_key)
            fmt: Any = format  # one of the formats, checked above
            answer = client.interpolate(seed_from, seed_to, steps, model, version, label, fmt, duration_ms)
            data, maker = answer.data, f"{answer.model} version {answer.version} at {client.base_url}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    err().print(f"wrote {steps} frames of {escape(maker)} from seed {seed_from} to {seed_to} to {out}")


def _interpolation(
    loaded: "LoadedModel", seeds: tuple[int, int], steps: int, label: int | None, fmt: Any, duration_ms: int
) -> bytes:
    # What /interpolate has the render process do: the same rows and the same encoding of the route's format.
    from service.serving.encoding import FILE_FORMS, finish

    if loaded.kind != "image":
        raise fail(f"model {loaded.name} makes points, not images: interpolation needs an image model", 2)
    try:
        latents, labels, generators = loaded.walk(seeds[0], seeds[1], steps, label)
    except ValueError as e:  # a label the model does not take
        raise fail(str(e), 2) from None
    images = loaded.render(latents, labels, generators)
    data = finish(FILE_FORMS[fmt], images, duration_ms)
    assert isinstance(data, bytes)
    return data
