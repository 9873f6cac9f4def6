import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from core.train_config import TrainConfig
from training import checkpoint, images
from training.data import load_to_device
from training.latents import latents_from_seeds
from training.loop import TrainProgress, TrainResult, resolve_device, steps_per_epoch, train
from training.step import build_step, d_step, g_step

TINY = TrainConfig(model_name="tiny", epochs=2, batch_size=32, latent_dim=8, seed=3)


@dataclass(frozen=True)
class Run:
    out: Path
    result: TrainResult
    reports: list[TrainProgress]


@pytest.fixture(scope="module")
def two_epochs(tiny_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One 2-epoch run (64 images, batch 32) shared by the tests that only inspect its outputs."""
    out = tmp_path_factory.mktemp("run")
    reports: list[TrainProgress] = []
    result = train(TINY, out, data_root=tiny_data_root, progress_fn=reports.append, report_every_s=0.0)
    return Run(out, result, reports)


def test_two_epochs_write_files(two_epochs: Run) -> None:
    out, result = two_epochs.out, two_epochs.result
    assert result.status == "completed" and result.epochs_done == 2 and result.steps_done == 4
    for epoch in (1, 2):
        assert (out / "checkpoints" / f"epoch-{epoch:04d}.safetensors").is_file()
        assert (out / "samples" / f"epoch-{epoch:04d}.png").read_bytes()[:4] == b"\x89PNG"
    assert result.final_checkpoint == out / "checkpoints" / "epoch-0002"
    assert result.samples == out / "samples" / "epoch-0002.png"
    assert set(result.losses) == {"d_loss", "g_loss", "d_real", "d_fake"}
    assert all(0 < result.losses[k] < 1 for k in ("d_real", "d_fake"))


def test_progress_reports(two_epochs: Run) -> None:
    reports = two_epochs.reports
    steps = [r.step for r in reports]
    # report_every_s=0: every step; an epoch's last step twice: at its end (with its samples), then once its
    # checkpoint is whole (naming it).
    assert steps == [1, 2, 2, 3, 4, 4]
    assert all(r.total_steps == 4 and r.epochs == 2 for r in reports)
    epoch_ends = [r for r in reports if r.epoch_end]
    assert [(r.epoch, r.step) for r in epoch_ends] == [(1, 2), (2, 4)]
    assert epoch_ends[-1].samples == two_epochs.result.samples
    named = [(r.epoch, r.checkpoint) for r in reports if r.checkpoint is not None]
    assert named == [(1, reports[2].checkpoint), (2, two_epochs.result.final_checkpoint)]
    assert all(reports[i].checkpoint is None for i in (0, 1, 3, 4))
    assert reports[-1].eta_seconds == 0 and reports[-1].images_per_sec > 0


@pytest.mark.parametrize(
    ("answers", "epoch_2"),
    [([False], []), ([True, False], ["samples"]), ([True, True, False], ["samples", "checkpoint"])],
    ids=["before-its-samples", "before-its-checkpoint", "before-pruning"],
)
def test_may_write_no_stops_the_run_with_nothing_more_written(
    answers: list[bool], epoch_2: list[str], tiny_data_root: Path, tmp_path: Path
) -> None:
    """Epoch 1 is written (three questions: before its samples, before its checkpoint, before pruning); at epoch 2
    `may_write` says no at one of them: the run ends `superseded` with nothing written after that answer, and no
    checkpoint of epoch 2 reported."""
    asked: list[bool] = []
    replies = iter([True, True, True, *answers])
    reports: list[TrainProgress] = []

    def may_write() -> bool:
        asked.append(next(replies))
        return asked[-1]

    config = TINY.model_copy(update={"epochs": 3, "sample_every": 1})
    result = train(config, tmp_path, data_root=tiny_data_root, progress_fn=reports.append, may_write=may_write)
    assert result.status == "superseded" and result.epochs_done == 1 and asked == [True, True, True, *answers]
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    samples = sorted(p.name for p in (tmp_path / "samples").iterdir())
    two = ["epoch-0002.json", "epoch-0002.safetensors"] if "checkpoint" in epoch_2 else []
    assert checkpoints == ["epoch-0001.json", "epoch-0001.safetensors", *two]
    assert samples == ["epoch-0001.png"] + (["epoch-0002.png"] if "samples" in epoch_2 else [])
    assert [r.checkpoint.name for r in reports if r.checkpoint is not None] == ["epoch-0001"]


def test_checkpoint_metadata_and_generator(two_epochs: Run) -> None:
    stem = two_epochs.result.final_checkpoint
    assert stem is not None
    tensors, meta = checkpoint.load(stem)
    assert any(k.startswith("discriminator.") for k in tensors) and any(k.startswith("opt_g.") for k in tensors)
    assert meta["epoch"] == 2 and meta["step"] == 4 and meta["image_shape"] == [1, 28, 28]
    assert meta["train_config"] == TINY.model_dump(mode="json") and meta["model_name"] == "tiny"
    assert meta["losses"] == two_epochs.result.losses
    g, _ = checkpoint.load_generator(stem)
    with torch.no_grad():
        fake = g(latents_from_seeds(list(range(64)), TINY.latent_dim))
    # The sample grid is exactly what the published generator gives for seeds 0..63.
    png = images.png_bytes(images.grid(images.to_uint8(fake)))
    assert png == (two_epochs.out / "samples" / "epoch-0002.png").read_bytes()


def test_same_seed_same_losses(tiny_data_root: Path, tmp_path: Path) -> None:
    config = TINY.model_copy(update={"epochs": 1})
    first = train(config, tmp_path / "a", data_root=tiny_data_root)
    second = train(config, tmp_path / "b", data_root=tiny_data_root)
    other = train(config.model_copy(update={"seed": 4}), tmp_path / "c", data_root=tiny_data_root)
    assert first.losses == second.losses
    assert first.losses != other.losses


def test_should_stop_cancels_within_one_step(tiny_data_root: Path, tmp_path: Path) -> None:
    calls = 0

    def stop_on_second_call() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 2

    result = train(TINY, tmp_path / "run", data_root=tiny_data_root, should_stop=stop_on_second_call)
    assert result.status == "cancelled" and result.steps_done == 1 and result.epochs_done == 0
    assert result.final_checkpoint is None and not (tmp_path / "run" / "checkpoints").exists()
    assert all(math.isfinite(v) for v in result.losses.values())  # the partial epoch's running means


def test_d_steps_and_minimax_and_linear_head(tiny_data_root: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        model_name="k2", epochs=1, batch_size=16, latent_dim=8, d_steps=2, loss="minimax", output="linear"
    )
    result = train(config, tmp_path / "run", data_root=tiny_data_root)
    assert result.status == "completed" and result.steps_done == 2  # 4 real batches, 2 per G step


def test_dataset_smaller_than_a_batch_is_one_batch(tiny_data_root: Path, tmp_path: Path) -> None:
    config = TrainConfig(model_name="small", epochs=2, batch_size=128, latent_dim=8, max_samples=10, sample_every=5)
    result = train(config, tmp_path / "run", data_root=tiny_data_root)
    assert result.steps_done == 2
    assert [p.name for p in (tmp_path / "run" / "samples").iterdir()] == ["epoch-0002.png"]  # last epoch only


def test_steps_per_epoch() -> None:
    assert steps_per_epoch(10_000, 64, 1) == 156
    assert steps_per_epoch(10_000, 64, 3) == 52
    assert steps_per_epoch(10, 128, 2) == 1


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


# --- objectives, regularizers, steps, EMA, MAD-GAN (on toy points: fast and label-free) -----------------

TOY = TrainConfig(
    model_name="toy", dataset="ring-2d", max_samples=256, batch_size=32, latent_dim=4, g_hidden=[16], d_hidden=[16]
)
OBJECTIVE_NAMES = ("minimax", "non-saturating", "wasserstein", "wgan-gp", "hinge", "least-squares")
REGULARIZERS: tuple[dict[str, object] | None, ...] = (
    None,
    {"name": "instance-noise", "sigma": 0.2},
    {"name": "r1", "gamma": 1.0},
    {"name": "r2", "gamma": 1.0},
    {"name": "spectral-norm"},
    {"name": "weight-decay", "coefficient": 1e-3},
)


def _toy(**update: object) -> TrainConfig:
    # Re-validated, so that objective defaults (optimizer, lr, d_steps) are filled for the new loss.
    return TrainConfig.model_validate(TOY.model_dump(exclude_unset=True) | update)


@pytest.mark.parametrize("loss", OBJECTIVE_NAMES)
def test_every_objective_with_every_regularizer_stays_finite(loss: str, tmp_path: Path) -> None:
    # Step functions driven directly (train() itself is covered below): every combination, three G steps.
    for reg in REGULARIZERS:
        config = _toy(loss=loss, d_steps=1, steps=3, regularizers=[reg] if reg else [])
        data = load_to_device(config, tmp_path, torch.device("cpu"))
        s = build_step(config, data, torch.device("cpu"), total_steps=3, batch=32)
        for step in range(3):
            real, labels = s.random_real_batch()
            stats = d_step(s, real, labels, step) | {"g_loss": g_step(s, step)}
            assert set(stats) == set(s.keys), (loss, reg)
            assert all(torch.isfinite(v) for v in stats.values()), (loss, reg, stats)
        assert all(torch.isfinite(p).all() for p in s.nets.g.parameters()), (loss, reg)


def test_steps_stop_at_exactly_that_many_generator_steps(tmp_path: Path) -> None:
    reports: list[TrainProgress] = []
    config = _toy(steps=11, epochs=1)  # 256/32 = 8 G steps per epoch: epoch 2 is cut after 3
    result = train(config, tmp_path / "run", data_root=tmp_path, progress_fn=reports.append, report_every_s=0.0)
    assert result.steps_done == 11 and result.epochs_done == 2
    assert reports[-1].step == 11 and reports[-1].total_steps == 11 and reports[-1].epochs == 2
    _, meta = checkpoint.load(tmp_path / "run" / "checkpoints" / "epoch-0002")
    assert meta["kind"] == "points" and meta["sample_shape"] == [2] and "image_shape" not in meta
    assert (tmp_path / "run" / "samples" / "epoch-0002.png").read_bytes()[:4] == b"\x89PNG"


def test_linear_lr_schedule_falls_to_zero_at_the_last_step(tmp_path: Path) -> None:
    config = _toy(steps=4, lr_g=1e-3, lr_d=2e-3, lr_schedule="linear")
    s = build_step(config, load_to_device(config, tmp_path, torch.device("cpu")), torch.device("cpu"), 4, 32)
    lrs = []
    for step in range(4):
        lrs += [s.nets.opt_g.param_groups[0]["lr"], s.nets.opt_d.param_groups[0]["lr"]]
        d_step(s, *s.random_real_batch(), step)
        g_step(s, step)
    assert lrs == pytest.approx([1e-3, 2e-3, 7.5e-4, 1.5e-3, 5e-4, 1e-3, 2.5e-4, 5e-4])
    assert s.nets.opt_g.param_groups[0]["lr"] == 0 and s.nets.opt_d.param_groups[0]["lr"] == 0
    constant = build_step(
        _toy(steps=4), load_to_device(config, tmp_path, torch.device("cpu")), torch.device("cpu"), 4, 32
    )
    assert constant.nets.schedulers == []


def test_wasserstein_clips_critic_weights(tmp_path: Path) -> None:
    result = train(_toy(loss="wasserstein", clip_value=0.05, steps=2), tmp_path / "run", data_root=tmp_path)
    tensors, _ = checkpoint.load(result.final_checkpoint)  # type: ignore[arg-type]
    critic = checkpoint.unprefixed(tensors, "discriminator")
    assert max(v.abs().max().item() for v in critic.values()) <= 0.05 + 1e-7


def test_ema_checkpoint_serves_ema_weights(tmp_path: Path) -> None:
    result = train(_toy(ema=0.5, steps=4), tmp_path / "run", data_root=tmp_path)
    stem = result.final_checkpoint
    assert stem is not None
    tensors, meta = checkpoint.load(stem)
    assert meta["served_weights"] == "ema"
    ema = checkpoint.unprefixed(tensors, "generator_ema")
    raw = checkpoint.unprefixed(tensors, "generator")
    assert ema.keys() == raw.keys() and any(not torch.equal(ema[k], raw[k]) for k in ema)
    g, served_meta = checkpoint.load_generator(stem)
    assert served_meta["served_weights"] == "ema"
    assert all(torch.equal(v, ema[k]) for k, v in g.state_dict().items())
    published = tmp_path / "model"
    checkpoint.write_model(stem, published)  # what a published version holds
    g2, meta2 = checkpoint.load_generator(published)
    assert meta2["served_weights"] == "ema"
    assert all(torch.equal(v, ema[k]) for k, v in g2.state_dict().items())


def test_raw_checkpoint_says_raw(two_epochs: Run) -> None:
    stem = two_epochs.result.final_checkpoint
    assert stem is not None
    _, meta = checkpoint.load(stem)
    assert meta["served_weights"] == "raw" and meta["kind"] == "image" and meta["loss"] == "non-saturating"
    assert meta["architecture"] == "mlp" and meta["conditional"] is False and meta["sample_shape"] == [1, 28, 28]


def test_madgan_trains_and_refuses_other_losses(tmp_path: Path) -> None:
    result = train(_toy(architecture="mad-gan", generators=3, steps=3), tmp_path / "run", data_root=tmp_path)
    assert all(math.isfinite(v) for v in result.losses.values())
    assert 0 < result.losses["d_real"] < 1
    _, meta = checkpoint.load(result.final_checkpoint)  # type: ignore[arg-type]
    assert meta["num_generators"] == 3
    with pytest.raises(ValueError, match="mad-gan"):
        train(_toy(architecture="mad-gan", loss="hinge", steps=1), tmp_path / "bad", data_root=tmp_path)
