"""`/generate`: images from a served generator, as PNG (or base64 PNGs in JSON)."""

import base64
import secrets
from typing import Annotated

import torch
from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import JSONResponse

from service.deps import RegistryDep, SettingsDep
from service.errors import APIError, error_responses, validation_error
from service.registry import LoadedModel, ModelNotFound, ModelRegistry
from service.schemas import GeneratedImages, GenerateRequest
from service.settings import Settings
from training.config import NAME_PATTERN
from training.images import grid, png_bytes
from training.latents import MAX_SEED

router = APIRouter(tags=["generate"])

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
) -> Response:
    if latent is None and seed is None:
        # Drawn so that the whole run seed … seed+count−1 stays in range.
        seed = secrets.randbelow(MAX_SEED + 2 - max(count, 1))
    _check_count(settings, count, seed, where)
    model = _resolve(registry, settings, model_name, version)

    if latent is not None:
        if len(latent) != model.latent_dim:
            raise validation_error(
                (where, "latent"),
                f"model {model.name} version {model.version} takes a latent of exactly {model.latent_dim} numbers, "
                f"got {len(latent)}",
                None,
                "latent_size",
            )
        seeds = None
        images = model.render(torch.tensor([latent], dtype=torch.float32))
    else:
        assert seed is not None
        seeds = list(range(seed, seed + count))
        images = model.render_seeds(seeds)

    headers = {"X-Model": model.name, "X-Model-Version": str(model.version)}
    if seeds is not None:
        headers["X-Seed"] = str(seeds[0])
    if _wants_json(request):
        body = GeneratedImages(
            model=model.name,
            version=model.version,
            seeds=seeds,
            images=[base64.b64encode(png_bytes(img)).decode("ascii") for img in images],
        )
        return JSONResponse(body.model_dump(mode="json"), headers=headers)
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
    )
