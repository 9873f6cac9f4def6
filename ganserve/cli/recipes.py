"""`ganserve recipes`: the named sets of training defaults a job may name with `"recipe"` (core/recipes.py), with
what each sets and the quality it reached; a server's (GET /recipes) with --server, else this version's own."""

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from core import recipes as known
from ganserve.cli import common
from ganserve.cli.common import ApiKey, LocalOrServer, reported
from ganserve.client import RecipeList

NameArg = Annotated[
    str | None, typer.Argument(help="Show this recipe's description and every field it sets.", show_default=False)
]


def recipes(name: NameArg = None, server: LocalOrServer = None, api_key: ApiKey = None) -> None:
    """The recipes a training job may name (`"recipe": "mnist-dcgan"` in its file): what each sets (a job's own
    fields win), the datasets it is made for and the quality it reached. A job naming neither a recipe nor an
    architecture gets its dataset's default."""
    with reported():
        found = _local() if server is None else common.connect(server, api_key).recipes()
    chosen = [r for r in found.recipes if name is None or r.name == name]
    if name is not None and not chosen:
        names = ", ".join(r.name for r in found.recipes)
        raise common.fail(f"no recipe {name!r}; the known ones are {names}", 2)
    defaults = {recipe: dataset for dataset, recipe in found.defaults.items()}
    table = Table(title=f"{len(chosen)} recipe(s)", show_lines=name is not None)
    table.add_column("name", no_wrap=True, min_width=max((len(r.name) for r in chosen), default=4) + 2)
    for column in ("datasets", "sets", "quality"):
        table.add_column(column)
    for r in chosen:
        if name is None:
            sets = ", ".join(f"{k}={json.dumps(v)}" for k, v in r.sets.items() if k != "architecture")
            sets = f"{r.sets.get('architecture', '–')}: {sets}"
        else:
            sets = "\n".join(f"{k} = {json.dumps(v)}" for k, v in r.sets.items())
        if r.quality is not None:
            figures = ", ".join(f"{k} {v:g}" for k, v in r.quality.metrics.items())
            quality = f"{figures} (n = {r.quality.samples:,}, {r.quality.feature_space}; {r.quality.source})"
        else:
            quality = "not measured yet"
        marker = f" (default: {defaults[r.name]})" if r.name in defaults else ""
        table.add_row(f"{r.name}{marker}", ", ".join(r.datasets), escape(sets), escape(quality))
        if name is not None:
            table.add_row("", "", escape(r.description), escape(r.quality_note))
    Console().print(table)


def _local() -> RecipeList:
    recipes = [r.model_dump(mode="json") for r in known.RECIPES.values()]
    return RecipeList.model_validate({"recipes": recipes, "defaults": known.DEFAULT_RECIPES})
