"""Who may call what: API keys with scopes, checked by FastAPI dependencies.

A client sends its key as `Authorization: Bearer <key>` (or `X-API-Key: <key>`). The server holds only
SHA-256 hashes (core/keys.py), from `GANSERVE_API_KEYS` and the database; the database is read again at most
once a second (service/security/keyring.py), so `ganserve keys create` and `… revoke` take effect on every API
process without a restart, and on a name in both the database's entry wins. The presented key is hashed and
compared with every stored hash in constant time (`hmac.compare_digest`, no early exit).

Routes declare what they need with `Depends(require_train)`, `Depends(require_admin)` or
`Depends(public_generate)` (public unless `GANSERVE_PUBLIC_GENERATE=false`, then scope `generate`). The
same dependency then applies the per-key (or, anonymous, per-IP) rate limit of service/security/limits.py. Keys and
Authorization headers are never logged: only a key's name is.
"""

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from core.keys import CREATE_COMMAND, Scope
from core.settings import Settings
from service.api.errors import APIError
from service.security.keyring import KeyRing
from service.security.limits import dataset_upload_limit, enforce_rate_limit, install_body_limit, per_minute
from service.state import app_state

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


def _presented_key(bearer: HTTPAuthorizationCredentials | None, api_key: str | None) -> str | None:
    if bearer is not None and bearer.credentials:
        return bearer.credentials
    return api_key or None


def _scope_rule(scope: Scope) -> str:
    """The scopes a key needs for a route: the one named, or `admin`, which implies every scope (said once when
    the route needs `admin` itself)."""
    if scope == Scope.admin:
        return "scope `admin`"
    return f"scope `{scope}` (or `admin`, which implies every scope)"


def _unauthorized(request: Request, ring: KeyRing, scope: Scope, presented: bool, public: bool = False) -> APIError:
    """The 401: no key where one is needed, or a key this server does not know (`public`: on a route that is open
    to callers without any key, which is then the fix to name)."""
    what = f"{request.method} {request.url.path}"
    if presented and public:
        message = (
            f"The API key sent is not valid on this server (mistyped, revoked, or made for another server). "
            f"{what} needs no key here: send it without one (no `Authorization` or `X-API-Key` header) to be "
            f"served as an anonymous caller, or with a valid key of {_scope_rule(scope)} from the server's "
            f"operator (`{CREATE_COMMAND}`)."
        )
        error, challenge = "invalid_api_key", 'Bearer error="invalid_token"'
    elif not ring.entries:
        message = (
            f"{what} needs an API key, and this server has none yet. On the server run "
            f"`{CREATE_COMMAND}` (scopes: {', '.join(Scope)}; admin implies all): it prints the key once and "
            f"stores only its hash. {HOW_TO_SEND}."
        )
        error, challenge = "api_key_required", "Bearer"
    elif presented:
        message = (
            f"The API key sent is not valid on this server (mistyped, revoked, or made for another server). "
            f"{what} needs a key with {_scope_rule(scope)}; ask its operator for one (`{CREATE_COMMAND}`)."
        )
        error, challenge = "invalid_api_key", 'Bearer error="invalid_token"'
    else:
        message = (
            f"{what} needs an API key with {_scope_rule(scope)}. {HOW_TO_SEND}; the server's operator makes one "
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
    # its forward. Everything here is in memory (the key ring reads the database in a thread of its own), except
    # a Redis rate limiter's round trip, which goes to the pool.
    async def __call__(
        self,
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
        api_key: Annotated[str | None, Security(api_key_scheme)],
    ) -> Principal | None:
        state = app_state(request.app)
        ring = state.keyring
        ring.refresh()
        key = _presented_key(bearer, api_key)
        open_to_all = self.public and state.settings.public_generate
        principal: Principal | None = None
        if key is None:
            if not open_to_all:
                raise _unauthorized(request, ring, self.scope, presented=False)
        else:
            entry = ring.lookup(key)
            if entry is None:
                client = request.client.host if request.client else "?"
                log.warning("%s %s from %s: unknown API key", request.method, request.url.path, client)
                raise _unauthorized(request, ring, self.scope, presented=True, public=open_to_all)
            principal = Principal(entry.name, frozenset(entry.scopes))
            if not open_to_all and not principal.allows(self.scope):
                raise APIError(
                    403,
                    "insufficient_scope",
                    f"Key {principal.name!r} has scope(s) {', '.join(sorted(principal.scopes))}; "
                    f"{request.method} {request.url.path} needs a key with {_scope_rule(self.scope)}. Ask the "
                    f"operator for a key with it: `ganserve keys create --name NAME --scopes {self.scope}`.",
                    detail={"required_scope": self.scope.value, "key": principal.name},
                )
        who = principal.name if principal else None
        limit, limiter = per_minute(state.settings, who), state.rate_limiter  # a key's, or an anonymous IP's
        if limit > 0 and getattr(limiter, "blocking", False):
            await run_in_threadpool(enforce_rate_limit, request, limiter, limit, who)
        else:
            enforce_rate_limit(request, limiter, limit, who)
        return principal


require_train = Authorize(Scope.train)
require_admin = Authorize(Scope.admin)
public_generate = Authorize(Scope.generate, public=True)

TrainKey = Annotated[Principal, Depends(require_train)]
AdminKey = Annotated[Principal, Depends(require_admin)]


def install_security(app: FastAPI, settings: Settings) -> None:
    """The body-size middleware, and the public routes' key documented as optional."""
    install_body_limit(app, settings.max_body_bytes, {("POST", "/datasets"): dataset_upload_limit(settings)})
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
