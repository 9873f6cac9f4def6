"""What /generate and /interpolate share: finding the model a request names (404s: a name that does not exist,
and a private one the caller may not read, alike), checking the request against it (422s), and what a request
the render process did not render is (a 503)."""

import contextlib
from collections.abc import Iterator

from starlette.concurrency import run_in_threadpool

from core.keys import Scope
from core.settings import Settings
from service.api.errors import APIError, validation_error
from service.security.auth import Principal
from service.serving.registry import LoadedModel, ModelNotFound, ModelRegistry
from service.serving.render_process import RendererClosed
from service.state import AppState
from training.latents import MAX_SEED


async def resolve(
    state: AppState, name: str | None, version: int | None, principal: Principal | None = None
) -> LoadedModel:
    """The model `name` at `version` (the latest when None), or a 404; naming no model is the default model
    (Settings.default_model) at `version`, or at its pinned default_model_version when None. A private model
    `principal` may not read is a 404 exactly as for a name that does not exist. A loaded model is found on the
    event loop; one to look up or load from disk, and the claims when they are due a re-read, in a thread."""
    settings: Settings = state.settings
    registry = state.registry
    if name is None:  # the default model, at its pinned version unless the request names one
        name, version = settings.default_model, version or settings.default_model_version
    if not registry.claims_fresh():
        await run_in_threadpool(registry.claims)
    key, admin = (principal.name, principal.allows(Scope.admin)) if principal is not None else (None, False)
    if not registry.readable(name, key, admin=admin):
        raise not_found(registry, name, version, principal)
    model = registry.get_if_ready(name, version)
    if model is None:
        model = await run_in_threadpool(_get, registry, name, version, principal)
    return model


def shareable(state: AppState, model: LoadedModel) -> bool:
    """A shared cache may keep `model`'s answers (`Cache-Control: public`): anonymous callers are served and the
    model is readable by anyone; a private model's answers are `private` (the caller's own cache only)."""
    return state.settings.public_generate and state.registry.readable(model.name, None)


def readable_names(registry: ModelRegistry, principal: Principal | None) -> list[str]:
    """The names `principal` may be served (what a 404 lists: never another key's private model)."""
    if principal is None:
        return registry.names(None, admin=False)
    return registry.names(principal.name, admin=principal.allows(Scope.admin))


def not_found(registry: ModelRegistry, name: str, version: int | None, principal: Principal | None) -> APIError:
    available = readable_names(registry, principal)
    return APIError(
        404,
        "model_not_found",
        f"{ModelNotFound(name, version, available)} (GET /models lists them)",
        detail={"available": available},
    )


def _get(registry: ModelRegistry, name: str, version: int | None, principal: Principal | None) -> LoadedModel:
    try:
        return registry.get(name, version)
    except ModelNotFound as e:
        if e.reason:
            available = readable_names(registry, principal)
            raise APIError(404, "model_unavailable", str(e), detail={"available": available}) from None
        raise not_found(registry, name, version, principal) from None


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
