"""The render process (service/serving/render_process.py) as a real child process: it answers what `Batching`
answers in-process, byte for byte; one that dies fails only what it held and is replaced; a version it cannot
load is a retry; closing answers everything sent and ends it; its socket may be numbered past FD_SETSIZE."""

import asyncio
import os
import resource
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from svc_support import AUTH, publish_conditional_model, publish_madgan_model

from core.settings import BUNDLED_MODELS_DIR, Settings
from service.serving import wire
from service.serving.batching import Answer, Batching, Failure, Request, Seeds
from service.serving.encoding import Form
from service.serving.registry import LoadedModel, ModelRegistry
from service.serving.render_process import (
    ChildConfig,
    ModelGone,
    ProcessRenderer,
    RendererClosed,
    RendererLost,
    child_settings,
)

WAIT_S = 60.0


@pytest.fixture
def volume(tmp_path: Path) -> Settings:
    """A volume with a conditional model `cond` and a MAD-GAN `mad` published, and the bundled models."""
    settings = Settings(_env_file=None, checkpoint_dir=tmp_path, bundled_models_dir=BUNDLED_MODELS_DIR)  # type: ignore[call-arg]
    publish_conditional_model(settings)
    publish_madgan_model(settings)
    return settings


@pytest.fixture
def registry(volume: Settings) -> ModelRegistry:
    return ModelRegistry.from_settings(volume, batch_rows=16)


def renderer(volume: Settings, **config: object) -> ProcessRenderer:
    settings = child_settings(volume)
    return ProcessRenderer(ChildConfig(settings, batch_rows=16, max_wait_s=0.0, log_level="warning", **config))  # type: ignore[arg-type]


def expected(registry: ModelRegistry, model: LoadedModel, seeds: list[int], form: Form) -> list[bytes] | bytes:
    """What `Batching` answers for these seeds in this process."""
    b = Batching(registry.get, 16, 0.0)
    request = Request(
        0, model.name, model.version, Seeds(seeds), model.labels_for(seeds), model.generators_for(seeds), form
    )
    assert b.add(request) is None
    (outcome,) = b.render().outcomes
    assert isinstance(outcome, Answer)
    return outcome.output


def test_the_wire_round_trips() -> None:
    latents = torch.randn(3, 5)
    request = Request(7, "cond", 2, latents, [0, 2, 1], None, "apng", 250)
    back = wire.decode_request(wire.encode_request(request)[4:])
    assert (back.rid, back.name, back.version, back.labels, back.generators, back.form, back.duration_ms) == (
        7,
        "cond",
        2,
        [0, 2, 1],
        None,
        "apng",
        250,
    )
    assert isinstance(back.rows, torch.Tensor) and torch.equal(back.rows, latents)
    request = Request(8, "mad", 1, Seeds([0, 2**32 - 1]), None, [0, 1], "grid")
    assert wire.decode_request(wire.encode_request(request)[4:]) == request

    assert wire.decode_answer(wire.encode_outcome(Answer(9, [b"a", b"", b"png"]))[4:]) == (9, [b"a", b"", b"png"])
    assert wire.decode_answer(wire.encode_outcome(Answer(10, b"gif"))[4:]) == (10, [b"gif"])
    failure = Failure(11, "model", "model x version 3 cannot be served")
    assert wire.decode_failure(wire.encode_outcome(failure)[4:]) == failure
    assert wire.decode_count(wire.encode_forward(13)[4:]) == 13

    buffer = bytearray(wire.encode_forward(1) + wire.encode_ready(42) + wire.encode_forward(3)[:5])
    assert [wire.decode_count(b) for b in wire.split_frames(buffer)] == [1, 42]
    assert len(buffer) == 5  # the partial frame stays


@pytest.mark.slow
def test_it_answers_what_batching_answers_in_process(volume, registry) -> None:
    """Mixed models and forms, sent together (so batched together) before it is even ready."""
    mnist, cond, mad = (registry.get(name) for name in ("mnist-mlp", "cond", "mad"))
    asks: list[tuple[LoadedModel, list[int], Form]] = [
        (mnist, [1], "grid"),
        (mnist, list(range(100, 120)), "pngs"),  # more than a forward
        (cond, [4, 5, 6], "pngs"),
        (mad, [7, 8, 9, 10], "gif"),
        *((mnist, [1000 + i], "grid") for i in range(20)),
    ]
    latents = torch.randn(2, mnist.latent_dim)

    async def run() -> list[object]:
        r = renderer(volume)
        await r.start()
        try:
            return await asyncio.gather(
                *(r.render(m, Seeds(s), m.labels_for(s), m.generators_for(s), form) for m, s, form in asks),
                r.render(mnist, latents, None, None, "strip"),  # explicit latents, sent as they are
            )
        finally:
            await r.close()

    *got, strip = asyncio.run(run())
    for (model, seeds, form), answer in zip(asks, got, strict=True):
        assert answer == expected(registry, model, seeds, form), (model.name, seeds, form)
    b = Batching(registry.get, 16, 0.0)
    b.add(Request(0, mnist.name, mnist.version, latents, form="strip"))
    assert b.render().outcomes == [Answer(0, strip)]  # type: ignore[arg-type]


def test_it_serves_an_api_under_uvloop(volume, registry) -> None:
    """uvicorn's other event loop (`--loop uvloop`): its transports are no subclass of asyncio's."""
    uvloop = pytest.importorskip("uvloop")
    model = registry.get("mnist-mlp")

    async def run() -> object:
        r = renderer(volume)
        await r.start()
        try:
            return await r.render(model, Seeds([5, 6]), None, None, "pngs")
        finally:
            await r.close()

    assert uvloop.run(run()) == expected(registry, model, [5, 6], "pngs")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_a_dead_render_process_fails_what_it_held_and_is_replaced(volume, registry) -> None:
    model = registry.get("mnist-mlp")

    async def run() -> tuple[int, int]:
        r = renderer(volume)
        await r.start()
        try:
            first = r.pid
            assert first is not None
            os.kill(first, signal.SIGSTOP)  # held: the request below is sent, and not answered
            held = asyncio.ensure_future(r.render(model, Seeds([1]), None, None, "grid"))
            await asyncio.sleep(0.2)
            assert not held.done() and r.in_flight == 1
            os.kill(first, signal.SIGKILL)
            with pytest.raises(RendererLost, match="render process stopped"):
                await asyncio.wait_for(held, WAIT_S)
            assert r.in_flight == 0
            png = await asyncio.wait_for(r.render(model, Seeds([1]), None, None, "grid"), WAIT_S)  # a new one
            assert png == expected(registry, model, [1], "grid")
            assert r.pid is not None
            return first, r.pid
        finally:
            await r.close()

    first, second = asyncio.run(run())
    assert first != second and not _alive(second)


def test_a_version_it_cannot_load_is_a_retry_not_a_crash(volume, registry) -> None:
    model = registry.get("mnist-mlp")

    async def run() -> object:
        r = renderer(volume)
        await r.start()
        try:
            with pytest.raises(ModelGone, match="version 99"):
                await r.render(replace(model, version=99), Seeds([1]), None, None, "grid")
            return await r.render(model, Seeds([1]), None, None, "grid")  # still serving
        finally:
            await r.close()

    assert asyncio.run(run()) == expected(registry, model, [1], "grid")


def test_closing_answers_what_was_sent_and_ends_the_process(volume, registry) -> None:
    model = registry.get("mnist-mlp")

    async def run() -> int:
        r = renderer(volume)
        await r.start()
        pid = r.pid
        assert pid is not None
        sent = [asyncio.ensure_future(r.render(model, Seeds([s]), None, None, "grid")) for s in range(40)]
        await asyncio.sleep(0)  # the requests are written
        await r.close()
        assert [await f for f in sent] == [expected(registry, model, [s], "grid") for s in range(40)]
        with pytest.raises(RendererClosed):
            await r.render(model, Seeds([1]), None, None, "grid")
        return pid

    assert not _alive(asyncio.run(run()))


def test_closing_before_it_is_ready_with_nothing_sent_stops_it(volume) -> None:
    """An app that never rendered does not wait for its render process's start-up to end."""

    async def run() -> int:
        r = renderer(volume)
        await r.start()
        assert r.pid is not None and r.in_flight == 0
        await r.close()
        return r.pid

    assert not _alive(asyncio.run(run()))


def test_a_descriptor_number_past_fd_setsize_is_served(volume, registry) -> None:
    """The render process inherits the socket's number from a busy API process: past select()'s 1024."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        pytest.skip(f"the open-files limit ({soft}) leaves no descriptor past 1024")
    model = registry.get("mnist-mlp")
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # the next descriptors are > 1024

    async def run() -> object:
        r = renderer(volume)
        await r.start()
        try:
            return await r.render(model, Seeds([3]), None, None, "grid")
        finally:
            await r.close()

    try:
        assert asyncio.run(run()) == expected(registry, model, [3], "grid")
    finally:
        for fd in filler:
            os.close(fd)


# --- in the app -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_app_answers_503_for_what_a_dying_process_held_then_serves_again(make_app) -> None:
    app = make_app(bundled_models_dir=BUNDLED_MODELS_DIR, default_model="mnist-mlp", png_cache_size=0)
    with TestClient(app, headers=AUTH) as client:
        renderer = app.state.ganserve.renderer
        assert client.get("/generate", params={"seed": 10}).status_code == 200
        assert "ganserve_render_in_flight 0.0" in client.get("/metrics").text
        first = renderer.pid
        os.kill(first, signal.SIGSTOP)  # the next request is sent to it and held
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(client.get, "/generate", params={"seed": 11})
            deadline = time.monotonic() + WAIT_S
            while not renderer.in_flight and time.monotonic() < deadline:  # sent, not answered
                time.sleep(0.01)
            assert "ganserve_render_in_flight 1.0" in client.get("/metrics").text
            os.kill(first, signal.SIGKILL)
            r = held.result(WAIT_S)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.json()["error"] == "render_process_restarting"
        again = client.get("/generate", params={"seed": 11})  # a new render process
        assert again.status_code == 200 and renderer.pid != first
        stats = client.get("/stats").json()
        assert stats["forwards"] == 2 and stats["images_generated"] == 2  # the forwards the process reported
        second = renderer.pid
    assert not _alive(second)  # stopped with the app
