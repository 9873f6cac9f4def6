"""The render process's batching (service/serving/batching.py), driven in-process: what it answers for requests
batched together is byte for byte what each request gets alone; a model that fails fails only its requests; a
forward waits for rows no longer than `max_wait_s` (on an injected clock). And the fixed-shape forward
(`LoadedModel.sample`) that makes batching invisible."""

import dataclasses

import pytest
import torch
from svc_support import LATENT_DIM, NUM_CLASSES, publish_conditional_model, publish_madgan_model
from torch import nn

from core.settings import BUNDLED_MODELS_DIR, Settings
from service.serving.batching import Answer, Batching, Failure, Request, Seeds, latents_of
from service.serving.encoding import FORMS, finish
from service.serving.registry import LoadedModel, ModelRegistry
from training.latents import latents_from_seeds

ROWS = 16


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    """The bundled mnist-mlp, a conditional model `cond` and a MAD-GAN `mad`."""
    volume = tmp_path_factory.mktemp("volume")
    settings = Settings(_env_file=None, checkpoint_dir=volume, bundled_models_dir=BUNDLED_MODELS_DIR)  # type: ignore[call-arg]
    publish_conditional_model(settings)
    publish_madgan_model(settings)
    return ModelRegistry.from_settings(settings, batch_rows=ROWS)


def batching(registry: ModelRegistry, **kwargs: object) -> Batching:
    return Batching(registry.get, kwargs.pop("batch_rows", ROWS), kwargs.pop("max_wait_s", 0.0), **kwargs)  # type: ignore[arg-type]


def seeded(rid: int, model: LoadedModel, seeds: list[int], form: str = "pngs", label: int | None = None) -> Request:
    return Request(
        rid,
        model.name,
        model.version,
        Seeds(seeds),
        model.labels_for(seeds, label),
        model.generators_for(seeds),
        form,  # type: ignore[arg-type]
        duration_ms=120,
    )


def alone(registry: ModelRegistry, request: Request) -> list[bytes] | bytes:
    """What the request gets when nothing else is rendered with it."""
    b = batching(registry)
    assert b.add(request) is None
    (outcome,) = b.render().outcomes
    assert isinstance(outcome, Answer) and outcome.rid == request.rid
    return outcome.output


def test_batched_requests_get_the_bytes_they_get_alone(registry: ModelRegistry) -> None:
    mnist, cond, mad = (registry.get(name) for name in ("mnist-mlp", "cond", "mad"))
    requests = [
        seeded(0, mnist, [1]),
        seeded(1, mnist, list(range(100, 115)), "grid"),  # 1 + 15: the first forward's rows exactly
        seeded(2, mnist, list(range(200, 216)), "pngs"),
        seeded(3, mnist, list(range(300, 317)), "strip"),  # across a forward's end
        seeded(4, mnist, list(range(400, 440)), "pngs"),  # more than two forwards by itself
        seeded(5, cond, [4, 5, 6]),
        seeded(6, cond, [7, 8], "grid", label=2),
        seeded(7, mad, [7, 8, 9, 10], "apng"),
        seeded(8, mad, [11, 12, 13], "gif"),
        Request(9, mnist.name, mnist.version, torch.randn(2, mnist.latent_dim), form="pngs"),  # explicit latents
        Request(10, cond.name, cond.version, torch.randn(1, LATENT_DIM), labels=[NUM_CLASSES - 1]),
        Request(11, mad.name, mad.version, torch.randn(1, LATENT_DIM), generators=[0], form="grid"),
    ]
    b = batching(registry)
    for r in requests:
        assert b.add(r) is None
    assert b.waiting == len(requests) and b.due()
    rendered = b.render()
    assert b.waiting == 0 and not b.due() and b.wait_s() is None
    answers = {o.rid: o.output for o in rendered.outcomes if isinstance(o, Answer)}
    assert sorted(answers) == [r.rid for r in requests]
    for r in requests:
        assert answers[r.rid] == alone(registry, r), r.rid
    # Each model's rows together, in padded forwards of ROWS: mnist 1+15+16+17+40+2 = 91 rows, cond 6, mad 8.
    assert sorted(rendered.forwards) == sorted([16] * 5 + [11] + [6] + [8])


def test_an_answer_is_the_form_of_the_models_render(registry: ModelRegistry) -> None:
    mnist = registry.get("mnist-mlp")
    seeds = list(range(20, 25))
    images = mnist.render(latents_from_seeds(seeds, mnist.latent_dim))
    for form in FORMS:
        assert alone(registry, seeded(0, mnist, seeds, form)) == finish(form, images, 120), form


def test_explicit_latents_are_rendered_as_given(registry: ModelRegistry) -> None:
    mnist = registry.get("mnist-mlp")
    latents = torch.randn(3, mnist.latent_dim)
    request = Request(0, mnist.name, mnist.version, latents, form="pngs")
    assert alone(registry, request) == finish("pngs", mnist.render(latents))
    assert torch.equal(latents_of(Seeds([5, 6]), 4), latents_from_seeds([5, 6], 4))
    assert latents_of(latents, mnist.latent_dim) is latents


class _Broken(nn.Module):
    def forward(self, z: torch.Tensor, labels=None, generator=None) -> torch.Tensor:
        raise RuntimeError("broken generator")


def test_a_model_that_fails_fails_only_its_own_requests(registry: ModelRegistry) -> None:
    mnist = registry.get("mnist-mlp")
    broken = dataclasses.replace(mnist, name="broken", generator=_Broken())

    def load(name: str, version: int) -> LoadedModel:
        return broken if name == "broken" else registry.get(name, version)

    b = Batching(load, ROWS, 0.0)
    good = [seeded(0, mnist, [1, 2]), seeded(2, mnist, [3])]
    bad = [seeded(1, broken, [1, 2]), seeded(3, broken, list(range(30)))]
    for r in (good[0], bad[0], good[1], bad[1]):
        assert b.add(r) is None
    outcomes = {o.rid: o for o in b.render().outcomes}
    for r in good:
        assert outcomes[r.rid] == Answer(r.rid, alone(registry, r))
    for r in bad:
        failure = outcomes[r.rid]
        assert isinstance(failure, Failure) and failure.kind == "render" and "broken generator" in failure.message
    # And it carries on.
    assert b.add(good[0]) is None and b.render().outcomes == [Answer(0, alone(registry, good[0]))]


def test_a_version_that_cannot_be_loaded_fails_at_once_and_queues_nothing(registry: ModelRegistry) -> None:
    b = batching(registry)
    failure = b.add(Request(5, "mnist-mlp", 99, Seeds([1])))
    assert isinstance(failure, Failure) and failure.kind == "model" and "version 99" in failure.message
    failure = b.add(Request(6, "nope", 1, Seeds([1])))
    assert isinstance(failure, Failure) and failure.kind == "model"
    assert b.waiting == 0


@pytest.mark.parametrize(
    ("model", "changes", "words"),
    [
        ("mnist-mlp", {"labels": [0]}, "labels given"),
        ("cond", {"labels": None}, "labels missing"),
        ("cond", {"labels": [0, 1]}, "2 labels for 1 rows"),
        ("mad", {"generators": None}, "generator indices missing"),
        ("mnist-mlp", {"rows": torch.zeros(1, 3)}, "latents of shape (1, 3)"),
        ("mnist-mlp", {"rows": Seeds([])}, "at least one row"),
    ],
)
def test_a_request_that_does_not_fit_its_model_fails_alone(
    registry: ModelRegistry, model: str, changes: dict, words: str
) -> None:
    m = registry.get(model)
    b = batching(registry)
    assert b.add(seeded(0, m, [1])) is None
    failure = b.add(dataclasses.replace(seeded(1, m, [2]), **changes))
    assert isinstance(failure, Failure) and failure.rid == 1 and failure.kind == "render" and words in failure.message
    assert [o.rid for o in b.render().outcomes] == [0]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rows_wait_for_a_full_forward_but_no_longer_than_max_wait(registry: ModelRegistry) -> None:
    mnist = registry.get("mnist-mlp")
    clock = Clock()
    b = batching(registry, batch_rows=4, max_wait_s=0.010, clock=clock)
    assert b.wait_s() is None and not b.due()
    b.add(seeded(0, mnist, [1]))
    assert not b.due() and b.wait_s() == pytest.approx(0.010)
    clock.now += 0.004
    b.add(seeded(1, mnist, [2, 3]))  # the wait counts from the oldest request
    assert not b.due() and b.wait_s() == pytest.approx(0.006)
    clock.now += 0.006
    assert b.due() and b.wait_s() == 0.0  # its wait is up: three rows go
    assert b.render().forwards == [3]

    b.add(seeded(2, mnist, [4, 5]))
    assert not b.due()
    b.add(seeded(3, mnist, [6, 7, 8]))  # four rows or more: no more waiting
    assert b.due() and b.wait_s() == 0.0
    assert b.render().forwards == [5]  # in forwards of the model's rows (16)


def test_no_wait_renders_whatever_is_there(registry: ModelRegistry) -> None:
    b = batching(registry, max_wait_s=0.0, clock=Clock())
    b.add(seeded(0, registry.get("mnist-mlp"), [1]))
    assert b.due() and b.wait_s() == 0.0


# --- the fixed-shape forward batching relies on -----------------------------------------------------------


class _Spy(nn.Module):
    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, z: torch.Tensor, labels=None, generator=None) -> torch.Tensor:
        self.shapes.append(tuple(z.shape))
        return self.generator(z, labels=labels, generator=generator)


@pytest.mark.parametrize("n", [1, 15, 16, 17, 40])
def test_every_forward_has_batch_rows_rows(registry: ModelRegistry, n: int) -> None:
    mnist = registry.get("mnist-mlp")
    spy = _Spy(mnist.generator)
    out = dataclasses.replace(mnist, generator=spy).render(latents_from_seeds(list(range(n)), mnist.latent_dim))
    assert out.shape == (n, 1, 28, 28) and out.dtype == torch.uint8
    assert spy.shapes == [(ROWS, mnist.latent_dim)] * -(-n // ROWS)


def test_a_latent_gives_the_same_floats_alone_and_in_any_chunk(registry: ModelRegistry) -> None:
    """Compared as raw floats: a matmul's rounding changes with the number of rows, which `torch.equal` sees
    even where the uint8 pixels would not."""
    mnist = registry.get("mnist-mlp")
    seeds = list(range(100, 140))
    together = mnist.sample_seeds(seeds)
    assert torch.equal(together, torch.cat([mnist.sample_seeds([s]) for s in seeds]))
    assert torch.equal(mnist.sample_seeds(seeds[::-1]), together.flip(0))
    # What the padding buys: a forward of one row rounds differently (so the test above could fail).
    with torch.inference_mode():
        unpadded = mnist.generator(latents_from_seeds(seeds[:1], mnist.latent_dim))
    assert not torch.equal(unpadded, together[:1])


def test_batching_refuses_nonsense_settings(registry: ModelRegistry) -> None:
    with pytest.raises(ValueError):
        Batching(registry.get, 0, 0.0)
    with pytest.raises(ValueError):
        Batching(registry.get, 4, -1.0)
