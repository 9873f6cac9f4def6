import pytest
import torch
from torch import nn

from core.train_config import TrainConfig
from training import regularizers


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
