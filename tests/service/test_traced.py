"""The traced generator (service/serving/traced.py) serves exactly what the eager generator would, or is not used."""

import dataclasses

import torch
from svc_support import publish_conditional_model, publish_madgan_model
from torch import nn

from core.settings import BUNDLED_MODELS_DIR
from service.serving.registry import LoadedModel, ModelRegistry
from service.serving.traced import trace_render
from training.latents import latents_from_seeds


def _eager(model: LoadedModel) -> LoadedModel:
    return dataclasses.replace(model, traced=None)


def test_bundled_model_is_traced_and_exact() -> None:
    model = ModelRegistry([(BUNDLED_MODELS_DIR, "bundled")]).get("mnist-mlp")
    assert model.traced is not None
    seeds = list(range(37))
    assert torch.equal(model.render_seeds(seeds), _eager(model).render_seeds(seeds))


def test_conditional_and_madgan_traces_are_exact(tmp_path) -> None:
    publish_conditional_model(tmp_path / "models")
    publish_madgan_model(tmp_path / "models")
    registry = ModelRegistry([(tmp_path / "models", "volume")])
    models = [registry.get(n) for n in registry.names()]
    assert [m.traced is not None for m in models] == [True, True]  # both trace exactly today
    for model in models:
        seeds = list(range(20))
        labels, gens = model.labels_for(seeds), model.generators_for(seeds)
        z = latents_from_seeds(seeds, model.latent_dim)
        assert torch.equal(model.render(z, labels, gens), _eager(model).render(z, labels, gens)), model.name


class _Branchy(nn.Module):
    """A tensor's value read into Python: a trace bakes in the example's number, so it is not the eager forward."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, z: torch.Tensor, labels=None, generator=None) -> torch.Tensor:
        return self.linear(z) * float(z.abs().sum())


def test_inexact_trace_is_refused() -> None:
    assert trace_render(_Branchy().eval(), 8, 4, None, None, (-1.0, 1.0), "branchy") is None
    assert trace_render(_Plain().eval(), 8, 4, None, None, (-1.0, 1.0), "plain") is not None


class _Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, z: torch.Tensor, labels=None, generator=None) -> torch.Tensor:
        return torch.tanh(self.linear(z))
