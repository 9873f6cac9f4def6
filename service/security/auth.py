"""Who may call what: API keys with scopes, checked by FastAPI dependencies.

A client sends its key as `Authorization: Bearer <key>` (or `X-API-Key: <key>`). The server holds only
SHA-256 hashes (core/keys.py), from `GANSERVE_API_KEYS` and the keys file; the file is read again
whenever it changes, so `python -m service keys create` and `… revoke` take effect without a restart, and
on a name in both the file's entry wins. The presented key is hashed and compared with every stored hash
in constant time (`hmac.compare_digest`, no early exit).

Routes declare what they need with `Depends(require_train)`, `Depends(require_admin)` or
`Depends(public_generate)` (public unless `GANSERVE_PUBLIC_GENERATE=false`, then scope `generate`). The
same dependency then applies the per-key (or, anonymous, per-IP) rate limit of service/security/limits.py. Keys and
Authorization headers are never logged: only a key's name is.
"""

import hmac
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from core.keys import CREATE_COMMAND, ApiKeyEntry, KeyFileError, Scope, hash_key, read_key_file
from core.submissions import Submissions
from service.api.errors import APIError
from service.security.limits import enforce_rate_limit, install_limits

log = logging.getLogger(__name__)

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description=f"An API key: `Authorization: Bearer <key>`. An operator makes one with `{CREATE_COMMAND}`.",
)
api_key_scheme = APIKeyHeader(
    name="X-API-Key", auto_error=False, scheme_name="apiKey", description="The same API key, in `X-API-Key`."
)

HOW_TO_SEND = "Send it as `Authorization: Bearer <key>` (or `X-API-Key: <key>`)"


@dataclass(frozen=True)
class Principal:
    """The caller behind a valid key: its name (never the key) and scopes."""

    name: str
    scopes: frozenset[Scope]

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.admin in self.scopes


class KeyRing:
    """The configured keys: `GANSERVE_API_KEYS` merged with the keys file (the file wins on a name)."""

    def __init__(self, from_settings: list[ApiKeyEntry], file: Path):
        self.from_settings = list(from_settings)
        self.file = file
        self._lock = threading.Lock()
        self._file_signature: tuple[int, int, int] | None = None
        self._file_entries: list[ApiKeyEntry] = []
        self._file_error: str | None = None
        self._merged = self._merge()
        self.refresh()

    def _merge(self) -> list[ApiKeyEntry]:
        file_names = {e.name for e in self._file_entries}
        return [*self._file_entries, *(e for e in self.from_settings if e.name not in file_names)]

    def refresh(self) -> None:
        """Re-read the keys file if it changed (one stat per request). A malformed file is logged and its
        keys are dropped until it is fixed: fail closed, never keep a key someone meant to revoke."""
        try:
            st = os.stat(self.file)
            signature: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            signature = None
        if signature == self._file_signature:
            return
        with self._lock:
            if signature == self._file_signature:
                return
            try:
                entries, error = read_key_file(self.file), None
            except KeyFileError as e:
                entries, error = [], str(e)
                log.error("%s; its keys are refused until it is fixed", error)
            self._file_entries, self._file_error, self._file_signature = entries, error, signature
            self._merged = self._merge()
            if signature is not None and error is None:
                log.info("API keys file %s: %d key(s)", self.file, len(entries))

    @property
    def entries(self) -> list[ApiKeyEntry]:
        return self._merged

    def lookup(self, key: str) -> ApiKeyEntry | None:
        digest = hash_key(key)
        found = None
        for entry in self._merged:  # every entry, always: the time taken says nothing about which matched
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        return found

    def log_status(self) -> None:
        """One line at startup: which keys (names and scopes only), or how to make the first."""
        if not self._merged:
            log.warning(
                "no API keys configured (GANSERVE_API_KEYS, %s): /train and model administration answer 401 "
                "until one exists; make one with `%s`",
                self.file,
                CREATE_COMMAND,
            )
            return
        names = ", ".join(f"{e.name} ({','.join(e.scopes)})" for e in self._merged)
        log.info("API keys: %s", names)


def _presented_key(bearer: HTTPAuthorizationCredentials | None, api_key: str | None) -> str | None:
    if bearer is not None and bearer.credentials:
        return bearer.credentials
    return api_key or None


def _unauthorized(request: Request, ring: KeyRing, scope: Scope, presented: bool) -> APIError:
    what = f"{request.method} {request.url.path}"
    if not ring.entries:
        message = (
            f"{what} needs an API key, and this server has none yet. On the server run "
            f"`{CREATE_COMMAND}` (scopes: {', '.join(Scope)}; admin implies all): it prints the key once and "
            f"stores only its hash. {HOW_TO_SEND}."
        )
        error, challenge = "api_key_required", "Bearer"
    elif presented:
        message = (
            f"The API key sent is not valid on this server (mistyped, revoked, or made for another server). "
            f"{what} needs a key with scope `{scope}`; ask its operator for one (`{CREATE_COMMAND}`)."
        )
        error, challenge = "invalid_api_key", 'Bearer error="invalid_token"'
    else:
        message = (
            f"{what} needs an API key with scope `{scope}`. {HOW_TO_SEND}; the server's operator makes one "
            f"with `{CREATE_COMMAND}`."
        )
        error, challenge = "api_key_required", "Bearer"
    detail = {"required_scope": scope.value}
    return APIError(401, error, message, detail=detail, headers={"WWW-Authenticate": challenge})


class Authorize:
    """A dependency: the caller must hold a key with `scope` (`public=True`: unless GANSERVE_PUBLIC_GENERATE
    leaves the route open to anonymous callers). Returns the Principal, or None for an anonymous caller;
    then applies the rate limit to it. One instance per requirement, so FastAPI runs it once per request
    even when both a router and its route name it."""

    def __init__(self, scope: Scope, *, public: bool = False):
        self.scope = scope
        self.public = public

    # `async`: FastAPI runs a plain `def` dependency in its thread pool, a thread hop that cost /generate more than
    # its forward. Everything here is in memory (the keys file is stat'ed, and re-read only when it changed),
    # except a Redis rate limiter's round trip, which goes to the pool.
    async def __call__(
        self,
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
        api_key: Annotated[str | None, Security(api_key_scheme)],
    ) -> Principal | None:
        ring: KeyRing = request.app.state.keyring
        ring.refresh()
        key = _presented_key(bearer, api_key)
        open_to_all = self.public and request.app.state.settings.public_generate
        principal: Principal | None = None
        if key is None:
            if not open_to_all:
                raise _unauthorized(request, ring, self.scope, presented=False)
        else:
            entry = ring.lookup(key)
            if entry is None:
                client = request.client.host if request.client else "?"
                log.warning("%s %s from %s: unknown API key", request.method, request.url.path, client)
                raise _unauthorized(request, ring, self.scope, presented=True)
            principal = Principal(entry.name, frozenset(entry.scopes))
            if not open_to_all and not principal.allows(self.scope):
                raise APIError(
                    403,
                    "insufficient_scope",
                    f"Key {principal.name!r} has scope(s) {', '.join(sorted(principal.scopes))}; "
                    f"{request.method} {request.url.path} needs `{self.scope}` (or `admin`). Ask the operator "
                    f"for a key with it: `python -m service keys create --name NAME --scopes {self.scope}`.",
                    detail={"required_scope": self.scope.value, "key": principal.name},
                )
        limited = request.app.state.settings.rate_limit_per_min > 0
        if limited and getattr(request.app.state.rate_limiter, "blocking", False):
            await run_in_threadpool(enforce_rate_limit, request, principal.name if principal else None)
        else:
            enforce_rate_limit(request, principal.name if principal else None)
        return principal


require_train = Authorize(Scope.train)
require_admin = Authorize(Scope.admin)
public_generate = Authorize(Scope.generate, public=True)

TrainKey = Annotated[Principal, Depends(require_train)]
AdminKey = Annotated[Principal, Depends(require_admin)]


def install_security(app: FastAPI) -> None:
    """Keys, the submissions ledger, the rate limiter and the body-size middleware, from app.state.settings."""
    settings = app.state.settings
    app.state.keyring = KeyRing(settings.api_keys, settings.effective_api_keys_file)
    app.state.submissions = Submissions(settings.submissions_dir)
    install_limits(app)
    if settings.public_generate:
        _document_anonymous_access(app)


def _api_routes(routes: Iterable[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None) or getattr(route, "routes", None)
        if inner is not None:
            yield from _api_routes(inner.routes if hasattr(inner, "routes") else inner)


def _depends_on(dependant: Any, call: Any) -> bool:
    return any(d.call is call or _depends_on(d, call) for d in dependant.dependencies)


def _document_anonymous_access(app: FastAPI) -> None:
    """Mark the public routes' key as optional in the OpenAPI schema (an empty security requirement, `{}`),
    as they are: FastAPI lists the bearer and header schemes as if one were required."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            public = {
                (r.path_format, m.lower())
                for r in _api_routes(app.routes)
                if _depends_on(r.dependant, public_generate)
                for m in r.methods
            }
            schema = build()
            for path, ops in schema.get("paths", {}).items():
                for method, op in ops.items():
                    if (path, method) in public and op.get("security") and {} not in op["security"]:
                        op["security"].append({})
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
