"""Evaluating a generator (training/evaluation.py): the loop's evaluation every `eval_every` epochs, on the tiny
fake MNIST, and a published model's on demand through `evaluate_model` (`ganserve evaluate`: tests/cli)."""

from pathlib import Path

import pytest

from core.train_config import TrainConfig
from training import checkpoint
from training.evaluation import evaluate_model
from training.loop import TrainProgress, train

TINY = TrainConfig(model_name="tiny", epochs=3, batch_size=32, latent_dim=8, seed=3, eval_samples=64)


def run(config: TrainConfig, data_root: Path, out: Path) -> list[TrainProgress]:
    reports: list[TrainProgress] = []
    train(config, out, data_root=data_root, progress_fn=reports.append, report_every_s=0.0)
    return [r for r in reports if r.epoch_end]


def test_every_epoch_by_default_with_the_extractor_named(tiny_data_root: Path, tmp_path: Path) -> None:
    ends = run(TINY, tiny_data_root, tmp_path)
    assert [r.epoch for r in ends] == [1, 2, 3]
    for r in ends:
        assert r.evaluation is not None and r.evaluation_skipped is None
        ev = r.evaluation
        assert ev["extractor"] == "mnist-cnn-v1" and ev["n_fake"] == ev["n_real"] == 64
        assert ev["fid"] > 0 and 0 <= ev["precision"] <= 1 and 1 <= ev["classes_covered"] <= 10
    assert len({r.evaluation["fid"] for r in ends}) == 3  # G changes, so does its FID


def test_eval_every_and_always_after_the_last_epoch(tiny_data_root: Path, tmp_path: Path) -> None:
    ends = run(TINY.model_copy(update={"eval_every": 2}), tiny_data_root, tmp_path)
    assert [r.epoch for r in ends if r.evaluation is not None] == [2, 3]


def test_same_run_same_figures(tiny_data_root: Path, tmp_path: Path) -> None:
    """Fixed seeds for the generated set, a fixed subset for the real one: a rerun measures the same."""
    config = TINY.model_copy(update={"epochs": 1})
    first = run(config, tiny_data_root, tmp_path / "a")[-1].evaluation
    second = run(config, tiny_data_root, tmp_path / "b")[-1].evaluation
    assert first == second


def test_off(tiny_data_root: Path, tmp_path: Path) -> None:
    ends = run(TINY.model_copy(update={"epochs": 1, "eval_extractor": "none"}), tiny_data_root, tmp_path)
    assert ends[-1].evaluation is None and "eval_extractor: none" in (ends[-1].evaluation_skipped or "")


def test_a_named_extractor_that_cannot_load_fails_before_training(
    tiny_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GANSERVE_INCEPTION_WEIGHTS", str(tmp_path / "missing.pth"))
    config = TINY.model_copy(update={"eval_extractor": "inception"})
    reports: list[TrainProgress] = []
    with pytest.raises(ValueError, match="eval_extractor 'inception' cannot be used"):
        train(config, tmp_path, data_root=tiny_data_root, progress_fn=reports.append)
    assert reports == [] and not (tmp_path / "checkpoints").exists()


def test_auto_skips_saying_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_images, idx_writer) -> None:
    """`auto` on an image dataset without a local extractor trains on and records the reason."""
    monkeypatch.setenv("GANSERVE_INCEPTION_WEIGHTS", str(tmp_path / "missing.pth"))
    idx_writer(tmp_path / "data" / "fashion-mnist" / "t10k-images-idx3-ubyte", fake_images(64))
    config = TINY.model_copy(update={"epochs": 1, "dataset": "fashion-mnist"})
    ends = run(config, tmp_path / "data", tmp_path / "out")
    assert ends[-1].evaluation is None
    assert "no feature extractor for fashion-mnist" in (ends[-1].evaluation_skipped or "")
    assert (tmp_path / "out" / "checkpoints").is_dir()


def test_toys_are_scored_with_mode_metrics(tmp_path: Path) -> None:
    config = TrainConfig(model_name="ring", dataset="ring-2d", steps=20, max_samples=512, eval_samples=200)
    ends = run(config, tmp_path, tmp_path)
    ev = ends[-1].evaluation
    assert ev is not None and ev["extractor"] == "toy-mode-metrics" and ev["n_modes"] == 8
    assert 0 <= ev["modes_captured"] <= 8 and 0 <= ev["high_quality_fraction"] <= 1
    one_mode = TrainConfig(model_name="g", dataset="gaussian-1d", steps=5, max_samples=256)
    assert "one mode" in (run(one_mode, tmp_path, tmp_path / "g")[-1].evaluation_skipped or "")


def test_measuring_does_not_change_what_is_trained(tiny_data_root: Path, tmp_path: Path) -> None:
    """Evaluation draws no training randomness and leaves G's mode and BatchNorm statistics alone."""
    measured = run(TINY, tiny_data_root, tmp_path / "a")
    unmeasured = run(TINY.model_copy(update={"eval_extractor": "none"}), tiny_data_root, tmp_path / "b")
    assert [r.losses for r in measured] == [r.losses for r in unmeasured]
    a, b = (p / "checkpoints" / "epoch-0003.safetensors" for p in (tmp_path / "a", tmp_path / "b"))
    assert a.read_bytes() == b.read_bytes()


# --- a published model, on demand -----------------------------------------------------------------------------


def test_evaluate_model_on_a_published_mad_gan(tiny_data_root: Path, tmp_path: Path) -> None:
    job = TrainConfig(
        model_name="eval-tiny", epochs=1, batch_size=16, latent_dim=8, max_samples=30,
        architecture="mad-gan", generators=2, eval_extractor="none",
    )  # fmt: skip
    result = train(job, tmp_path / "run", data_root=tiny_data_root, device="cpu")
    assert result.final_checkpoint is not None
    stem = tmp_path / "model"
    checkpoint.write_model(result.final_checkpoint, stem)  # what a published version holds
    stages: list[str] = []
    m = evaluate_model(stem, n=50, data_root=tiny_data_root, nn_png=tmp_path / "nn.png", progress_fn=stages.append)
    assert (m.extractor, m.n_fake, m.n_real) == ("mnist-cnn-v1", 50, 30)  # the model saw 30 images: 30 to compare
    assert (tmp_path / "nn.png").read_bytes()[:4] == b"\x89PNG"
    assert stages[0] == "loading the model" and any("50 generated vs 30 real" in s for s in stages)
