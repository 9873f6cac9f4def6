"""One JSON error shape for every failure the API reports:

    {"error": "<short_code>", "message": "<what is wrong and how to fix it>", "detail": <optional>}

Clients (and the api_walk) can then branch on `error` without parsing prose, whatever raised the error:
a route, request validation, routing itself (404/405) or a bug (500).
"""

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.db import DatabaseUnavailable
from core.train_config import NAME_PATTERN

log = logging.getLogger(__name__)

# A regex is no advice: say in words what a valid name looks like.
NAME_RULE = (
    "must be 1–64 characters of lower-case letters, digits, '.', '_' and '-', starting with a letter or digit "
    "(it becomes a directory name), e.g. 'my-digits'"
)

# Echoing a rejected value helps a client see its mistake, but not a megabyte-long latent.
MAX_ECHOED_INPUT_CHARS = 200


class ErrorBody(BaseModel):
    error: str = Field(description="Short machine-readable code.", examples=["validation_error"])
    message: str = Field(
        description="What is wrong and how to fix it.", examples=["query.seed: Input should be a valid integer"]
    )
    detail: Any = Field(None, description="Optional structured detail, e.g. the list of validation errors.")


class APIError(Exception):
    """Raised by routes for every expected failure; rendered as an `ErrorBody`."""

    def __init__(
        self,
        status_code: int,
        error: str,
        message: str,
        detail: Any = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status_code = status_code
        self.error = error
        self.message = message
        self.detail = detail
        self.headers = dict(headers or {})


def error_response(
    status_code: int, error: str, message: str, detail: Any = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(error=error, message=message, detail=detail)
    return JSONResponse(status_code=status_code, content=body.model_dump(mode="json"), headers=dict(headers or {}))


def validation_error(
    loc: Sequence[str | int], msg: str, input_value: Any = None, type_: str = "value_error"
) -> APIError:
    """A 422 shaped exactly like FastAPI's own, for checks that need the app's state (the model's latent
    size, `max_count`) and so cannot live in the schema."""
    return _validation_api_error([{"type": type_, "loc": list(loc), "msg": msg, "input": input_value}])


def _loc(loc: Sequence[str | int]) -> str:
    return ".".join(str(p) for p in loc)


def _non_finite(value: Any) -> str | None:
    """How JSON (as Python's parser reads it) spells a non-finite number; None for anything else."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return None


def _field(loc: Sequence[str | int]) -> str:
    names = [p for p in loc if isinstance(p, str) and p not in ("body", "query", "path", "header")]
    return names[-1] if names else "the value"


def _clean(err: Mapping[str, Any]) -> dict[str, Any]:
    # pydantic's `ctx` may hold the raised exception object and `url` is noise; neither is JSON material.
    out: dict[str, Any] = {"type": err.get("type"), "loc": list(err.get("loc", ())), "msg": err.get("msg")}
    if err.get("type") == "string_pattern_mismatch" and (err.get("ctx") or {}).get("pattern") == NAME_PATTERN:
        out["msg"] = NAME_RULE
    value = err.get("input")
    if (spelled := _non_finite(value)) is not None:
        # A bound's message ("less than or equal to 1") would wrongly say that NaN is too big: say what it is.
        msg = str(err.get("msg") or "")
        bound = "" if err.get("type") == "finite_number" else f" ({msg[:1].lower()}{msg[1:]})"
        out["type"] = "finite_number"
        out["msg"] = f"{_field(out['loc'])} is {spelled}: give a finite number{bound}"
        return out  # JSON cannot echo it
    # Scalars only: for a missing field pydantic's input is the whole enclosing object.
    if isinstance(value, str | int | float | bool) and len(repr(value)) <= MAX_ECHOED_INPUT_CHARS:
        out["input"] = value
    return out


def _validation_api_error(errors: Sequence[Mapping[str, Any]]) -> APIError:
    cleaned = [_clean(e) for e in errors]
    message = "; ".join(f"{_loc(e['loc'])}: {e['msg']}" for e in cleaned) or "The request is invalid."
    return APIError(422, "validation_error", message, detail=cleaned)


_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


def _code(status_code: int) -> str:
    if status_code in _CODES:
        return _CODES[status_code]
    try:
        return HTTPStatus(status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc.status_code, exc.error, exc.message, exc.detail, exc.headers)


async def _request_validation(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if len(errors) == 1 and errors[0].get("type") == "json_invalid":
        return _json_invalid(errors[0], exc)
    err = _validation_api_error(errors)
    return error_response(err.status_code, err.error, err.message, err.detail)


def _line_column(text: str | bytes, pos: int) -> tuple[int, int]:
    """1-based line and column of offset `pos` (characters of a str, bytes of bytes)."""
    newline = "\n" if isinstance(text, str) else b"\n"
    return text.count(newline, 0, pos) + 1, pos - text.rfind(newline, 0, pos)  # type: ignore[arg-type]


def _json_invalid(err: Mapping[str, Any], exc: RequestValidationError) -> JSONResponse:
    """A body that is not JSON: where the parser stopped (line, column, offset) and what it expected there,
    instead of FastAPI's bare "JSON decode error"."""
    cause = exc.__cause__
    loc = list(err.get("loc", ("body", 0)))
    pos = loc[-1] if isinstance(loc[-1], int) else 0
    if isinstance(cause, json.JSONDecodeError):
        expected, pos, line, column = cause.msg, cause.pos, cause.lineno, cause.colno
    else:
        expected = str((err.get("ctx") or {}).get("error") or "invalid JSON")
        line, column = _line_column(exc.body if isinstance(exc.body, str) else "", pos)
    message = (
        f"The body is not valid JSON: {expected[:1].lower()}{expected[1:]} at line {line}, column {column} "
        f"(character {pos}). Send one JSON object: names and strings in double quotes, a comma between members and "
        "none after the last, brackets and braces closed."
    )
    detail = [{"type": "json_invalid", "loc": loc, "msg": expected, "line": line, "column": column, "pos": pos}]
    return error_response(422, "validation_error", message, detail)


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"No route {request.method} {request.url.path}; see /docs for the API."
    elif exc.status_code == 405:
        allowed = allowed_methods(request)
        message = f"{request.method} is not allowed on {request.url.path}; it accepts {', '.join(allowed)}."
        # Starlette's Allow names the first route that matched the path only; /train has two (GET, POST).
        return error_response(405, _code(405), message, headers={**(exc.headers or {}), "Allow": ", ".join(allowed)})
    elif exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        return _not_utf8(exc.__cause__)
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, _code(exc.status_code), message, headers=exc.headers)


def _not_utf8(e: UnicodeDecodeError) -> JSONResponse:
    """A JSON body that is not UTF-8 (FastAPI says only "There was an error parsing the body"): the first byte
    that cannot be decoded, where it is, and what was expected."""
    data = bytes(e.object)
    line, column = _line_column(data, e.start)
    bad = data[e.start : e.end]
    message = (
        f"The body is not UTF-8 text: byte{'s' if len(bad) > 1 else ''} 0x{bad.hex()} at line {line}, byte "
        f"{column} (byte offset {e.start}) where a UTF-8 character was expected ({e.reason}). Send JSON encoded as "
        "UTF-8 (as JSON requires), or write other characters as \\u escapes."
    )
    detail = {"encoding": e.encoding, "reason": e.reason, "line": line, "column": column, "pos": e.start}
    return error_response(400, "body_not_utf8", message, detail)


def allowed_methods(request: Request) -> list[str]:
    """Every method the API documents for the request's path (the OpenAPI schema is the list of truth)."""
    app = request.app
    table = getattr(app.state, "path_methods", None)
    if table is None:
        table = [
            (re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(path)) + "$"), sorted(m.upper() for m in ops))
            for path, ops in app.openapi().get("paths", {}).items()
        ]
        app.state.path_methods = table
    methods = {m for pattern, ms in table if pattern.match(request.url.path) for m in ms}
    return sorted(methods | ({"HEAD"} if "GET" in methods else set()))


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(
        500, "internal_error", "The server failed unexpectedly; the error is in its log. Please report it."
    )


async def _database_down(request: Request, exc: Exception) -> JSONResponse:
    """The database does not answer: nothing was done, and the same request may be sent again (its details, which
    name hosts, go to the log only)."""
    log.error("%s %s: the database does not answer: %s", request.method, request.url.path, exc)
    return error_response(
        503,
        "database_unavailable",
        "The service's database does not answer right now; nothing was changed. Retry in a few seconds.",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(DatabaseUnavailable, _database_down)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(Exception, _unhandled)


# For routes' `responses=`: the documented shape of their error answers.
BROKER_RETRY_AFTER_S = 5
DATABASE_RETRY_AFTER_S = 5


def broker_unavailable(what: str, record_id: str, e: Exception) -> tuple[str, APIError]:
    """For a job the broker would not take (kombu's OperationalError, connection errors and timeouts all mean
    "broker down"): the reason to store in its record, and the 503 with `Retry-After` to answer."""
    reason = f"the {what} could not be queued, the broker is unreachable: {type(e).__name__}: {e}"
    return reason, APIError(
        503,
        "broker_unavailable",
        f"The queue is unavailable right now ({reason}); retry in a few seconds.",
        detail={"id": record_id},
        headers={"Retry-After": str(BROKER_RETRY_AFTER_S)},
    )


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for these error codes; a route that validates input (422) can also get a body that is
    not even text (400, from FastAPI's body parsing), so 422 brings 400 along."""
    if 422 in codes and 400 not in codes:
        codes = (400, *codes)
    return {code: {"model": ErrorBody, "description": HTTPStatus(code).phrase} for code in codes}
