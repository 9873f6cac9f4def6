"""GET /interpolate: a strip PNG or an animation of the slerp between two seeds, whose ends are /generate's
images of those seeds; validation, conditional and MAD-GAN models, and caching like /generate's."""

import io
import itertools

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageSequence
from svc_support import DEFAULT_MODEL, NUM_CLASSES, NUM_GENERATORS

from training.latents import MAX_SEED

H = W = 28  # the tiny models' images
PAD = 2  # training.images.grid's border


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("L"))


def frames(data: bytes) -> list[np.ndarray]:
    with Image.open(io.BytesIO(data)) as im:
        return [np.asarray(frame.convert("L")) for frame in ImageSequence.Iterator(im)]


def tile(strip: np.ndarray, i: int) -> np.ndarray:
    """Frame i of a strip: grid() puts tile i at x = PAD + i × (W + PAD), y = PAD."""
    x = PAD + i * (W + PAD)
    return strip[PAD : PAD + H, x : x + W]


def generated(client: TestClient, seed: int, **params: object) -> np.ndarray:
    r = client.get("/generate", params={"seed": seed, **params})
    assert r.status_code == 200, r.text
    return pixels(r.content)


def test_the_strip_is_one_row_whose_ends_are_generates_images(served: TestClient) -> None:
    steps = 6
    r = served.get("/interpolate", params={"from": 3, "to": 11, "steps": steps})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-seeds"] == "3,11"
    assert r.headers["x-model"] == DEFAULT_MODEL and r.headers["x-model-version"] == "1"
    assert "x-label" not in r.headers and "x-generator" not in r.headers
    strip = pixels(r.content)
    assert strip.shape == (H + 2 * PAD, steps * (W + PAD) + PAD)
    assert np.array_equal(tile(strip, 0), generated(served, 3))
    assert np.array_equal(tile(strip, steps - 1), generated(served, 11))
    # Frames in between are new images, each different from its neighbours.
    inner = [tile(strip, i) for i in range(steps)]
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(inner))


def test_the_default_is_eight_steps(served: TestClient) -> None:
    r = served.get("/interpolate", params={"from": 1, "to": 2})
    assert r.status_code == 200
    assert pixels(r.content).shape == (H + 2 * PAD, 8 * (W + PAD) + PAD)


@pytest.mark.parametrize(("fmt", "media"), [("apng", "image/apng"), ("gif", "image/gif")])
def test_animations_have_one_frame_per_step(served: TestClient, fmt: str, media: str) -> None:
    steps = 5
    r = served.get("/interpolate", params={"from": 3, "to": 11, "steps": steps, "format": fmt, "duration_ms": 250})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == media
    with Image.open(io.BytesIO(r.content)) as im:
        assert im.format == ("PNG" if fmt == "apng" else "GIF")
        assert im.n_frames == steps and im.is_animated
        assert im.size == (W, H)
        assert im.info.get("loop") == 0 and im.info.get("duration") == 250
    shown = frames(r.content)
    strip = pixels(served.get("/interpolate", params={"from": 3, "to": 11, "steps": steps}).content)
    # Both formats are lossless for grey frames: every frame is the strip's tile.
    for i, frame in enumerate(shown):
        assert np.array_equal(frame, tile(strip, i)), i
    assert np.array_equal(shown[0], generated(served, 3)) and np.array_equal(shown[-1], generated(served, 11))


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"steps": 1}, "steps", "greater than or equal to 2"),
        ({"steps": 65}, "steps", "less than or equal to 64"),
        ({"format": "bmp"}, "format", "'png', 'apng' or 'gif'"),
        ({"from": MAX_SEED + 1}, "from", f"less than or equal to {MAX_SEED}"),
        ({"to": -1}, "to", "greater than or equal to 0"),
        ({"duration_ms": 10}, "duration_ms", "greater than or equal to 20"),
        ({"duration_ms": 2001}, "duration_ms", "less than or equal to 2000"),
        ({"model": "../x"}, "model", "lower-case letters"),
    ],
)
def test_bad_parameters_are_422_naming_the_field(served: TestClient, params: dict, field: str, words: str) -> None:
    r = served.get("/interpolate", params={"from": 1, "to": 2, **params})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "validation_error"
    assert body["message"].startswith(f"query.{field}: ") and words in body["message"], body["message"]
    assert body["detail"][0]["loc"] == ["query", field]


@pytest.mark.parametrize("missing", ["from", "to"])
def test_both_seeds_are_required(served: TestClient, missing: str) -> None:
    params = {"from": 1, "to": 2}
    del params[missing]
    r = served.get("/interpolate", params=params)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", missing]


def test_steps_are_bounded_by_max_count(make_app, publish_model) -> None:
    publish_model()
    with TestClient(make_app(max_count=4)) as c:
        r = c.get("/interpolate", params={"from": 1, "to": 2, "steps": 5})
        assert r.status_code == 422
        assert r.json()["message"] == "query.steps: Input should be less than or equal to 4"
        # Accepted: past every check, to the ETag (`*` matches it, so nothing is rendered).
        ok = c.get("/interpolate", params={"from": 1, "to": 2, "steps": 4}, headers={"if-none-match": "*"})
        assert ok.status_code == 304


def test_unknown_model_and_version_are_404(client: TestClient) -> None:
    r = client.get("/interpolate", params={"from": 1, "to": 2, "model": "nope"})
    assert r.status_code == 404
    assert r.json()["error"] == "model_not_found" and r.json()["detail"]["available"] == [DEFAULT_MODEL]
    assert client.get("/interpolate", params={"from": 1, "to": 2, "version": 9}).status_code == 404


def test_conditional_frames_are_all_of_the_label(served: TestClient) -> None:
    params = {"model": "cond", "from": 4, "to": 9, "steps": 3}
    r = served.get("/interpolate", params={**params, "label": 2})
    assert r.status_code == 200, r.text
    assert r.headers["x-label"] == "2"
    strip = pixels(r.content)
    assert np.array_equal(tile(strip, 0), generated(served, 4, model="cond", label=2))
    assert np.array_equal(tile(strip, 2), generated(served, 9, model="cond", label=2))
    # Without a label: the class of `from`, for every frame.
    r = served.get("/interpolate", params=params)
    assert r.headers["x-label"] == str(4 % NUM_CLASSES)
    strip = pixels(r.content)
    assert np.array_equal(tile(strip, 0), generated(served, 4, model="cond"))
    assert np.array_equal(tile(strip, 2), generated(served, 9, model="cond", label=4 % NUM_CLASSES))


def test_labels_are_checked_like_generates(served: TestClient) -> None:
    r = served.get("/interpolate", params={"model": "cond", "from": 1, "to": 2, "label": NUM_CLASSES})
    assert r.status_code == 422 and f"0 … {NUM_CLASSES - 1}" in r.json()["message"]
    r = served.get("/interpolate", params={"from": 1, "to": 2, "label": 0})
    assert r.status_code == 422 and "not class-conditional" in r.json()["message"]


def test_madgan_frames_all_come_from_the_generator_of_from(served: TestClient) -> None:
    seed_from, seed_to = 1, 1 + NUM_GENERATORS  # the same generator at both ends
    r = served.get("/interpolate", params={"model": "mad", "from": seed_from, "to": seed_to, "steps": 3})
    assert r.status_code == 200, r.text
    assert r.headers["x-generator"] == str(seed_from % NUM_GENERATORS)
    strip = pixels(r.content)
    assert np.array_equal(tile(strip, 0), generated(served, seed_from, model="mad"))
    assert np.array_equal(tile(strip, 2), generated(served, seed_to, model="mad"))
    other = served.get("/interpolate", params={"model": "mad", "from": 2, "to": seed_to, "steps": 3})
    assert other.headers["x-generator"] == str(2 % NUM_GENERATORS)
    assert not np.array_equal(tile(pixels(other.content), 2), tile(strip, 2))  # another generator's `to`


def test_points_models_are_not_image_models(served: TestClient) -> None:
    r = served.get("/interpolate", params={"model": "ring", "from": 1, "to": 2})
    assert r.status_code == 422 and r.json()["error"] == "not_an_image_model"


def test_a_pinned_version_is_immutable_and_revalidates_to_304(served: TestClient) -> None:
    params = {"from": 1, "to": 2, "steps": 4, "version": 1}
    r = served.get("/interpolate", params=params)
    tag = r.headers["etag"]
    assert tag.startswith('"') and r.headers["cache-control"] == "public, max-age=31536000, immutable"
    again = served.get("/interpolate", params=params, headers={"if-none-match": tag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
    assert again.headers["x-seeds"] == "1,2"
    latest = served.get("/interpolate", params={k: v for k, v in params.items() if k != "version"})
    assert latest.headers["cache-control"] == "no-cache" and latest.headers["etag"] == tag
    # Every parameter is in the tag (the duration only where it changes the bytes).
    others = [
        {"from": 3},
        {"to": 3},
        {"steps": 5},
        {"format": "gif"},
        {"format": "apng"},
        {"format": "apng", "duration_ms": 200},
    ]
    tags = {served.get("/interpolate", params={**params, **o}).headers["etag"] for o in others}
    assert len(tags | {tag}) == len(others) + 1
    assert served.get("/interpolate", params={**params, "duration_ms": 200}).headers["etag"] == tag
    # Validation comes before a 304.
    assert served.get("/interpolate", params={**params, "steps": 1}, headers={"if-none-match": "*"}).status_code == 422


def test_interpolate_is_not_generates_cache(served: TestClient) -> None:
    """The in-process answer cache keeps both routes' answers apart."""
    strip = served.get("/interpolate", params={"from": 5, "to": 6, "steps": 2}).content
    single = served.get("/generate", params={"seed": 5}).content
    assert strip != single and served.get("/interpolate", params={"from": 5, "to": 6, "steps": 2}).content == strip
