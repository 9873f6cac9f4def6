"""API keys (service/security/auth.py, service/security/keyring.py): who may call what, the 401/403 answers,
and the key ring over the database's keys (`ganserve keys`: tests/cli/test_keys.py; the database functions:
tests/core/test_key_store.py)."""

import hmac
import json
import logging
import sqlite3
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError
from svc_support import (
    ADMIN_KEY,
    AUTH,
    DEFAULT_MODEL,
    GENERATE_KEY,
    TEST_KEYS,
    TRAIN_KEY,
    FakeSender,
    bearer,
)

from core.db import Database, connect
from core.keys import ApiKeyEntry, Scope, create_key, hash_key, revoke_key, stored_keys
from core.settings import Settings
from service.security.keyring import KeyRing
from service.state import app_state

TRAIN_BODY = {"model_name": "my-digits", "epochs": 1, "max_samples": 256}
PATH_VALUES = {
    "job_id": "0" * 32,
    "plot": "losses",
    "epoch": "1",
    "name": DEFAULT_MODEL,
    "eval_id": "0" * 32,
    "dataset": "ds-000000000000",
    "key_name": "test-generate",
}


def routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, concrete path) for every API route, path parameters filled in (from the OpenAPI schema: this
    FastAPI keeps included routers nested, so app.routes does not list them)."""
    return [
        (method.upper(), path.format(**PATH_VALUES))
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    ]


# --- who may call what -----------------------------------------------------------------------------


def test_every_train_route_needs_a_key(app: FastAPI, anon: TestClient) -> None:
    train_routes = [(m, p) for m, p in routes(app) if p.startswith(("/train", "/datasets"))]
    assert len(train_routes) >= 12  # POST/GET /train, GET/DELETE /train/{id}, metrics, plots, samples; /datasets
    for method, path in train_routes:
        r = anon.request(method, path, json=TRAIN_BODY if method == "POST" else None)
        assert r.status_code == 401, (method, path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        body = r.json()
        assert body["error"] == "api_key_required" and body["detail"] == {"required_scope": "train"}
        assert "Authorization: Bearer <key>" in body["message"] and "ganserve keys create" in body["message"]


def test_every_route_that_changes_something_needs_a_key(app: FastAPI, anon: TestClient, sender: FakeSender) -> None:
    """POST /generate only renders; every other write (today /train and /models/{name}/evaluate) is closed."""
    writes = [(m, p) for m, p in routes(app) if m != "GET" and p != "/generate"]
    assert ("POST", f"/models/{DEFAULT_MODEL}/evaluate") in writes
    for method, path in writes:
        assert anon.request(method, path, json={}).status_code == 401, (method, path)
    assert sender.sent == []


def test_first_run_without_any_key_says_how_to_make_one(make_app, publish_model) -> None:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(api_keys=[])) as c:
        r = c.post("/train", json=TRAIN_BODY)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        body = r.json()
        assert body["error"] == "api_key_required"
        assert "has none yet" in body["message"]
        assert "ganserve keys create --name NAME --scopes train,generate" in body["message"]
        assert c.get("/train").status_code == 401  # nothing is silently open
        # Public routes stay public (a 304: past the key check, nothing rendered).
        assert c.get("/generate?seed=1", headers={"if-none-match": "*"}).status_code == 304


def test_unknown_key_is_401_invalid_token(anon: TestClient) -> None:
    for headers in (bearer("gsk_not-a-key"), {"X-API-Key": "gsk_not-a-key"}):
        r = anon.post("/train", json=TRAIN_BODY, headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert r.json()["error"] == "invalid_api_key" and "not valid on this server" in r.json()["message"]


def test_an_unknown_key_is_refused_on_public_routes_too(anon: TestClient) -> None:
    """A client that sends a key wants to be that key: a wrong one is its mistake to hear about."""
    assert anon.get("/generate?seed=1", headers=bearer("gsk_wrong")).status_code == 401


def test_wrong_scope_is_403_naming_the_scope(anon: TestClient, sender: FakeSender) -> None:
    r = anon.post("/train", json=TRAIN_BODY, headers=bearer(GENERATE_KEY))
    assert r.status_code == 403
    body = r.json()
    assert body["error"] == "insufficient_scope"
    assert body["detail"] == {"required_scope": "train", "key": "test-generate"}
    assert "needs a key with scope `train`" in body["message"] and "--scopes train" in body["message"]
    r = anon.post(f"/models/{DEFAULT_MODEL}/evaluate", json={"n": 500}, headers=bearer(GENERATE_KEY))
    assert r.status_code == 403 and r.json()["detail"]["required_scope"] == "train"
    r = anon.post(f"/models/{DEFAULT_MODEL}/evaluate", json={"n": 500}, headers=bearer(TRAIN_KEY))
    assert r.status_code == 403 and r.json()["error"] == "not_model_owner"  # the operator's model: admin evaluates it
    assert sender.sent == []


def test_the_right_scope_passes_and_admin_implies_all(anon: TestClient, sender: FakeSender) -> None:
    assert anon.post("/train", json=TRAIN_BODY, headers=bearer(TRAIN_KEY)).status_code == 202
    assert anon.get("/train", headers=bearer(TRAIN_KEY)).status_code == 200
    assert anon.post("/train", json=TRAIN_BODY, headers=bearer(ADMIN_KEY)).status_code == 202
    r = anon.post(f"/models/{DEFAULT_MODEL}/evaluate", json={"n": 500}, headers=bearer(ADMIN_KEY))
    assert r.status_code == 202
    assert len(sender.sent) == 3


def test_x_api_key_header_and_only_the_bearer_scheme(anon: TestClient) -> None:
    assert anon.post("/train", json=TRAIN_BODY, headers={"X-API-Key": TRAIN_KEY}).status_code == 202
    assert anon.post("/train", json=TRAIN_BODY, headers={"Authorization": f"Basic {TRAIN_KEY}"}).status_code == 401
    assert anon.post("/train", json=TRAIN_BODY, headers={"Authorization": f"bearer {TRAIN_KEY}"}).status_code == 202


@pytest.mark.parametrize("path", ["/generate?seed=1", "/models", f"/models/{DEFAULT_MODEL}"])
def test_generate_and_model_reads_are_public_by_default(served_anon: TestClient, path: str) -> None:
    assert served_anon.get(path).status_code == 200
    assert served_anon.post("/generate", json={"seed": 1}).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/docs", "/openapi.json"])
def test_health_and_docs_are_always_public(make_app, publish_model, path: str) -> None:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(public_generate=False, api_keys=[])) as c:
        deadline = time.monotonic() + 60
        while (r := c.get(path)).status_code == 503 and path == "/readyz" and time.monotonic() < deadline:
            time.sleep(0.1)  # the render process is still loading its models: not ready yet, and public
        assert r.status_code == 200


def test_private_generate_needs_scope_generate(make_app, publish_model) -> None:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(public_generate=False)) as c:
        for method, path in [("GET", "/generate?seed=1"), ("POST", "/generate"), ("GET", "/models")]:
            body = {"seed": 1} if method == "POST" else None
            r = c.request(method, path, json=body)
            assert r.status_code == 401 and r.json()["detail"] == {"required_scope": "generate"}, path
            assert c.request(method, path, json=body, headers=bearer(GENERATE_KEY)).status_code == 200, path
            assert c.request(method, path, json=body, headers=bearer(ADMIN_KEY)).status_code == 200, path
            assert c.request(method, path, json=body, headers=bearer(TRAIN_KEY)).status_code == 403, path


def test_openapi_shows_the_security_schemes(anon: TestClient) -> None:
    doc = anon.get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    for path, method in [("/train", "post"), ("/train/{job_id}", "get"), ("/models/{name}/evaluate", "post")]:
        assert doc["paths"][path][method]["security"] == [{"bearer": []}, {"apiKey": []}], path
        assert {"401", "403", "429"} <= set(doc["paths"][path][method]["responses"]), path
    assert "security" not in doc["paths"]["/healthz"]["get"]
    assert "Idempotency-Key" in [p["name"] for p in doc["paths"]["/train"]["post"]["parameters"]]


# --- keys: hashes only, constant-time comparison, never logged ------------------------------------------


def test_every_stored_hash_is_compared_in_constant_time(anon: TestClient, monkeypatch) -> None:
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert anon.get("/train", headers=bearer(ADMIN_KEY)).status_code == 200  # the first entry matches …
    assert len(compared) == len(TEST_KEYS)  # … and every other is still compared: no early exit
    assert {b for _, b in compared} == {hash_key(ADMIN_KEY)}  # the key's hash, never the key


def test_keys_and_authorization_headers_are_never_logged(anon: TestClient, caplog, capsys) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "gsk_this-one-is-wrong"
    anon.post("/train", json=TRAIN_BODY, headers=bearer(TRAIN_KEY))
    anon.get("/train", headers={"X-API-Key": ADMIN_KEY})
    anon.post("/train", json=TRAIN_BODY, headers=bearer(secret))
    anon.get("/generate?seed=1", headers={**bearer(GENERATE_KEY), "if-none-match": "*"})
    out = capsys.readouterr()
    logged = caplog.text + out.out + out.err
    assert "unknown API key" in logged and "queued by key test-train" in logged  # the requests were logged …
    for key in (TRAIN_KEY, ADMIN_KEY, secret, GENERATE_KEY, hash_key(TRAIN_KEY)):
        assert key not in logged  # … without a key or its hash


def test_settings_read_keys_from_the_environment(monkeypatch) -> None:
    entry = {"name": "ci", "sha256": hash_key("k").upper(), "scopes": ["train", "generate"]}
    monkeypatch.setenv("GANSERVE_API_KEYS", json.dumps([entry]))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.api_keys == [ApiKeyEntry(name="ci", sha256=hash_key("k"), scopes=[Scope.train, Scope.generate])]


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "ci", "key": "gsk_plaintext", "scopes": ["train"]},  # a key, not its hash: refused
        {"name": "ci", "sha256": "abc", "scopes": ["train"]},
        {"name": "ci", "sha256": "0" * 64, "scopes": ["root"]},
        {"name": "ci", "sha256": "0" * 64, "scopes": []},
        {"name": "../ci", "sha256": "0" * 64, "scopes": ["train"]},
    ],
)
def test_malformed_key_entries_are_refused(entry: dict) -> None:
    with pytest.raises(ValidationError):
        ApiKeyEntry.model_validate(entry)


# --- the keys in the database ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


DOWN = "postgresql+psycopg://postgres@127.0.0.1:1/ganserve"  # nothing listens on port 1: refused at once


def test_database_keys_are_merged_and_win_on_a_name(make_app, publish_model, settings: Settings) -> None:
    publish_model(DEFAULT_MODEL)
    db = connect(settings.effective_database_url)
    stored = create_key(db, "stored", [Scope.train])
    # `test-train` in the database too, with another key: the database's entry replaces the setting's.
    rotated = create_key(db, "test-train", [Scope.train])
    with TestClient(make_app()) as c:
        assert c.get("/train", headers=bearer(stored)).status_code == 200
        assert c.get("/train", headers=bearer(rotated)).status_code == 200
        assert c.get("/train", headers=bearer(TRAIN_KEY)).status_code == 401
        assert c.get("/train", headers=AUTH).status_code == 200  # a setting's key the database does not name


def test_a_key_created_or_revoked_applies_within_the_refresh_interval(any_db: Database) -> None:
    clock = Clock()
    ring = KeyRing(TEST_KEYS, any_db, interval_s=1.0, clock=clock)
    assert ring.load()
    key = create_key(any_db, "late", [Scope.train])
    clock.now = 0.9
    assert ring.refresh() is None and ring.lookup(key) is None  # read 0.9 s ago: not yet again
    clock.now = 1.0
    reader = ring.refresh()
    assert reader is not None
    reader.join()
    assert ring.lookup(key) == ApiKeyEntry(name="late", sha256=hash_key(key), scopes=[Scope.train])
    revoke_key(any_db, "late")
    clock.now = 2.0
    ring.refresh().join()
    assert ring.lookup(key) is None and ring.lookup(ADMIN_KEY) is not None


def test_a_slow_database_gets_one_read_at_a_time(sqlite_db: Database) -> None:
    ring = KeyRing([], sqlite_db, interval_s=0.0, clock=Clock())
    other = sqlite3.connect(sqlite_db.engine.url.database)
    other.execute("BEGIN IMMEDIATE")  # another process's transaction: the ring's read waits for it
    reader = ring.refresh()
    assert reader is not None and reader.is_alive()
    assert ring.refresh() is None  # due, but a read is under way: no second one
    other.rollback()
    reader.join()
    ring.refresh().join()  # the next one starts once it is done


def test_while_the_database_does_not_answer_the_keys_last_read_stay(
    any_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    ring = KeyRing([], any_db, clock=clock)
    key = create_key(any_db, "ci", [Scope.train])
    assert ring.load()
    ring.db = Database(DOWN)  # the database stops answering
    caplog.set_level(logging.INFO, logger="service.security.keyring")
    for second in (1.0, 2.0, 3.0):
        clock.now = second
        ring.refresh().join()
        assert ring.lookup(key) is not None  # still accepted
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # logged once, not at every read
    assert "GANSERVE_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:1/ganserve did not answer" in caplog.text
    ring.db = any_db  # back: a read applies the database's keys again
    revoke_key(any_db, "ci")
    clock.now = 4.0
    ring.refresh().join()
    assert ring.lookup(key) is None and "answers again" in caplog.text


def test_requests_never_wait_for_the_database(make_app, publish_model, settings: Settings) -> None:
    publish_model(DEFAULT_MODEL)
    key = create_key(connect(settings.effective_database_url), "ci", [Scope.train])
    app = make_app()
    with TestClient(app) as c:
        ring = app_state(app).keyring
        ring.db, ring.interval_s = Database(DOWN), 0.0  # every request starts a read, and each fails
        for _ in range(3):
            assert c.get("/train", headers=bearer(key)).status_code == 200
            assert c.get("/generate?seed=1", headers={"if-none-match": "*"}).status_code == 304


def test_an_old_keys_file_is_imported_at_start(make_app, publish_model, settings: Settings, caplog) -> None:
    """A volume from a version that kept the keys in `<GANSERVE_CHECKPOINT_DIR>/api-keys.json`: the API's first
    read finds no key in the database and imports the file's, once."""
    publish_model(DEFAULT_MODEL)
    settings.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    old = settings.checkpoint_dir / "api-keys.json"
    old.write_text(json.dumps([{"name": "old-ci", "sha256": hash_key("gsk_old"), "scopes": ["train"]}]))
    caplog.set_level(logging.INFO, logger="service.security.keyring")
    with TestClient(make_app()) as c:
        assert c.get("/train", headers=bearer("gsk_old")).status_code == 200
    assert not old.exists() and old.with_name("api-keys.json.imported").exists()
    assert "imported 1 API key(s) [old-ci (train)]" in caplog.text and "gsk_old" not in caplog.text
    assert [e.name for e in stored_keys(connect(settings.effective_database_url))] == ["old-ci"]


def test_no_keys_configured_is_logged_at_startup(make_app, publish_model, caplog) -> None:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(api_keys=[])):
        pass
    assert "no API keys configured" in caplog.text and "ganserve keys create" in caplog.text
