"""Resume: a run stopped after an epoch and continued by a fresh `train()` call ends bit-identical to a run that
never stopped — weights, optimiser state and per-epoch losses — with a linear learning-rate schedule and with
an EMA too. And the loop stops a diverging run within a few steps."""

import math
from pathlib import Path

import pytest
import torch

from core.train_config import TrainConfig
from training import checkpoint, loop, run_state
from training.loop import FINITE_CHECK_EVERY, NonFiniteLossError, TrainProgress, TrainResult, train

BASE = TrainConfig(
    model_name="resumed",
    epochs=3,
    batch_size=16,
    latent_dim=8,
    seed=5,
    g_hidden=[32],
    d_hidden=[32],
    eval_extractor="none",
)

VARIANTS = {
    "constant": {},
    "linear-lr": {"lr_schedule": "linear"},
    "ema": {"ema": 0.9},
    # annealed noise drawn from the loop's generator; spectral norm's power-iteration vectors are D's buffers
    "noise-spectral-norm": {"regularizers": [{"name": "instance-noise", "sigma": 0.1}, {"name": "spectral-norm"}]},
}


def epoch_losses(reports: list[TrainProgress]) -> dict[int, dict[str, float]]:
    return {r.epoch: r.losses for r in reports if r.epoch_end}


def stop_after_epoch(n: int, reports: list[TrainProgress]):
    """`should_stop` that turns true once epoch `n` has been reported: the run stops at epoch n+1's first step."""
    return lambda: any(r.epoch_end and r.epoch >= n for r in reports)


def final_tensors(result: TrainResult) -> dict[str, torch.Tensor]:
    assert result.final_checkpoint is not None
    tensors, _ = checkpoint.load(result.final_checkpoint)
    return tensors


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_stopped_then_resumed_equals_straight(variant: str, tiny_data_root: Path, tmp_path: Path) -> None:
    config = TrainConfig.model_validate({**BASE.model_dump(), **VARIANTS[variant]})
    straight_reports: list[TrainProgress] = []
    straight = train(config, tmp_path / "straight", data_root=tiny_data_root, progress_fn=straight_reports.append)
    assert straight.status == "completed" and straight.epochs_done == 3

    out = tmp_path / "stopped"
    first: list[TrainProgress] = []
    stopped = train(
        config, out, data_root=tiny_data_root, progress_fn=first.append, should_stop=stop_after_epoch(2, first)
    )
    assert stopped.status == "cancelled" and stopped.epochs_done == 2
    point = run_state.latest(out)
    assert point is not None and point.epoch == 2 and point.step == stopped.steps_done > 0
    assert point.stem == run_state.stem_for(out, 2)

    second: list[TrainProgress] = []  # a fresh call, as a new worker process makes it
    resumed = train(config, out, data_root=tiny_data_root, progress_fn=second.append, resume_from=point.stem)
    assert resumed.status == "completed" and resumed.epochs_done == 3 and resumed.steps_done == straight.steps_done
    assert [r.epoch for r in second if r.epoch_end] == [3]
    assert min(r.step for r in second) > point.step

    assert epoch_losses(first) | epoch_losses(second) == epoch_losses(straight_reports)
    assert resumed.losses == straight.losses
    a, b = final_tensors(straight), final_tensors(resumed)
    assert a.keys() == b.keys()
    assert any(k.startswith("opt_d.") for k in a)
    assert variant != "ema" or any(k.startswith("generator_ema.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    if variant == "linear-lr":  # the rebuilt schedule ends where the straight run's did: at 0
        _, meta = checkpoint.load(run_state.latest(out).stem)  # type: ignore[union-attr]
        assert meta["optimizers"]["opt_g"]["param_groups"][0]["lr"] == 0.0


def test_resume_after_the_last_epoch_returns_its_files(tiny_data_root: Path, tmp_path: Path) -> None:
    """A worker that died between the last epoch and publishing: the resumed run has nothing left to train."""
    config = BASE.model_copy(update={"epochs": 1})
    done = train(config, tmp_path, data_root=tiny_data_root)
    point = run_state.latest(tmp_path)
    assert point is not None and point.epoch == 1
    again = train(config, tmp_path, data_root=tiny_data_root, resume_from=point.stem)
    assert (again.status, again.epochs_done, again.steps_done) == ("completed", 1, done.steps_done)
    assert again.final_checkpoint == done.final_checkpoint and again.samples == done.samples
    assert again.losses == done.losses


def test_resume_refuses_another_config_and_skips_a_damaged_checkpoint(tiny_data_root: Path, tmp_path: Path) -> None:
    config = BASE.model_copy(update={"epochs": 1})
    train(config, tmp_path, data_root=tiny_data_root)
    point = run_state.latest(tmp_path)
    assert point is not None
    with pytest.raises(checkpoint.CheckpointError, match="another config"):
        train(config.model_copy(update={"seed": 6}), tmp_path, data_root=tiny_data_root, resume_from=point.stem)
    blob = point.stem.with_suffix(".safetensors")
    blob.write_bytes(blob.read_bytes()[:100])  # truncated
    assert run_state.latest(tmp_path) is None


def test_non_finite_losses_stop_the_run_within_a_few_steps(
    tiny_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """G's loss turns NaN at step 13 (an exploding run, injected): the loop stops by the next check."""
    real_g_step = loop.g_step

    def exploding_g_step(s, step: int) -> torch.Tensor:
        loss = real_g_step(s, step)
        return loss * math.nan if step >= 12 else loss

    monkeypatch.setattr(loop, "g_step", exploding_g_step)
    config = BASE.model_copy(update={"epochs": 50, "batch_size": 4})  # 16 steps an epoch
    reports: list[TrainProgress] = []
    with pytest.raises(NonFiniteLossError, match="diverged: g_loss = nan") as caught:
        train(config, tmp_path, data_root=tiny_data_root, progress_fn=reports.append, report_every_s=3600)
    step = int(str(caught.value).split("by step ")[1].split(" ")[0])
    assert 13 <= step < 13 + FINITE_CHECK_EVERY
    assert all(math.isfinite(v) for r in reports for v in r.losses.values())
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_resume_every_s_writes_fewer_resume_checkpoints(tiny_data_root: Path, tmp_path: Path) -> None:
    """With `resume_every_s` far longer than the run and no epoch kept before the last, only the first epoch's
    state is written before the stop (the first is always written), so a resumed run redoes epoch 2; and it
    still ends like a straight run."""
    config = BASE.model_copy(update={"sample_every": 10})
    reports: list[TrainProgress] = []
    out = tmp_path / "sparse"
    train(
        config,
        out,
        data_root=tiny_data_root,
        progress_fn=reports.append,
        should_stop=stop_after_epoch(2, reports),
        resume_every_s=1e9,
    )
    point = run_state.latest(out)
    assert point is not None and point.epoch == 1
    resumed = train(config, out, data_root=tiny_data_root, resume_from=point.stem, resume_every_s=1e9)
    straight = train(config, tmp_path / "straight", data_root=tiny_data_root)
    assert resumed.losses == straight.losses
    last = run_state.latest(out)
    assert last is not None and last.epoch == 3  # the last epoch's state is always written


def test_kept_checkpoints_stay_and_stand_ins_go(tiny_data_root: Path, tmp_path: Path) -> None:
    """Every epoch's state is written (the default `resume_every_s`), but only the kept epochs' checkpoints stay:
    each stand-in is removed once a newer checkpoint is complete. The kept ones are whole run states, so any of
    them can be resumed from, and the last is what is published."""
    config = BASE.model_copy(update={"epochs": 5, "sample_every": 2})
    reports: list[TrainProgress] = []
    result = train(config, tmp_path, data_root=tiny_data_root, progress_fn=reports.append)
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == [f"epoch-{e:04d}.{ext}" for e in (2, 4, 5) for ext in ("json", "safetensors")]
    assert [r.checkpoint for r in reports if r.checkpoint] == [run_state.stem_for(tmp_path, e) for e in (2, 4, 5)]
    assert result.final_checkpoint == run_state.stem_for(tmp_path, 5)
    point = run_state.latest(tmp_path)
    assert point is not None and point.epoch == 5 and point.last_checkpoint == result.final_checkpoint
    _, meta = checkpoint.load(run_state.stem_for(tmp_path, 2))
    assert meta["kept"] and meta["epoch"] == 2 and set(meta["optimizers"]) == {"opt_g", "opt_d"}
    published = checkpoint.write_model(result.final_checkpoint, tmp_path / "model")  # what a version holds
    assert not {"optimizers", "kept", "device_type", "last_checkpoint", "discriminator"} & published.keys()
    assert published["generator"] == meta["generator"] and published["epoch"] == 5
