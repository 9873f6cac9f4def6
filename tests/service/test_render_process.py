"""The render process (service/serving/render_process.py): a real child process, rendering what the in-process
renderer renders, byte for byte; one that dies fails only what it held and is replaced; closing ends it."""

import asyncio
import os
import resource
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from svc_support import publish_conditional_model, publish_madgan_model

from core.settings import BUNDLED_MODELS_DIR
from service.serving.registry import LoadedModel, ModelRegistry
from service.serving.render_process import (
    ChildConfig,
    ModelGone,
    ProcessRenderer,
    RendererLost,
    decode_blobs,
    decode_request,
    encode_answer,
    encode_request,
)
from service.serving.rendering import Form, RendererClosed, Seeds, finish, latents_of

WAIT_S = 60.0


@pytest.fixture
def roots(tmp_path: Path) -> list[tuple[str, str]]:
    models = tmp_path / "models"
    publish_conditional_model(models)
    publish_madgan_model(models)
    return [(str(models), "volume"), (str(BUNDLED_MODELS_DIR), "bundled")]


@pytest.fixture
def registry(roots: list[tuple[str, str]]) -> ModelRegistry:
    return ModelRegistry([(Path(p), s) for p, s in roots])  # type: ignore[misc]


def renderer(roots: list[tuple[str, str]], **config: object) -> ProcessRenderer:
    return ProcessRenderer(ChildConfig(roots, batch_rows=16, max_wait_s=0.0, log_level="warning", **config))  # type: ignore[arg-type]


def expected(model: LoadedModel, seeds: list[int], form: Form) -> object:
    """What the API process would make of these seeds by itself."""
    images = model.render(
        latents_of(Seeds(seeds), model.latent_dim), model.labels_for(seeds), model.generators_for(seeds)
    )
    return finish(form, images)


def test_the_wire_round_trips() -> None:
    latents = torch.randn(3, 5)
    frame = encode_request(7, "cond", 2, latents, 5, [0, 2, 1], None, "pixels")
    request = decode_request(frame[4:])
    assert (request.rid, request.name, request.version, request.form, request.n) == (7, "cond", 2, "pixels", 3)
    assert torch.equal(request.rows, latents) and request.labels == [0, 2, 1] and request.generators is None

    frame = encode_request(8, "mad", 1, Seeds([0, 2**32 - 1]), 100, None, [0, 1], "grid")
    request = decode_request(frame[4:])
    assert request.rows == Seeds([0, 2**32 - 1]) and request.generators == [0, 1] and request.form == "grid"

    assert decode_blobs(encode_answer(9, [b"a", b"", b"png"])[4:]) == (9, [b"a", b"", b"png"])
    pixels = torch.arange(24, dtype=torch.uint8).reshape(2, 1, 3, 4)
    assert decode_blobs(encode_answer(10, pixels)[4:]) == (10, [pixels.numpy().tobytes()])


@pytest.mark.slow
def test_it_renders_the_bytes_the_api_process_would(roots, registry) -> None:
    """Mixed models, seeds, grids and pixels, all at once (so batched together): each equals rendering alone."""
    mnist, cond, mad = (registry.get(name) for name in ("mnist-mlp", "cond", "mad"))
    asks: list[tuple[LoadedModel, list[int], Form]] = [
        (mnist, [1], "grid"),
        (mnist, list(range(100, 120)), "pngs"),  # more than a forward
        (mnist, list(range(5, 14)), "grid"),
        (cond, [4, 5, 6], "pngs"),
        (mad, [7, 8, 9, 10], "pixels"),
        *((mnist, [1000 + i], "grid") for i in range(20)),
    ]

    async def run() -> list[object]:
        r = renderer(roots)
        await r.start()
        try:
            return await asyncio.gather(
                *(r.render(m, Seeds(s), m.labels_for(s), m.generators_for(s), form) for m, s, form in asks)
            )
        finally:
            await r.close()

    for (model, seeds, form), got in zip(asks, asyncio.run(run()), strict=True):
        want = expected(model, seeds, form)
        if form == "pixels":
            assert isinstance(got, torch.Tensor) and torch.equal(got, want), (model.name, seeds)  # type: ignore[arg-type]
        else:
            assert got == want, (model.name, seeds, form)


def test_explicit_latents_render_as_in_process(roots, registry) -> None:
    model = registry.get("mnist-mlp")
    latents = torch.randn(2, model.latent_dim)

    async def run() -> object:
        r = renderer(roots)
        await r.start()
        try:
            return await r.render(model, latents, None, None, "pngs")
        finally:
            await r.close()

    assert asyncio.run(run()) == finish("pngs", model.render(latents))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_a_dead_render_process_fails_what_it_held_and_is_replaced(roots, registry) -> None:
    model = registry.get("mnist-mlp")

    async def run() -> tuple[int, int]:
        r = renderer(roots)
        await r.start()
        try:
            first = r.pid
            assert first is not None
            os.kill(first, signal.SIGSTOP)  # held: the request below is sent, and not answered
            held = asyncio.ensure_future(r.render(model, Seeds([1]), None, None, "grid"))
            await asyncio.sleep(0.2)
            assert not held.done()
            os.kill(first, signal.SIGKILL)
            with pytest.raises(RendererLost, match="render process stopped"):
                await asyncio.wait_for(held, WAIT_S)
            png = await asyncio.wait_for(r.render(model, Seeds([1]), None, None, "grid"), WAIT_S)  # a new one
            assert png == expected(model, [1], "grid")
            assert r.pid is not None
            return first, r.pid
        finally:
            await r.close()

    first, second = asyncio.run(run())
    assert first != second and not _alive(second)


def test_a_version_it_cannot_load_is_a_retry_not_a_crash(roots, registry) -> None:
    model = registry.get("mnist-mlp")

    async def run() -> bytes:
        r = renderer(roots)
        await r.start()
        try:
            with pytest.raises(ModelGone, match="version 99"):
                await r.render(replace(model, version=99), Seeds([1]), None, None, "grid")
            out = await r.render(model, Seeds([1]), None, None, "grid")  # still serving
            assert isinstance(out, bytes)
            return out
        finally:
            await r.close()

    assert asyncio.run(run()) == expected(model, [1], "grid")


def test_closing_answers_what_was_sent_and_ends_the_process(roots, registry) -> None:
    model = registry.get("mnist-mlp")

    async def run() -> int:
        r = renderer(roots)
        await r.start()
        pid = r.pid
        assert pid is not None
        sent = [asyncio.ensure_future(r.render(model, Seeds([s]), None, None, "grid")) for s in range(40)]
        await asyncio.sleep(0)  # the requests are written
        await r.close()
        assert [await f for f in sent] == [expected(model, [s], "grid") for s in range(40)]
        with pytest.raises(RendererClosed):
            await r.render(model, Seeds([1]), None, None, "grid")
        return pid

    assert not _alive(asyncio.run(run()))


@pytest.fixture
def apps(make_app) -> Iterator[tuple[TestClient, TestClient]]:
    common = {"bundled_models_dir": BUNDLED_MODELS_DIR, "default_model": "mnist-mlp", "png_cache_size": 0}
    with TestClient(make_app(render_process=True, **common)) as process, TestClient(make_app(**common)) as threads:
        yield process, threads


@pytest.mark.slow
def test_the_app_serves_through_it(apps) -> None:
    process, threads = apps
    renderer = process.app.state.ganserve.renderer  # type: ignore[attr-defined]
    assert isinstance(renderer, ProcessRenderer) and renderer.pid is not None and _alive(renderer.pid)
    for params in ({"seed": 3}, {"seed": 40, "count": 6}):
        a, b = process.get("/generate", params=params), threads.get("/generate", params=params)
        assert a.status_code == b.status_code == 200 and a.content == b.content, params
    strip = process.get("/interpolate", params={"from": 1, "to": 2, "steps": 4})
    assert (
        strip.status_code == 200
        and strip.content == threads.get("/interpolate", params={"from": 1, "to": 2, "steps": 4}).content
    )
    assert "ganserve_render_in_flight 0.0" in process.get("/metrics").text
    stats = process.get("/stats").json()
    assert stats["forwards"] >= 3 and stats["images_generated"] == 7  # the forwards reported back by the process


@pytest.mark.slow
def test_the_app_answers_503_for_what_a_dying_process_held_then_serves_again(apps) -> None:
    process, _ = apps
    renderer = process.app.state.ganserve.renderer  # type: ignore[attr-defined]
    first = renderer.pid
    os.kill(first, signal.SIGSTOP)  # the next request is sent to it and held
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(process.get, "/generate", params={"seed": 11})
        deadline = time.monotonic() + WAIT_S
        while not renderer.in_flight and time.monotonic() < deadline:  # sent, not answered
            time.sleep(0.01)
        os.kill(first, signal.SIGKILL)
        r = held.result(WAIT_S)
    assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
    assert r.json()["error"] == "render_process_restarting"
    again = process.get("/generate", params={"seed": 11})  # a new render process
    assert again.status_code == 200 and renderer.pid != first


def test_a_descriptor_number_past_fd_setsize_is_served(roots, registry) -> None:
    """The render process inherits the socket's number from a busy API process: past select()'s 1024."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        pytest.skip(f"the open-files limit ({soft}) leaves no descriptor past 1024")
    model = registry.get("mnist-mlp")
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # the next descriptors are > 1024

    async def run() -> object:
        r = renderer(roots)
        await r.start()
        try:
            return await r.render(model, Seeds([3]), None, None, "grid")
        finally:
            await r.close()

    try:
        assert asyncio.run(run()) == expected(model, [3], "grid")
    finally:
        for fd in filler:
            os.close(fd)
