"""Who is served a private model (service/api/generation.py `resolve`, GET /models): its owner, the keys it is
granted to and `admin` keys; every other caller (anonymous or another key) gets the 404 a missing name gets, and
never sees it listed. Claims are read by the registry with its listing (at most every rescan interval)."""

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete
from svc_support import ADMIN_KEY, DEFAULT_MODEL, GENERATE_KEY, TRAIN_KEY, bearer, client_on

from core import db as tables
from core.db import connect
from core.model_names import ModelNames
from core.settings import Settings

OWNER = "test-train"  # the name of TRAIN_KEY's entry (svc_support.TEST_KEYS)
GRANTEE = "test-generate"


def make_private(settings: Settings, name: str, owner: str, grantees: tuple[str, ...] = ()) -> None:
    """`name` claimed by `owner`, private (replacing the claim publishing made), granted to `grantees`."""
    db = connect(settings.effective_database_url)
    with db.begin() as conn:
        conn.execute(delete(tables.model_grants).where(tables.model_grants.c.name == name))
        conn.execute(delete(tables.model_names).where(tables.model_names.c.name == name))
    names = ModelNames(db)
    names.claim(name, owner, visibility="private")
    for grantee in grantees:
        names.grant(name, grantee)


@pytest.fixture
def callers(running: TestClient, monkeypatch: pytest.MonkeyPatch) -> dict[str, TestClient]:
    # Claims re-read on every request, so that a grant made by the test counts at once.
    monkeypatch.setattr(running.app.state.ganserve.registry, "rescan_interval_s", 0.0)  # type: ignore[attr-defined]
    return {
        "anonymous": client_on(running),
        "other key": client_on(running, headers=bearer(GENERATE_KEY)),
        "owner": client_on(running, headers=bearer(TRAIN_KEY)),
        "admin": client_on(running, headers=bearer(ADMIN_KEY)),
    }


def attempts(name: str) -> dict[str, Callable[[TestClient], object]]:
    return {
        "GET /generate": lambda c: c.get("/generate", params={"model": name, "seed": 3}),
        "POST /generate": lambda c: c.post("/generate", json={"model": name, "seed": 3}),
        "GET /interpolate": lambda c: c.get("/interpolate", params={"model": name, "from": 1, "to": 2, "steps": 2}),
        "GET /models/{name}": lambda c: c.get(f"/models/{name}"),
    }


def listed(c: TestClient) -> set[str]:
    r = c.get("/models")
    assert r.status_code == 200, r.text
    return {m["name"] for m in r.json()["models"]}


def test_a_private_model_is_served_and_listed_to_its_readers_only(
    callers: dict[str, TestClient], settings: Settings, publish_model
) -> None:
    publish_model("secret")
    make_private(settings, "secret", OWNER)
    for who, c in callers.items():
        readable = who in ("owner", "admin")
        for what, attempt in attempts("secret").items():
            r = attempt(c)
            if readable:
                assert r.status_code == 200, (who, what, r.text)
            else:
                # Exactly what a name that does not exist gets, the list of names without it.
                missing = attempts("nosuchname")[what](c)
                assert r.status_code == missing.status_code == 404, (who, what)
                assert r.json()["error"] == missing.json()["error"] == "model_not_found"
                assert r.json()["detail"] == missing.json()["detail"]
                assert "secret" not in r.json()["detail"]["available"]
        assert ("secret" in listed(c)) == readable, who
        assert DEFAULT_MODEL in listed(c)
    detail = callers["owner"].get("/models/secret").json()
    assert detail["owner"] == OWNER and detail["visibility"] == "private"
    # Its answers may be kept by the caller's own cache only.
    pinned = callers["owner"].get("/generate", params={"model": "secret", "seed": 3, "version": 1})
    assert pinned.headers["cache-control"].startswith("private")


def test_a_grant_opens_a_private_model_to_that_key(
    callers: dict[str, TestClient], settings: Settings, publish_model
) -> None:
    publish_model("shared")
    make_private(settings, "shared", OWNER)
    grantee, anonymous = callers["other key"], callers["anonymous"]
    assert grantee.get("/generate", params={"model": "shared", "seed": 1}).status_code == 404
    make_private(settings, "shared", OWNER, grantees=(GRANTEE,))
    for what, attempt in attempts("shared").items():
        assert attempt(grantee).status_code == 200, what  # type: ignore[attr-defined]
        assert attempt(anonymous).status_code == 404, what  # type: ignore[attr-defined]
    assert "shared" in listed(grantee) and "shared" not in listed(anonymous)


def test_public_and_unclaimed_models_list_their_owner_and_visibility(
    callers: dict[str, TestClient], settings: Settings, publish_model
) -> None:
    publish_model("open")
    make_private(settings, "open", OWNER)
    ModelNames(connect(settings.effective_database_url)).set_visibility("open", "public")
    anonymous = callers["anonymous"]
    assert anonymous.get("/generate", params={"model": "open", "seed": 1}).status_code == 200
    models = {m["name"]: m for m in anonymous.get("/models").json()["models"]}
    assert (models["open"]["owner"], models["open"]["visibility"]) == (OWNER, "public")
    pinned = anonymous.get("/generate", params={"model": "open", "seed": 3, "version": 1})
    assert pinned.headers["cache-control"].startswith("public")
