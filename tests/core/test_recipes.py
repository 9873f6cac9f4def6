"""Recipes (core/recipes.py): each resolves to a valid TrainConfig holding its fields, a job's own fields win, a
submitted job naming neither a recipe nor an architecture gets its dataset's default, and a config read back is
never reinterpreted."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.recipes import DEFAULT_RECIPES, RECIPE_NAMES, RECIPES, SUBMITTED, default_recipe, resolve
from core.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
SUBMIT = {SUBMITTED: True}


def _job(name: str, **fields: object) -> dict:
    """A job naming recipe `name` on the first dataset it is made for."""
    dataset = RECIPES[name].datasets[0]
    folder = {"image_folder": "faces"} if dataset == "image-folder" else {}
    return {"model_name": "x", "recipe": name, "dataset": dataset, **folder, **fields}


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_each_recipe_resolves_to_a_valid_config_holding_its_fields(name: str) -> None:
    config = TrainConfig.model_validate(_job(name))
    dumped = config.model_dump(mode="json")
    assert config.recipe == name
    for field, value in RECIPES[name].sets.items():
        assert dumped[field] == value, field


def test_recipes_are_named_by_their_keys_and_set_only_fields_that_exist() -> None:
    assert tuple(RECIPES) == RECIPE_NAMES
    for name, recipe in RECIPES.items():
        assert recipe.name == name
        assert set(recipe.sets) <= set(TrainConfig.model_fields) - {"model_name", "recipe"}
        # A recipe says how to train, not how long: the job's length stays its own.
        assert not set(recipe.sets) & {"epochs", "steps", "seed", "max_samples", "dataset"}
        assert (recipe.quality is None) == recipe.quality_note.startswith("not measured yet")


def test_seed_reference_is_the_seeds_recipe_exactly() -> None:
    c = TrainConfig.model_validate({"model_name": "x", "recipe": "seed-reference"})
    assert (c.architecture, c.output, c.batch_size, c.latent_dim) == ("mlp", "linear", 128, 100)
    assert (c.optimizer, c.lr_g, c.lr_d, c.betas_g, c.betas_d) == ("adam", 2e-4, 2e-4, (0.9, 0.999), (0.9, 0.999))
    assert (c.loss, c.d_steps, c.g_hidden, c.ema, c.conditional) == ("non-saturating", 1, None, None, False)


def test_mnist_mlp_is_the_bundled_models_train_json_but_its_length() -> None:
    bundled = json.loads((ROOT / "service/bundled/mnist-mlp/train.json").read_text())
    config = TrainConfig.model_validate({"model_name": "x", "recipe": "mnist-mlp"}).model_dump(mode="json")
    trained = TrainConfig.model_validate(bundled).model_dump(mode="json")
    length = {"model_name", "epochs", "sample_every", "recipe"}
    assert {k: v for k, v in config.items() if k not in length} == {k: v for k, v in trained.items() if k not in length}
    figures = RECIPES["mnist-mlp"].quality
    assert figures is not None and figures.metrics["fid"] == 47.9 and figures.samples == 10_000
    card = (ROOT / "service/bundled/mnist-mlp/README.md").read_text()
    assert "| this model, n = 10,000 | 47.9 |" in card and "0.834 | 0.531 |" in card


def test_the_default_model_is_its_recipe_trained_and_its_figures_are_its_cards() -> None:
    name = DEFAULT_RECIPES["mnist"]
    folder = ROOT / "service/bundled" / name
    bundled = json.loads((folder / "train.json").read_text())
    assert bundled["recipe"] == name and bundled["model_name"] == name  # the default model is the default recipe's
    stored = json.loads((folder / "1/model.json").read_text())["train_config"]
    resolved = TrainConfig.model_validate(bundled, context=SUBMIT).model_dump(mode="json")
    assert stored == resolved  # what ran is what the recipe resolves to today
    figures = RECIPES[name].quality
    assert figures is not None and figures.samples == 2000
    card = json.loads((folder / "card.json").read_text())
    assert (card["recipe"], card["fid"], card["n"]) == (name, figures.metrics["fid"], figures.samples)
    assert (card["precision"], card["recall"]) == (figures.metrics["precision"], figures.metrics["recall"])
    readme = (folder / "README.md").read_text()
    assert f"| this model, n = 2,000 | {figures.metrics['fid']} |" in readme


def test_a_jobs_own_fields_override_the_recipe() -> None:
    c = TrainConfig.model_validate(_job("mnist-dcgan", batch_size=32, betas=[0.0, 0.9], ema=None))
    assert (c.architecture, c.batch_size, c.betas, c.ema, c.image_size) == ("dcgan", 32, (0.0, 0.9), None, 28)


def test_a_recipes_fields_are_validated_as_the_jobs_own() -> None:
    # mnist-dcgan sets image_size 28: on a toy dataset that cannot run, said as for a job that wrote it.
    with pytest.raises(ValidationError, match="dcgan` generates images"):
        TrainConfig.model_validate({"model_name": "x", "recipe": "mnist-dcgan", "dataset": "ring-2d"})


def test_an_unknown_recipe_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValidationError) as e:
        TrainConfig.model_validate({"model_name": "x", "recipe": "mnist-gan"}, context=SUBMIT)
    assert e.value.errors()[0]["loc"] == ("recipe",)
    assert all(name in str(e.value) for name in RECIPE_NAMES)


def test_a_submitted_job_naming_no_recipe_nor_architecture_gets_its_datasets_default() -> None:
    c = TrainConfig.model_validate({"model_name": "x"}, context=SUBMIT)
    assert DEFAULT_RECIPES["mnist"] == c.recipe == "mnist-dcgan-conditional" and c.batch_size == 64
    assert c.architecture == "dcgan" and c.conditional and c.weight_init == "dcgan" and c.ema == 0.999
    # Naming an architecture, or a dataset with no measured recipe, keeps TrainConfig's own defaults.
    for job in ({"architecture": "mlp"}, {"dataset": "fashion-mnist"}, {"dataset": "ring-2d"}, {"recipe": None}):
        c = TrainConfig.model_validate({"model_name": "x", **job}, context=SUBMIT)
        assert c.recipe is None and c.batch_size == 128, job


def test_the_default_follows_what_the_job_already_chose() -> None:
    # conditioning turned off: the best unconditional recipe, not the conditional one with its flag overwritten
    c = TrainConfig.model_validate({"model_name": "x", "conditional": False}, context=SUBMIT)
    assert (c.recipe, c.architecture, c.conditional) == ("mnist-dcgan", "dcgan", False)
    # a field of the MLP family (or MAD-GAN's, AdaGAN's) chooses that family: no default recipe to refuse it
    for job in ({"g_hidden": [64]}, {"d_hidden": [64]}, {"architecture": "mad-gan", "generators": 3}, {"rounds": 2}):
        assert default_recipe(job) is None, job
    c = TrainConfig.model_validate({"model_name": "x", "g_hidden": [64]}, context=SUBMIT)
    assert (c.recipe, c.architecture, c.g_hidden) == (None, "mlp", [64])
    assert default_recipe({"dataset": "mnist", "conditional": True}) == "mnist-dcgan-conditional"


def test_a_config_read_back_is_never_reinterpreted() -> None:
    # Without the submitted context (a record, a checkpoint's metadata, a partial config built internally) no
    # default recipe is applied; and a validated config resolved again is unchanged.
    assert TrainConfig.model_validate({"model_name": "x"}).recipe is None
    for name in RECIPE_NAMES:
        once = TrainConfig.model_validate(_job(name, epochs=3), context=SUBMIT)
        again = TrainConfig.model_validate(once.model_dump(mode="json"), context=SUBMIT)
        assert again == once
    assert resolve("not a dict", submitted=True) == "not a dict"
