"""The dynamic batcher (service/serving/batcher.py) and the fixed-shape forward it relies on (LoadedModel.sample).

Outputs are compared as raw floats: a matmul's rounding changes with the number of rows by ~1e-6 (the bundled
model differs in every row between 1 and 40 rows), which `torch.equal` sees even where the uint8 pixels would
not. Batching is made deterministic by holding the first forward until the other requests are queued."""

import dataclasses
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import torch
from svc_support import publish_conditional_model, publish_madgan_model

from core.settings import BUNDLED_MODELS_DIR
from service.serving.batcher import Batcher, BatcherClosed, Batchers
from service.serving.registry import LoadedModel, ModelRegistry
from training.latents import latents_from_seeds

WAIT_S = 10.0  # a safety net on every wait: a broken batcher fails the test instead of hanging it


@pytest.fixture(scope="module")
def mnist() -> LoadedModel:
    return ModelRegistry([(BUNDLED_MODELS_DIR, "bundled")]).get("mnist-mlp")


@pytest.fixture
def batchers() -> Iterator[list[Batcher]]:
    """Batchers a test makes, closed after it whatever happened."""
    made: list[Batcher] = []
    yield made
    for b in made:
        b.close()


class Gate:
    """A `run` for a batcher that records each forward's rows, holds the first forward until `open()`, and
    raises for rows whose first latent entry is `poison`."""

    poison = 999.0

    def __init__(self, run: Callable[..., torch.Tensor] | None = None, hold_first: bool = True):
        self.run = run or (lambda z, labels, generators: z * 2)
        self.rows: list[int] = []
        self.entered = threading.Event()
        self._open = threading.Event()
        if not hold_first:
            self._open.set()

    def __call__(self, z: torch.Tensor, labels: list[int] | None, generators: list[int] | None) -> torch.Tensor:
        self.rows.append(z.shape[0])
        self.entered.set()
        assert self._open.wait(WAIT_S)
        if bool((z[:, 0] == self.poison).any()):
            raise RuntimeError("poisoned row")
        return self.run(z, labels, generators)

    def open(self) -> None:
        self._open.set()


def rows(n: int, first: float | None = None) -> torch.Tensor:
    """n distinct rows; `first`: the first entry of each."""
    z = torch.arange(n * 3, dtype=torch.float32).view(n, 3) + 1
    if first is not None:
        z[:, 0] = first
    return z


def seeds_latents(model: LoadedModel, start: int, count: int) -> torch.Tensor:
    return latents_from_seeds(list(range(start, start + count)), model.latent_dim)


# --- the fixed-shape forward ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 15, 16, 17, 40])
def test_every_forward_has_batch_rows_rows(mnist: LoadedModel, n: int) -> None:
    shapes: list[tuple[int, ...]] = []
    traced = mnist.traced
    assert traced is not None  # the bundled model is served through its trace (service/serving/traced.py)

    def spy(z: torch.Tensor, labels: torch.Tensor | None, generators: torch.Tensor | None) -> torch.Tensor:
        shapes.append(tuple(z.shape))
        return traced(z, labels, generators)

    out = dataclasses.replace(mnist, traced=spy).render(latents_from_seeds(list(range(n)), mnist.latent_dim))
    assert out.shape == (n, 1, 28, 28) and out.dtype == torch.uint8
    assert shapes == [(mnist.batch_rows, mnist.latent_dim)] * -(-n // mnist.batch_rows)


def test_a_latent_gives_the_same_floats_alone_and_in_any_chunk(mnist: LoadedModel) -> None:
    seeds = list(range(100, 140))
    together = mnist.sample_seeds(seeds)
    alone = torch.cat([mnist.sample_seeds([s]) for s in seeds])
    assert torch.equal(together, alone)
    assert torch.equal(mnist.sample_seeds(seeds[::-1]), together.flip(0))
    # What the padding buys: a forward of one row rounds differently (so the test above could fail).
    with torch.inference_mode():
        unpadded = mnist.generator(latents_from_seeds(seeds[:1], mnist.latent_dim))
    assert not torch.equal(unpadded, together[:1])


# --- batching ----------------------------------------------------------------------------------------------


def test_concurrent_requests_give_each_latent_its_own_floats(mnist: LoadedModel, batchers: list[Batcher]) -> None:
    """Requests of 1, 15, 16, 17 and 40 rows (spanning chunk boundaries), mixed into shared forwards, get what
    each seed gives alone."""
    gate = Gate(lambda z, labels, generators: mnist.sample(z, labels, generators))
    batcher = Batcher(gate, mnist.batch_rows, max_wait_s=0.0)
    batchers.append(batcher)
    counts = [1, 15, 16, 17, 40]
    starts = [1000 * i for i in range(len(counts))]
    first = batcher.submit(latents_from_seeds([7], mnist.latent_dim))  # holds the worker: the rest queue up
    assert gate.entered.wait(WAIT_S)
    with ThreadPoolExecutor(len(counts)) as pool:
        futures = list(pool.map(lambda s, c: batcher.submit(seeds_latents(mnist, s, c)), starts, counts))
        gate.open()
        results = [f.result(WAIT_S) for f in futures]
    assert torch.equal(first.result(WAIT_S), mnist.sample_seeds([7]))
    for start, count, got in zip(starts, counts, results, strict=True):
        alone = torch.cat([mnist.sample_seeds([s]) for s in range(start, start + count)])
        assert torch.equal(got, alone), (start, count)
    # 89 rows after the first: full forwards of 16 rows but for the last, so requests shared forwards.
    assert gate.rows == [1] + [16] * 5 + [9]


def test_labels_and_generators_follow_their_rows(settings, batchers: list[Batcher]) -> None:
    publish_conditional_model(settings.models_dir)
    publish_madgan_model(settings.models_dir)
    registry = ModelRegistry.from_settings(settings)
    for name in ("cond", "mad"):
        model = registry.get(name)
        gate = Gate(lambda z, labels, generators, m=model: m.sample(z, labels, generators))
        batcher = Batcher(gate, model.batch_rows, max_wait_s=0.0)
        batchers.append(batcher)
        batcher.submit(latents_from_seeds([0], model.latent_dim), *_extras(model, [0], None))
        assert gate.entered.wait(WAIT_S)
        asks = [(10, 5, 2), (20, 6, 0), (30, 9, None)]  # first seed, count, label (conditional only)
        futures = []
        for seed, count, label in asks:
            seeds = list(range(seed, seed + count))
            label = label if model.conditional else None
            futures.append(batcher.submit(latents_from_seeds(seeds, model.latent_dim), *_extras(model, seeds, label)))
        gate.open()
        for (seed, count, label), future in zip(asks, futures, strict=True):
            label = label if model.conditional else None
            alone = torch.cat([model.sample_seeds([s], label) for s in range(seed, seed + count)])
            assert torch.equal(future.result(WAIT_S), alone), (name, seed)
        assert gate.rows == [1, 16, 4]


def _extras(model: LoadedModel, seeds: list[int], label: int | None) -> tuple[list[int] | None, list[int] | None]:
    return model.labels_for(seeds, label), model.generators_for(seeds)


def test_the_worker_waits_for_a_full_batch_but_no_longer(batchers: list[Batcher]) -> None:
    gate = Gate(hold_first=False)
    batcher = Batcher(gate, max_rows=4, max_wait_s=60.0)  # would wait a minute for a fourth row
    batchers.append(batcher)
    futures = [batcher.submit(rows(1)) for _ in range(4)]
    for f in futures:
        assert torch.equal(f.result(WAIT_S), rows(1) * 2)
    assert gate.rows == [4] and batcher.forwards == 1


def test_a_request_larger_than_the_batch_is_split(batchers: list[Batcher]) -> None:
    gate = Gate(hold_first=False)
    batcher = Batcher(gate, max_rows=16, max_wait_s=0.0)
    batchers.append(batcher)
    z = rows(40)
    assert torch.equal(batcher.submit(z).result(WAIT_S), z * 2)
    assert gate.rows == [16, 16, 8]


def test_a_failing_forward_fails_only_its_requests(batchers: list[Batcher]) -> None:
    gate = Gate()
    batcher = Batcher(gate, max_rows=2, max_wait_s=0.0)
    batchers.append(batcher)
    a = batcher.submit(rows(2))
    assert gate.entered.wait(WAIT_S)
    bad = batcher.submit(rows(2, first=Gate.poison))
    c = batcher.submit(rows(2))
    big_bad = batcher.submit(torch.cat([rows(2), rows(1, first=Gate.poison), rows(2)]))  # fails in its 2nd forward
    d = batcher.submit(rows(1))
    gate.open()
    for good, n in ((a, 2), (c, 2), (d, 1)):
        assert torch.equal(good.result(WAIT_S), rows(n) * 2)
    for failed in (bad, big_bad):
        with pytest.raises(RuntimeError, match="poisoned row"):
            failed.result(WAIT_S)
    assert batcher.alive
    assert torch.equal(batcher.submit(rows(2)).result(WAIT_S), rows(2) * 2)  # and it carries on
    # Forwards: a, bad, c, big_bad's rows 0–1, its rows 2–3 (poisoned: its last row is never run), d, the last.
    assert gate.rows == [2, 2, 2, 2, 2, 1, 2]


def test_rows_with_and_without_labels_cannot_share_a_forward(batchers: list[Batcher]) -> None:
    gate = Gate()
    batcher = Batcher(gate, max_rows=4, max_wait_s=0.0)
    batchers.append(batcher)
    batcher.submit(rows(1))
    assert gate.entered.wait(WAIT_S)
    with_labels, without = batcher.submit(rows(1), labels=[0]), batcher.submit(rows(1))
    gate.open()
    for f in (with_labels, without):
        with pytest.raises(ValueError, match="cannot share a forward"):
            f.result(WAIT_S)


def test_close_fails_what_is_queued_and_stops_the_thread(batchers: list[Batcher]) -> None:
    gate = Gate()
    batcher = Batcher(gate, max_rows=2, max_wait_s=0.0)
    running = batcher.submit(rows(2))
    assert gate.entered.wait(WAIT_S)
    queued = [batcher.submit(rows(2)), batcher.submit(rows(3))]
    closer = threading.Thread(target=batcher.close)
    closer.start()  # close() waits for the forward in progress
    gate.open()
    closer.join(WAIT_S)
    assert not closer.is_alive() and not batcher.alive
    assert torch.equal(running.result(WAIT_S), rows(2) * 2)  # it was in a forward: it finishes
    for f in queued:
        with pytest.raises(BatcherClosed):
            f.result(WAIT_S)
    with pytest.raises(BatcherClosed):
        batcher.submit(rows(1))
    assert gate.rows == [2]


def test_close_with_drain_runs_what_is_queued(batchers: list[Batcher]) -> None:
    gate = Gate()
    batcher = Batcher(gate, max_rows=2, max_wait_s=0.0)
    batcher.submit(rows(2))
    assert gate.entered.wait(WAIT_S)
    queued = batcher.submit(rows(3))
    batcher.close(drain=True, wait=False)
    gate.open()
    assert torch.equal(queued.result(WAIT_S), rows(3) * 2)
    batcher.join(WAIT_S)
    assert not batcher.alive


def test_a_cancelled_request_is_skipped(batchers: list[Batcher]) -> None:
    gate = Gate()
    batcher = Batcher(gate, max_rows=4, max_wait_s=0.0)
    batchers.append(batcher)
    batcher.submit(rows(1))
    assert gate.entered.wait(WAIT_S)
    gone: Future[torch.Tensor] = batcher.submit(rows(3))
    assert gone.cancel()  # its caller gave up before it was run
    kept = batcher.submit(rows(2))
    gate.open()
    assert torch.equal(kept.result(WAIT_S), rows(2) * 2)
    assert gate.rows == [1, 2]


# --- one batcher per model version --------------------------------------------------------------------------


def test_batchers_are_per_model_version_and_swap_atomically(settings, publish_model) -> None:
    publish_model("tiny")
    registry = ModelRegistry.from_settings(settings)
    v1 = registry.get("tiny")
    pool = Batchers(max_wait_s=0.0)
    try:
        old = pool.get(v1)
        assert pool.get(v1) is old
        publish_model("tiny", weights_seed=1)
        v2 = registry.get("tiny", 2)
        new = pool.get(v2)
        assert new is not old and old.alive  # the old version keeps its batcher for its own requests
        z = latents_from_seeds([3], v1.latent_dim)
        assert torch.equal(pool.submit(v1, z, None, None).result(WAIT_S), v1.render(z))
        assert torch.equal(pool.submit(v2, z, None, None).result(WAIT_S), v2.render(z))
        assert not torch.equal(v1.render(z), v2.render(z))
        # The same version loaded again (another object): a new batcher; the old one drains and stops.
        reloaded = ModelRegistry.from_settings(settings).get("tiny", 1)
        third = pool.get(reloaded)
        assert third is not old
        old.join(WAIT_S)
        assert not old.alive
    finally:
        pool.close()
    assert not new.alive and not third.alive


def test_finish_runs_on_the_dispatcher_and_resolves_the_future(batchers: list[Batcher]) -> None:
    """With `finish`, the future carries finish(rows), computed where the dispatcher runs it (not on the
    batcher's thread); a finish that raises fails its own request only."""
    pool = ThreadPoolExecutor(2, thread_name_prefix="finisher")
    where: list[str] = []

    def finish(rows: torch.Tensor) -> float:
        where.append(threading.current_thread().name)
        if bool((rows == -2.0).any()):
            raise ValueError("cannot encode")
        return float(rows.sum())

    try:
        b = Batcher(Gate(hold_first=False), max_rows=4, max_wait_s=0.0, dispatch=pool.submit)
        batchers.append(b)
        good = b.submit(torch.ones(3, 2), finish=finish)
        bad = b.submit(-torch.ones(1, 2), finish=finish)
        plain = b.submit(torch.ones(1, 2))
        assert good.result(WAIT_S) == 12.0
        with pytest.raises(ValueError, match="cannot encode"):
            bad.result(WAIT_S)
        assert torch.equal(plain.result(WAIT_S), torch.full((1, 2), 2.0))
        assert where and all(name.startswith("finisher") for name in where)
    finally:
        pool.shutdown()


def test_get_if_ready_never_touches_disk_for_an_unloaded_model(tmp_path) -> None:
    registry = ModelRegistry([(BUNDLED_MODELS_DIR, "bundled")])
    assert registry.get_if_ready("mnist-mlp") is None  # not listed yet: the caller must use `get` in a thread
    loaded = registry.get("mnist-mlp")
    assert registry.get_if_ready("mnist-mlp") is loaded
    assert registry.get_if_ready("mnist-mlp", loaded.version) is loaded
    assert registry.get_if_ready("mnist-mlp", loaded.version + 1) is None
    assert registry.get_if_ready("no-such-model") is None


def test_get_if_ready_sends_one_caller_to_rescan_a_stale_listing() -> None:
    now = [0.0]
    registry = ModelRegistry([(BUNDLED_MODELS_DIR, "bundled")], clock=lambda: now[0])
    loaded = registry.get("mnist-mlp")
    now[0] += registry.rescan_interval_s  # the listing is stale
    assert registry.get_if_ready("mnist-mlp") is None  # the first caller: to `get`, which rescans
    assert registry.get_if_ready("mnist-mlp") is loaded  # the others meanwhile: what was listed
    assert registry.get("mnist-mlp") is loaded  # the rescan
    now[0] += 5 * registry.rescan_interval_s
    assert registry.get_if_ready("mnist-mlp") is None  # stale again: a new claim
    now[0] += 5 * registry.rescan_interval_s
    assert registry.get_if_ready("mnist-mlp") is None  # a claim nobody honoured has lapsed
