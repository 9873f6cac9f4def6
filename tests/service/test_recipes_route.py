"""GET /recipes and /recipes/{name}, and `recipe` in POST /train: the recipe's fields resolved into the stored
config, the job's own winning; an unknown recipe a 422 naming the known ones; MNIST's default for a body naming
neither a recipe nor an architecture."""

from fastapi.testclient import TestClient
from svc_support import ADMIN_KEY, DEFAULT_MODEL, GENERATE_KEY, TRAIN_KEY, FakeSender, bearer

from core.jobs import JobStore
from core.recipes import RECIPE_NAMES, RECIPES

BODY = {"model_name": "my-digits", "epochs": 2, "max_samples": 256}


def test_get_recipes_lists_each_with_what_it_sets_and_its_quality(served_anon: TestClient) -> None:
    r = served_anon.get("/recipes")  # as public as /models: no key needed on a public server
    assert r.status_code == 200
    body = r.json()
    assert [x["name"] for x in body["recipes"]] == list(RECIPE_NAMES)
    assert body["defaults"] == {"mnist": "mnist-dcgan-conditional"}
    mlp = next(x for x in body["recipes"] if x["name"] == "mnist-mlp")
    assert mlp["sets"]["batch_size"] == 64 and mlp["datasets"][0] == "mnist"
    assert mlp["quality"]["metrics"]["fid"] == 47.9
    assert mlp["quality"]["source"] == "service/bundled/mnist-mlp/README.md#evaluation"
    default = next(x for x in body["recipes"] if x["name"] == body["defaults"]["mnist"])
    assert default["quality"]["metrics"]["fid"] == 15.3 and default["quality"]["samples"] == 2000
    folder = next(x for x in body["recipes"] if x["name"] == "image-folder-64")
    assert folder["quality"] is None and folder["quality_note"].startswith("not measured yet")


def test_get_one_recipe_and_a_missing_one(served_anon: TestClient) -> None:
    r = served_anon.get("/recipes/seed-reference")
    assert r.status_code == 200 and r.json() == RECIPES["seed-reference"].model_dump(mode="json")
    r = served_anon.get("/recipes/mnist-gan")
    assert r.status_code == 404
    body = r.json()
    assert body["error"] == "recipe_not_found" and body["detail"]["known"] == list(RECIPE_NAMES)
    assert "mnist-dcgan" in body["message"] and "GET /recipes" in body["message"]


def test_recipes_need_scope_generate_on_a_private_server(make_app, publish_model) -> None:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(public_generate=False)) as c:
        assert c.get("/recipes").status_code == 401
        assert c.get("/recipes", headers=bearer(GENERATE_KEY)).status_code == 200
        assert c.get("/recipes/mnist-mlp", headers=bearer(ADMIN_KEY)).status_code == 200
        assert c.get("/recipes", headers=bearer(TRAIN_KEY)).status_code == 403


def test_a_job_naming_a_recipe_stores_its_fields_and_its_own_win(client: TestClient, sender: FakeSender) -> None:
    r = client.post("/train", json={**BODY, "recipe": "mnist-dcgan", "batch_size": 32})
    assert r.status_code == 202, r.text
    config = r.json()["config"]
    assert config["recipe"] == "mnist-dcgan" and config["batch_size"] == 32
    assert (config["architecture"], config["ema"], config["image_size"]) == ("dcgan", 0.999, 28)
    stored: JobStore = client.app.state.ganserve.jobs  # type: ignore[attr-defined]
    assert stored.get(r.json()["id"]).config.model_dump(mode="json") == config
    assert sender.sent == [r.json()["id"]]


def test_an_unknown_recipe_is_422_naming_the_known_ones(client: TestClient, sender: FakeSender) -> None:
    r = client.post("/train", json={**BODY, "recipe": "mnist-gan"})
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "validation_error" and "body.recipe" in body["message"]
    assert all(name in body["message"] for name in RECIPE_NAMES)
    assert sender.sent == []


def test_a_job_naming_neither_recipe_nor_architecture_gets_mnists_default(client: TestClient) -> None:
    config = client.post("/train", json=BODY).json()["config"]
    assert (config["recipe"], config["batch_size"], config["conditional"]) == ("mnist-dcgan-conditional", 64, True)
    config = client.post("/train", json={**BODY, "model_name": "other", "architecture": "mlp"}).json()["config"]
    assert config["recipe"] is None and config["batch_size"] == 128
