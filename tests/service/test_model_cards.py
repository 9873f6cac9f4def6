"""Each model's card in brief under GET /models and GET /models/{name} (service/api/cards.py): a bundled model's
figures from its card.json, a published model's from the newest evaluation of its served weights, the recipe
from the served version's training config, and the FID floor (core/fid_floors.py) at the same n and extractor.
A bad card.json shows no figures and is logged, never a 500."""

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from svc_support import AUTH, DEFAULT_MODEL, client_on, publish_generator, publish_tiny_model, tiny_image_g

from core.evaluations import EvaluationStore
from core.fid_floors import FID_FLOORS, fid_floor
from core.records import JobStatus, now
from core.settings import Settings
from service.api import cards as cards_module

SHIPPED = "shipped"  # a bundled model
DIGITS = "digits"  # a published model whose job named a recipe
TWICE = "twice"  # a published model with two versions
NO_FIGURES = {"fid": None, "n": None, "extractor": None, "precision": None, "recall": None, "fid_floor": None}
CARD = {
    "recipe": "mnist-dcgan",
    "fid": 12.5,
    "n": 2000,
    "extractor": "mnist-cnn-v1",
    "precision": 0.81,
    "recall": 0.62,
    "fid_floor": 9.5,
    "train_seconds": 600.0,
    "card": "README.md",
}


@pytest.fixture
def started(settings: Settings, make_app: Callable[..., FastAPI], publish_model: Callable[..., int]) -> Iterator:
    publish_model()  # the default model: no recipe, no evaluation
    publish_generator(
        settings,
        DIGITS,
        tiny_image_g(),
        kind="image",
        image_shape=[1, 28, 28],
        dataset="mnist",
        train_config={"dataset": "mnist", "epochs": 1, "recipe": "mnist-mlp"},
    )
    publish_model(TWICE)
    publish_model(TWICE, weights_seed=1)
    publish_tiny_model(settings.bundled_models_dir, SHIPPED)
    (settings.bundled_models_dir / SHIPPED / "README.md").write_text("# shipped\n")
    with TestClient(make_app()) as c:
        yield c


@pytest.fixture
def admin(started: TestClient) -> Iterator[TestClient]:
    c = client_on(started, headers=AUTH)
    yield c
    c.close()


def cards(client: TestClient) -> dict[str, dict[str, Any]]:
    r = client.get("/models")
    assert r.status_code == 200, r.text
    return {m["name"]: m["card"] for m in r.json()["models"]}


def write_card(settings: Settings, text: str, name: str = SHIPPED) -> Path:
    path = settings.bundled_models_dir / name / "card.json"
    path.write_text(text)
    return path


def finish(client: TestClient, name: str, n: int, version: int | None = None, **result: Any) -> str:
    """An evaluation of `name`'s `version` (the newest), started over HTTP and marked as the worker marks it."""
    r = client.post(f"/models/{name}/evaluate", json={"n": n, "version": version})
    assert r.status_code == 202, r.text
    store: EvaluationStore = client.app.state.ganserve.evaluations  # type: ignore[attr-defined]
    store.update(r.json()["id"], status=JobStatus.succeeded, result=result, finished_at=now())
    return r.json()["id"]


def test_a_bundled_card_json_gives_the_figures_and_the_readme(admin: TestClient, settings: Settings) -> None:
    write_card(settings, json.dumps(CARD))
    card = cards(admin)[SHIPPED]
    assert card == {**{k: CARD[k] for k in NO_FIGURES}, "recipe": "mnist-dcgan", "source": f"{SHIPPED}/README.md"}
    assert admin.get(f"/models/{SHIPPED}").json()["card"] == card


def test_a_readme_in_the_project_is_named_by_its_path_there(
    admin: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_card(settings, json.dumps(CARD))
    monkeypatch.setattr(cards_module, "PROJECT_ROOT", settings.bundled_models_dir.parent.resolve())
    assert cards(admin)[SHIPPED]["source"] == f"{settings.bundled_models_dir.name}/{SHIPPED}/README.md"


def test_a_bundled_card_without_a_floor_gets_the_measured_one(admin: TestClient, settings: Settings) -> None:
    write_card(settings, json.dumps({**CARD, "fid_floor": None, "n": 1000}))
    assert cards(admin)[SHIPPED]["fid_floor"] == FID_FLOORS[("mnist", "mnist-cnn-v1", 1000)]
    write_card(settings, json.dumps({**CARD, "fid_floor": None, "n": 10000}))  # not measured at that n
    assert cards(admin)[SHIPPED]["fid_floor"] is None


def test_a_card_naming_no_readme_has_its_figures_and_no_source(admin: TestClient, settings: Settings) -> None:
    for missing in ("CARD.md", "../../outside.md"):
        write_card(settings, json.dumps({**CARD, "card": missing}))
        card = cards(admin)[SHIPPED]
        assert card["fid"] == CARD["fid"] and card["source"] is None, missing


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[]",
        json.dumps({k: v for k, v in CARD.items() if k != "fid"}),  # a figure missing
        json.dumps({**CARD, "fid_flor": 9.5}),  # a misspelt key
        json.dumps({**CARD, "precision": 1.5}),
        json.dumps({**CARD, "fid": "12.5"}),
        json.dumps({**CARD, "recipe": "no-such-recipe"}),
    ],
)
def test_a_bad_card_json_shows_no_figures_and_is_logged_once(
    admin: TestClient, settings: Settings, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    path = write_card(settings, text)
    with caplog.at_level(logging.ERROR, logger="service.api.cards"):
        card = cards(admin)[SHIPPED]
        assert cards(admin)[SHIPPED] == card  # asked twice
        r = admin.get(f"/models/{SHIPPED}")
    assert r.status_code == 200 and r.json()["card"] == card
    assert card == {**NO_FIGURES, "recipe": None, "source": None}
    logged = [rec for rec in caplog.records if str(path) in rec.getMessage()]
    assert len(logged) == 1, [rec.getMessage() for rec in caplog.records]


def test_no_card_json_no_figures(admin: TestClient) -> None:
    assert cards(admin)[SHIPPED] == {**NO_FIGURES, "recipe": None, "source": None}


def test_a_published_model_shows_its_recipe_and_no_figures_before_an_evaluation(admin: TestClient) -> None:
    found = cards(admin)
    assert found[DIGITS] == {**NO_FIGURES, "recipe": "mnist-mlp", "source": None}
    assert found[DEFAULT_MODEL] == {**NO_FIGURES, "recipe": None, "source": None}
    detail = admin.get(f"/models/{DIGITS}").json()
    assert detail["card"] == found[DIGITS] and detail["version_info"][0]["training"]["recipe"] == "mnist-mlp"


def test_a_published_model_shows_its_newest_evaluation_and_the_floor(admin: TestClient) -> None:
    figures = {"extractor": "mnist-cnn-v1", "fid": 31.5, "precision": 0.7, "recall": 0.4}
    eval_id = finish(admin, DIGITS, 2000, n_fake=2000, **figures)
    card = cards(admin)[DIGITS]
    floor = FID_FLOORS[("mnist", "mnist-cnn-v1", 2000)]
    assert card == {**figures, "n": 2000, "fid_floor": floor, "recipe": "mnist-mlp", "source": "evaluation"}
    detail = admin.get(f"/models/{DIGITS}").json()
    assert detail["card"] == card and detail["version_info"][0]["evaluations"][0]["evaluation_id"] == eval_id

    # A newer one, at an n whose floor was not measured, with a non-finite FID (stored as null): it is shown.
    finish(admin, DIGITS, 10000, n_fake=10000, **{**figures, "fid": float("nan"), "precision": 0.75})
    card = cards(admin)[DIGITS]
    assert (card["fid"], card["n"], card["precision"], card["fid_floor"]) == (None, 10000, 0.75, None)


def test_an_evaluation_of_an_older_version_is_not_the_card(admin: TestClient) -> None:
    finish(admin, TWICE, 2000, version=1, n_fake=2000, extractor="mnist-cnn-v1", fid=40.0, precision=0.5, recall=0.5)
    r = admin.get(f"/models/{TWICE}").json()
    assert r["latest_version"] == 2 and r["card"] == {**NO_FIGURES, "recipe": None, "source": None}
    assert r["version_info"][0]["evaluations"][0]["fid"] == 40.0  # listed under the version it measured
    assert cards(admin)[TWICE] == r["card"]


def test_the_floors_are_looked_up_at_exactly_their_n_and_extractor() -> None:
    assert fid_floor("mnist", "mnist-cnn-v1", 2000) == 9.54
    assert fid_floor("mnist", "mnist-cnn-v1", 1000) == 19.53
    assert fid_floor("mnist", "mnist-cnn-v1", 10000) is None  # not measured
    assert fid_floor("mnist", "inception-v3-compat", 2000) is None
    assert fid_floor("fashion-mnist", "mnist-cnn-v1", 2000) is None
    assert fid_floor(None, "mnist-cnn-v1", 2000) is None and fid_floor("mnist", None, 2000) is None
