"""The bytes between an API process and its render process (service/serving/render_process.py), both ways.

Frames of `<u32 length><body>`, the body's first byte its kind; every number little-endian:

    API → render process   R  request: id, form, version, rows, latent dim (0: seeds), flags, duration ms,
                              name, the weights' SHA-256 (hex; empty: any), then u64 seeds or float32
                              latents, int64 labels, int64 generator indices
    render process → API   H  ready: its pid
                           A  answer: id, blob count, then each blob as <u32 length><bytes>
                           E  failure: id, kind, message
                           F  a forward ran: its real rows (for the batch-size metric)

Both ends are this one file, in one version: nothing else speaks it.
"""

import struct

import torch

from service.serving.batching import Answer, Failure, Request, Seeds
from service.serving.encoding import FORMS

FRAME = struct.Struct("<I")
# id, form, version, rows, latent dim, flags, duration ms, name bytes, SHA-256 bytes
REQUEST = struct.Struct("<QBIIIBIHB")
HAS_LABELS, HAS_GENERATORS, HAS_SEEDS = 1, 2, 4  # flags; with HAS_SEEDS the rows are seeds, not latents
ANSWER = struct.Struct("<QI")  # id, blobs
BLOB = struct.Struct("<I")
FAILURE = struct.Struct("<QB")  # id, kind
FAILURE_KINDS = ("model", "render")
COUNT = struct.Struct("<I")  # a forward's rows; the ready frame's pid

REQUEST_KIND, READY_KIND, ANSWER_KIND, FAILURE_KIND, FORWARD_KIND = (ord(k) for k in "RHAEF")


def frame(*parts: bytes) -> bytes:
    body = b"".join(parts)
    return FRAME.pack(len(body)) + body


def split_frames(buffer: bytearray) -> list[bytes]:
    """The bodies of the whole frames at the start of `buffer`, taken out of it (a partial one stays)."""
    bodies, at = [], 0
    while len(buffer) - at >= FRAME.size:
        (size,) = FRAME.unpack_from(buffer, at)
        if len(buffer) - at - FRAME.size < size:
            break
        bodies.append(bytes(buffer[at + FRAME.size : at + FRAME.size + size]))
        at += FRAME.size + size
    del buffer[:at]
    return bodies


def encode_request(r: Request) -> bytes:
    flags = (r.labels is not None) * HAS_LABELS | (r.generators is not None) * HAS_GENERATORS
    if isinstance(r.rows, Seeds):
        n, dim, flags = len(r.rows.seeds), 0, flags | HAS_SEEDS
        payload = struct.pack(f"<{n}Q", *r.rows.seeds)
    else:
        n, dim = (int(x) for x in r.rows.shape)
        payload = r.rows.to(torch.float32).contiguous().numpy().tobytes()
    name, sha256 = r.name.encode(), (r.sha256 or "").encode()
    head = REQUEST.pack(r.rid, FORMS.index(r.form), r.version, n, dim, flags, r.duration_ms, len(name), len(sha256))
    parts = [b"R", head, name, sha256, payload]
    for column in (r.labels, r.generators):
        if column is not None:
            parts.append(struct.pack(f"<{n}q", *column))
    return frame(*parts)


def decode_request(body: bytes) -> Request:
    rid, form, version, n, dim, flags, duration_ms, name_len, sha_len = REQUEST.unpack_from(body, 1)
    at = 1 + REQUEST.size
    name = body[at : at + name_len].decode()
    at += name_len
    sha256 = body[at : at + sha_len].decode() or None
    at += sha_len
    rows: torch.Tensor | Seeds
    if flags & HAS_SEEDS:
        rows = Seeds(list(struct.unpack_from(f"<{n}Q", body, at)))
        at += 8 * n
    else:
        # A copy: frombuffer on the frame's own bytes would share (and warn about) a read-only buffer.
        rows = torch.frombuffer(bytearray(body[at : at + 4 * n * dim]), dtype=torch.float32).reshape(n, dim)
        at += 4 * n * dim
    columns: list[list[int] | None] = []
    for flag in (HAS_LABELS, HAS_GENERATORS):
        if flags & flag:
            columns.append(list(struct.unpack_from(f"<{n}q", body, at)))
            at += 8 * n
        else:
            columns.append(None)
    return Request(rid, name, version, rows, columns[0], columns[1], FORMS[form], duration_ms, sha256)


def encode_outcome(outcome: Answer | Failure) -> bytes:
    if isinstance(outcome, Failure):
        return frame(b"E", FAILURE.pack(outcome.rid, FAILURE_KINDS.index(outcome.kind)), outcome.message.encode())
    blobs = [outcome.output] if isinstance(outcome.output, bytes) else outcome.output
    parts = [b"A", ANSWER.pack(outcome.rid, len(blobs))]
    for blob in blobs:
        parts += [BLOB.pack(len(blob)), blob]
    return frame(*parts)


def decode_answer(body: bytes) -> tuple[int, list[bytes]]:
    """(id, blobs) of an answer frame: one blob per PNG of `pngs`, else one."""
    rid, count = ANSWER.unpack_from(body, 1)
    at = 1 + ANSWER.size
    blobs = []
    for _ in range(count):
        (size,) = BLOB.unpack_from(body, at)
        at += BLOB.size
        blobs.append(body[at : at + size])
        at += size
    return rid, blobs


def decode_failure(body: bytes) -> Failure:
    rid, kind = FAILURE.unpack_from(body, 1)
    return Failure(rid, FAILURE_KINDS[kind], body[1 + FAILURE.size :].decode())  # type: ignore[arg-type]


def encode_forward(rows: int) -> bytes:
    return frame(b"F", COUNT.pack(rows))


def encode_ready(pid: int) -> bytes:
    return frame(b"H", COUNT.pack(pid))


def decode_count(body: bytes) -> int:
    """The number of a forward frame (its rows) or a ready frame (the pid)."""
    return COUNT.unpack_from(body, 1)[0]
