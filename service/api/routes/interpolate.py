"""`/interpolate`: the walk from one seed's image to another's, as a PNG strip or an animation (APNG, GIF).

The frames are the images of latents on the slerp between the two seeds' latents (training/latents.py). They
take /generate's path (service/api/generation.py): the request is checked and its model resolved first, then
an ETag may answer 304 or the in-process cache answer at once; otherwise the latents go to the render
process, batched with /generate's rows, which renders them and encodes the strip or animation
(service/serving/encoding.py). So a frame is the very pixels /generate renders for its latent, and both ends
are /generate's images of `from` and `to`.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from core.settings import Settings
from core.train_config import NAME_PATTERN
from service.api.caching import Answer, cache_control, etag, etag_matches
from service.api.errors import error_responses, validation_error
from service.api.generation import check_image_model, check_label, resolve, shareable, unrendered_is_503
from service.security.auth import Principal, public_generate
from service.serving.encoding import FILE_FORMS, MEDIA_TYPES, PNG_LEVEL, FileFormat, encoder
from service.serving.registry import LoadedModel
from service.state import StateDep
from training.latents import MAX_SEED

MIN_STEPS, MAX_STEPS = 2, 64
# Browsers show GIF frames shorter than 20 ms for 100 ms (an old convention), and GIF counts in centiseconds.
MIN_DURATION_MS, MAX_DURATION_MS = 20, 2000


# Same access as /generate: open to anonymous callers (rate-limited) unless GANSERVE_PUBLIC_GENERATE=false.
router = APIRouter(tags=["generate"], dependencies=[Depends(public_generate)], responses=error_responses(401, 403, 429))

DESCRIPTION = f"""
The images on the way from seed `from` to seed `to`: `steps` frames, the first `from`'s image and the last
`to`'s, each exactly the image `/generate` renders for its latent (same model, version and forward shape).

**Slerp.** Frame i (of n = `steps`) is rendered from the latent

    z_i = slerp(z_from, z_to, i / (n − 1)),   slerp(a, b, t) = (sin((1 − t) Ω) a + sin(t Ω) b) / sin Ω

where Ω is the angle between the two seeds' latents (each seed's latent as `/generate` documents it). The
path is an arc, not the straight line: a Gaussian latent of dimension d lies near the sphere of radius √d,
and the straight line's midpoint between two of them has norm ≈ √(d/2), a latent the generator never saw
in training; slerp stays on the sphere (White 2016, "Sampling Generative Networks"). Nearly parallel or
opposite latents (`from` = `to`, say) are interpolated on the line.

**Formats.** `format=png` (the default): one PNG, the frames side by side in one row with 2-pixel black
borders (`steps` × (W + 2) + 2 pixels wide, H + 4 high). `format=apng`: an animated PNG (`image/apng`),
`format=gif`: an animated GIF, each showing the frames in turn for `duration_ms` each, looping forever;
identical consecutive frames are merged into one frame of their summed duration. `steps` is {MIN_STEPS} … {MAX_STEPS}
and at most the server's `GANSERVE_MAX_COUNT`; `duration_ms` is {MIN_DURATION_MS} … {MAX_DURATION_MS} (browsers show
shorter GIF frames for 100 ms).

**Class-conditional models** take a `label`, the class of every frame; without one every frame is of class
`from mod num_classes` (the class `/generate` gives seed `from`), so the last frame is `/generate`'s image of
`to` with `label` = that class. **MAD-GAN models**: every frame is drawn by the generator of `from`
(`from mod k`), so that the walk is through one generator's latent space. **Toy models** (`kind: points`):
422 `not_an_image_model`, as on `/generate`.

The answer names the model, its version and the seeds in `X-Model`, `X-Model-Version` and `X-Seeds`
(`from,to`), and the class or generator of conditional and MAD-GAN models in `X-Label` and `X-Generator`.

**Caching** as `/generate` with a seed: a strong `ETag`; with a `version` the answer never changes
(`Cache-Control: public, max-age=31536000, immutable`), without one `no-cache`. `If-None-Match` naming the
current ETag is answered 304, without a body.
"""

RESPONSES = {
    200: {
        "description": "A PNG strip (`format=png`), an animated PNG (`apng`) or an animated GIF (`gif`).",
        "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES.values()},
        "headers": {
            "X-Seeds": {"description": "The two seeds, `from,to`."},
            "X-Model": {"description": "The model that made the images."},
            "X-Model-Version": {"description": "Its version."},
            "X-Label": {"description": "Conditional models: the class of every frame."},
            "X-Generator": {"description": "MAD-GAN models: the generator of every frame."},
            "ETag": {"description": "The answer's strong validator."},
            "Cache-Control": {"description": "Immutable with a `version`, else no-cache."},
        },
    },
    304: {"description": "The ETag `If-None-Match` names: no body."},
    **error_responses(404, 422, 503),
}


def _check_steps(settings: Settings, steps: int) -> None:
    if steps > settings.max_count:
        raise validation_error(
            ("query", "steps"), f"Input should be less than or equal to {settings.max_count}", steps, "less_than_equal"
        )


def _tag(model: LoadedModel, seeds: tuple[int, int], steps: int, label: int | None, fmt: FileFormat, ms: int) -> str:
    # Everything the bytes depend on; the animations are Pillow's encoding, so its version too.
    duration = None if fmt == "png" else ms
    m = model
    parts = (
        m.name,
        m.version,
        m.weights_sha256,
        *seeds,
        steps,
        label,
        fmt,
        duration,
        encoder(FILE_FORMS[fmt]),
        m.batch_rows,
    )
    return etag("interpolate/1", *parts, PNG_LEVEL)


@router.get(
    "/interpolate",
    summary="Interpolate between two seeds: a PNG strip or an animation",
    description=DESCRIPTION,
    response_class=Response,
    responses=RESPONSES,
)
async def interpolate(
    request: Request,
    state: StateDep,
    principal: Annotated[Principal | None, Depends(public_generate)],
    seed_from: Annotated[int, Query(alias="from", ge=0, le=MAX_SEED, description="Seed of the first frame.")],
    seed_to: Annotated[int, Query(alias="to", ge=0, le=MAX_SEED, description="Seed of the last frame.")],
    steps: Annotated[
        int,
        Query(
            ge=MIN_STEPS,
            le=MAX_STEPS,
            description="Frames, both ends included (2 … 64, and at most the server's max_count).",
        ),
    ] = 8,
    model: Annotated[
        str | None, Query(pattern=NAME_PATTERN, description="Model name; the default model when omitted.")
    ] = None,
    version: Annotated[int | None, Query(ge=1, description="Model version; the latest when omitted.")] = None,
    label: Annotated[
        int | None,
        Query(ge=0, description="Conditional models: the class of every frame; `from` mod num_classes when omitted."),
    ] = None,
    format: Annotated[
        FileFormat, Query(description="`png`: a strip of the frames in one row; `apng`, `gif`: an animation.")
    ] = "png",
    duration_ms: Annotated[
        int,
        Query(ge=MIN_DURATION_MS, le=MAX_DURATION_MS, description="Animations: how long each frame shows, in ms."),
    ] = 100,
) -> Response:
    settings: Settings = state.settings
    _check_steps(settings, steps)
    loaded = await resolve(state, model, version, principal)
    check_image_model(loaded)
    check_label(loaded, label, "query", explicit_latent=False)
    latents, labels, generators = loaded.walk(seed_from, seed_to, steps, label)

    headers = {"X-Model": loaded.name, "X-Model-Version": str(loaded.version), "X-Seeds": f"{seed_from},{seed_to}"}
    if labels is not None:
        headers["X-Label"] = str(labels[0])
    if generators is not None:
        headers["X-Generator"] = str(generators[0])
    key = _tag(loaded, (seed_from, seed_to), steps, label, format, duration_ms)
    headers["ETag"] = key
    headers["Cache-Control"] = cache_control(pinned=version is not None, public=shareable(state, loaded))
    if etag_matches(request.headers.get("if-none-match"), key):
        return Response(status_code=304, headers=headers)

    answer = state.answers.get(key)
    if answer is None:
        with unrendered_is_503():
            body = await state.renderer.render(loaded, latents, labels, generators, FILE_FORMS[format], duration_ms)
        assert isinstance(body, bytes)
        answer = Answer(body, MEDIA_TYPES[format])
        state.answers.put(key, answer)
    return Response(answer.body, media_type=answer.media_type, headers=headers)
