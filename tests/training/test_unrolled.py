"""Unrolled GAN (Metz et al. 2017): G's step sees D after k differentiable steps, and D itself is untouched."""

from pathlib import Path

import torch

from core.train_config import TrainConfig
from training.data import load_to_device
from training.loop import train
from training.nets import call_g
from training.step import Step, build_step, d_step, g_step
from training.unrolled import unrolled_discriminator

CPU = torch.device("cpu")


def _step(tmp_path: Path, unrolled: int, **update: object) -> Step:
    config = TrainConfig.model_validate(
        {
            "model_name": "unrolled",
            "dataset": "ring-2d",
            "max_samples": 256,
            "batch_size": 32,
            "latent_dim": 4,
            "g_hidden": [16],
            "d_hidden": [16],
            "unrolled_steps": unrolled,
            "steps": 4,
        }
        | update
    )
    data = load_to_device(config, tmp_path, CPU)
    s = build_step(config, data, CPU, total_steps=4, batch=32)
    for step in range(2):  # so that D's optimiser has moments for the unroll to continue from
        real, labels = s.random_real_batch()
        d_step(s, real, labels, step)
    return s


def _snapshot(s: Step) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    params = {k: v.detach().clone() for k, v in s.nets.d.state_dict().items()}
    state = [
        {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in st.items()}
        for st in s.nets.opt_d.state_dict()["state"].values()
    ]
    return params, state


def _assert_identical(before: tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]], s: Step) -> None:
    params, state = before
    after_params, after_state = _snapshot(s)
    assert params.keys() == after_params.keys()
    assert all(torch.equal(params[k], after_params[k]) for k in params)
    assert len(state) == len(after_state)
    for a, b in zip(state, after_state, strict=True):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_unrolled_g_step_leaves_d_bit_identical(tmp_path: Path) -> None:
    for update in ({}, {"optimizer": "rmsprop"}, {"regularizers": [{"name": "spectral-norm"}]}):
        s = _step(tmp_path, unrolled=3, **update)
        before = _snapshot(s)
        g_before = [p.detach().clone() for p in s.nets.g.parameters()]
        loss = g_step(s, 2)
        assert torch.isfinite(loss)
        _assert_identical(before, s)
        assert any(not torch.equal(a, b) for a, b in zip(g_before, s.nets.g.parameters(), strict=True))
        assert all(p.requires_grad for p in s.nets.d.parameters())  # D trainable again after the G step


def _g_grads(s: Step) -> list[torch.Tensor]:
    d_fn = unrolled_discriminator(s) if s.config.unrolled_steps else s.nets.d
    z, labels, gen = s.fake_inputs(s.batch)
    loss = s.g_objective(d_fn(call_g(s.nets.g, z, labels, gen)))
    return list(torch.autograd.grad(loss, list(s.nets.g.parameters()), allow_unused=True))


def test_generator_gradient_flows_through_the_unroll(tmp_path: Path) -> None:
    # Same networks and data; with the unroll G's gradient includes dθ_K/dG, so it differs from plain GAN's.
    plain = _g_grads(_step(tmp_path, unrolled=0, lr=0.05))
    unrolled = _g_grads(_step(tmp_path, unrolled=3, lr=0.05))
    assert all(g is not None and torch.isfinite(g).all() for g in unrolled)
    assert any(not torch.allclose(a, b) for a, b in zip(plain, unrolled, strict=True))


def test_unrolled_training_runs(tmp_path: Path) -> None:
    config = TrainConfig(
        model_name="u", dataset="ring-2d", max_samples=128, batch_size=32, latent_dim=4, unrolled_steps=2, steps=3
    )
    result = train(config, tmp_path / "run", data_root=tmp_path)
    assert result.steps_done == 3 and all(v == v for v in result.losses.values())
