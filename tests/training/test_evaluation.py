"""Evaluating a generator (training/evaluation.py): the loop's evaluation every `eval_every` epochs, or by default
on the budget schedule (at most `EVAL_BUDGET` of the job's wall time), on the tiny fake MNIST, and a published
model's on demand through `evaluate_model` (`ganserve evaluate`: tests/cli)."""

import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# torchmetrics' import (over 1 s, once per process) is part of a process's first evaluation, and of its expected
# cost: imported here, the real runs below start alike whatever test ran before them.
import torchmetrics  # noqa: F401
from torch import nn

from core.train_config import TrainConfig
from training import checkpoint, evaluation, loop
from training.evaluation import EVAL_BUDGET, EvalSchedule, EvaluationPlan, Evaluator, evaluate_model, within_budget
from training.loop import TrainProgress, train

TINY = TrainConfig(model_name="tiny", epochs=3, batch_size=32, latent_dim=8, seed=3, eval_samples=64)
EVERY_EPOCH = TINY.model_copy(update={"eval_every": 1})


def run(config: TrainConfig, data_root: Path, out: Path) -> list[TrainProgress]:
    reports: list[TrainProgress] = []
    train(config, out, data_root=data_root, progress_fn=reports.append, report_every_s=0.0)
    return [r for r in reports if r.epoch_end]


def test_every_epoch_with_the_extractor_named(tiny_data_root: Path, tmp_path: Path) -> None:
    ends = run(EVERY_EPOCH, tiny_data_root, tmp_path)
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
    config = EVERY_EPOCH.model_copy(update={"epochs": 1})
    first = run(config, tiny_data_root, tmp_path / "a")[-1].evaluation
    second = run(config, tiny_data_root, tmp_path / "b")[-1].evaluation
    assert first is not None and first == second


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
    config = TrainConfig(
        model_name="ring", dataset="ring-2d", steps=20, max_samples=512, eval_samples=200, eval_every=1
    )
    ends = run(config, tmp_path, tmp_path)
    ev = ends[-1].evaluation
    assert ev is not None and ev["extractor"] == "toy-mode-metrics" and ev["n_modes"] == 8
    assert 0 <= ev["modes_captured"] <= 8 and 0 <= ev["high_quality_fraction"] <= 1
    one_mode = TrainConfig(model_name="g", dataset="gaussian-1d", steps=5, max_samples=256)
    assert "one mode" in (run(one_mode, tmp_path, tmp_path / "g")[-1].evaluation_skipped or "")


def test_measuring_does_not_change_what_is_trained(tiny_data_root: Path, tmp_path: Path) -> None:
    """Evaluation draws no training randomness and leaves G's mode and BatchNorm statistics alone."""
    measured = run(EVERY_EPOCH, tiny_data_root, tmp_path / "a")
    unmeasured = run(TINY.model_copy(update={"eval_extractor": "none"}), tiny_data_root, tmp_path / "b")
    assert all(r.evaluation is not None for r in measured)
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


def test_evaluate_model_on_a_conditional_model_reports_label_agreement(
    tmp_path: Path, idx_writer: Callable[..., Path], fake_images: Callable[..., np.ndarray]
) -> None:
    data_root = tmp_path / "data"  # 40 fake digits with labels 0..9, as MNIST's t10k split
    idx_writer(data_root / "mnist" / "t10k-images-idx3-ubyte", fake_images(40))
    labels = np.arange(40, dtype=np.uint8) % 10
    (data_root / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, 40) + labels.tobytes())
    job = TrainConfig(
        model_name="eval-cond", epochs=1, batch_size=16, latent_dim=8, max_samples=40,
        conditional=True, eval_extractor="none",
    )  # fmt: skip
    result = train(job, tmp_path / "run", data_root=data_root, device="cpu")
    assert result.final_checkpoint is not None
    stem = tmp_path / "model"
    checkpoint.write_model(result.final_checkpoint, stem)
    m = evaluate_model(stem, n=40, data_root=data_root)
    assert m.label_agreement is not None and 0.0 <= m.label_agreement <= 1.0
    assert m.per_class is not None and sum(c["n_fake"] for c in m.per_class) == 40
    # the classifier's class of each sample against the label its seed asked for, weighted by class size
    weighted = sum(c["agreement"] * c["n_fake"] for c in m.per_class) / 40
    assert weighted == pytest.approx(m.label_agreement)
    assert m.to_dict()["per_class"][0]["label"] == m.per_class[0]["label"]


def test_evaluate_model_on_an_unconditional_model_has_no_label_figures(tiny_data_root: Path, tmp_path: Path) -> None:
    job = TrainConfig(
        model_name="eval-plain", epochs=1, batch_size=16, latent_dim=8, max_samples=30, eval_extractor="none"
    )
    result = train(job, tmp_path / "run", data_root=tiny_data_root, device="cpu")
    assert result.final_checkpoint is not None
    checkpoint.write_model(result.final_checkpoint, tmp_path / "model")
    m = evaluate_model(tmp_path / "model", n=30, data_root=tiny_data_root)
    assert m.label_agreement is None and m.per_class is None


# --- when: the default budget schedule ------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(epochs: int, epoch_s: float, eval_s: float, estimate_s: float, setup_s: float = 0.0):
    """The default schedule over `epochs` epochs of `epoch_s` each on a fake clock, each evaluation taking
    `eval_s`: (the epochs measured, seconds spent evaluating, wall seconds)."""
    clock = FakeClock()

    def measure(_g: nn.Module) -> dict[str, Any]:
        clock.now += eval_s
        return {}

    evaluator = Evaluator("fake", measure, setup_s=setup_s, estimate_s=estimate_s)
    schedule = EvalSchedule(None, 0.0, spent_s=setup_s, expected_s=estimate_s, clock=clock)
    clock.now = setup_s
    measured = []
    for epoch in range(1, epochs + 1):
        clock.now += epoch_s
        if schedule.due(epoch, epochs):
            schedule.run(evaluator, nn.Identity())
            measured.append(epoch)
    return measured, schedule.spent_s, clock.now, schedule


def test_an_evaluation_fits_when_it_keeps_evaluating_within_the_budget_of_wall_time() -> None:
    """This evaluation counts on both sides: 1 s of evaluation fits in a job 9 s in (1 s of 10 s)."""
    assert EVAL_BUDGET == 0.10
    assert not within_budget(spent_s=0.0, expected_s=1.0, elapsed_s=8.9, last=True)
    assert within_budget(spent_s=0.0, expected_s=1.0, elapsed_s=9.0, last=True)
    assert not within_budget(spent_s=1.0, expected_s=1.0, elapsed_s=18.9, last=True)
    assert within_budget(spent_s=1.0, expected_s=1.0, elapsed_s=19.0, last=True)


def test_before_the_last_epoch_one_more_evaluation_stays_in_reserve() -> None:
    assert not within_budget(spent_s=0.0, expected_s=1.0, elapsed_s=18.9, last=False)
    assert within_budget(spent_s=0.0, expected_s=1.0, elapsed_s=19.0, last=False)


def test_the_first_evaluation_is_expected_to_cost_the_estimate_then_what_the_last_one_took() -> None:
    # Estimated at 1 s: with the reserve the first fits once 19 s have passed (epoch 19 of 1 s each). It
    # takes 0.5 s: the next is expected to cost that, and fits 10 s (20 epochs of 0.5 s budget) later.
    measured, spent, wall, schedule = simulate(epochs=60, epoch_s=1.0, eval_s=0.5, estimate_s=1.0)
    assert measured[0] == 19 and schedule.expected_s == 0.5
    assert measured[1] - measured[0] < 19  # cheaper than estimated: sooner
    assert measured[-1] == 60 and spent <= EVAL_BUDGET * wall


def test_a_long_job_is_measured_regularly_and_at_its_end_within_the_budget() -> None:
    measured, spent, wall, _ = simulate(epochs=200, epoch_s=1.0, eval_s=0.5, estimate_s=0.5, setup_s=0.3)
    assert len(measured) >= 30 and measured[-1] == 200
    assert spent <= EVAL_BUDGET * wall  # the setup (real features) counted too


def test_an_underestimated_first_evaluation_overshoots_by_that_one_at_most() -> None:
    measured, spent, wall, _ = simulate(epochs=100, epoch_s=1.0, eval_s=4.0, estimate_s=0.01)
    assert measured[0] == 1 and spent <= EVAL_BUDGET * wall + 4.0


def test_a_short_job_whose_evaluation_costs_more_than_a_tenth_is_not_measured() -> None:
    measured, _, _, schedule = simulate(epochs=3, epoch_s=3.0, eval_s=1.5, estimate_s=1.5, setup_s=0.4)
    assert measured == []
    why = schedule.skipped_because()
    assert "no epoch was measured" in why and f"{EVAL_BUDGET * 100:.0f} %" in why and "eval_every" in why


@pytest.mark.parametrize("every", [1, 2, 3, 5])
def test_an_explicit_eval_every_keeps_its_cadence_whatever_the_cost(every: int) -> None:
    clock = FakeClock()
    schedule = EvalSchedule(every, 0.0, expected_s=1e9, clock=clock)  # far over any budget: ignored
    for epochs in (1, 4, 7):
        got = [epoch for epoch in range(1, epochs + 1) if schedule.due(epoch, epochs)]
        assert got == [e for e in range(1, epochs + 1) if e % every == 0 or e == epochs]


def test_the_descriptions_name_the_budget() -> None:
    share = f"{EVAL_BUDGET * 100:.0f} %"
    assert share in (TrainConfig.model_fields["eval_every"].description or "")


# In a real run: epochs of about 0.15 s (each writes a grid and a checkpoint), 16 images to measure.
LONG = TINY.model_copy(update={"epochs": 20, "eval_samples": 16})


def timed_plan(monkeypatch: pytest.MonkeyPatch, sleep_s: float) -> list[float]:
    """Wraps the loop's real evaluator so that each evaluation takes `sleep_s` longer; returns the list its
    measured durations are appended to."""
    durations: list[float] = []

    def build(*args: Any) -> EvaluationPlan:
        plan = evaluation.build_evaluator(*args)
        assert plan.evaluator is not None
        inner = plan.evaluator

        def run(g: nn.Module) -> dict[str, Any]:
            t0 = time.monotonic()
            time.sleep(sleep_s)
            result = inner.run(g)
            durations.append(time.monotonic() - t0)
            return result

        return EvaluationPlan(Evaluator(inner.extractor, run, inner.setup_s, inner.estimate_s), None)

    monkeypatch.setattr(loop, "build_evaluator", build)
    return durations


def test_an_expensive_evaluation_takes_at_most_its_share_of_a_real_run(
    tiny_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    durations = timed_plan(monkeypatch, 0.25)
    t0 = time.monotonic()
    ends = run(LONG, tiny_data_root, tmp_path)
    wall = time.monotonic() - t0
    measured = [r.epoch for r in ends if r.evaluation is not None]
    assert len(measured) == len(durations) >= 1  # it did measure; every epoch would have cost 5 s
    assert sum(durations) <= EVAL_BUDGET * wall + max(durations), (measured, durations, wall)
    assert ends[-1].evaluation is not None or "did not fit the default budget" in (ends[-1].evaluation_skipped or "")


def test_a_cheap_evaluation_still_measures_the_last_epoch(tiny_data_root: Path, tmp_path: Path) -> None:
    ends = run(LONG, tiny_data_root, tmp_path)
    measured = [r.epoch for r in ends if r.evaluation is not None]
    assert measured[-1] == 20 and ends[-1].evaluation_skipped is None
    assert len(measured) < 20  # not every epoch: 16 images cost more than a tenth of these tiny epochs


def test_a_job_too_short_to_measure_completes_and_says_why(
    tiny_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = EvaluationPlan(Evaluator("fake", lambda _g: {"fid": 1.0}, setup_s=0.0, estimate_s=100.0), None)
    monkeypatch.setattr(loop, "build_evaluator", lambda *_: plan)
    reports: list[TrainProgress] = []
    result = train(TINY, tmp_path, data_root=tiny_data_root, progress_fn=reports.append)
    ends = [r for r in reports if r.epoch_end]
    assert result.status == "completed" and all(r.evaluation is None for r in ends)
    assert [r.evaluation_skipped for r in ends[:-1]] == [None, None]  # between epochs a skip is the schedule
    assert "no epoch was measured" in (ends[-1].evaluation_skipped or "")
