"""The web page: a playground for /generate and /interpolate and a dashboard of /train, as static files
(`service/static/`: HTML, one script, one style sheet; no build step, nothing fetched from elsewhere).
`/` answers the page; `/static/...` the rest. Neither is part of the API's schema."""

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def index() -> HTMLResponse:
    return HTMLResponse((STATIC_DIR / "index.html").read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})


def install(app: FastAPI) -> None:
    """The page's route and its static files."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
