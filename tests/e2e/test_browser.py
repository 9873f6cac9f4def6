"""The web page at `/`, in a real headless Chromium (driven by Playwright, against the Debian `chromium`, so
nothing is downloaded), against a real stack: Redis, a Celery worker, the API under uvicorn. It generates,
interpolates, starts a tiny job from the form, follows it live to `succeeded`, and generates from the new
model. Screenshots go to tests/e2e/test-artifacts/ (gitignored); their paths are printed."""

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parent / "test-artifacts"
HOW_TO_INSTALL = (
    "install Chromium with `apt-get install -y chromium chromium-driver` (`make test` does, in its test-tools "
    "target) and Playwright with `.venv/bin/pip install -e '.[dev]'`"
)
TIMEOUT_MS = 30_000


def loaded(img_id: str, src_part: str = "") -> str:
    """A page function: the image has loaded (naturalWidth > 0), from a URL containing `src_part`."""
    return (
        f"() => {{ const i = document.getElementById('{img_id}');"
        f" return !i.hidden && i.complete && i.naturalWidth > 0 && i.src.includes({src_part!r}); }}"
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(f"Playwright is not installed: {HOW_TO_INSTALL}")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip(f"no chromium on PATH: {HOW_TO_INSTALL}")
    with sync_playwright() as p:
        # Chromium's sandbox needs user namespaces, which a root container rarely has.
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"] if os.geteuid() == 0 else [])
        try:
            yield b
        finally:
            b.close()


@contextmanager
def new_page(browser, base_url: str) -> Iterator[object]:
    context = browser.new_context(base_url=base_url, viewport={"width": 1200, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.js_errors = errors
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def page(browser, stack):
    with new_page(browser, stack.base_url) as p:
        yield p


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def test_playground_and_training_dashboard(page, stack):
    with stack.client() as client:
        key = client.headers["authorization"].removeprefix("Bearer ")
    walk(page, stack.base_url, key, "")


def test_a_first_make_run_needs_only_the_page(browser, first_run):
    """From `make run` on an empty volume to an interpolation and a finished tiny job, with nothing but the
    page and the key the launcher printed."""
    stack, key = first_run
    with new_page(browser, stack.base_url) as page:
        walk(page, stack.base_url, key, "make-run-")


def walk(page, base_url: str, key: str, shots: str) -> None:
    """A new user's walk through the page; screenshots named with the prefix `shots`."""
    default = httpx.get(f"{base_url}/models").json()["models"][0]["name"]

    # Playground: the default model's image of seed 42, its grid, the curl command, the download link.
    page.goto("/")
    page.wait_for_function(loaded("image", "seed=42"))
    page.wait_for_function(loaded("grid", "count=16"))
    assert page.is_visible("#label-field")  # a class picker: the default model is class-conditional
    page.wait_for_selector("#model-card", state="visible")  # its card in brief (GET /models' `card`)
    assert page.text_content("#card-quality").startswith("FID")  # its figures, or "FID not measured"
    curl = page.text_content("#curl")
    assert curl.startswith(f"curl -o {default}-42.png '{base_url}/generate?") and "seed=42" in curl
    href = page.get_attribute("#download", "href")
    assert curl.endswith(f"{base_url}{href}'")
    page.click("#roll")
    page.wait_for_function("() => document.getElementById('seed').value !== '42'")
    page.wait_for_function(loaded("image", f"seed={page.input_value('#seed')}"))

    # Interpolation: a strip of 6 frames in one row, and the animation.
    page.fill("#from", "1")
    page.fill("#to", "2")
    page.fill("#steps", "6")
    page.click("#interp-form button[type=submit]")
    page.wait_for_function(loaded("strip", "format=png"))
    page.wait_for_function(loaded("anim", "format=gif"))
    width, height = page.eval_on_selector("#strip", "i => [i.naturalWidth, i.naturalHeight]")
    assert width > 5 * height, (width, height)
    assert "/interpolate?" in page.text_content("#interp-curl")
    screenshot(page, f"{shots}1-playground")

    # Training: the key, a job the server refuses (its 422 shown), then a tiny job, followed live.
    page.click("#tab-train")
    page.fill("#key", key)
    page.press("#key", "Enter")
    listed = r"() => /^(No jobs yet|\d+ jobs?)\./.test(document.getElementById('jobs-status').textContent)"
    page.wait_for_function(listed)  # GET /train answered with the key
    form = "#train-form"
    page.fill(f"{form} [name=model_name]", "web-digits")
    page.fill(f"{form} [name=epochs]", "0")
    page.click(f"{form} button[type=submit]")
    page.wait_for_selector("#train-errors li")
    assert "epochs" in page.text_content("#train-errors")

    page.fill(f"{form} [name=epochs]", "3")
    # The recipe picker is filled from GET /recipes; the form's own fields override the recipe's.
    page.wait_for_selector(f"{form} [name=recipe] option[value=mnist-dcgan]", state="attached")
    assert "FID 47.9" in page.text_content(f"{form} [name=recipe] option[value=mnist-mlp]")
    page.select_option(f"{form} [name=recipe]", "mnist-mlp")
    page.fill(f"{form} [name=batch_size]", "64")
    page.fill(f"{form} [name=max_samples]", "256")
    page.fill(f"{form} [name=eval_every]", "1")  # a quality curve: the default budget would skip so short a job
    page.click(f"{form} button[type=submit]")
    row = page.locator("#jobs tbody tr", has_text="web-digits")
    row.wait_for()
    assert page.text_content("#train-errors") == ""
    seen: list[tuple[str, str]] = []
    running_shot = None
    deadline = time.monotonic() + 180
    while True:
        state = (row.get_attribute("data-status"), row.locator("progress").evaluate("p => String(p.value)"))
        if not seen or seen[-1] != state:
            seen.append(state)
            if state[0] == "running" and not running_shot:
                running_shot = screenshot(page, f"{shots}2-training-running")
        if state[0] in {"succeeded", "failed", "cancelled"}:
            break
        assert time.monotonic() < deadline, f"the job is still {state} after 180 s; seen {seen}"
        time.sleep(0.1)
    assert seen[-1] == ("succeeded", "1"), seen
    assert len(seen) >= 2, seen  # the page saw the job change, not only its end
    assert int(row.get_attribute("data-events")) >= 2  # from the event stream, not a reload
    assert "web-digits → v1" in row.text_content()

    row.locator("button", has_text="Details").click()
    page.wait_for_function(loaded("loss-plot", "blob:"))
    page.wait_for_function(loaded("samples", "blob:"))
    assert "epoch 3" in page.text_content("#samples-caption")
    assert page.eval_on_selector_all("#sample-epoch option", "os => os.map(o => o.value)") == ["3", "2", "1"]
    page.wait_for_function(loaded("fid-plot", "blob:"))  # the job measured FID each epoch: its quality curve
    screenshot(page, f"{shots}3-training-succeeded")
    last = page.get_attribute("#samples", "src")
    page.select_option("#sample-epoch", "1")  # any epoch's grid, not only the last
    page.wait_for_function("() => document.getElementById('samples-caption').textContent.includes('epoch 1')")
    page.wait_for_function(
        f"() => {{ const i = document.getElementById('samples'); return i.src !== {last!r} && i.complete"
        " && i.naturalWidth > 0; }"
    )

    # The new model is served at once: pick it in the playground.
    page.click("#tab-play")
    page.wait_for_selector("#model option[value='web-digits']", state="attached")
    page.select_option("#model", "web-digits")
    page.wait_for_function(loaded("image", "model=web-digits"))
    page.wait_for_function(loaded("grid", "model=web-digits"))
    page.wait_for_function(loaded("strip", "model=web-digits"))  # the interpolation follows the model
    assert page.text_content("#card-recipe") == "mnist-mlp"  # the recipe its job named, from its card
    screenshot(page, f"{shots}4-playground-new-model")
    assert page.js_errors == []
