"""Images the API hands out as they were written — a training job's sample grids, an evaluation's nearest-neighbour
PNG — read from object storage (core/storage.py). One that is gone is a 404; one that storage cannot give now, or
that is damaged, a 503; each names the object. Never a 500, never damaged bytes."""

import logging
import struct
import zlib

from core.storage import BlobError, Storage
from service.api.errors import APIError

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STORAGE_RETRY_AFTER_S = 5


def intact_png(data: bytes) -> bool:
    """Whether `data` is a whole PNG: its signature, each chunk's CRC-32, and IEND last. These images carry no
    recorded SHA-256; the format's own checksums tell a damaged or cut one."""
    if not data.startswith(PNG_SIGNATURE):
        return False
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        end = pos + 12 + length  # length, type, data, CRC
        if end > len(data):
            return False
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(data[pos + 4 : end - 4]) != crc:
            return False
        if data[pos + 4 : pos + 8] == b"IEND":
            return end == len(data)
        pos = end
    return False


def png_blob(storage: Storage, key: str, what: str, missing: str) -> bytes:
    """The PNG stored under `key`. `what` names it for a person ("The grid of epoch 3"); `missing` is the error
    code of a PNG that is gone. Raises APIError."""
    try:
        data = storage.get_bytes(key)
    except ValueError:  # not a key (a record of an older version, naming a path outside the volume)
        raise APIError(404, missing, f"{what} is recorded as {key!r}, which is not in storage.") from None
    except BlobError as e:
        if _gone(storage, key):
            raise APIError(
                404, missing, f"{what} is recorded but gone from storage ({key}).", detail={"key": key}
            ) from None
        log.error("%s: %s", what, e)
        raise APIError(
            503,
            "storage_unavailable",
            f"{what} ({key}) cannot be read from storage now; retry in a few seconds.",
            detail={"key": key},
            headers={"Retry-After": str(STORAGE_RETRY_AFTER_S)},
        ) from None
    if not intact_png(data):
        log.error("%s: %s is not a whole PNG (%d bytes): refused", what, storage.describe(key), len(data))
        raise APIError(
            503,
            "blob_corrupt",
            f"{what} ({key}) is damaged in storage and is not served; the operator must restore or remove it.",
            detail={"key": key},
        )
    return data


def _gone(storage: Storage, key: str) -> bool:
    """True when storage answers that `key` does not exist (False when it does not answer)."""
    try:
        return not storage.exists(key)
    except BlobError:
        return False
