"""API keys (service/security/auth.py, core/keys.py): who may call what, the 401/403 answers and the keys file
(`ganserve keys`: tests/cli/test_keys.py)."""

import hmac
import json
import logging
import time
from pathlib import Path

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

from core.keys import ApiKeyEntry, Scope, hash_key
from core.settings import Settings

TRAIN_BODY = {"model_name": "my-digits", "epochs": 1, "max_samples": 256}
PATH_VALUES = {"job_id": "0" * 32, "plot": "losses", "epoch": "1", "name": DEFAULT_MODEL, "eval_id": "0" * 32}


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
    train_routes = [(m, p) for m, p in routes(app) if p.startswith("/train")]
    assert len(train_routes) >= 7  # POST/GET /train, GET/DELETE /train/{id}, metrics, plots, samples
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
    assert "needs `train`" in body["message"] and "--scopes train" in body["message"]
    r = anon.post(f"/models/{DEFAULT_MODEL}/evaluate", json={"n": 500}, headers=bearer(TRAIN_KEY))
    assert r.status_code == 403 and r.json()["detail"]["required_scope"] == "admin"
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


# --- the keys file ----------------------------------------------------------------------------------


def write_keys(path: Path, *entries: tuple[str, str, list[str]]) -> None:
    path.write_text(json.dumps([{"name": n, "sha256": hash_key(k), "scopes": s} for n, k, s in entries]))


def test_keys_file_is_merged_and_wins_on_a_name(make_app, publish_model, tmp_path: Path) -> None:
    publish_model(DEFAULT_MODEL)
    keys_file = tmp_path / "keys.json"
    # `test-train` in the file too, with another key: the file's entry replaces the setting's.
    write_keys(keys_file, ("file-key", "gsk_from-file", ["train"]), ("test-train", "gsk_rotated", ["train"]))
    with TestClient(make_app(api_keys_file=keys_file)) as c:
        assert c.get("/train", headers=bearer("gsk_from-file")).status_code == 200
        assert c.get("/train", headers=bearer("gsk_rotated")).status_code == 200
        assert c.get("/train", headers=bearer(TRAIN_KEY)).status_code == 401
        assert c.get("/train", headers=AUTH).status_code == 200  # a setting's key the file does not name


def test_keys_file_changes_apply_without_a_restart(make_app, publish_model, tmp_path: Path) -> None:
    publish_model(DEFAULT_MODEL)
    keys_file = tmp_path / "keys.json"
    with TestClient(make_app(api_keys=[], api_keys_file=keys_file)) as c:
        assert c.get("/train", headers=bearer("gsk_new")).status_code == 401
        write_keys(keys_file, ("new", "gsk_new", ["train"]))
        assert c.get("/train", headers=bearer("gsk_new")).status_code == 200
        write_keys(keys_file)  # revoked
        assert c.get("/train", headers=bearer("gsk_new")).status_code == 401


def test_a_malformed_keys_file_fails_closed(make_app, publish_model, tmp_path: Path, caplog) -> None:
    publish_model(DEFAULT_MODEL)
    keys_file = tmp_path / "keys.json"
    write_keys(keys_file, ("file-key", "gsk_from-file", ["train"]))
    with TestClient(make_app(api_keys_file=keys_file)) as c:
        assert c.get("/train", headers=bearer("gsk_from-file")).status_code == 200
        keys_file.write_text('[{"name": "file-key", "key": "gsk_from-file", "scopes": ["train"]}]')
        assert c.get("/train", headers=bearer("gsk_from-file")).status_code == 401  # its keys: refused
        assert c.get("/train", headers=AUTH).status_code == 200  # the settings' keys still work
    assert "is not a JSON list" in caplog.text and "gsk_from-file" not in caplog.text


def test_no_keys_configured_is_logged_at_startup(make_app, publish_model, caplog) -> None:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(api_keys=[])):
        pass
    assert "no API keys configured" in caplog.text and "ganserve keys create" in caplog.text
