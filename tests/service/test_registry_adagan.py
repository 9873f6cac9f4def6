"""A published AdaGAN mixture (training/adagan.py) through the registry: a seed's sample comes from the component
its seed picks by the mixture weights, the same on every call, and the listing says what the model is."""

from pathlib import Path

import torch
from svc_support import publish_to

from core.settings import Settings
from core.train_config import TrainConfig
from service.serving.registry import ModelRegistry
from training.latents import latents_from_seeds, seed_components
from training.loop import train


def test_a_trained_adagan_mixture_is_served_by_its_weights(settings: Settings, tmp_path: Path) -> None:
    config = TrainConfig(
        model_name="ada", dataset="ring-2d", architecture="adagan", rounds=3, adagan_beta=0.25, steps=4,
        batch_size=32, latent_dim=2, g_hidden=[16], d_hidden=[16],
    )  # fmt: skip
    result = train(config, tmp_path / "run", data_root=tmp_path)
    assert result.final_checkpoint is not None
    publish_to(settings, "ada", result.final_checkpoint)

    model = ModelRegistry.from_settings(settings).get("ada")
    weights = [0.75 * 0.75, 0.75 * 0.25, 0.25]  # β₁ = 1, then (1 − β)·old + β·new twice
    assert model.kind == "points" and model.num_generators == 3
    assert model.generator.mixture_weights == weights
    seeds = [0, 1, 2, 3, 17, 4_000_000_000]
    picks = seed_components(seeds, weights)
    assert model.generators_for(seeds) == picks

    samples = model.sample_seeds(seeds)
    z = latents_from_seeds(seeds, 2)
    with torch.no_grad():
        each = torch.stack([g(z) for g in model.generator.generators])
    torch.testing.assert_close(samples, each[torch.tensor(picks), torch.arange(len(seeds))])
    assert torch.equal(model.sample_seeds(seeds[::-1]), samples.flip(0))  # a seed's sample, whatever its neighbours

    info = ModelRegistry.from_settings(settings).describe("ada")["version_info"][0]
    assert info["architecture"] == "adagan" and info["num_generators"] == 3 and info["kind"] == "points"
