"""`ganserve recipes` (this version's list, or a server's GET /recipes) and the client's `recipes()`/`recipe()`;
and a job file naming no recipe resolved as POST /train resolves it."""

import json
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from core.recipes import RECIPE_NAMES
from ganserve.cli import app
from ganserve.cli.jobs import read_config
from ganserve.client import Client, GanserveError, Recipe, RecipeList, RecipeQuality
from service.api.schemas import RecipeList as ServerRecipeList

SERVER = "http://ganserve.test"


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), prog_name="ganserve", env={"COLUMNS": "200"})


@pytest.mark.parametrize("where", ["local", "server"])
def test_recipes_table(where: str, use_api) -> None:
    result = run("recipes", *(["--server", SERVER] if where == "server" else []))
    assert result.exit_code == 0, result.output
    assert all(name in result.stdout for name in RECIPE_NAMES)
    assert "mnist-dcgan-conditional (default: mnist)" in result.stdout and "fid 47.9" in result.stdout
    assert "not measured yet" in result.stdout and "betas=[0.9, 0.999]" in result.stdout
    assert use_api() == ([(SERVER, None)] if where == "server" else [])


def test_one_recipe_and_an_unknown_one() -> None:
    result = run("recipes", "mnist-dcgan")
    assert result.exit_code == 0, result.output
    assert "ema = 0.999" in result.stdout and "mnist-dcgan-conditional" not in result.stdout
    result = run("recipes", "mnist-gan")
    assert result.exit_code == 2 and "the known ones are seed-reference" in result.stderr


def test_the_client_reads_recipes(api: Client) -> None:
    found = api.recipes()
    assert [r.name for r in found.recipes] == list(RECIPE_NAMES)
    assert found.defaults == {"mnist": "mnist-dcgan-conditional"}
    assert api.recipe("mnist-mlp").quality.metrics["fid"] == 47.9  # type: ignore[union-attr]
    with pytest.raises(GanserveError) as e:
        api.recipe("mnist-gan")
    assert e.value.status == 404 and e.value.code == "recipe_not_found"


def test_the_clients_recipe_models_mirror_the_servers() -> None:
    from core.recipes import Recipe as ServerRecipe
    from core.recipes import RecipeQuality as ServerQuality

    for ours, theirs in ((Recipe, ServerRecipe), (RecipeQuality, ServerQuality), (RecipeList, ServerRecipeList)):
        assert set(ours.model_fields) == set(theirs.model_fields), ours


def test_a_job_file_is_resolved_as_post_train_resolves_it(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"model_name": "x", "epochs": 1}))
    assert (read_config(path).recipe, read_config(path).batch_size) == ("mnist-dcgan-conditional", 64)
    path.write_text(json.dumps({"model_name": "x", "recipe": "seed-reference", "batch_size": 32}))
    config = read_config(path)
    assert (config.output, config.batch_size, config.betas) == ("linear", 32, (0.9, 0.999))
