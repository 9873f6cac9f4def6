"""POST /train claims the job's `model_name` for its key before the job is queued (core/model_names.py): the first
key to train a name owns it, another key's job under it is a 403 `model_name_owned` (an admin key may use any), a
bundled model's name is a 422 `model_name_reserved`, and a refused submission claims nothing."""

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from svc_support import (
    ADMIN_KEY,
    DEFAULT_MODEL,
    TEST_KEYS,
    TRAIN_KEY,
    FakeSender,
    bearer,
    client_on,
    publish_tiny_model,
)

from core.db import Database
from core.keys import ApiKeyEntry, Scope, hash_key
from core.model_names import ModelName, ModelNames
from core.settings import Settings

OTHER_KEY = "gsk_test-other-train-key"
KEYS = [*TEST_KEYS, ApiKeyEntry(name="test-other", sha256=hash_key(OTHER_KEY), scopes=[Scope.train])]
BUNDLED = "bundled-digits"


@pytest.fixture
def start(
    make_app: Callable[..., FastAPI], publish_model: Callable[..., int], settings: Settings
) -> Callable[..., TestClient]:
    """`start(**settings)`: the app with a bundled model and two `train` keys (test-train, test-other) besides the
    admin; used as a context manager."""
    publish_model(DEFAULT_MODEL)
    publish_tiny_model(settings.bundled_models_dir, BUNDLED)
    return lambda **overrides: TestClient(make_app(api_keys=KEYS, **overrides))


@pytest.fixture
def started(start: Callable[..., TestClient]) -> Iterator[TestClient]:
    with start() as c:
        yield c


def as_key(started: TestClient, key: str) -> TestClient:
    return client_on(started, headers=bearer(key))


def claim_of(client: TestClient, name: str) -> ModelName | None:
    return ModelNames(client.app.state.ganserve.db).get(name)  # type: ignore[attr-defined]


def train(client: TestClient, name: str, **fields: object) -> object:
    return client.post("/train", json={"model_name": name, "epochs": 1, "max_samples": 256, **fields})


def test_the_first_key_to_train_a_name_owns_it(started: TestClient, sender: FakeSender) -> None:
    trainer, other = as_key(started, TRAIN_KEY), as_key(started, OTHER_KEY)
    first = train(trainer, "shared")
    assert first.status_code == 202, first.text
    claim = claim_of(started, "shared")
    assert claim is not None and claim.owner == "test-train" and claim.visibility == "public"
    r = train(other, "shared")
    assert r.status_code == 403
    body = r.json()
    assert body["error"] == "model_name_owned" and body["detail"] == {"model_name": "shared"}
    assert "belongs to another API key" in body["message"] and "Choose another model_name" in body["message"]
    assert "test-train" not in body["message"]  # who owns it is not told
    assert sender.sent == [first.json()["id"]]  # no job was queued for the refused key
    assert other.get("/train").json()["count"] == 0
    assert train(trainer, "shared").status_code == 202  # its owner trains it again


def test_an_admin_trains_under_any_name_which_stays_its_owners(started: TestClient) -> None:
    trainer, admin = as_key(started, TRAIN_KEY), as_key(started, ADMIN_KEY)
    assert train(trainer, "theirs").status_code == 202
    assert train(admin, "theirs").status_code == 202
    claim = claim_of(started, "theirs")
    assert claim is not None and claim.owner == "test-train"
    assert train(admin, "admins").status_code == 202  # a name nobody had: the admin key's now
    assert train(trainer, "admins").status_code == 403


@pytest.mark.parametrize("key", [TRAIN_KEY, ADMIN_KEY])
def test_a_bundled_models_name_is_reserved(started: TestClient, sender: FakeSender, key: str) -> None:
    r = train(as_key(started, key), BUNDLED)
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "model_name_reserved" and body["detail"] == {"model_name": BUNDLED}
    assert "bundled" in body["message"] and "Choose another model_name" in body["message"]
    assert sender.sent == [] and claim_of(started, BUNDLED) is None


def test_visibility_is_the_names_when_first_claimed(start: Callable[..., TestClient]) -> None:
    with start(model_visibility="private") as started:
        trainer = as_key(started, TRAIN_KEY)
        r = train(trainer, "hidden")
        assert r.status_code == 202 and "visibility" not in r.json()["config"]  # not the model's config
        assert claim_of(started, "hidden").visibility == "private"  # type: ignore[union-attr]  # the server's default
        assert train(trainer, "shown", visibility="public").status_code == 202
        assert claim_of(started, "shown").visibility == "public"  # type: ignore[union-attr]
        assert train(trainer, "shown", visibility="private").status_code == 202  # claimed already: unchanged
        assert claim_of(started, "shown").visibility == "public"  # type: ignore[union-attr]
        r = train(trainer, "other", visibility="secret")
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "visibility"]


def test_a_refused_submission_claims_nothing(start: Callable[..., TestClient]) -> None:
    with start(max_queued_per_key=1) as started:
        trainer = as_key(started, TRAIN_KEY)
        assert train(trainer, "first").status_code == 202
        assert train(trainer, "second").status_code == 429  # the queue limit, after the claim: rolled back
        assert claim_of(started, "second") is None
        assert train(as_key(started, OTHER_KEY), "second").status_code == 202  # free for another key


def test_an_idempotent_retry_is_replayed_and_never_claims_for_another_key(
    started: TestClient, sender: FakeSender
) -> None:
    trainer, other = as_key(started, TRAIN_KEY), as_key(started, OTHER_KEY)
    retry = {"Idempotency-Key": "once"}
    first = trainer.post("/train", json={"model_name": "kept", "visibility": "private"}, headers=retry)
    again = trainer.post("/train", json={"model_name": "kept", "visibility": "private"}, headers=retry)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    changed = trainer.post("/train", json={"model_name": "kept", "visibility": "public"}, headers=retry)
    assert changed.status_code == 422 and changed.json()["error"] == "idempotency_key_reused"  # another request
    theirs = other.post("/train", json={"model_name": "kept", "visibility": "private"}, headers=retry)
    assert theirs.status_code == 403 and theirs.json()["error"] == "model_name_owned"
    assert sender.sent == [first.json()["id"]]


@pytest.mark.parametrize(("winner", "status"), [("test-other", 403), ("test-train", 202)])
def test_a_first_claim_that_loses_a_race_reads_the_winners(
    make_app: Callable[..., FastAPI],
    any_db: Database,
    monkeypatch: pytest.MonkeyPatch,
    sender: FakeSender,
    winner: str,
    status: int,
) -> None:
    """Two first claims of one name at once: ours read no claim, the other's insert committed before ours. The
    primary key refuses our insert; only its savepoint is rolled back, the claim is read again, and the
    submission's transaction goes on (on PostgreSQL too, where a failed statement would otherwise void it)."""
    ModelNames(any_db).claim("raced", winner)
    read = ModelNames.get
    stale: list[str] = []

    def read_before_the_winner_committed(self: ModelNames, name: str, conn: Any = None) -> ModelName | None:
        if name == "raced" and not stale:
            stale.append(name)
            return None
        return read(self, name, conn)

    monkeypatch.setattr(ModelNames, "get", read_before_the_winner_committed)
    url = any_db.engine.url.render_as_string(hide_password=False)
    with TestClient(make_app(api_keys=KEYS, database_url=url), headers=bearer(TRAIN_KEY)) as c:
        r = train(c, "raced")
        assert r.status_code == status, r.text
        assert stale == ["raced"]  # the race happened
        if status == 202:
            assert sender.sent == [r.json()["id"]] and c.get(f"/train/{r.json()['id']}").status_code == 200
        else:
            assert r.json()["error"] == "model_name_owned" and sender.sent == []
        assert train(c, "next").status_code == 202  # the database is in order for the next one
    claim = ModelNames(any_db).get("raced")
    assert claim is not None and claim.owner == winner
