"""The web page: `/` and its static files, served by the API, outside its schema."""

from fastapi.testclient import TestClient


def test_the_page_and_its_files(anon: TestClient) -> None:
    r = anon.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    for asset, media_type in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        assert f'"{asset}"' in page
        r = anon.get(asset)
        assert r.status_code == 200 and media_type in r.headers["content-type"], asset
    assert "http://" not in page and "https://" not in page  # nothing from elsewhere: no CDN
    assert anon.get("/static/nothing.js").status_code == 404


def test_not_in_the_api_schema(anon: TestClient) -> None:
    paths = anon.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)
    assert "/train/{job_id}/events" in paths


def test_the_playground_shows_the_card_the_api_gives(anon: TestClient) -> None:
    """The model picker's card (`cardLines` in app.js) reads GET /models' `card` fields into the page's three
    places for them."""
    page, script = anon.get("/").text, anon.get("/static/app.js").text
    for place in ("model-card", "card-recipe", "card-quality", "card-source"):
        assert f'id="{place}"' in page and f'$("{place}")' in script, place
    card = anon.get("/models").json()["models"][0]["card"]
    for field in card:
        assert f"c.{field}" in script, f"app.js does not show the card's {field!r}"


def test_the_recipe_picker_reads_what_get_recipes_answers(anon: TestClient) -> None:
    """`loadRecipes` in app.js fills the training form's picker from GET /recipes: each recipe's name, datasets and
    description, its FID and sample count where measured, and the datasets' defaults."""
    script = anon.get("/static/app.js").text
    assert 'fetch("/recipes")' in script
    known = anon.get("/recipes").json()
    assert known["recipes"] and known["defaults"]
    for recipe in known["recipes"]:
        assert recipe["name"] and recipe["datasets"] and recipe["description"]
        if recipe["quality"] is not None:  # app.js shows "–" for a figure a measured recipe lacks
            assert isinstance(recipe["quality"]["metrics"], dict) and recipe["quality"]["samples"] > 0
    used = ("r.name", "r.datasets", "r.description", "r.quality.metrics.fid", "r.quality.samples", "known.defaults")
    for field in used:
        assert field in script, field
    assert 'id="recipe"' in anon.get("/").text
