"""AdaGAN (training/adagan.py): the reweighting formula, the seed → component mapping of the published mixture,
the config's rules, and a tiny two-round run end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from core.train_config import TrainConfig
from training import adagan, checkpoint, distributed
from training.architectures import AdaGANMixture, build_generator
from training.latents import latents_from_seeds, seed_components, seed_generators, seed_uniform
from training.loop import train

WEIGHTS = [0.5, 0.3, 0.15, 0.05]
N_SEEDS = 20_000


# --- seed → component ------------------------------------------------------------------------------------


def test_seed_components_are_deterministic_within_and_across_processes() -> None:
    seeds = [*range(0, 2000, 7), 2**32 - 1]
    here = seed_components(seeds, WEIGHTS)
    assert seed_components(seeds, WEIGHTS) == here
    code = (
        "import json; from training.latents import seed_components; "
        f"print(json.dumps(seed_components({seeds!r}, {WEIGHTS!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd())
    assert json.loads(out.stdout) == here


def test_seed_uniform_known_values() -> None:
    # Pure integer arithmetic: these never change on any machine (a change would re-map every published mixture).
    assert [seed_uniform(s) for s in (0, 1, 2, 2**32 - 1)] == [
        0.9013343915355848,
        0.5904853070190003,
        0.9452692832326451,
        0.9924478966782013,
    ]
    assert all(0.0 <= seed_uniform(s) < 1.0 for s in range(1000))
    with pytest.raises(ValueError, match="seed must be"):
        seed_uniform(-1)


def test_seed_components_are_proportional_to_the_weights() -> None:
    """Seeds 0..19,999 (a fixed set: the test cannot flake): each component's share within 4 binomial standard
    deviations of its weight, and a weight-0 component never picked."""
    picks = seed_components(range(N_SEEDS), [*WEIGHTS, 0.0])
    counts = torch.bincount(torch.tensor(picks), minlength=len(WEIGHTS) + 1).tolist()
    assert counts[-1] == 0
    for w, c in zip(WEIGHTS, counts, strict=False):
        sd = (w * (1 - w) / N_SEEDS) ** 0.5
        assert abs(c / N_SEEDS - w) < 4 * sd, (w, c)


def test_unnormalised_weights_and_bad_weights() -> None:
    assert seed_components(range(500), [2.0, 6.0]) == seed_components(range(500), [0.25, 0.75])
    for bad in ([], [0.0, 0.0], [1.0, -0.1], [float("nan"), 1.0]):
        with pytest.raises(ValueError, match="mixture weights"):
            seed_components([0], bad)
    with pytest.raises(ValueError, match="as many mixture weights"):
        seed_generators([0], 3, [0.5, 0.5])
    assert seed_generators([0, 5], 4) == [0, 1]  # MAD-GAN's mapping unchanged without weights


def _mixture(weights: list[float]) -> AdaGANMixture:
    base = {"arch": "mlp", "latent_dim": 2, "hidden": [8], "image_shape": [2], "output": "linear"}
    base |= {"activation": "relu", "batchnorm": False}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AdaGANMixture(base, weights).eval()


def test_mixture_forward_takes_seed_i_component_for_row_i() -> None:
    g = _mixture([0.2, 0.8])
    z = latents_from_seeds(list(range(64)), 2)
    picks = torch.tensor(seed_components(range(64), [0.2, 0.8]))
    with torch.no_grad():
        assert torch.equal(g(z), g(z, generator=picks))
        each = torch.stack([c(z) for c in g.generators])
        assert torch.equal(g(z), each[picks, torch.arange(64)])
    rebuilt = build_generator(json.loads(json.dumps(g.spec)))
    assert rebuilt.mixture_weights == [0.2, 0.8] and rebuilt.num_generators == 2
    with pytest.raises(ValueError, match="indices"):
        g(z[:2], generator=torch.tensor([0, 2]))


# --- the reweighting ---------------------------------------------------------------------------------------


def test_data_weights_hand_example() -> None:
    """h = (0, 0, 10, 10), β = ½: d = (1 − β)h = (0, 0, 5, 5); λ₁ = 2/1 = 2 > 0, λ₂ = 2/2 = 1 > 0, λ₃ = 7/3 < 5:
    λ* = 1, w = (1 − 0)/(½·4) = ½ on the two uncovered points and 0 where the mixture already has mass."""
    w = adagan.data_weights(torch.tensor([0.0, 0.0, 10.0, 10.0]), 0.5)
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64))


def test_data_weights_sum_to_one_and_favour_the_missed_points() -> None:
    h = torch.tensor([0.01, 0.2, 0.9, 1.0, 1.1, 3.0, 50.0], dtype=torch.float64)
    for beta in (0.1, 1 / 3, 0.5, 0.9):
        w = adagan.data_weights(h, beta)
        assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
        assert bool((w[:-1] >= w[1:]).all())  # a larger ratio (better covered) never gets more weight
        assert float(w[-1]) == 0.0
        lam = w * beta * len(h) + (1 - beta) * h  # = λ* wherever w > 0
        torch.testing.assert_close(lam[w > 0], torch.full_like(lam[w > 0], float(lam[0])))
    # A mixture that already matches the data (h = 1 everywhere) leaves the weights uniform.
    torch.testing.assert_close(adagan.data_weights(torch.ones(5), 0.3), torch.full((5,), 0.2, dtype=torch.float64))


def test_density_ratio_and_betas() -> None:
    torch.testing.assert_close(
        adagan.density_ratio(torch.tensor([0.0, 2.0, -1000.0])),
        torch.tensor([1.0, torch.exp(torch.tensor(-2.0)).item(), torch.exp(torch.tensor(30.0)).item()]).double(),
    )
    c = TrainConfig(model_name="a", dataset="ring-2d", architecture="adagan")
    assert [adagan.beta_for(c, t) for t in (1, 2, 4)] == [1.0, 0.5, 0.25]
    assert adagan.beta_for(c.model_copy(update={"adagan_beta": 0.3}), 3) == 0.3
    assert adagan.mixed_weights(adagan.mixed_weights([1.0], 0.5), 1 / 3) == pytest.approx([1 / 3] * 3)


# --- configuration -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"adagan_beta": 0.5}, "`adagan_beta` applies to `architecture: adagan` only"),
        ({"architecture": "adagan", "dataset": "mnist", "conditional": True}, "`adagan` cannot be `conditional`"),
        ({"architecture": "adagan", "rounds": 0}, "greater than or equal to 1"),
        ({"architecture": "adagan", "adagan_beta": 1.0}, "less than 1"),
    ],
)
def test_config_rules(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TrainConfig.model_validate({"model_name": "a", "dataset": "ring-2d", **fields})


def test_refused_with_several_processes() -> None:
    c = TrainConfig(model_name="a", dataset="ring-2d", architecture="adagan")
    world = distributed.World(rank=0, size=2, local_rank=0, local_size=2)
    with pytest.raises(ValueError, match="does not support adagan"):
        distributed.check_supported(c, world)


# --- end to end --------------------------------------------------------------------------------------------


def test_two_rounds_on_the_ring_end_to_end(tmp_path: Path) -> None:
    config = TrainConfig(
        model_name="ring-ada", dataset="ring-2d", architecture="adagan", rounds=2, steps=6, batch_size=32,
        latent_dim=2, g_hidden=[16], d_hidden=[16],
    )  # fmt: skip
    seen: list[adagan.RoundRecord] = []
    progress = []
    result = train(config, tmp_path, data_root=tmp_path, progress_fn=progress.append, report_every_s=1e9)
    assert result.status == "completed" and result.epochs_done == 2 and result.steps_done == 12
    assert result.final_checkpoint == tmp_path / "checkpoints" / "epoch-0002"
    assert result.samples is not None and result.samples.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.checkpoint for p in progress if p.checkpoint] == [
        tmp_path / "checkpoints" / f"epoch-000{t}" for t in (1, 2)
    ]

    g, meta = checkpoint.load_generator(result.final_checkpoint)
    assert meta["architecture"] == "adagan" and meta["num_generators"] == 2
    assert meta["mixture_weights"] == [0.5, 0.5] and g.mixture_weights == [0.5, 0.5]
    assert [r["round"] for r in meta["adagan_rounds"]] == [1, 2]
    first, second = meta["adagan_rounds"]
    assert first["zero_weight_fraction"] == 0.0 and first["beta"] == 1.0 and second["beta"] == 0.5
    z = latents_from_seeds(list(range(10)), 2)
    with torch.no_grad():
        assert g(z).shape == (10, 2) and bool(torch.isfinite(g(z)).all())

    again = adagan.train(config, tmp_path / "again", data_root=tmp_path, round_fn=lambda r, m: seen.append(r))
    assert [r.round for r in seen] == [1, 2]
    g2, _ = checkpoint.load_generator(again.final_checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(g2(z), g(z), rtol=0, atol=0)  # the same config trains the same mixture


def test_two_rounds_on_images(tiny_data_root: Path, tmp_path: Path) -> None:
    """MLP images: the mixture of BatchNorm generators is checkpointed, rebuilt and gives a grid of seeds 0..63."""
    config = TrainConfig(
        model_name="digits-ada", dataset="mnist", architecture="adagan", rounds=2, steps=2, batch_size=16,
        latent_dim=8, g_hidden=[16], d_hidden=[16], eval_extractor="none",
    )  # fmt: skip
    result = train(config, tmp_path, data_root=tiny_data_root)
    assert result.status == "completed" and result.final_checkpoint is not None and result.samples is not None
    g, meta = checkpoint.load_generator(result.final_checkpoint)
    assert meta["kind"] == "image" and meta["image_shape"] == [1, 28, 28] and g.num_generators == 2
    z = latents_from_seeds(list(range(4)), 8)
    with torch.no_grad():
        out = g(z)
    assert out.shape == (4, 1, 28, 28) and float(out.abs().max()) <= 1.0  # tanh images


def test_the_size_limit_counts_every_round_generator() -> None:
    """GANSERVE_MAX_MODEL_PARAMETERS sees T generators for an adagan job: T·G + D."""
    from training.model_size import count_parameters

    one = TrainConfig(model_name="a", dataset="ring-2d", g_hidden=[16], d_hidden=[8])
    five = one.model_copy(update={"architecture": "adagan", "rounds": 5})
    g = 100 * 16 + 16 + 16 * 2 + 2  # z of 100 → 16 → 2, with biases
    d = 2 * 8 + 8 + 8 + 1  # 2 → 8 → 1
    assert count_parameters(one) == g + d
    assert count_parameters(five) == 5 * g + d


def test_reweighting_moves_the_mass_off_a_mode_the_mixture_covers(tmp_path: Path) -> None:
    """A mixture stuck on the ring's mode 0 (a G that outputs its mean): the classifier's ratio gives mode 0's
    points weight ~0 and the seven missed modes ~1/7 each."""
    from training import architectures, toy
    from training.data import load_to_device

    config = TrainConfig(model_name="a", dataset="ring-2d", architecture="adagan", latent_dim=2, max_samples=8000)
    data = load_to_device(config, tmp_path, torch.device("cpu"))
    stuck = architectures.AdaGANMixture(architectures._mlp_g_spec(config, (2,), "linear", None), [1.0])
    with torch.no_grad():
        for p in stuck.parameters():
            p.zero_()
        stuck.generators[0].net[-1].bias.copy_(toy.get("ring-2d").means[0])
    w = adagan.reweight(config, data, stuck.eval(), 0.5, 200, torch.device("cpu"))
    mode = torch.cdist(data.samples.double(), toy.get("ring-2d").means).argmin(1)
    per_mode = torch.stack([w[mode == k].sum() for k in range(8)])
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-9)
    assert float(per_mode[0]) < 0.01
    torch.testing.assert_close(per_mode[1:], torch.full((7,), 1 / 7, dtype=torch.float64), atol=0.02, rtol=0)
