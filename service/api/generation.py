"""What /generate and /interpolate share: finding the model a request names (404s), checking the request
against it (422s), and what a request the render process did not render is (a 503)."""

import contextlib
from collections.abc import Iterator

from starlette.concurrency import run_in_threadpool

from core.settings import Settings
from service.api.errors import APIError, validation_error
from service.serving.registry import LoadedModel, ModelNotFound, ModelRegistry
from service.serving.render_process import RendererClosed
from service.state import AppState
from training.latents import MAX_SEED


async def resolve(state: AppState, name: str | None, version: int | None) -> LoadedModel:
    """The model `name` (the default model when None) at `version` (the latest when None), or a 404. A loaded
    model is found on the event loop; one to look up or load from disk, in a thread."""
    settings: Settings = state.settings
    model = state.registry.get_if_ready(name or settings.default_model, version)
    if model is None:
        model = await run_in_threadpool(_get, state.registry, name or settings.default_model, version)
    return model


def _get(registry: ModelRegistry, name: str, version: int | None) -> LoadedModel:
    try:
        return registry.get(name, version)
    except ModelNotFound as e:
        if e.reason:
            raise APIError(404, "model_unavailable", str(e), detail={"available": e.available}) from None
        raise APIError(
            404, "model_not_found", f"{e} (GET /models lists them)", detail={"available": e.available}
        ) from None


def check_count(settings: Settings, count: int, seed: int | None, where: str) -> None:
    if count > settings.max_count:
        raise validation_error(
            (where, "count"), f"Input should be less than or equal to {settings.max_count}", count, "less_than_equal"
        )
    if seed is not None and seed + count - 1 > MAX_SEED:
        raise validation_error(
            (where, "count"),
            f"seed + count − 1 = {seed + count - 1} exceeds the largest seed {MAX_SEED}; lower the seed or the count",
            count,
        )


def check_image_model(model: LoadedModel) -> None:
    if model.kind != "image":
        raise APIError(
            422,
            "not_an_image_model",
            f"model {model.name} version {model.version} makes {model.kind} of shape "
            f"{list(model.image_shape)}, not images; sample it with "
            f"`ganserve sample {model.name} --seeds 0-999 --out points.npy`",
        )


def check_label(model: LoadedModel, label: int | None, where: str, explicit_latent: bool) -> None:
    if label is not None and model.num_classes is None:
        raise validation_error(
            (where, "label"),
            f"model {model.name} version {model.version} is not class-conditional and takes no label",
            label,
            "label_not_accepted",
        )
    if label is not None and model.num_classes is not None and label >= model.num_classes:
        raise validation_error(
            (where, "label"),
            f"model {model.name} version {model.version} has classes 0 … {model.num_classes - 1}, got {label}",
            label,
            "label_out_of_range",
        )
    if explicit_latent and label is None and model.num_classes is not None:
        # With a seed the class defaults to seed mod num_classes; a bare latent has nothing to derive it from.
        raise validation_error(
            (where, "label"),
            f"model {model.name} version {model.version} is class-conditional: give a `label` "
            f"(0 … {model.num_classes - 1}) with a `latent`",
            None,
            "missing",
        )


def check_latent(model: LoadedModel, latent: list[float], where: str) -> None:
    if len(latent) != model.latent_dim:
        raise validation_error(
            (where, "latent"),
            f"model {model.name} version {model.version} takes a latent of exactly {model.latent_dim} numbers, "
            f"got {len(latent)}",
            None,
            "latent_size",
        )


@contextlib.contextmanager
def unrendered_is_503() -> Iterator[None]:
    """A request the render process did not render (it is stopping, or restarting) is a 503 with Retry-After."""
    try:
        yield
    except RendererClosed as e:
        raise APIError(503, e.code, f"{e}; try again.", headers={"Retry-After": "1"}) from None
