import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from core.settings import get_settings
from training import checkpoint
from training.__main__ import app
from training.latents import latents_from_seeds

runner = CliRunner()


def _flat(text: str) -> str:
    """Rich wraps messages at the terminal width; compare with the line breaks undone."""
    return " ".join(text.split())


def _job(tmp_path: Path, **overrides: object) -> Path:
    job = {"model_name": "cli-tiny", "epochs": 1, "batch_size": 32, "latent_dim": 8, **overrides}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    return path


def test_train_publish_then_sample(tiny_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "var" / "models"
    args = ["train", "--config", str(_job(tmp_path)), "--out", str(tmp_path / "run")]
    args += ["--data-root", str(tiny_data_root), "--device", "cpu", "--publish-to", str(models)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "samples" / "epoch-0001.png").is_file()
    assert (models / "cli-tiny" / "1" / "model.safetensors").is_file()
    assert (models / "cli-tiny" / "1" / "samples.png").is_file()

    out = tmp_path / "x.npy"
    result = runner.invoke(app, ["sample", "--model", str(models / "cli-tiny" / "1"), "--n", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    x = np.load(out)
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    g, _ = checkpoint.load_generator(models / "cli-tiny" / "1" / "model")
    with torch.no_grad():
        expected = ((g(latents_from_seeds([0, 1, 2, 3, 4], 8)) + 1) / 2).clamp(0, 1).numpy()
    np.testing.assert_allclose(x, expected, atol=1e-6)

    # By name, through the settings' models dir, with a seed offset.
    monkeypatch.setenv("GANSERVE_CHECKPOINT_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["sample", "--model", "cli-tiny", "--n", "2", "--seed", "3", "--out", str(out)])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(out), expected[3:5], atol=1e-6)

    # A model directory means its latest version; a .json path means that checkpoint.
    for spec in (models / "cli-tiny", models / "cli-tiny" / "1" / "model.json"):
        result = runner.invoke(app, ["sample", "--model", str(spec), "--n", "1", "--out", str(out)])
        assert result.exit_code == 0, result.output
        np.testing.assert_allclose(np.load(out), expected[:1], atol=1e-6)


def test_invalid_config_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--config", str(_job(tmp_path, epochs=0, colour="red"))])
    assert result.exit_code == 2
    assert "not a valid training config" in _flat(result.output) and "colour" in result.output


def test_malformed_json_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "job.json"
    bad.write_text("{not json")
    result = runner.invoke(app, ["train", "--config", str(bad)])
    assert result.exit_code == 2 and "Invalid JSON" in _flat(result.output)


def test_missing_data_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training import data

    monkeypatch.setattr(data, "_download_mnist", lambda _: (_ for _ in ()).throw(OSError("offline")))
    args = ["train", "--config", str(_job(tmp_path)), "--data-root", str(tmp_path / "empty"), "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "GANSERVE_DATA_ROOT" in _flat(result.output)


def test_sample_unknown_model_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sample", "--model", str(tmp_path / "nope"), "--n", "1", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "no checkpoint" in _flat(result.output)


def _train_toy(tmp_path: Path, **overrides: object) -> Path:
    config = {"model_name": "toy", "dataset": "ring-2d", "steps": 2, "batch_size": 32, "max_samples": 256}
    job = tmp_path / "toy.json"
    job.write_text(json.dumps({**config, **overrides}))
    args = ["train", "--config", str(job), "--out", str(tmp_path / "run"), "--device", "cpu"]
    result = runner.invoke(app, [*args, "--publish-to", str(tmp_path / "models")])
    assert result.exit_code == 0, result.output
    return tmp_path / "models" / "toy"


def test_sample_writes_toy_points_as_raw_coordinates(tmp_path: Path) -> None:
    model_dir = _train_toy(tmp_path)
    out = tmp_path / "points.npy"
    result = runner.invoke(app, ["sample", "--model", str(model_dir), "--n", "50", "--out", str(out)])
    assert result.exit_code == 0, result.output
    points = np.load(out)
    assert points.shape == (50, 2) and points.dtype == np.float32
    generator, meta = checkpoint.load_generator(checkpoint.model_stem(model_dir.parent, "toy", 1))
    with torch.inference_mode():
        raw = generator(latents_from_seeds(list(range(50)), int(meta["latent_dim"]))).numpy()
    np.testing.assert_allclose(points, raw, rtol=1e-5, atol=1e-6)  # raw coordinates, not rescaled to [0, 1]


def test_sample_mad_gan_uses_the_seed_to_pick_the_generator(tmp_path: Path) -> None:
    model_dir = _train_toy(tmp_path, architecture="mad-gan", generators=3)
    out = tmp_path / "points.npy"
    assert runner.invoke(app, ["sample", "--model", str(model_dir), "--n", "6", "--out", str(out)]).exit_code == 0
    generator, meta = checkpoint.load_generator(checkpoint.model_stem(model_dir.parent, "toy", 1))
    z = latents_from_seeds(list(range(6)), int(meta["latent_dim"]))
    with torch.inference_mode():
        expected = generator(z, generator=torch.arange(6) % 3).numpy()
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-6)


def test_sample_refuses_a_label_for_an_unconditional_model(tmp_path: Path) -> None:
    model_dir = _train_toy(tmp_path)
    result = runner.invoke(
        app, ["sample", "--model", str(model_dir), "--n", "2", "--out", str(tmp_path / "x.npy"), "--label", "1"]
    )
    assert result.exit_code == 2
    assert "not class-conditional" in result.output
