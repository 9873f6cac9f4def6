"""`ganserve` on this machine: `sample` (the bytes /generate answers, or the float samples), `train JOB.json`
(the run directory it writes is a MODEL too), `evaluate` and their errors: exit code 2 for what was asked
wrongly, 1 for what failed."""

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import Result
from fastapi.testclient import TestClient
from PIL import Image
from svc_support import (
    DEFAULT_MODEL,
    NUM_CLASSES,
    publish_conditional_model,
    publish_madgan_model,
    publish_points_model,
    publish_tiny_model,
    published_stem,
)
from typer.testing import CliRunner

from core.settings import BUNDLED_MODELS_DIR, Settings
from ganserve.cli import app
from service.serving.registry import ModelRegistry

REAL_DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
IMAGE_JOB = {"model_name": "cli-tiny", "epochs": 1, "batch_size": 32, "latent_dim": 8, "eval_extractor": "none"}


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), prog_name="ganserve")


def flat(text: str) -> str:
    """Rich wraps messages at the terminal's width; compare with the line breaks undone."""
    return " ".join(text.split())


def generated(http: TestClient, seed: int, **params: Any) -> bytes:
    r = http.get("/generate", params={"seed": seed, **params})
    assert r.status_code == 200, r.text
    return r.content


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def write_job(tmp_path: Path, body: dict[str, Any]) -> str:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(body))
    return str(path)


# --- sample ---------------------------------------------------------------------------------------------


def test_sample_writes_the_bytes_of_get_generate(http: TestClient, tmp_path: Path) -> None:
    # 20 seeds with a gap: two forwards of 16 rows here, other groupings on the server; the same bytes.
    result = run("sample", DEFAULT_MODEL, "--seeds", "0-17,40,41", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [f"seed{s:04d}.png" for s in [*range(18), 40, 41]]
    for seed in (0, 15, 16, 17, 40, 41):
        assert (tmp_path / "out" / f"seed{seed:04d}.png").read_bytes() == generated(http, seed)
    assert f"wrote 20 PNGs of {DEFAULT_MODEL} version 1" in result.stderr


def test_every_way_of_naming_a_published_model(http: TestClient, settings: Settings, tmp_path: Path) -> None:
    publish_tiny_model(settings, DEFAULT_MODEL, weights_seed=1)  # version 2, now the newest
    version_dir = published_stem(settings, DEFAULT_MODEL, 1).parent  # where version 1's files lie in storage
    for spec, version in [
        (DEFAULT_MODEL, 2),
        (f"{DEFAULT_MODEL}:1", 1),
        (str(version_dir), 1),
        (str(version_dir / "model.json"), 1),
        (str(version_dir / "model.safetensors"), 1),
        (str(version_dir / "model"), 1),
    ]:
        out = tmp_path / spec.replace("/", "_")
        result = run("sample", spec, "--seeds", "3", "--out", str(out))
        assert result.exit_code == 0, (spec, result.output)
        assert (out / "seed0003.png").read_bytes() == generated(http, 3, version=version), spec


def test_sample_as_floats_is_the_images_before_quantisation(http: TestClient, tmp_path: Path) -> None:
    out = tmp_path / "x.npy"
    result = run("sample", DEFAULT_MODEL, "--seeds", "5,0-3", "--out", str(out))
    assert result.exit_code == 0, result.output
    x = np.load(out)
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    for row, seed in enumerate([5, 0, 1, 2, 3]):  # the rows in the order of --seeds
        np.testing.assert_array_equal(np.round(x[row, 0] * 255).astype(np.uint8), pixels(generated(http, seed)))


def test_conditional_and_mad_gan_models(http: TestClient, settings: Settings, tmp_path: Path) -> None:
    publish_conditional_model(settings, "cond")
    publish_madgan_model(settings, "mad")
    assert run("sample", "cond", "--seeds", "0-3", "--label", "2", "--out", str(tmp_path / "c")).exit_code == 0
    assert run("sample", "mad", "--seeds", "0-5", "--out", str(tmp_path / "m")).exit_code == 0
    for seed in range(4):
        expected = generated(http, seed, model="cond", label=2)
        assert (tmp_path / "c" / f"seed{seed:04d}.png").read_bytes() == expected
    for seed in range(6):  # the seed picks the generator, as on the server
        assert (tmp_path / "m" / f"seed{seed:04d}.png").read_bytes() == generated(http, seed, model="mad")
    refused = run("sample", "cond", "--seeds", "0", "--label", str(NUM_CLASSES), "--out", str(tmp_path / "x"))
    assert refused.exit_code == 2 and "label" in refused.stderr


def test_points_go_to_npy_and_never_to_png(settings: Settings, tmp_path: Path) -> None:
    publish_points_model(settings, "ring")
    result = run("sample", "ring", "--seeds", "0-49", "--out", str(tmp_path / "points.npy"))
    assert result.exit_code == 0, result.output
    points = np.load(tmp_path / "points.npy")
    raw = ModelRegistry.from_settings(settings).get("ring").sample_seeds(list(range(50))).numpy()
    assert points.shape == (50, 2) and points.dtype == np.float32
    np.testing.assert_array_equal(points, raw)  # raw coordinates, not rescaled to [0, 1]
    refused = run("sample", "ring", "--seeds", "0", "--out", str(tmp_path / "pngs"))
    assert refused.exit_code == 2 and "makes points, not images" in refused.stderr and ".npy" in refused.stderr
    assert not (tmp_path / "pngs").exists()


@pytest.mark.parametrize(
    ("spec", "args", "complaint"),
    [
        ("nope", [], "model 'nope' does not exist; available models: tiny"),
        ("no/such/dir", [], "no checkpoint, model directory, run directory or model named 'no/such/dir'"),
        (f"{DEFAULT_MODEL}:7", [], "it has versions [1] only"),
        (DEFAULT_MODEL, ["--label", "1"], "not class-conditional"),
    ],
)
def test_sample_refuses_what_it_cannot_do(app, tmp_path: Path, spec: str, args: list[str], complaint: str) -> None:
    result = run("sample", spec, "--seeds", "0", "--out", str(tmp_path / "out"), *args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert complaint in flat(result.stderr)
    assert not (tmp_path / "out").exists()


# --- train ----------------------------------------------------------------------------------------------


def test_train_then_sample_and_evaluate_its_run_directory(
    http: TestClient, settings: Settings, tiny_data_root: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    args = ["train", write_job(tmp_path, IMAGE_JOB), "--out", str(run_dir), "--data-root", str(tiny_data_root)]
    result = run(*args, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "1"  # the version published
    assert (run_dir / "samples" / "epoch-0001.png").is_file()
    assert published_stem(settings, "cli-tiny", 1).with_suffix(".safetensors").is_file()

    # The run directory renders what the API serves of the model published from it.
    sampled = run("sample", str(run_dir), "--seeds", "0-3", "--out", str(tmp_path / "out"))
    assert sampled.exit_code == 0, sampled.output
    for seed in range(4):
        assert (tmp_path / "out" / f"seed{seed:04d}.png").read_bytes() == generated(http, seed, model="cli-tiny")

    measured = run("evaluate", str(run_dir), "--n", "50", "--data-root", str(tiny_data_root), "--json")
    assert measured.exit_code == 0, measured.output
    metrics = json.loads(measured.stdout)
    assert (metrics["extractor"], metrics["n_fake"], metrics["n_real"]) == ("mnist-cnn-v1", 50, 50)


def test_train_points_publishes_a_servable_model(app, settings: Settings, tmp_path: Path) -> None:
    body = {"model_name": "toy", "dataset": "gaussian-1d", "max_samples": 256, "batch_size": 128, "epochs": 1}
    result = run("train", write_job(tmp_path, {**body, "eval_extractor": "none"}))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "1"
    assert published_stem(settings, "toy", 1).parent.is_dir() and (tmp_path / "runs" / "toy").is_dir()
    listed = run("models")
    assert listed.exit_code == 0 and "toy" in listed.stdout and "points" in listed.stdout


@pytest.mark.parametrize(
    ("body", "code", "complaint"),
    [
        ({**IMAGE_JOB, "epochs": 0, "colour": "red"}, 2, "is not a valid training config"),
        ("{not json", 2, "Invalid JSON"),
        (IMAGE_JOB, 1, "GANSERVE_DATA_ROOT"),  # no MNIST under the data root
    ],
    ids=["invalid", "not-json", "no-data"],
)
def test_train_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: Any, code: int, complaint: str) -> None:
    from training import data

    monkeypatch.setattr(data, "_download_mnist", lambda _: (_ for _ in ()).throw(OSError("offline")))
    job = tmp_path / "job.json"
    job.write_text(body if isinstance(body, str) else json.dumps(body))
    result = run("train", str(job), "--data-root", str(tmp_path / "empty"), "--device", "cpu")
    assert result.exit_code == code and isinstance(result.exception, SystemExit), result.output
    assert complaint in flat(result.stderr)
    if code == 2 and "colour" in str(body):
        assert "colour" in result.stderr and "epochs" in result.stderr  # the pydantic message itself


def test_train_refuses_an_unknown_device(tmp_path: Path) -> None:
    result = run("train", write_job(tmp_path, IMAGE_JOB), "--device", "tpu")
    assert result.exit_code == 2 and "unknown device" in flat(result.stderr)


# --- evaluate ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        ([], "exactly one of MODEL and --real"),
        ([DEFAULT_MODEL, "--real", "mnist"], "exactly one of MODEL and --real"),
        ([DEFAULT_MODEL, "--extractor", "vgg"], "unknown extractor"),
        ([f"{DEFAULT_MODEL}:7"], "it has versions [1] only"),
        (["no-such-model"], "model 'no-such-model' does not exist; available models: tiny"),
        (["--real", "ring-2d"], "not an image dataset"),
    ],
)
def test_evaluate_refuses_bad_arguments(settings: Settings, tmp_path: Path, args: list[str], complaint: str) -> None:
    publish_tiny_model(settings, DEFAULT_MODEL)
    result = run("evaluate", *args, "--data-root", str(tmp_path))
    assert result.exit_code == 2, (args, result.output)
    assert complaint in flat(result.stderr), (args, result.output)


def test_evaluate_the_bundled_model_and_the_real_floor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (REAL_DATA_ROOT / "mnist").is_dir():
        pytest.skip(f"real MNIST not present at {REAL_DATA_ROOT / 'mnist'}")
    monkeypatch.setenv("GANSERVE_BUNDLED_MODELS_DIR", str(BUNDLED_MODELS_DIR))
    png = tmp_path / "nn.png"
    data = ["--data-root", str(REAL_DATA_ROOT)]
    result = run("evaluate", "mnist-mlp:1", "--n", "500", *data, "--nn-png", str(png))
    assert result.exit_code == 0, result.output
    output = flat(result.output)
    assert "mnist-cnn-v1" in output and "FID" in output and "500 vs 500 images" in output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    result = run("evaluate", "--real", "mnist", "--n", "300", *data, "--json")
    assert result.exit_code == 0, result.output
    floor = json.loads(result.stdout)
    assert floor["extractor"] == "mnist-cnn-v1" and floor["n_fake"] == floor["n_real"] == 300
    # IS is lower on small sets (10 splits of 30 here: each split's class marginal is a noisy estimate).
    assert floor["classes_covered"] == 10 and floor["inception_score"] > 8
