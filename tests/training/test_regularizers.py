import math
import re
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from core.train_config import TrainConfig
from training import regularizers
from training.loop import train


def _config(*regs: dict[str, object]) -> TrainConfig:
    return TrainConfig(model_name="r", regularizers=list(regs))  # type: ignore[arg-type]


def test_prepare_reads_every_regularizer() -> None:
    reg = regularizers.prepare(
        _config(
            {"name": "instance-noise", "sigma": 0.5},
            {"name": "r1", "gamma": 2.0},
            {"name": "r2", "gamma": 3.0},
            {"name": "weight-decay", "coefficient": 0.1},
            {"name": "spectral-norm"},
        ),
        total_steps=100,
    )
    assert reg.noise == regularizers.InstanceNoiseSchedule(0.5, 100)
    assert (reg.r1_gamma, reg.r2_gamma, reg.weight_decay, reg.spectral_norm) == (2.0, 3.0, 0.1, True)
    assert reg.penalty_names == ("r1", "r2", "weight_decay")
    assert regularizers.prepare(_config(), 10) == regularizers.Regularization()


def test_instance_noise_anneals_linearly_to_zero() -> None:
    sched = regularizers.InstanceNoiseSchedule(sigma=0.4, anneal_steps=4)
    assert [sched.sigma_at(s) for s in range(6)] == pytest.approx([0.4, 0.3, 0.2, 0.1, 0.0, 0.0])
    reg = regularizers.Regularization(noise=sched)
    x = torch.zeros(20_000)
    assert reg.perturb(x, 0, torch.Generator().manual_seed(0)).std().item() == pytest.approx(0.4, rel=0.03)
    assert reg.perturb(x, 4) is x  # noise-free once annealed: no draw at all


def test_r1_on_a_quadratic_critic() -> None:
    # f(x) = ½a‖x‖² has ∇f = a·x, so R1 = γ/2 · a² · E‖x‖².
    a, gamma = 3.0, 4.0

    def critic(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * a * x.square().sum(1)

    x = torch.randn(32, 2)
    expected = gamma / 2 * a**2 * x.square().sum(1).mean().item()
    reg = regularizers.Regularization(r1_gamma=gamma, r2_gamma=gamma)
    terms = reg.d_penalty(critic, x, 2 * x)
    assert terms["r1"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["r2"].item() == pytest.approx(4 * expected, rel=1e-5)


def test_r1_trains_the_discriminator() -> None:
    # The penalty must stay in the graph (create_graph) so that it has a gradient w.r.t. D's weights.
    d = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    terms = regularizers.Regularization(r1_gamma=1.0).d_penalty(lambda x: d(x).squeeze(1), torch.randn(4, 2), None)
    terms["r1"].backward()
    assert d[0].weight.grad is not None and d[0].weight.grad.abs().sum() > 0


def test_weight_decay_sums_weight_matrices_only() -> None:
    d = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    with torch.no_grad():
        d[0].weight.fill_(1.0)
        d[1].weight.fill_(2.0)
        d[0].bias.fill_(100.0)
    terms = regularizers.Regularization(weight_decay=0.5).d_penalty(d, torch.zeros(1, 2), torch.zeros(1, 2))
    assert terms["weight_decay"].item() == pytest.approx(0.5 * (6 * 1.0 + 3 * 4.0))


def test_spectral_norm_bounds_every_layer() -> None:
    torch.manual_seed(0)
    d = nn.Sequential(nn.Linear(10, 64), nn.LeakyReLU(0.2), nn.Linear(64, 32), nn.Conv2d(1, 4, 3))
    regularizers.Regularization(spectral_norm=True).apply_to_discriminator(d)
    for _ in range(30):  # each train-mode forward runs one power iteration per layer
        d[:3](torch.randn(4, 10))
        d[3](torch.randn(1, 1, 5, 5))
    for layer in (d[0], d[2], d[3]):
        w = layer.weight.flatten(1)
        assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, abs=0.02)


# --- Roth et al. 2017 ---------------------------------------------------------------------------------


class _AffineCritic(nn.Module):
    """ψ(x) = w·x + b: ∇ₓψ = w everywhere, so Roth et al.'s Ω has a closed form."""

    def __init__(self, w: list[float], b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w + self.b


def test_roth_omega_on_an_affine_critic() -> None:
    critic = _AffineCritic([0.5, -2.0, 1.5], 0.3)
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.randn(64, 3, generator=gen), torch.randn(48, 3, generator=gen) + 1.0
    w_sq = critic.w.detach().square().sum()
    d_real, d_fake = torch.sigmoid(critic(real)).detach(), torch.sigmoid(critic(fake)).detach()
    omega = ((1 - d_real).square().mean() + d_fake.square().mean()) * w_sq
    gamma = 3.0
    terms = regularizers.Regularization(roth=regularizers.RothSchedule(gamma, 1.0, 10)).d_penalty(critic, real, fake)
    torch.testing.assert_close(terms["roth"].detach(), 0.5 * gamma * omega)
    torch.testing.assert_close(regularizers.roth_omega(critic, real, fake).detach(), omega)
    # In the graph: the penalty trains D (∂Ω/∂w is not zero).
    terms["roth"].backward()
    assert critic.w.grad is not None and critic.w.grad.abs().sum() > 0


def test_roth_omega_weights_by_how_wrong_d_is() -> None:
    # A D that is certain and right on both sides pays (almost) nothing; certain and wrong pays ‖w‖² per side.
    critic = _AffineCritic([1.0, 0.0], 0.0)
    right_real, right_fake = torch.tensor([[40.0, 0.0]]), torch.tensor([[-40.0, 0.0]])
    assert regularizers.roth_omega(critic, right_real, right_fake).item() == pytest.approx(0.0, abs=1e-12)
    assert regularizers.roth_omega(critic, right_fake, right_real).item() == pytest.approx(2.0)


def test_roth_gamma_anneals_exponentially_to_its_final_fraction() -> None:
    sched = regularizers.RothSchedule(gamma=2.0, final_fraction=0.01, steps=5)
    expected = [2.0 * 0.01 ** (t / 4) for t in range(5)]
    assert [sched.gamma_at(t) for t in range(5)] == pytest.approx(expected)
    assert sched.gamma_at(0) == 2.0 and sched.gamma_at(4) == pytest.approx(0.02)
    assert sched.gamma_at(100) == pytest.approx(0.02)  # held at the end (e.g. a run extended on resume)
    assert regularizers.RothSchedule(2.0, 1.0, 5).gamma_at(3) == 2.0
    # The config: `anneal: true` is the paper's 0.01, a number is the final fraction, `false` none, over the run.
    for anneal, fraction in ((True, 0.01), (0.25, 0.25), (False, 1.0)):
        reg = regularizers.prepare(_config({"name": "roth", "gamma": 2.0, "anneal": anneal}), total_steps=7)
        assert reg.roth == regularizers.RothSchedule(2.0, fraction, 7)
        assert reg.penalty_names == ("roth",)
    # d_penalty applies the step's γ.
    critic, x = _AffineCritic([1.0, 1.0], 0.0), torch.randn(8, 2)
    reg = regularizers.Regularization(roth=sched)
    ratio = reg.d_penalty(critic, x, x, step=4)["roth"] / reg.d_penalty(critic, x, x, step=0)["roth"]
    assert ratio.item() == pytest.approx(0.01)


def test_roth_composes_with_r1_and_instance_noise() -> None:
    reg = regularizers.prepare(
        _config({"name": "instance-noise", "sigma": 0.1}, {"name": "r1", "gamma": 1.0}, {"name": "roth"}), 10
    )
    assert reg.noise is not None and reg.r1_gamma == 1.0 and reg.roth is not None
    assert reg.penalty_names == ("r1", "roth")
    critic, x = _AffineCritic([1.0, 2.0], 0.0), torch.randn(8, 2)
    terms = reg.d_penalty(critic, x, x)
    assert set(terms) == {"r1", "roth"}
    assert terms["r1"].item() == pytest.approx(0.5 * 1.0 * 5.0, rel=1e-5)  # R1 on ψ itself: (γ/2)‖w‖²


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"regularizers": [{"name": "roth", "gamma": 0}]}, "greater than 0"),
        ({"regularizers": [{"name": "roth", "gamma": -1.0}]}, "greater than 0"),
        ({"regularizers": [{"name": "roth", "anneal": 1.5}]}, "less than 1"),
        ({"regularizers": [{"name": "roth", "anneal": "yes"}]}, "valid boolean"),
        ({"regularizers": [{"name": "roth", "beta": 1.0}]}, "Extra inputs"),
        ({"regularizers": [{"name": "roth"}, {"name": "roth"}]}, "each regularizer may appear once"),
        ({"loss": "wgan-gp", "regularizers": [{"name": "roth"}]}, "regularizer `roth` weights by D(x)"),
        ({"loss": "hinge", "regularizers": [{"name": "roth"}]}, "not `hinge` with `mlp`"),
        ({"loss": "least-squares", "regularizers": [{"name": "roth"}]}, "not `least-squares` with `mlp`"),
        ({"loss": "wasserstein", "regularizers": [{"name": "roth"}]}, "for critics use `r1`/`r2`"),
        (
            {"dataset": "ring-2d", "architecture": "mad-gan", "regularizers": [{"name": "roth"}]},
            "not `non-saturating` with `mad-gan`",
        ),
    ],
)
def test_roth_config_refuses_what_makes_no_sense(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        TrainConfig.model_validate({"model_name": "r", **fields})


@pytest.mark.parametrize(
    ("loss", "architecture"), [("non-saturating", "mlp"), ("minimax", "mlp"), ("non-saturating", "adagan")]
)
def test_roth_trains_two_steps_on_a_toy(loss: str, architecture: str, tmp_path: Path) -> None:
    config = TrainConfig(
        model_name="roth",
        dataset="ring-2d",
        max_samples=64,
        batch_size=32,
        latent_dim=4,
        g_hidden=[16],
        d_hidden=[16],
        steps=2,
        loss=loss,  # type: ignore[arg-type]
        architecture=architecture,  # type: ignore[arg-type]
        rounds=2,  # `adagan` only: each round trains its own GAN, with the penalty, for `steps`
        regularizers=[{"name": "roth", "gamma": 2.0, "anneal": True}],  # type: ignore[list-item]
    )
    result = train(config, tmp_path / "run", data_root=tmp_path)
    assert result.status == "completed" and result.steps_done == (4 if architecture == "adagan" else 2)
    assert "roth" in result.losses and math.isfinite(result.losses["roth"]) and result.losses["roth"] > 0
