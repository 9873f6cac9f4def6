"""`/generate`: images from a served generator, as PNG (or base64 PNGs in JSON).

A request is checked and its model resolved first (service/api/generation.py: every 4xx before anything is
sent). An answer for an explicit seed may then come from its ETag (304) or the in-process cache
(service/api/caching.py); otherwise its seeds (or latent) go to the render process, which batches them with
other requests' rows, draws the latents, runs the forward and encodes the PNGs, while the event loop awaits
the answer (service/serving/render_process.py). The route and its dependencies are `async`: no hop through
FastAPI's thread pool, except to look up a model not yet loaded.
"""

import base64
import secrets
from dataclasses import dataclass
from typing import Annotated

import torch
from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from core.settings import Settings
from core.train_config import NAME_PATTERN
from service.api.caching import Answer, cache_control, etag, etag_matches
from service.api.errors import error_responses
from service.api.generation import (
    check_count,
    check_image_model,
    check_label,
    check_latent,
    resolve,
    shareable,
    unrendered_is_503,
)
from service.api.schemas import GeneratedImages, GenerateRequest
from service.security.auth import Principal, public_generate
from service.serving.batching import Seeds
from service.serving.encoding import PNG_LEVEL, Form
from service.serving.registry import LoadedModel
from service.state import AppState, StateDep
from training.latents import MAX_SEED

# Open to anonymous callers (rate-limited per IP) unless GANSERVE_PUBLIC_GENERATE=false: then scope `generate`.
router = APIRouter(tags=["generate"], dependencies=[Depends(public_generate)], responses=error_responses(401, 403, 429))
# The same dependency as the router's (FastAPI runs it once per request): who asks, for private models.
Caller = Annotated[Principal | None, Depends(public_generate)]

DESCRIPTION = f"""
Generate images with a served generator.

**From seed to latent.** A seed `s` (an integer in 0 … {MAX_SEED}) becomes the latent

    z = numpy.random.RandomState(s).randn(latent_dim).astype(numpy.float32)

(NumPy's legacy Mersenne-Twister stream, frozen by NumPy's compatibility policy, the mapping StyleGAN's
`gen_images.py` uses), and the generator runs in eval mode, float32, on the CPU, in forwards of a fixed
shape: `GANSERVE_BATCH_MAX` rows, concurrent requests batched together and a short batch padded. For one
shape a row's output depends on its own latent only, so a deployment returns byte-identical PNGs for the
same seed, model and version, whatever else is in flight. A deployment with another `GANSERVE_BATCH_MAX`
may differ in the floats' low-order bits, and so, occasionally, in a pixel.

Without `model`, the default model at its pinned version (`GANSERVE_DEFAULT_MODEL_VERSION`) unless
`version` is given; with `model` and no `version`, its newest servable version. A private model is served to its
owner, the keys granted it and `admin` keys only: to any other caller it is a 404 `model_not_found`.

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
sample them with `ganserve sample`.

**Caching.** `GET` with a `seed` answers with a strong `ETag`; with a `version` too the answer never changes
(`Cache-Control: public, max-age=31536000, immutable`; `private` for a private model), without one it may
(`no-cache`: the latest version can change). The ETag names the weights' SHA-256, and the body always comes
from those weights. `If-None-Match` naming the current ETag is answered 304, without a body. Without a seed the
image is random: `no-store`.
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
            "ETag": {"description": "GET with a seed: the answer's strong validator."},
            "Cache-Control": {"description": "GET: immutable with a `version` and a `seed`, else no-cache / no-store."},
        },
    },
    304: {"description": "GET with a seed whose ETag `If-None-Match` names: no body."},
    **error_responses(404, 422, 503),
}


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "").lower()
    return "application/json" in accept and "image/png" not in accept


def _joined(values: list[int]) -> str:
    return ",".join(map(str, values))


@dataclass(frozen=True)
class _Plan:
    """A checked request: what to render, with which model."""

    model: LoadedModel
    seeds: list[int] | None  # None: an explicit latent
    latent: list[float] | None
    labels: list[int] | None
    generators: list[int] | None
    seeded: bool  # the caller chose the seed: the answer is the same every time, and cacheable
    as_json: bool

    def headers(self) -> dict[str, str]:
        headers = {"X-Model": self.model.name, "X-Model-Version": str(self.model.version)}
        if self.seeds is not None:
            headers["X-Seed"] = str(self.seeds[0])
        if self.labels is not None:
            headers["X-Labels"] = _joined(self.labels)
        if self.generators is not None:
            headers["X-Generators"] = _joined(self.generators)
        return headers

    def etag(self, label: int | None) -> str:
        assert self.seeds is not None
        m = self.model
        answer = "json" if self.as_json else "png"
        seed, count = self.seeds[0], len(self.seeds)
        return etag(
            "generate/1", m.name, m.version, m.weights_sha256, seed, count, label, answer, m.batch_rows, PNG_LEVEL
        )


def _plan(
    model: LoadedModel,
    *,
    where: str,
    seed: int | None,
    latent: list[float] | None,
    count: int,
    label: int | None,
    as_json: bool,
) -> _Plan:
    """Every check of the request against its model (the count was checked before the model was resolved)."""
    seeded = seed is not None
    if latent is None and seed is None:
        # Drawn so that the whole run seed … seed+count−1 stays in range.
        seed = secrets.randbelow(MAX_SEED + 2 - max(count, 1))
    check_image_model(model)
    check_label(model, label, where, explicit_latent=latent is not None)
    if latent is not None:
        check_latent(model, latent, where)
        labels = [label] if label is not None else None
        generators = [0] if model.num_generators is not None else None
        return _Plan(model, None, latent, labels, generators, seeded=False, as_json=as_json)
    assert seed is not None
    seeds = list(range(seed, seed + count))
    labels = model.labels_for(seeds, label)
    return _Plan(model, seeds, None, labels, model.generators_for(seeds), seeded=seeded, as_json=as_json)


def _answer(plan: _Plan, output: list[bytes] | bytes) -> Answer:
    """The render process's output (one PNG, or one per image for JSON) as the answer's body."""
    if not plan.as_json:
        assert isinstance(output, bytes)
        return Answer(output, "image/png")
    assert isinstance(output, list)
    body = GeneratedImages(
        model=plan.model.name,
        version=plan.model.version,
        seeds=plan.seeds,
        images=[base64.b64encode(png).decode("ascii") for png in output],
        labels=plan.labels,
        generators=plan.generators,
    )
    # The fields of conditional / MAD-GAN models are left out for the others, whose answer is unchanged.
    absent = {k for k in ("labels", "generators") if getattr(body, k) is None}
    return Answer(bytes(JSONResponse(body.model_dump(mode="json", exclude=absent)).body), "application/json")


async def _generate(
    request: Request,
    state: AppState,
    *,
    where: str,
    seed: int | None,
    latent: list[float] | None,
    model_name: str | None,
    version: int | None,
    count: int,
    label: int | None = None,
    principal: Principal | None = None,
) -> Response:
    settings: Settings = state.settings
    check_count(settings, count, seed, where)  # first: a random seed needs a count within bounds
    model = await resolve(state, model_name, version, principal)
    plan = _plan(model, where=where, seed=seed, latent=latent, count=count, label=label, as_json=_wants_json(request))
    headers = plan.headers()
    key = plan.etag(label) if plan.seeded else None
    if request.method == "GET":
        if key is None:
            headers["Cache-Control"] = "no-store"  # a random seed: another image next time
        else:
            headers.update(
                {
                    "ETag": key,
                    "Cache-Control": cache_control(pinned=version is not None, public=shareable(state, plan.model)),
                    "Vary": "Accept",
                }
            )
            if etag_matches(request.headers.get("if-none-match"), key):
                return Response(status_code=304, headers=headers)
    answer = state.answers.get(key) if key is not None else None
    if answer is None:
        # Batched, rendered and encoded by the render process: the loop only awaits.
        form: Form = "pngs" if plan.as_json else "grid"
        inputs = Seeds(plan.seeds) if plan.seeds is not None else torch.tensor([plan.latent], dtype=torch.float32)
        with unrendered_is_503():
            output = await state.renderer.render(plan.model, inputs, plan.labels, plan.generators, form)
        answer = _answer(plan, output)
        if key is not None:
            state.answers.put(key, answer)
    state.metrics.generated_images.inc(1 if plan.seeds is None else len(plan.seeds))
    return Response(answer.body, media_type=answer.media_type, headers=headers)


# `async` endpoints: they await the render process rather than hold a thread of FastAPI's pool for the request.
@router.get(
    "/generate",
    summary="Generate images from a seed",
    description=DESCRIPTION,
    response_class=Response,
    responses=PNG_RESPONSES,
)
async def generate_get(
    request: Request,
    state: StateDep,
    principal: Caller,
    seed: Annotated[
        int | None,
        Query(ge=0, le=MAX_SEED, description="Seed of the (first) image; random when omitted.", examples=[42]),
    ] = None,
    model: Annotated[
        str | None, Query(pattern=NAME_PATTERN, description="Model name; the default model when omitted.")
    ] = None,
    version: Annotated[
        int | None,
        Query(ge=1, description="Model version; the latest when omitted (without `model`: the pinned default)."),
    ] = None,
    count: Annotated[int, Query(ge=1, description="Images in the grid (at most the server's max_count).")] = 1,
    label: Annotated[
        int | None,
        Query(ge=0, description="Conditional models: the class of every image; seed mod num_classes when omitted."),
    ] = None,
) -> Response:
    return await _generate(
        request,
        state,
        where="query",
        seed=seed,
        latent=None,
        model_name=model,
        version=version,
        count=count,
        label=label,
        principal=principal,
    )


@router.post(
    "/generate",
    summary="Generate images from a seed or an explicit latent",
    description=DESCRIPTION,
    response_class=Response,
    responses=PNG_RESPONSES,
)
async def generate_post(
    request: Request,
    state: StateDep,
    principal: Caller,
    body: Annotated[GenerateRequest, Body()] = GenerateRequest(),
) -> Response:
    return await _generate(
        request,
        state,
        where="body",
        seed=body.seed,
        latent=body.latent,
        model_name=body.model,
        version=body.version,
        count=body.count,
        label=body.label,
        principal=principal,
    )
