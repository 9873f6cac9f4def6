"""`/models`: what can be served, and how good it is (evaluation jobs, and each model's card in brief:
service/api/cards.py); who a model belongs to and who may be served it (PATCH /models/{name},
/models/{name}/grants: core/model_names.py).

A model name belongs to the key that claimed it (its first publisher); its owner, or an `admin` key, changes its
visibility and its grants and evaluates it. Another key that may read the name (public, or granted) gets a 403
`not_model_owner`; one that may not gets the 404 a missing model gets, so a private name's existence is not told.
Bundled models belong to nobody: their access never changes (403 `bundled_model`), and only `admin` evaluates them.
An evaluation is shown to the key that started it, the model's owner and `admin` keys (404 to every other caller):
its record and its nearest-neighbours image show the model's training images.
"""

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Response, status

from core.evaluations import EvaluateRequest, EvaluationRecord
from core.keys import Scope
from core.model_names import ModelName, ModelNames, reserved_names
from core.model_versions import ModelVersions
from core.records import JobStatus, now
from core.tasks import EVALUATE_TASK
from service.api.blobs import png_blob
from service.api.cards import model_card
from service.api.errors import APIError, broker_unavailable, error_responses
from service.api.schemas import ModelAccess, ModelDetail, ModelList, ModelSummary, VisibilityChange
from service.security.auth import Principal, TrainKey, public_generate
from service.serving.registry import ModelNotFound
from service.state import AppState, StateDep

log = logging.getLogger(__name__)

# Reading is as open as /generate (GANSERVE_PUBLIC_GENERATE); changing or evaluating a model needs its owner's key
# (scope `train`) or an `admin` key.
router = APIRouter(prefix="/models", tags=["models"], responses=error_responses(401, 403, 429))
READ = [Depends(public_generate)]
Caller = Annotated[Principal | None, Depends(public_generate)]  # None: an anonymous caller (a public server)
KeyName = Annotated[
    str, Path(description="The name of the API key (as `ganserve keys list` shows it), not the key.", max_length=64)
]


@router.get("", response_model=ModelList, summary="The models that can be served", dependencies=READ)
def list_models(state: StateDep, principal: Annotated[Principal | None, Depends(public_generate)]) -> ModelList:
    """The models the caller may be served (a private one only to its owner, its grantees and admin keys)."""
    key, admin = _reader(principal)
    listed = state.registry.list_models(key, admin=admin)
    return ModelList(models=[ModelSummary.model_validate(_with_card(state, m)) for m in listed])


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
        described = state.registry.describe(name, key, admin=admin)
    except ModelNotFound as e:
        raise APIError(404, "model_not_found", str(e), detail={"available": e.available}) from None
    return ModelDetail.model_validate(_with_card(state, described))


def _with_card(state: AppState, summary: dict[str, Any]) -> dict[str, Any]:
    """The registry's summary and the model's card in brief (service/api/cards.py)."""
    return {**summary, "card": model_card(summary, state.settings.bundled_models_dir, state.evaluations)}


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
        "version by GET /models/{name}. 503 with `Retry-After` when the broker cannot take it. Needs the "
        "model's owner's key (scope `train`; at most GANSERVE_MAX_QUEUED_PER_KEY evaluations queued or running, "
        "429 beyond) or an `admin` key; bundled models are evaluated by `admin` keys only."
    ),
    responses=error_responses(404, 422, 503),
)
def evaluate_model(
    name: str,
    response: Response,
    state: StateDep,
    principal: TrainKey,
    body: Annotated[EvaluateRequest, Body()] = EvaluateRequest(),  # no body: all defaults
) -> EvaluationRecord:
    store = state.evaluations
    if not _is_admin(principal):
        # An owner evaluates their own model, as they trained it: the worker time is theirs to spend, bounded
        # like their training jobs. Anything else (another key's model, a bundled one) is an admin's call.
        _owned(state, name, principal, "evaluate it", admin_may=True)
        active = store.count({JobStatus.queued, JobStatus.running}, owner=principal.name)
        if active >= state.settings.max_queued_per_key:
            raise APIError(
                429,
                "too_many_evaluations",
                f"API key {principal.name!r} already has {active} evaluation(s) queued or running, the most this "
                f"server allows (GANSERVE_MAX_QUEUED_PER_KEY={state.settings.max_queued_per_key}). Wait for one to "
                "finish (GET /models/{name}/evaluations/{id}).",
                detail={"active": active, "limit": state.settings.max_queued_per_key},
            )
    try:
        model = state.registry.get(name, body.version)
    except ModelNotFound as e:
        if _is_admin(principal):
            raise APIError(404, "model_not_found", str(e), detail={"available": e.available}) from None
        # Another key is not told every name (private ones among them): only what its own model lacks.
        message = (
            str(e)
            if e.reason
            else f"Model {name!r} has no version {body.version or 'yet'}; GET /models/{name} lists its versions."
        )
        raise APIError(404, "model_not_found", message, detail={"model": name, "version": body.version}) from None
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
    description="Shown to the key that started the evaluation, the model's owner and `admin` keys; 404 to any other "
    "caller (as for an evaluation that does not exist).",
    responses=error_responses(404),
)
def get_evaluation(
    name: str,
    eval_id: Annotated[str, Path(description="The id returned by POST /models/{name}/evaluate.")],
    state: StateDep,
    principal: Caller,
) -> EvaluationRecord:
    store = state.evaluations
    try:
        record = store.get(eval_id)
    except KeyError:
        record = None
    if record is None or record.model != name or not _sees_evaluation(state, name, store.owner(eval_id), principal):
        raise APIError(
            404,
            "evaluation_not_found",
            f"No evaluation {eval_id!r} of model {name!r} that {_who(principal)} may see: an evaluation is shown to "
            "the key that started it, the model's owner and `admin` keys. POST /models/{name}/evaluate starts one.",
            detail={"id": eval_id, "model": name},
        )
    return record


@router.get(
    "/{name}/evaluations/{eval_id}/nearest-neighbours.png",
    response_class=Response,
    summary="The memorisation check: generated images, each followed by its nearest training images",
    description="Shown to whoever may see the evaluation (GET /models/{name}/evaluations/{id}): the images are the "
    "model's training images.",
    responses={200: {"content": {"image/png": {}}}, **error_responses(404, 503)},
)
def get_nearest_neighbours(name: str, eval_id: str, state: StateDep, principal: Caller) -> Response:
    record = get_evaluation(name, eval_id, state, principal)
    if record.nearest_neighbours_png is None:
        raise APIError(
            404,
            "not_ready",
            f"Evaluation {eval_id} has no nearest-neighbour image yet (status {record.status.value}).",
            detail={"status": record.status.value},
        )
    png = png_blob(state.storage, record.nearest_neighbours_png, f"The image of evaluation {eval_id}", "png_missing")
    return Response(png, media_type="image/png")


# --- ownership: visibility and grants (core/model_names.py) ---------------------------------------------------


@router.patch(
    "/{name}",
    response_model=ModelAccess,
    summary="Make a model public or private",
    description='`{"visibility": "public"|"private"}`. A private model is served (and listed) to its owner, '
    "`admin` keys and the keys granted read access only. Its owner's key (scope `train`) or an `admin` key; "
    "another key gets 404 when it may not read the model, 403 `not_model_owner` when it may. Bundled models "
    "belong to nobody and stay public (403 `bundled_model`).",
    responses=error_responses(404, 422),
)
def set_visibility(name: str, body: VisibilityChange, state: StateDep, principal: TrainKey) -> ModelAccess:
    claim = _owned(state, name, principal, "change its visibility")
    _names(state).set_visibility(claim.name, body.visibility)
    log.info("model %s made %s by key %s", name, body.visibility, principal.name)
    return _access(state, name)


@router.get(
    "/{name}/grants",
    response_model=ModelAccess,
    summary="Who a model belongs to, and the keys granted read access to it",
    description="Its owner's key (scope `train`) or an `admin` key.",
    responses=error_responses(404),
)
def get_grants(name: str, state: StateDep, principal: TrainKey) -> ModelAccess:
    _owned(state, name, principal, "see its grants")
    return _access(state, name)


@router.put(
    "/{name}/grants/{key_name}",
    response_model=ModelAccess,
    summary="Grant a key read access to a model",
    description="The key (named as `ganserve keys list` names it) is then served the model, and sees it listed, "
    "even while it is private; it may not change it. Granting again changes nothing. Its owner's key (scope "
    "`train`) or an `admin` key; a key this server does not have is a 422 `unknown_key`.",
    responses=error_responses(404, 422),
)
def grant(name: str, key_name: KeyName, state: StateDep, principal: TrainKey) -> ModelAccess:
    claim = _owned(state, name, principal, "grant access to it")
    if key_name == claim.owner:
        raise APIError(
            422,
            "grant_to_owner",
            f"Key {key_name!r} owns model {name!r} and is served it already; grant read access to another key.",
            detail={"model": name, "key": key_name},
        )
    if key_name not in {entry.name for entry in state.keyring.entries}:
        raise APIError(
            422,
            "unknown_key",
            f"This server has no API key named {key_name!r}. Grant to a key's name (not the key itself), as the "
            "server's operator lists them with `ganserve keys list`.",
            detail={"model": name, "key": key_name},
        )
    if _names(state).grant(name, key_name):
        log.info("model %s: read access granted to key %s by key %s", name, key_name, principal.name)
    return _access(state, name)


@router.delete(
    "/{name}/grants/{key_name}",
    response_model=ModelAccess,
    summary="Take a key's read access to a model away",
    description="A private model is no longer served to that key. Its owner's key (scope `train`) or an `admin` "
    "key; a key without a grant is a 404 `grant_not_found`.",
    responses=error_responses(404),
)
def revoke(name: str, key_name: KeyName, state: StateDep, principal: TrainKey) -> ModelAccess:
    claim = _owned(state, name, principal, "revoke access to it")
    if not _names(state).revoke(name, key_name):
        raise APIError(
            404,
            "grant_not_found",
            f"Key {key_name!r} has no grant on model {name!r}; its grants are {list(claim.grantees) or 'none'} "
            f"(GET /models/{name}/grants).",
            detail={"model": name, "key": key_name, "grants": list(claim.grantees)},
        )
    log.info("model %s: read access of key %s revoked by key %s", name, key_name, principal.name)
    return _access(state, name)


def _names(state: AppState) -> ModelNames:
    return ModelNames(state.db, reserved_names(state.settings.bundled_models_dir))


def _is_admin(principal: Principal | None) -> bool:
    return principal is not None and Scope.admin in principal.scopes


def _who(principal: Principal | None) -> str:
    return f"key {principal.name!r}" if principal is not None else "an anonymous caller"


def _claim(state: AppState, name: str) -> ModelName | None:
    """The claim on `name`. A name whose versions came without one (imported from an older volume's files,
    core/legacy.py) is claimed now for its first version's publisher, public, as migration 0006 claimed those
    already in the database."""
    names = _names(state)
    claim = names.get(name)
    if claim is None and name not in names.reserved:
        published = ModelVersions(state.db).all(name)
        if published:
            claim = names.claim(name, published[0].owner, admin=True)
    return claim


def _owned(state: AppState, name: str, principal: Principal, action: str, *, admin_may: bool = False) -> ModelName:
    """The claim on `name`, when `principal` may change it (its owner, or an `admin` key). Otherwise: a bundled name,
    403 `bundled_model` (`admin_may`: an admin may still do it); a name the key may not read (or none at all), 404
    as for a missing model; one it may read but not change, 403 `not_model_owner`."""
    names = _names(state)
    admin = _is_admin(principal)
    if name in names.reserved and not (admin and admin_may):
        by_admin = " (an `admin` key may)" if admin_may else ""
        raise APIError(
            403,
            "bundled_model",
            f"Model {name!r} is bundled with the server: bundled models belong to nobody and are public, so no key "
            f"may {action}{by_admin}. Train a model of your own (POST /train) for that.",
            detail={"model": name, "owner": None},
        )
    claim = _claim(state, name)
    if claim is None or not claim.readable_by(principal.name, admin=admin):
        raise APIError(
            404,
            "model_not_found",
            f"No model {name!r} that key {principal.name!r} may see; GET /models lists the models it may.",
            detail={"model": name},
        )
    if not claim.owned_by(principal.name, admin=admin):
        who = f"key {claim.owner!r}" if claim.owner is not None else "the operator (it was published not over HTTP)"
        raise APIError(
            403,
            "not_model_owner",
            f"Model {name!r} belongs to {who}: only its owner or an `admin` key may {action}. Key {principal.name!r} "
            "may be served it, not change it; train a model of your own (POST /train) for that.",
            detail={"model": name, "owner": claim.owner, "key": principal.name},
        )
    return claim


def _sees_evaluation(state: AppState, name: str, started_by: str | None, principal: Principal | None) -> bool:
    """The key that started the evaluation, the model's owner and `admin` keys see it."""
    if principal is None:
        return False
    if _is_admin(principal) or (started_by is not None and started_by == principal.name):
        return True
    claim = _names(state).get(name)
    return claim is not None and claim.owned_by(principal.name)


def _access(state: AppState, name: str) -> ModelAccess:
    claim = _names(state).get(name)
    assert claim is not None  # checked by _owned; a claim is never deleted
    return ModelAccess(
        name=claim.name,
        owner=claim.owner,
        visibility=claim.visibility,
        grants=list(claim.grantees),
        created_at=claim.created_at,
    )
