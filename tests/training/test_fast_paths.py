"""The loop's speed options (`compile`, `precision`) train the same model as the eager float32 loop.

Both options only change how the forward and backward passes execute, so from the same seed every step's
losses must agree with eager float32's: to float rounding for `compile` (Inductor fuses and reorders
elementwise work), and to bfloat16's 8-bit mantissa for `precision: bfloat16`. The tolerances below are
stated per option; the measured gaps they guard are in the test names' docstrings.
"""

from pathlib import Path

import pytest
import torch

from core.train_config import TrainConfig
from training.data import load_to_device
from training.latents import latents_from_seeds
from training.loop import train
from training.step import build_step, d_step, g_step

STEPS = 12
BASE = TrainConfig(model_name="fast", batch_size=16, latent_dim=8, seed=7, eval_extractor="none")


def run_steps(config: TrainConfig, data_root: Path, steps: int = STEPS) -> tuple[list[dict[str, float]], torch.Tensor]:
    """Per-step losses of `steps` D+G steps, and the trained G's samples for seeds 0..7 (eval mode)."""
    data = load_to_device(config, data_root, torch.device("cpu"))
    s = build_step(config, data, torch.device("cpu"), steps, config.batch_size)
    perm = torch.randperm(data.n, generator=s.rng)
    n_batches = data.n // config.batch_size
    history = []
    for i in range(steps):
        j = i % n_batches
        real, labels = s.real_batch(perm[j * config.batch_size : (j + 1) * config.batch_size])
        stats = d_step(s, real, labels, i)
        stats["g_loss"] = g_step(s, i)
        history.append({k: float(v) for k, v in stats.items()})
    s.nets.g.eval()
    with torch.no_grad():
        samples = s.nets.g(latents_from_seeds(list(range(8)), config.latent_dim))
    return history, samples


def max_gap(a: list[dict[str, float]], b: list[dict[str, float]]) -> float:
    return max(abs(x[k] - y[k]) for x, y in zip(a, b, strict=True) for k in x)


@pytest.fixture(scope="module")
def eager(tiny_data_root: Path) -> tuple[list[dict[str, float]], torch.Tensor]:
    return run_steps(BASE, tiny_data_root)


@pytest.mark.slow
def test_compiled_steps_match_eager(tiny_data_root: Path, eager: tuple[list[dict[str, float]], torch.Tensor]) -> None:
    """torch.compile'd G and D: every loss of the first 12 steps within 1e-5 of eager's (seen: 6e-8), and the
    trained G's pixels within 1e-4 in [-1, 1] (seen: 5e-6)."""
    history, samples = run_steps(BASE.model_copy(update={"compile": "default"}), tiny_data_root)
    assert max_gap(history, eager[0]) < 1e-5
    assert (samples - eager[1]).abs().max() < 1e-4
    # And the run really changed something: a broken step that trained nothing would also "match" at step 0.
    assert history[-1] != history[0]


@pytest.mark.slow
def test_bfloat16_steps_track_float32(tiny_data_root: Path, eager: tuple[list[dict[str, float]], torch.Tensor]) -> None:
    """bfloat16 autocast: every loss of the first 12 steps within 0.01 of float32's (losses are 0.5–1.4; seen:
    1e-3), and the trained G's pixels within 0.05 in [-1, 1] on average (seen: 0.024) — but not identical,
    which would mean autocast never engaged."""
    history, samples = run_steps(BASE.model_copy(update={"precision": "bfloat16"}), tiny_data_root)
    gap = max_gap(history, eager[0])
    assert 0 < gap < 0.01
    assert (samples - eager[1]).abs().mean() < 0.05


@pytest.mark.slow
def test_compiled_run_checkpoints_plain_weights(tiny_data_root: Path, tmp_path: Path) -> None:
    """A compiled run's checkpoint holds the modules' own weight names (no `_orig_mod.` wrapper prefix), so it
    serves and resumes like an eager run's."""
    from training import checkpoint

    config = BASE.model_copy(update={"compile": "default", "epochs": 1})
    result = train(config, tmp_path / "run", data_root=tiny_data_root)
    assert result.final_checkpoint is not None
    tensors, _ = checkpoint.load(result.final_checkpoint)
    assert tensors and not any("_orig_mod" in name for name in tensors)


def test_compile_refuses_unrolled() -> None:
    with pytest.raises(ValueError, match="unrolled_steps"):
        TrainConfig(model_name="x", compile="default", unrolled_steps=3)


DCGAN = TrainConfig(
    model_name="nhwc", architecture="dcgan", batch_size=16, latent_dim=8, seed=7, eval_extractor="none", epochs=3
)


@pytest.mark.slow
def test_channels_last_trains_the_same_dcgan_and_resumes(
    tiny_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Channels-last memory (CUDA's choice for conv nets), forced here on the CPU: every conv weight in it, the
    same per-step losses as contiguous memory to float rounding, and a run stopped after epoch 2 resumes to the
    very tensors of a straight channels-last run (the optimiser's moments laid out as their parameters again)."""
    from training import checkpoint, nets, run_state

    contiguous, _ = run_steps(DCGAN, tiny_data_root)
    monkeypatch.setattr(nets, "channels_last", lambda device: True)
    nhwc, _ = run_steps(DCGAN, tiny_data_root)
    assert max_gap(nhwc, contiguous) < 1e-3 and nhwc[-1] != nhwc[0]  # losses 0.4–1.5; seen: 1.5e-4 by step 12
    s = build_step(DCGAN, load_to_device(DCGAN, tiny_data_root, torch.device("cpu")), torch.device("cpu"), 1, 16)
    convs = [m for net in (s.nets.g, s.nets.d) for m in net.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)

    straight = train(DCGAN, tmp_path / "straight", data_root=tiny_data_root)
    reports: list = []
    out = tmp_path / "stopped"

    def after_epoch_2() -> bool:
        return any(r.epoch_end and r.epoch >= 2 for r in reports)

    train(DCGAN, out, data_root=tiny_data_root, progress_fn=reports.append, should_stop=after_epoch_2)
    point = run_state.latest(out)
    assert point is not None and point.epoch == 2
    restored = build_step(
        DCGAN, load_to_device(DCGAN, tiny_data_root, torch.device("cpu")), torch.device("cpu"), 12, 16
    )
    run_state.restore(point.stem, restored, DCGAN, out, 12)
    for opt in (restored.nets.opt_g, restored.nets.opt_d):
        for param, state in opt.state.items():
            assert all(v.stride() == param.stride() for v in state.values() if v.shape == param.shape)
    resumed = train(DCGAN, out, data_root=tiny_data_root, resume_from=point.stem)
    assert straight.final_checkpoint is not None and resumed.final_checkpoint is not None
    a, _ = checkpoint.load(straight.final_checkpoint)
    b, _ = checkpoint.load(resumed.final_checkpoint)
    assert a.keys() == b.keys() and any(k.startswith("opt_g.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_channels_last_is_for_conv_nets_on_cuda_only(tiny_data_root: Path) -> None:
    from training import nets

    assert nets.channels_last(torch.device("cuda")) and not nets.channels_last(torch.device("cpu"))
    data = load_to_device(DCGAN, tiny_data_root, torch.device("cpu"))
    s = build_step(DCGAN, data, torch.device("cpu"), STEPS, DCGAN.batch_size)
    conv = next(m for m in s.nets.g.modules() if isinstance(m, torch.nn.modules.conv._ConvNd))
    assert conv.weight.is_contiguous()  # on the CPU: as ever
