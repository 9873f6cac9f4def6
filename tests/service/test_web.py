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
