"""`/generate`: images from a served generator, as PNG (or base64 PNGs in JSON)."""

import base64
import secrets
from typing import Annotated

import torch
from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from service.auth import public_generate
from service.deps import RegistryDep, SettingsDep
from service.errors import APIError, error_responses, validation_error
from service.registry import LoadedModel, ModelNotFound, ModelRegistry
from service.schemas import GeneratedImages, GenerateRequest
from service.settings import Settings
from training.config import NAME_PATTERN
from training.images import grid, png_bytes
from training.latents import MAX_SEED

# Open to anonymous callers (rate-limited per IP) unless GANSERVE_PUBLIC_GENERATE=false: then scope `generate`.
router = APIRouter(tags=["generate"], dependencies=[Depends(public_generate)], responses=error_responses(401, 403, 429))

DESCRIPTION = f"""
Generate images with a served generator.

**From seed to latent.** A seed `s` (an integer in 0 … {MAX_SEED}) becomes the latent

    z = numpy.random.RandomState(s).randn(latent_dim).astype(numpy.float32)

(NumPy's legacy Mersenne-Twister stream, frozen by NumPy's compatibility policy, the mapping StyleGAN's
`gen_images.py` uses), and the generator runs in eval mode, float32, on the CPU, one latent at a time.
So the same seed, model and version always give byte-identical PNGs, on any machine.

Without a seed (and without a latent) a random seed is drawn. The seed used is returned in the `X-Seed`
header (the first seed of a grid), with `X-Model` and `X-Model-Version`.

`count` > 1 renders seeds `seed`, `seed`+1, … `seed`+`count`−1 as one grid PNG (as square as possible,
row-major, 2-pixel black borders). With `Accept: application/json` the answer is instead
`{{"model", "version", "seeds", "images"}}` with one base64 PNG per image.

**Class-conditional models** (`conditional` in `GET /models`) take a `label` in 0 … `num_classes`−1: every
image is of that class. Without one, the image of seed `s` is of class `s mod num_classes`, so a grid of
consecutive seeds shows every class in turn; an explicit `latent` needs a `label`. The classes used are
returned in `X-Labels` (comma-separated) and in the JSON's `labels`. A `label` for a model that is not
conditional, or one ≥ `num_classes`, is a 422.

**MAD-GAN models** (`num_generators` k) have k generators, and the seed picks the generator: seed `s` is
drawn by generator `s mod k` (seeds `s` and `s`+k use the same one; an explicit latent uses generator 0).
The generators used are returned in `X-Generators` and in the JSON's `generators`.

**Toy models** (`kind: points`) make points, not images: `/generate` answers 422 `not_an_image_model`;
sample them with `python -m training sample`.
"""

PNG_RESPONSES = {
    200: {
        "model": GeneratedImages,
        "description": "A PNG (one image, or a grid when `count` > 1); JSON when `Accept: application/json`.",
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        "headers": {
            "X-Seed": {"description": "The seed used (the first seed of a grid); absent for an explicit latent."},
            "X-Model": {"description": "The model that made the image."},
            "X-Model-Version": {"description": "Its version."},
            "X-Labels": {"description": "Conditional models: the class of each image, comma-separated."},
            "X-Generators": {"description": "MAD-GAN models: the generator of each image, comma-separated."},
        },
    },
    **error_responses(404, 422),
}


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "").lower()
    return "application/json" in accept and "image/png" not in accept


def _resolve(registry: ModelRegistry, settings: Settings, name: str | None, version: int | None) -> LoadedModel:
    try:
        return registry.get(name or settings.default_model, version)
    except ModelNotFound as e:
        if e.reason:
            raise APIError(404, "model_unavailable", str(e), detail={"available": e.available}) from None
        raise APIError(
            404, "model_not_found", f"{e} (GET /models lists them)", detail={"available": e.available}
        ) from None


def _check_count(settings: Settings, count: int, seed: int | None, where: str) -> None:
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


def _check_image_model(model: LoadedModel) -> None:
    if model.kind != "image":
        raise APIError(
            422,
            "not_an_image_model",
            f"model {model.name} version {model.version} makes {model.kind} of shape "
            f"{list(model.image_shape)}, not images; sample it with "
            f"`python -m training sample --model {model.name} --n N --out points.npy`",
        )


def _check_label(model: LoadedModel, label: int | None, where: str, explicit_latent: bool) -> None:
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


def _render_latent(model: LoadedModel, latent: list[float], label: int | None, where: str) -> torch.Tensor:
    if len(latent) != model.latent_dim:
        raise validation_error(
            (where, "latent"),
            f"model {model.name} version {model.version} takes a latent of exactly {model.latent_dim} numbers, "
            f"got {len(latent)}",
            None,
            "latent_size",
        )
    generators = [0] if model.num_generators is not None else None
    labels = [label] if label is not None else None
    return model.render(torch.tensor([latent], dtype=torch.float32), labels, generators)


def _joined(values: list[int]) -> str:
    return ",".join(map(str, values))


def _generate(
    request: Request,
    registry: ModelRegistry,
    settings: Settings,
    *,
    where: str,
    seed: int | None,
    latent: list[float] | None,
    model_name: str | None,
    version: int | None,
    count: int,
    label: int | None = None,
) -> Response:
    _check_count(settings, count, seed, where)  # first: a random seed below needs a count within bounds
    if latent is None and seed is None:
        # Drawn so that the whole run seed … seed+count−1 stays in range.
        seed = secrets.randbelow(MAX_SEED + 2 - max(count, 1))
    model = _resolve(registry, settings, model_name, version)
    _check_image_model(model)
    _check_label(model, label, where, explicit_latent=latent is not None)

    if latent is not None:
        seeds = None
        images = _render_latent(model, latent, label, where)
        labels = [label] if label is not None else None
        generators = [0] if model.num_generators is not None else None
    else:
        assert seed is not None
        seeds = list(range(seed, seed + count))
        images = model.render_seeds(seeds, label)
        labels = model.labels_for(seeds, label)
        generators = model.generators_for(seeds)

    headers = {"X-Model": model.name, "X-Model-Version": str(model.version)}
    if seeds is not None:
        headers["X-Seed"] = str(seeds[0])
    if labels is not None:
        headers["X-Labels"] = _joined(labels)
    if generators is not None:
        headers["X-Generators"] = _joined(generators)
    if _wants_json(request):
        body = GeneratedImages(
            model=model.name,
            version=model.version,
            seeds=seeds,
            images=[base64.b64encode(png_bytes(img)).decode("ascii") for img in images],
            labels=labels,
            generators=generators,
        )
        # The fields of conditional / MAD-GAN models are left out for the others, whose answer is unchanged.
        absent = {k for k in ("labels", "generators") if getattr(body, k) is None}
        return JSONResponse(body.model_dump(mode="json", exclude=absent), headers=headers)
    png = png_bytes(images[0]) if len(images) == 1 else png_bytes(grid(images))
    return Response(png, media_type="image/png", headers=headers)


# Plain `def` endpoints: FastAPI runs them in its thread pool, so the forward pass and PNG encoding never
# block the event loop.
@router.get(
    "/generate",
    summary="Generate images from a seed",
    description=DESCRIPTION,
    response_class=Response,
    responses=PNG_RESPONSES,
)
def generate_get(
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    seed: Annotated[
        int | None,
        Query(ge=0, le=MAX_SEED, description="Seed of the (first) image; random when omitted.", examples=[42]),
    ] = None,
    model: Annotated[
        str | None, Query(pattern=NAME_PATTERN, description="Model name; the default model when omitted.")
    ] = None,
    version: Annotated[int | None, Query(ge=1, description="Model version; the latest when omitted.")] = None,
    count: Annotated[int, Query(ge=1, description="Images in the grid (at most the server's max_count).")] = 1,
    label: Annotated[
        int | None,
        Query(ge=0, description="Conditional models: the class of every image; seed mod num_classes when omitted."),
    ] = None,
) -> Response:
    return _generate(
        request,
        registry,
        settings,
        where="query",
        seed=seed,
        latent=None,
        model_name=model,
        version=version,
        count=count,
        label=label,
    )


@router.post(
    "/generate",
    summary="Generate images from a seed or an explicit latent",
    description=DESCRIPTION,
    response_class=Response,
    responses=PNG_RESPONSES,
)
def generate_post(
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    body: Annotated[GenerateRequest, Body()] = GenerateRequest(),
) -> Response:
    return _generate(
        request,
        registry,
        settings,
        where="body",
        seed=body.seed,
        latent=body.latent,
        model_name=body.model,
        version=body.version,
        count=body.count,
        label=body.label,
    )
