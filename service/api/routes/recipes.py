"""`/recipes`: the named sets of training defaults a job may name with `"recipe"` (core/recipes.py), what each
sets and the quality it reached here. Read as openly as /models (GANSERVE_PUBLIC_GENERATE): they are documentation,
the same for every caller."""

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from core import recipes
from service.api.errors import APIError, error_responses
from service.api.schemas import RecipeList
from service.security.auth import public_generate

router = APIRouter(prefix="/recipes", tags=["recipes"], responses=error_responses(401, 403, 429))
READ = [Depends(public_generate)]
RecipeArg = Annotated[str, Path(description="A recipe's name, as GET /recipes lists them.", examples=["mnist-mlp"])]


@router.get("", response_model=RecipeList, summary="The recipes a training job may name", dependencies=READ)
def list_recipes() -> RecipeList:
    return RecipeList(recipes=list(recipes.RECIPES.values()), defaults=recipes.DEFAULT_RECIPES)


@router.get(
    "/{name}",
    response_model=recipes.Recipe,
    summary="One recipe: what it sets and what it reached",
    responses=error_responses(404),
    dependencies=READ,
)
def get_recipe(name: RecipeArg) -> recipes.Recipe:
    recipe = recipes.RECIPES.get(name)
    if recipe is None:
        known = ", ".join(recipes.RECIPE_NAMES)
        raise APIError(
            404,
            "recipe_not_found",
            f"No recipe {name!r}; the known ones are {known} (GET /recipes lists them with what each sets).",
            detail={"name": name, "known": list(recipes.RECIPE_NAMES)},
        )
    return recipe
