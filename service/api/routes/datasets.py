"""`/datasets`: upload, list, show, preview and delete the datasets that training jobs name (`"dataset": "<id or
name>"`). An upload is read and validated by training/dataset_archive.py off the event loop, stored content-addressed
(core/datasets.py), and answered with the dataset's JSON. A key sees and uses its own datasets; an admin key, all.
`job_dataset` resolves a job's dataset when POST /train submits it."""

import logging
import tempfile
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Path, Response, UploadFile, status
from pydantic import BaseModel
from sqlalchemy import Connection

from core.datasets import (
    AmbiguousName,
    DatasetInfo,
    DatasetInUse,
    DatasetPin,
    DatasetRecord,
    DatasetStore,
    NameTaken,
    delete_dataset,
    name_problem,
    register,
)
from core.keys import Scope
from core.quota import over_quota
from core.storage import BlobError
from core.train_config import BUILTIN_DATASETS, DCGAN_SIZES, NAME_PATTERN, TrainConfig
from service.api.blobs import STORAGE_RETRY_AFTER_S, png_blob
from service.api.errors import APIError, error_responses, validation_error
from service.security.auth import Principal, TrainKey, require_train
from service.state import AppState, StateDep
from training.dataset_archive import ArchiveLimits, DatasetRejected, read_archive

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/datasets",
    tags=["datasets"],
    dependencies=[Depends(require_train)],
    responses=error_responses(401, 403, 429),
)

DatasetRef = Annotated[
    str,
    Path(description="The dataset's id (`ds-…`) or its name.", examples=["ds-3f2b9c0d1e4a"], max_length=64),
]
LIST_HINT = "GET /datasets lists the datasets this key may use"


class DatasetList(BaseModel):
    datasets: list[DatasetInfo]


def _check_quota(state: AppState, principal: Principal, adding: int = 0) -> None:
    """413 when the key is at its storage quota, or `adding` bytes more would pass it (core/quota.py)."""
    quota = state.settings.storage_quota_bytes
    used = over_quota(state.db, principal.name, quota, adding)
    if used is not None:
        raise APIError(
            413,
            "storage_quota_exceeded",
            f"API key {principal.name!r} uses {used.total:,} bytes of storage; this dataset ({adding:,} bytes) "
            f"would take it past its quota of {quota:,} (GANSERVE_STORAGE_QUOTA_BYTES). Delete datasets it no "
            "longer needs (GET /datasets, DELETE /datasets/{id}), or ask the operator to raise the quota.",
            detail={**used.detail(quota), "adding": adding},
        )


def _sees_all(principal: Principal) -> bool:
    return Scope.admin in principal.scopes


def _find(store: DatasetStore, principal: Principal, ref: str) -> DatasetRecord:
    try:
        return store.resolve(ref, principal.name, any_owner=_sees_all(principal))
    except KeyError:
        raise APIError(
            404, "dataset_not_found", f"No dataset {ref!r} for key {principal.name!r}; {LIST_HINT}.", {"dataset": ref}
        ) from None
    except AmbiguousName as e:
        raise _ambiguous(ref, e) from None


def _ambiguous(ref: str, e: AmbiguousName) -> APIError:
    return APIError(
        409,
        "dataset_name_ambiguous",
        f"Several keys have a dataset named {ref!r} ({', '.join(e.ids)}); name the one you mean by its id.",
        {"ids": e.ids},
    )


def _storage_unavailable(what: str, e: Exception) -> APIError:
    log.error("%s: %s: %s", what, type(e).__name__, e)
    return APIError(
        503,
        "storage_unavailable",
        f"{what}: the object store cannot be reached now ({type(e).__name__}); nothing was kept. Retry in a few "
        "seconds.",
        headers={"Retry-After": str(STORAGE_RETRY_AFTER_S)},
    )


def _name_taken(name: str, owner: str) -> APIError:
    return APIError(
        409,
        "dataset_name_taken",
        f"Key {owner!r} already has a dataset named {name!r}; choose another name, or delete that one first "
        "(DELETE /datasets/{id}).",
        {"name": name},
    )


# `def`, not `async def`: reading and decoding the archive, and writing to storage, block; FastAPI runs this in
# its thread pool once the form is parsed (the archive spooled to a temporary file, its size bounded by the
# body limit, GANSERVE_DATASET_MAX_BYTES, as it arrives).
@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetInfo,
    summary="Upload a dataset",
    description=(
        "`multipart/form-data`: `file`, a .zip, .tar or .tar.gz of PNG/JPEG images (at the top, or one level of "
        "class sub-folders: a folder per class, labels in the sorted order of their names) or MNIST IDX files "
        "(`*-images-idx3-ubyte[.gz]`, optional `*-labels-idx1-ubyte[.gz]`); optional `name` (unique among this "
        "key's datasets) and `image_size` (centre-crop and resize every image to that square; without it, images "
        "of different sizes are a 422 naming them). Every image is decoded within the server's limits "
        "(GANSERVE_DATASET_MAX_BYTES, _MAX_IMAGES, _MAX_IMAGE_PIXELS, _MAX_DECODED_BYTES): a size or count "
        "beyond them is a 413 (so is one that would take the key past its storage quota: "
        "GANSERVE_STORAGE_QUOTA_BYTES, `storage_quota_exceeded`), any other bad input (links, paths leaving the "
        "archive, other formats, a "
        "decompression bomb) a 422, each naming the limit or the entry. Answers 201 with the dataset and its "
        'URL in `Location`; train on it with `"dataset": "<id or name>"`.'
    ),
    responses=error_responses(409, 413, 422, 503),
    form_limits={"max_files": 1, "max_fields": 4},
)
def upload_dataset(
    response: Response,
    state: StateDep,
    principal: TrainKey,
    file: Annotated[UploadFile, File(description="The archive (or a lone IDX image file).")],
    name: Annotated[
        str | None,
        Form(
            pattern=NAME_PATTERN,
            description="Lower-case letters, digits, '.', '_' and '-'; starts with a letter or digit; ≤ 64 chars. "
            "Not a built-in dataset's name.",
            examples=["my-faces"],
        ),
    ] = None,
    image_size: Annotated[
        int | None,
        Form(ge=8, le=1024, description="Centre-crop every image to a square and resize it to this many pixels."),
    ] = None,
) -> DatasetInfo:
    store = DatasetStore(state.db)
    if name is not None:
        if (problem := name_problem(name)) is not None:
            raise validation_error(("body", "name"), problem, name, "dataset_name")
        if store.name_taken(principal.name, name):  # before the work, not only after it
            raise _name_taken(name, principal.name)
    _check_quota(state, principal)  # at its quota already: before the work
    with tempfile.TemporaryDirectory(prefix="ganserve-dataset-") as scratch:
        try:
            data = read_archive(file.file, FilePath(scratch), ArchiveLimits.of(state.settings), image_size)
        except DatasetRejected as e:
            log.info("dataset upload by key %s refused (%s): %s", principal.name, e.code, e.message)
            raise APIError(e.status, e.code, e.message, e.detail) from None
        _check_quota(state, principal, data.path.stat().st_size)  # what it would store
        try:
            record = register(
                store,
                state.storage,
                data.path,
                data.preview,
                owner=principal.name,
                name=name,
                sha256=data.sha256,
                format=data.format,
                count=data.count,
                shape=data.shape,
                classes=data.classes,
            )
        except NameTaken:
            raise _name_taken(str(name), principal.name) from None
        except (BlobError, OSError) as e:
            raise _storage_unavailable("The dataset could not be stored", e) from None
    log.info(
        "dataset %s uploaded by key %s: %d images of %s, %s classes, sha256 %s",
        record.id,
        principal.name,
        record.count,
        "×".join(map(str, record.shape)),
        len(record.classes) if record.classes else "no",
        record.sha256[:12],
    )
    response.headers["Location"] = f"/datasets/{record.id}"
    return record.info()


@router.get("", response_model=DatasetList, summary="List datasets, newest first")
def list_datasets(state: StateDep, principal: TrainKey) -> DatasetList:
    """The key's own datasets; an admin key's list holds every key's."""
    store = DatasetStore(state.db)
    found = store.all(None if _sees_all(principal) else principal.name)
    return DatasetList(datasets=[d.info() for d in found])


@router.get("/{dataset}", response_model=DatasetInfo, summary="A dataset", responses=error_responses(404, 409))
def get_dataset(dataset: DatasetRef, state: StateDep, principal: TrainKey) -> DatasetInfo:
    return _find(DatasetStore(state.db), principal, dataset).info()


@router.get(
    "/{dataset}/preview.png",
    response_class=Response,
    summary="A grid of 64 of a dataset's images, spread over every class",
    responses={200: {"content": {"image/png": {}}}, **error_responses(404, 409, 503)},
)
def get_preview(dataset: DatasetRef, state: StateDep, principal: TrainKey) -> Response:
    record = _find(DatasetStore(state.db), principal, dataset)
    png = png_blob(state.storage, record.preview_key, f"The preview of dataset {record.id}", "preview_not_found")
    return Response(png, media_type="image/png")


@router.delete(
    "/{dataset}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a dataset",
    description="Its file goes too, unless another dataset has the same content. Refused (409 `dataset_in_use`) "
    "while a queued or running job trains on it.",
    responses=error_responses(404, 409),
)
def delete(dataset: DatasetRef, state: StateDep, principal: TrainKey) -> Response:
    store = DatasetStore(state.db)
    record = _find(store, principal, dataset)
    try:
        removed = delete_dataset(store, state.storage, record.id)
    except DatasetInUse as e:
        raise APIError(
            409,
            "dataset_in_use",
            f"Dataset {record.id} is used by {len(e.jobs)} queued or running job(s): {', '.join(e.jobs)}. Wait for "
            "them to finish, or cancel them (DELETE /train/{id}), then delete it.",
            {"jobs": e.jobs},
        ) from None
    if removed is not None:
        log.info("dataset %s deleted by key %s", record.id, principal.name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- a training job's dataset -----------------------------------------------------------------------------------


def job_dataset(state: AppState, principal: Principal, config: TrainConfig, conn: Connection) -> DatasetPin | None:
    """The uploaded dataset a job names, for its caller, checked against its config; None for a built-in dataset.
    In the submission's transaction, its row held until the job is committed (so it is not deleted meanwhile).
    Raises APIError (422)."""
    if not config.is_uploaded:
        return None
    ref, store = config.dataset, DatasetStore(state.db)
    try:
        record = store.resolve(ref, principal.name, any_owner=_sees_all(principal), conn=conn, lock=True)
    except KeyError:
        builtin = ", ".join(sorted(BUILTIN_DATASETS))
        raise validation_error(
            ("body", "dataset"),
            f"no dataset {ref!r}: neither a built-in one ({builtin}) nor one uploaded by key {principal.name!r}; "
            f"{LIST_HINT}, POST /datasets uploads one",
            ref,
            "dataset_not_found",
        ) from None
    except AmbiguousName as e:
        raise _ambiguous(ref, e) from None
    problem = _unfit(record, config)
    if problem is not None:
        raise validation_error(("body", "dataset"), problem, ref, "dataset_unfit")
    return record.pin()


def _unfit(record: DatasetRecord, config: TrainConfig) -> str | None:
    """Why the job cannot train on the dataset, or None."""
    _, h, w = record.shape
    if config.conditional and not record.classes:
        return (
            f"`conditional` needs labels, and dataset {record.id} has none: upload it with a folder per class (or "
            "IDX labels), or train unconditionally"
        )
    if (config.image_size is not None or config.architecture == "dcgan") and h != w:
        return (
            f"dataset {record.id} has {w}×{h} images; `image_size` and `dcgan` need square ones: upload it again "
            "with `image_size`"
        )
    if config.architecture == "dcgan" and config.image_size is None and h not in DCGAN_SIZES:
        sizes = ", ".join(map(str, DCGAN_SIZES))
        return f"`dcgan` makes images of {sizes} pixels and dataset {record.id} has {h}×{w}: set `image_size`"
    return None
