"""Who may change a model and see its evaluations (service/api/routes/models.py, core/model_names.py): every
cross-key attempt on PATCH /models/{name}, its grants, POST /models/{name}/evaluate and an evaluation's record and
image, by the owner, another `train` key, a key granted read access, an `admin` key, a `generate` key and an
anonymous caller; each refusal a JSON 4xx naming the rule, and nothing of the owner's changed by it."""

from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from svc_support import ADMIN_KEY, GENERATE_KEY, TEST_KEYS, TRAIN_KEY, bearer, client_on, publish_tiny_model

from core.db import connect
from core.keys import ApiKeyEntry, Scope, hash_key
from core.model_names import ModelName, ModelNames
from core.records import JobStatus, now
from core.settings import Settings

OTHER_KEY = "gsk_test-other-train-key"
KEYS = [*TEST_KEYS, ApiKeyEntry(name="test-other", sha256=hash_key(OTHER_KEY), scopes=[Scope.train])]
OWNER, OTHER = "test-train", "test-other"
MINE = "mine"  # test-train's model
BUNDLED = "shipped"  # a bundled model: nobody's
LIMIT = 2  # GANSERVE_MAX_QUEUED_PER_KEY here


@pytest.fixture
def started(settings: Settings, make_app: Callable[..., FastAPI], publish_model: Callable[..., int]) -> Iterator:
    publish_model()  # the default model, published not over HTTP: the operator's
    ModelNames(connect(settings.effective_database_url)).claim(MINE, OWNER)
    publish_model(MINE)
    publish_tiny_model(settings.bundled_models_dir, BUNDLED)
    with TestClient(make_app(api_keys=KEYS, max_queued_per_key=LIMIT)) as c:
        yield c


@pytest.fixture
def who(started: TestClient) -> Iterator[dict[str, TestClient]]:
    clients = {
        "owner": client_on(started, headers=bearer(TRAIN_KEY)),
        "other": client_on(started, headers=bearer(OTHER_KEY)),
        "admin": client_on(started, headers=bearer(ADMIN_KEY)),
        "generate": client_on(started, headers=bearer(GENERATE_KEY)),
        "anonymous": client_on(started),
    }
    yield clients
    for c in clients.values():
        c.close()


def claim(settings: Settings, name: str = MINE) -> ModelName:
    found = ModelNames(connect(settings.effective_database_url)).get(name)
    assert found is not None
    return found


def refused(r, status: int, error: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == error and body["message"], body
    return body


CHANGES = [
    ("PATCH", f"/models/{MINE}", {"visibility": "private"}),
    ("GET", f"/models/{MINE}/grants", None),
    ("PUT", f"/models/{MINE}/grants/test-generate", None),
    ("DELETE", f"/models/{MINE}/grants/test-generate", None),
    ("POST", f"/models/{MINE}/evaluate", {}),
]
CHANGE_IDS = ["visibility", "grants", "grant", "revoke", "evaluate"]


def call(c: TestClient, method: str, path: str, body: dict | None):
    return c.request(method, path, json=body) if body is not None else c.request(method, path)


def test_the_owner_changes_visibility_and_grants(who: dict[str, TestClient], settings: Settings) -> None:
    owner = who["owner"]
    r = owner.patch(f"/models/{MINE}", json={"visibility": "private"})
    assert r.status_code == 200, r.text
    assert r.json() | {"created_at": None} == {
        "name": MINE,
        "owner": OWNER,
        "visibility": "private",
        "grants": [],
        "created_at": None,
    }
    assert owner.put(f"/models/{MINE}/grants/{OTHER}").json()["grants"] == [OTHER]
    assert owner.put(f"/models/{MINE}/grants/{OTHER}").json()["grants"] == [OTHER]  # again: the same
    assert owner.put(f"/models/{MINE}/grants/test-generate").json()["grants"] == ["test-generate", OTHER]
    assert owner.get(f"/models/{MINE}/grants").json()["grants"] == ["test-generate", OTHER]
    assert owner.delete(f"/models/{MINE}/grants/{OTHER}").json()["grants"] == ["test-generate"]
    body = refused(owner.delete(f"/models/{MINE}/grants/{OTHER}"), 404, "grant_not_found")
    assert body["detail"]["grants"] == ["test-generate"]
    assert claim(settings).visibility == "private" and claim(settings).grantees == ("test-generate",)
    assert owner.patch(f"/models/{MINE}", json={"visibility": "public"}).json()["visibility"] == "public"


@pytest.mark.parametrize(("method", "path", "body"), CHANGES, ids=CHANGE_IDS)
def test_another_train_key_gets_403_for_a_public_model_and_404_for_a_private_one(
    who: dict[str, TestClient], settings: Settings, method: str, path: str, body: dict | None
) -> None:
    who["owner"].put(f"/models/{MINE}/grants/test-generate")
    before = claim(settings)
    found = refused(call(who["other"], method, path, body), 403, "not_model_owner")
    assert "belongs to key 'test-train'" in found["message"] and found["detail"]["owner"] == OWNER
    assert who["owner"].patch(f"/models/{MINE}", json={"visibility": "private"}).status_code == 200
    hidden = refused(call(who["other"], method, path, body), 404, "model_not_found")
    missing = refused(call(who["other"], method, path.replace(MINE, "nope"), body), 404, "model_not_found")
    assert hidden["message"].replace(MINE, "nope") == missing["message"]  # a private name's existence is not told
    assert claim(settings) == ModelName(before.name, before.owner, "private", before.created_at, before.grantees)
    assert who["owner"].get(f"/models/{MINE}/grants").status_code == 200


@pytest.mark.parametrize(("method", "path", "body"), CHANGES, ids=CHANGE_IDS)
def test_a_granted_key_is_served_the_model_but_may_not_change_it(
    who: dict[str, TestClient], settings: Settings, method: str, path: str, body: dict | None
) -> None:
    who["owner"].patch(f"/models/{MINE}", json={"visibility": "private"})
    who["owner"].put(f"/models/{MINE}/grants/{OTHER}")
    before = claim(settings)
    refused(call(who["other"], method, path, body), 403, "not_model_owner")
    refused(who["other"].delete(f"/models/{MINE}/grants/{OTHER}"), 403, "not_model_owner")  # not even its own
    assert claim(settings) == before


@pytest.mark.parametrize(("method", "path", "body"), CHANGES, ids=CHANGE_IDS)
def test_anonymous_callers_and_generate_keys_change_nothing(
    who: dict[str, TestClient], settings: Settings, method: str, path: str, body: dict | None
) -> None:
    before = claim(settings)
    refused(call(who["anonymous"], method, path, body), 401, "api_key_required")
    refused(call(who["generate"], method, path, body), 403, "insufficient_scope")
    assert claim(settings) == before


def test_an_admin_changes_any_keys_model_which_stays_its_owners(who: dict[str, TestClient], settings: Settings) -> None:
    admin = who["admin"]
    assert admin.patch(f"/models/{MINE}", json={"visibility": "private"}).json()["owner"] == OWNER
    assert admin.put(f"/models/{MINE}/grants/{OTHER}").json()["grants"] == [OTHER]
    assert admin.get(f"/models/{MINE}/grants").json()["visibility"] == "private"
    assert admin.delete(f"/models/{MINE}/grants/{OTHER}").json()["grants"] == []
    assert claim(settings).owner == OWNER
    operators = admin.patch("/models/tiny", json={"visibility": "private"}).json()  # published not over HTTP
    assert operators["owner"] is None and operators["visibility"] == "private"
    body = refused(who["owner"].patch("/models/tiny", json={"visibility": "public"}), 404, "model_not_found")
    assert admin.patch("/models/tiny", json={"visibility": "public"}).status_code == 200
    body = refused(who["owner"].patch("/models/tiny", json={"visibility": "private"}), 403, "not_model_owner")
    assert "the operator" in body["message"]


@pytest.mark.parametrize("caller", ["owner", "admin"])
@pytest.mark.parametrize(("method", "path", "body"), CHANGES[:4], ids=CHANGE_IDS[:4])
def test_a_bundled_models_access_never_changes(
    who: dict[str, TestClient], caller: str, method: str, path: str, body: dict | None
) -> None:
    found = refused(call(who[caller], method, path.replace(MINE, BUNDLED), body), 403, "bundled_model")
    assert "belong to nobody" in found["message"]


def test_bad_requests_are_422_naming_the_rule(who: dict[str, TestClient], settings: Settings) -> None:
    owner = who["owner"]
    for body in ({"visibility": "secret"}, {"visibility": "private", "owner": OTHER}, {}):
        refused(owner.patch(f"/models/{MINE}", json=body), 422, "validation_error")
    body = refused(owner.put(f"/models/{MINE}/grants/nobody"), 422, "unknown_key")
    assert "ganserve keys list" in body["message"]
    refused(owner.put(f"/models/{MINE}/grants/{OWNER}"), 422, "grant_to_owner")
    assert claim(settings).grantees == () and claim(settings).visibility == "public"


def test_the_owner_and_an_admin_evaluate_others_may_not(who: dict[str, TestClient]) -> None:
    r = who["owner"].post(f"/models/{MINE}/evaluate", json={})
    assert r.status_code == 202 and r.json()["model"] == MINE, r.text
    assert who["admin"].post(f"/models/{MINE}/evaluate", json={}).status_code == 202
    assert who["admin"].post(f"/models/{BUNDLED}/evaluate", json={}).status_code == 202
    refused(who["owner"].post(f"/models/{BUNDLED}/evaluate", json={}), 403, "bundled_model")
    refused(who["owner"].post("/models/tiny/evaluate", json={}), 403, "not_model_owner")  # the operator's
    refused(who["other"].post(f"/models/{MINE}/evaluate", json={}), 403, "not_model_owner")


def test_an_owner_has_at_most_the_queue_limit_of_evaluations(who: dict[str, TestClient]) -> None:
    for _ in range(LIMIT):
        assert who["owner"].post(f"/models/{MINE}/evaluate", json={}).status_code == 202
    body = refused(who["owner"].post(f"/models/{MINE}/evaluate", json={}), 429, "too_many_evaluations")
    assert "GANSERVE_MAX_QUEUED_PER_KEY=2" in body["message"]
    assert who["admin"].post(f"/models/{MINE}/evaluate", json={}).status_code == 202  # an admin's are not counted


def test_an_evaluation_is_shown_to_its_creator_the_models_owner_and_admins(
    who: dict[str, TestClient], started: TestClient
) -> None:
    who["owner"].put(f"/models/{MINE}/grants/{OTHER}")  # read access to the model is not access to its evaluations
    by_owner = who["owner"].post(f"/models/{MINE}/evaluate", json={}).json()["id"]
    by_admin = who["admin"].post(f"/models/{MINE}/evaluate", json={}).json()["id"]
    store = started.app.state.ganserve.evaluations  # type: ignore[attr-defined]
    store.update(by_owner, status=JobStatus.succeeded, result={"fid": 1.0}, finished_at=now())
    for eval_id in (by_owner, by_admin):
        path = f"/models/{MINE}/evaluations/{eval_id}"
        for caller in ("owner", "admin"):
            assert who[caller].get(path).json()["id"] == eval_id
            refused(who[caller].get(f"{path}/nearest-neighbours.png"), 404, "not_ready")
        for caller in ("other", "generate", "anonymous"):
            body = refused(who[caller].get(path), 404, "evaluation_not_found")
            assert "the key that started it, the model's owner and `admin` keys" in body["message"]
            refused(who[caller].get(f"{path}/nearest-neighbours.png"), 404, "evaluation_not_found")
