"""`/models`: what can be served, and how good it is (evaluation jobs)."""

import logging
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Response, status

from core.evaluations import EvaluateRequest, EvaluationRecord
from core.keys import Scope
from core.records import JobStatus, now
from core.tasks import EVALUATE_TASK
from service.api.blobs import png_blob
from service.api.errors import APIError, broker_unavailable, error_responses
from service.api.schemas import ModelDetail, ModelList, ModelSummary
from service.security.auth import AdminKey, Principal, public_generate
from service.serving.registry import ModelNotFound
from service.state import StateDep

log = logging.getLogger(__name__)

# Reading is as open as /generate (GANSERVE_PUBLIC_GENERATE); changing or evaluating a model needs `admin`.
router = APIRouter(prefix="/models", tags=["models"], responses=error_responses(401, 403, 429))
READ = [Depends(public_generate)]


@router.get("", response_model=ModelList, summary="The models that can be served", dependencies=READ)
def list_models(state: StateDep, principal: Annotated[Principal | None, Depends(public_generate)]) -> ModelList:
    """The models the caller may be served (a private one only to its owner, its grantees and admin keys)."""
    key, admin = _reader(principal)
    return ModelList(models=[ModelSummary.model_validate(m) for m in state.registry.list_models(key, admin=admin)])


@router.get(
    "/{name}",
    response_model=ModelDetail,
    summary="One model, with all its versions and their evaluations",
    responses=error_responses(404),
    dependencies=READ,
)
def get_model(
    name: str, state: StateDep, principal: Annotated[Principal | None, Depends(public_generate)]
) -> ModelDetail:
    """A private model the caller may not read is a 404 as for a name that does not exist."""
    key, admin = _reader(principal)
    try:
        return ModelDetail.model_validate(state.registry.describe(name, key, admin=admin))
    except ModelNotFound as e:
        raise APIError(404, "model_not_found", str(e), detail={"available": e.available}) from None


def _reader(principal: Principal | None) -> tuple[str | None, bool]:
    return (principal.name, principal.allows(Scope.admin)) if principal is not None else (None, False)


# `def`: loading the model to check it and sending to the broker are blocking work.
@router.post(
    "/{name}/evaluate",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EvaluationRecord,
    summary="Measure a model's sample quality (FID, KID, IS, precision/recall, coverage, nearest neighbours)",
    description=(
        "Queues an evaluation of one version (default the newest) on the worker: `n` generated images "
        "(seeds 0..n−1) against `n` images of the model's training set. Answers at once with the job "
        "(status `queued`) and its URL in `Location`; when it succeeds its result is also listed under the "
        "version by GET /models/{name}. 503 with `Retry-After` when the broker cannot take it. Needs a key "
        "with scope `admin`."
    ),
    responses=error_responses(404, 422, 503),
)
def evaluate_model(
    name: str,
    response: Response,
    state: StateDep,
    principal: AdminKey,
    body: Annotated[EvaluateRequest, Body()] = EvaluateRequest(),  # no body: all defaults
) -> EvaluationRecord:
    store = state.evaluations
    try:
        model = state.registry.get(name, body.version)
    except ModelNotFound as e:
        raise APIError(404, "model_not_found", str(e), detail={"available": e.available}) from None
    if model.kind != "image":
        raise APIError(
            422,
            "not_an_image_model",
            f"Model {name} makes {model.kind}, and evaluation measures images. Toy models are scored by their "
            f"training job's mode metrics (GET /train/{{id}}/metrics) and `python -m experiments.mode_collapse`.",
            detail={"kind": model.kind},
        )
    record = store.create(
        owner=principal.name,
        model=name,
        version=model.version,
        source=model.source,
        stem=str(model.stem),
        weights_sha256=model.meta.get("sha256"),
        request=body,
    )
    try:
        state.tasks.send(EVALUATE_TASK, record.id)
    except Exception as e:
        reason, error = broker_unavailable("evaluation", record.id, e)
        log.error("evaluation %s: %s", record.id, reason)
        store.update(record.id, status=JobStatus.failed, error=reason, finished_at=now())
        raise error from None
    log.info("evaluation %s queued by key %s: %s v%d, n=%d", record.id, principal.name, name, model.version, body.n)
    response.headers["Location"] = f"/models/{name}/evaluations/{record.id}"
    return record


@router.get(
    "/{name}/evaluations/{eval_id}",
    response_model=EvaluationRecord,
    summary="An evaluation job: its status and, when it has succeeded, its result",
    responses=error_responses(404),
    dependencies=READ,
)
def get_evaluation(
    name: str,
    eval_id: Annotated[str, Path(description="The id returned by POST /models/{name}/evaluate.")],
    state: StateDep,
) -> EvaluationRecord:
    try:
        record = state.evaluations.get(eval_id)
    except KeyError:
        record = None
    if record is None or record.model != name:
        raise APIError(
            404,
            "evaluation_not_found",
            f"No evaluation {eval_id!r} of model {name!r}; POST /models/{name}/evaluate starts one.",
            detail={"id": eval_id, "model": name},
        )
    return record


@router.get(
    "/{name}/evaluations/{eval_id}/nearest-neighbours.png",
    response_class=Response,
    summary="The memorisation check: generated images, each followed by its nearest training images",
    responses={200: {"content": {"image/png": {}}}, **error_responses(404, 503)},
    dependencies=READ,
)
def get_nearest_neighbours(name: str, eval_id: str, state: StateDep) -> Response:
    record = get_evaluation(name, eval_id, state)
    if record.nearest_neighbours_png is None:
        raise APIError(
            404,
            "not_ready",
            f"Evaluation {eval_id} has no nearest-neighbour image yet (status {record.status.value}).",
            detail={"status": record.status.value},
        )
    png = png_blob(state.storage, record.nearest_neighbours_png, f"The image of evaluation {eval_id}", "png_missing")
    return Response(png, media_type="image/png")
