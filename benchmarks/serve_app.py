"""The app `benchmarks/serve_load.py` measures: ganserve's own app plus two benchmark-only routes.

    uvicorn --factory benchmarks.serve_app:create_bench_app

`create_bench_app()` is `service.main.create_app()` with, on the same app and server and behind the same
dependency (`public_generate`: keys, rate limit) and middleware (body-size limit) as /generate:

- `GET /_bench/ceiling?seed=&model=` — a PNG of the model's image size, rendered once (at startup for the
  default model, on first use for another) and returned as bytes: no model, no encoding. What the
  framework and server can answer here at most.
- `GET /_bench/naive?seed=&model=` — /generate written the tutorial way: a plain `def` handler that takes
  the registry's loaded generator, builds the one latent from the seed with the documented mapping,
  runs it on that latent alone under `torch.no_grad`, converts to uint8 and encodes with Pillow. No
  batching, nothing shared between requests.

Neither route is part of the product: they live here, in the benchmark, and nowhere under `service/`.
"""

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from io import BytesIO
from typing import Annotated

import torch
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from core.settings import Settings
from core.train_config import NAME_PATTERN
from service.api.errors import APIError
from service.main import create_app
from service.security.auth import public_generate
from service.serving.registry import LoadedModel, ModelNotFound, ModelRegistry
from training.images import png_bytes
from training.latents import MAX_SEED, latent_from_seed

CEILING_SEED = 0  # the image the ceiling route returns, whatever seed it is asked for

router = APIRouter(prefix="/_bench", tags=["benchmark"], dependencies=[Depends(public_generate)])
Seed = Annotated[int, Query(ge=0, le=MAX_SEED)]
ModelName = Annotated[str | None, Query(pattern=NAME_PATTERN)]


class CeilingImages:
    """One precomputed PNG per model name, made with the product's own renderer and encoder."""

    def __init__(self) -> None:
        self._pngs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def cached(self, name: str) -> bytes | None:
        return self._pngs.get(name)

    def get(self, registry: ModelRegistry, name: str) -> bytes:
        png = self._pngs.get(name)
        if png is None:
            with self._lock:
                png = self._pngs.get(name)
                if png is None:
                    model = registry.get(name)
                    png = self._pngs[name] = png_bytes(model.render_seeds([CEILING_SEED])[0])
        return png


def _model(request: Request, name: str | None) -> LoadedModel:
    settings: Settings = request.app.state.ganserve.settings
    registry: ModelRegistry = request.app.state.ganserve.registry
    try:
        return registry.get(name or settings.default_model)
    except ModelNotFound as e:
        raise APIError(404, "model_not_found", str(e)) from None


@router.get("/ceiling", response_class=Response)
async def ceiling(request: Request, seed: Seed, model: ModelName = None) -> Response:
    # `seed` is parsed and ignored: the request looks like /generate's, the answer costs nothing to make.
    # The default model's PNG is made at startup; another model's once, on its first request (off the loop).
    settings: Settings = request.app.state.ganserve.settings
    images: CeilingImages = request.app.state.bench_ceiling
    name = model or settings.default_model
    try:
        png = images.cached(name) or await run_in_threadpool(images.get, request.app.state.ganserve.registry, name)
    except ModelNotFound as e:
        raise APIError(404, "model_not_found", str(e)) from None
    return Response(png, media_type="image/png")


@router.get("/naive", response_class=Response)
def naive(request: Request, seed: Seed, model: ModelName = None) -> Response:
    # The tutorial handler: FastAPI runs a plain `def` in its thread pool, one request = one forward on one
    # latent, then Pillow. (Loading the weights per request would be slower still; that is not measured.)
    loaded = _model(request, model)
    generator = loaded.generator
    z = latent_from_seed(seed, loaded.latent_dim)
    with torch.no_grad():
        x = generator(z.unsqueeze(0))[0]
    lo, hi = loaded.value_range
    pixels = ((x - lo) / (hi - lo)).clamp(0, 1).mul(255).round().to(torch.uint8)
    array = pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()
    buffer = BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return Response(buffer.getvalue(), media_type="image/png")


def create_bench_app(settings: Settings | None = None) -> FastAPI:
    app = create_app(settings)
    app.state.bench_ceiling = CeilingImages()
    app.include_router(router)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with inner(app):  # the service's own start-up: loads and warms the default model
            state = app.state.ganserve
            await run_in_threadpool(app.state.bench_ceiling.get, state.registry, state.settings.default_model)
            yield

    app.router.lifespan_context = lifespan
    return app
