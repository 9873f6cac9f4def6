"""Models: `ganserve models` (the list), `ganserve models visibility|grant|revoke|grants` (a server's model, changed
by its owner's key or an admin key: PATCH /models/{name}, /models/{name}/grants), and what a MODEL argument of the
local commands names — a model by name (as the API finds it: the volume's models, then the bundled ones), a
published version or model directory, a checkpoint, or a run directory of `ganserve train --out DIR` — loaded as
the API loads it."""

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from core.settings import Settings
from core.train_config import NAME_PATTERN
from ganserve.cli import common
from ganserve.cli.common import ApiKey, LocalOrServer, Server, err, fail, open_database, reported
from ganserve.client import ModelAccess, ModelSummary

if TYPE_CHECKING:
    from service.serving.registry import LoadedModel

NAME_VERSION = re.compile(rf"^(?P<name>{NAME_PATTERN.strip('^$')}):(?P<version>[0-9]+)$")
MODEL_HELP = (
    "A model name (NAME or NAME:VERSION; the volume's models, then the bundled ones), a published version or "
    "model directory, a checkpoint (stem, .json or .safetensors), or a run directory of `ganserve train --out`."
)


@dataclass(frozen=True)
class Checkpoint:
    """Where a MODEL argument points: a checkpoint `stem`, published as `version` of model `name` (in the layout
    `<root>/<name>/<version>/model`), or a run's checkpoint (`version` None, `name` the run's model name)."""

    stem: Path
    name: str
    version: int | None


def find_checkpoint(spec: str, settings: Settings) -> Checkpoint:
    """The checkpoint a MODEL argument names; exit code 2 when it names none."""
    from training import checkpoint, run_state

    path = Path(spec)
    if path.is_dir() and (path / run_state.CHECKPOINTS_DIR).is_dir():  # a run directory: its newest checkpoint
        point = run_state.latest(path)
        if point is None:
            raise fail(f"the run directory {path} has no intact checkpoint", 2)
        return _checkpoint(point.stem)
    if path.is_dir() and (path / f"{checkpoint.MODEL_STEM}.json").is_file():
        return _checkpoint(path / checkpoint.MODEL_STEM)
    if path.is_dir() and (versions := checkpoint.list_versions(path.parent, path.name)):
        return _checkpoint(checkpoint.model_stem(path.parent, path.name, versions[-1]))  # a model: its newest
    if path.suffix in {".safetensors", ".json"} and path.is_file():
        return _checkpoint(path.with_suffix(""))
    if path.with_suffix(".json").is_file():
        return _checkpoint(path)
    named = parse_name(spec)
    if named is None:
        raise fail(f"no checkpoint, model directory, run directory or model named {spec!r}", 2)
    return _published(*named, settings)


def _published(name: str, version: int | None, settings: Settings) -> Checkpoint:
    """Model `name` (its newest version when `version` is None) where the API finds it: the published versions,
    then the bundled ones."""
    model = served_model(name, version, settings)
    return Checkpoint(model.stem, model.name, model.version)


def parse_name(spec: str) -> tuple[str, int | None] | None:
    """`NAME` → (NAME, None), `NAME:VERSION` → (NAME, VERSION); None when `spec` is neither."""
    match = NAME_VERSION.match(spec)
    if match:
        return match["name"], int(match["version"])
    return (spec, None) if re.fullmatch(NAME_PATTERN, spec) else None


def _checkpoint(stem: Path) -> Checkpoint:
    """A stem in the published layout is that version of its model; any other is a run's checkpoint."""
    from training.checkpoint import MODEL_STEM

    version_dir = stem.parent
    model_dir = version_dir.parent
    if stem.name == MODEL_STEM and version_dir.name.isdigit() and re.fullmatch(NAME_PATTERN, model_dir.name):
        return Checkpoint(stem, model_dir.name, int(version_dir.name))
    return Checkpoint(stem, _run_name(stem), None)


def _run_name(stem: Path) -> str:
    from training.checkpoint import CheckpointError, load_metadata

    try:
        name = str(load_metadata(stem).get("model_name") or "")
    except CheckpointError as e:
        raise fail(str(e), 1) from None
    return name if re.fullmatch(NAME_PATTERN, name) else "run"


def load_model(spec: str, settings: Settings) -> "LoadedModel":
    """The model a MODEL argument names, loaded as the API loads it (service/serving/registry.py), so that it
    renders what /generate renders: by name exactly as the API finds it; a run's checkpoint as the model that
    publishing it would serve."""
    from service.serving import registry
    from training.checkpoint import CheckpointError

    named = parse_name(spec)
    if named is not None and not Path(spec).exists():
        return served_model(*named, settings)
    found = find_checkpoint(spec, settings)
    published = found.version is not None
    try:
        return registry.load_model(
            found.stem, found.name, found.version or 0, "volume" if published else "run", settings.batch_max
        )
    except CheckpointError as e:
        raise fail(str(e), 1) from None


def described(model: "LoadedModel") -> str:
    """How the local commands name what they rendered."""
    return str(model.stem) if model.source == "run" else f"{model.name} version {model.version}"


def served_model(name: str, version: int | None, settings: Settings) -> "LoadedModel":
    """Model `name` at `version` (the newest when None), found and loaded exactly as the API does."""
    from service.serving.registry import ModelNotFound, ModelRegistry

    open_database(settings)
    try:
        return ModelRegistry.from_settings(settings).get(name, version)
    except ModelNotFound as e:
        raise fail(str(e), 2) from None


app = typer.Typer()

ModelArg = Annotated[str, typer.Argument(help="The model's name.", metavar="NAME", show_default=False)]
KeyArg = Annotated[
    str,
    typer.Argument(
        help="The API key's name (as `ganserve keys list` shows it), not the key.", metavar="KEY", show_default=False
    ),
]


class Visibility(StrEnum):
    public = "public"
    private = "private"


@app.callback(invoke_without_command=True)
def models(ctx: typer.Context, server: LocalOrServer = None, api_key: ApiKey = None) -> None:
    """The models that can be served, here or by a server; and, on a server, who may be served one.

    Without a command: a server's models (GET /models), or without --server those this machine's settings point at
    (the volume's, then the bundled ones), read as the API reads them. A model belongs to the key that first trained
    it: its owner (or an admin key) makes it public or private and grants other keys read access."""
    if ctx.invoked_subcommand is not None:
        return
    with reported():
        found = _local_models() if server is None else common.connect(server, api_key).models()
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


def _local_models() -> list[ModelSummary]:
    from service.serving.registry import ModelRegistry

    settings = Settings()
    open_database(settings)
    return [ModelSummary.model_validate(m) for m in ModelRegistry.from_settings(settings).list_models()]


@app.command()
def visibility(
    name: ModelArg,
    to: Annotated[
        Visibility,
        typer.Argument(
            help="`public`: served to every caller; `private`: to its owner, admin keys and the keys granted read "
            "access.",
            metavar="public|private",
            show_default=False,
        ),
    ],
    server: Server = None,
    api_key: ApiKey = None,
) -> None:
    """Make a server's model public or private (its owner's key, scope `train`, or an admin key)."""
    with reported():
        access = common.connect(server, api_key).set_visibility(name, to.value)
    _show(access)


@app.command()
def grant(name: ModelArg, key: KeyArg, server: Server = None, api_key: ApiKey = None) -> None:
    """Serve a model to another API key even while it is private (its owner's key or an admin key)."""
    with reported():
        access = common.connect(server, api_key).grant(name, key)
    _show(access)


@app.command()
def revoke(name: ModelArg, key: KeyArg, server: Server = None, api_key: ApiKey = None) -> None:
    """Take a key's read access to a model away (its owner's key or an admin key)."""
    with reported():
        access = common.connect(server, api_key).revoke_grant(name, key)
    _show(access)


@app.command()
def grants(name: ModelArg, server: Server = None, api_key: ApiKey = None) -> None:
    """Who a model belongs to, its visibility and the keys granted read access (its owner's key or an admin key)."""
    with reported():
        access = common.connect(server, api_key).model_access(name)
    _show(access)


def _show(access: ModelAccess) -> None:
    """The model's access on stdout, one line; the grantees one per line after it, for scripts."""
    owner = f"key {access.owner}" if access.owner is not None else "the operator"
    err().print(
        f"model {escape(access.name)}: {access.visibility}, owned by {escape(owner)}, "
        f"{len(access.grants)} key(s) granted read access",
        soft_wrap=True,
    )
    for key in access.grants:
        print(key)
