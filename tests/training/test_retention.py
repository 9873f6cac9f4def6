"""Checkpoint retention (`keep_checkpoints`): a run keeps its newest K kept checkpoints, the one of the best FID
and its newest checkpoint of all, and tells `files_fn` which it removed; a run so pruned still resumes exactly.
And the parameter count POST /train caps (training/model_size.py), taken on the meta device."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from core.train_config import TrainConfig
from training import checkpoint, evaluation, loop, run_state
from training.evaluation import EvaluationPlan, Evaluator
from training.loop import TrainProgress, train
from training.model_size import count_parameters

BASE = TrainConfig(
    model_name="retained",
    epochs=6,
    batch_size=16,
    latent_dim=8,
    seed=3,
    g_hidden=[32],
    d_hidden=[32],
    eval_extractor="none",
)


def epochs_on_disk(out: Path) -> list[int]:
    stems = sorted((out / run_state.CHECKPOINTS_DIR).glob("epoch-*.json"))
    # Never half a checkpoint: each JSON has its weights, and no weights lie without their JSON.
    weights = sorted((out / run_state.CHECKPOINTS_DIR).glob("epoch-*.safetensors"))
    assert [p.with_suffix("") for p in stems] == [p.with_suffix("") for p in weights]
    return [int(p.stem.removeprefix("epoch-")) for p in stems]


def stem(epoch: int) -> Path:
    return Path("run") / "checkpoints" / f"epoch-{epoch:04d}"


# --- which checkpoints stay ------------------------------------------------------------------------------------


def test_the_newest_k_kept_ones_stay_and_older_stand_ins_go() -> None:
    metas: dict[Path, dict[str, Any] | None] = {stem(e): {"kept": e % 2 == 0} for e in range(1, 10)}
    # Epoch 9 (a stand-in) was just written: of the kept ones (2, 4, 6, 8), the newest two stay.
    assert run_state.retained(metas, stem(9), keep=2) == {stem(9), stem(8), stem(6)}
    # Without a bound every kept one stays, as runs always did; stand-ins older than the newest never do.
    assert run_state.retained(metas, stem(9), keep=None) == {stem(9), stem(8), stem(6), stem(4), stem(2)}


def test_the_best_fid_stays_beyond_the_newest_ones_even_as_a_stand_in() -> None:
    metas: dict[Path, dict[str, Any] | None] = {
        stem(1): {"kept": True, "fid": 30.0},
        stem(2): {"kept": False, "fid": 12.5},  # evaluated between kept epochs: the best so far
        stem(3): {"kept": True, "fid": 20.0},
        stem(4): {"kept": True, "fid": float("nan")},  # not a measurement
        stem(5): {"kept": True, "fid": None},
    }
    assert run_state.retained(metas, stem(5), keep=1) == {stem(5), stem(2)}
    metas[stem(6)] = {"kept": True, "fid": 12.5}  # as good: the newer one is the best now
    assert run_state.retained(metas, stem(6), keep=1) == {stem(6)}


def test_unreadable_and_later_checkpoints() -> None:
    metas: dict[Path, dict[str, Any] | None] = {stem(1): None, stem(2): {}, stem(3): {"kept": True}, stem(7): None}
    # An unreadable one goes; one without `kept` (written before stand-ins) counts as kept; a later one (a damaged
    # one a resumed run passed over) is not this writer's to remove.
    assert run_state.retained(metas, stem(3), keep=2) == {stem(3), stem(2), stem(7)}


# --- in a run ----------------------------------------------------------------------------------------------


def test_a_run_keeps_its_newest_checkpoints_and_reports_the_rest_removed(tiny_data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    written: list[Path] = []
    removed: list[Path] = []
    seen: list[list[int]] = []

    def files_fn(w: list[Path], r: list[Path]) -> None:
        written.extend(w)
        removed.extend(r)
        seen.append(epochs_on_disk(out))

    config = BASE.model_copy(update={"keep_checkpoints": 2})
    result = train(config, out, data_root=tiny_data_root, files_fn=files_fn)
    assert result.status == "completed" and result.final_checkpoint == run_state.stem_for(out, 6)
    assert epochs_on_disk(out) == [5, 6]
    assert max(len(epochs) for epochs in seen) <= 2  # bounded all along, not only at the end
    pruned = [run_state.stem_for(out, e) for e in range(1, 5)]
    assert sorted(removed) == sorted(s.with_suffix(x) for s in pruned for x in (".json", ".safetensors"))
    assert set(removed) < set(written)  # each was reported written first
    # The samples are not checkpoints: every grid stays.
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == [f"epoch-{e:04d}.png" for e in range(1, 7)]


def test_the_config_or_the_caller_says_how_many(tiny_data_root: Path, tmp_path: Path) -> None:
    config = BASE.model_copy(update={"epochs": 4, "keep_checkpoints": 1})
    train(config, tmp_path / "config", data_root=tiny_data_root)
    assert epochs_on_disk(tmp_path / "config") == [4]
    train(config, tmp_path / "caller", data_root=tiny_data_root, keep_checkpoints=3)  # the worker's choice wins
    assert epochs_on_disk(tmp_path / "caller") == [2, 3, 4]
    train(BASE.model_copy(update={"epochs": 4}), tmp_path / "all", data_root=tiny_data_root)
    assert epochs_on_disk(tmp_path / "all") == [1, 2, 3, 4]  # none asked: every kept one, as before


def test_the_best_fid_checkpoint_stays(tiny_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluated every epoch, kept every third: epoch 2's FID is the best, so its checkpoint (a stand-in, saved
    because it was evaluated) stays beside the newest one."""
    fids = iter([40.0, 10.0, 30.0, 20.0, 25.0, 35.0])

    def plan(*_: object) -> EvaluationPlan:
        return EvaluationPlan(Evaluator("fake", lambda _g: {"fid": next(fids)}), None)

    monkeypatch.setattr(loop, "build_evaluator", plan)
    out = tmp_path / "run"
    config = BASE.model_copy(update={"keep_checkpoints": 1, "sample_every": 3, "eval_every": 1})
    reports: list[TrainProgress] = []
    train(config, out, data_root=tiny_data_root, progress_fn=reports.append)
    assert epochs_on_disk(out) == [2, 6]
    meta = checkpoint.load_metadata(run_state.stem_for(out, 2))
    assert meta["fid"] == 10.0 and meta["kept"] is False
    assert [r.checkpoint for r in reports if r.checkpoint is not None] == [
        run_state.stem_for(out, 3),
        run_state.stem_for(out, 6),
    ]
    # The published model's metadata describes the generator, not the run: no FID of a checkpoint in it.
    model = checkpoint.write_model(run_state.stem_for(out, 6), tmp_path / "model")
    assert "fid" not in model and "kept" not in model


def test_the_best_fid_checkpoint_stays_when_the_budget_skips_epochs(
    tiny_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default schedule measures where the budget allows: here epochs 2 and 5, not the last. The best of
    those (epoch 2) stays beside the newest kept checkpoint, and the last report says why it was not measured."""
    fids = iter([10.0, 30.0])
    answers = iter([False, True, False, False, True, False])  # the budget's answer at each epoch's end
    plan = EvaluationPlan(Evaluator("fake", lambda _g: {"fid": next(fids)}), None)
    monkeypatch.setattr(loop, "build_evaluator", lambda *_: plan)
    monkeypatch.setattr(evaluation, "within_budget", lambda **_: next(answers))
    out = tmp_path / "run"
    config = BASE.model_copy(update={"keep_checkpoints": 1, "sample_every": 3})  # eval_every: the default
    reports: list[TrainProgress] = []
    result = train(config, out, data_root=tiny_data_root, progress_fn=reports.append)
    ends = [r for r in reports if r.epoch_end]
    assert result.status == "completed"
    assert [r.epoch for r in ends if r.evaluation is not None] == [2, 5]
    assert "did not fit the default budget" in (ends[-1].evaluation_skipped or "")
    assert epochs_on_disk(out) == [2, 6]
    assert checkpoint.load_metadata(run_state.stem_for(out, 2))["fid"] == 10.0


def test_a_pruned_run_resumes_exactly(tiny_data_root: Path, tmp_path: Path) -> None:
    config = BASE.model_copy(update={"epochs": 5, "keep_checkpoints": 1})
    straight = train(config, tmp_path / "straight", data_root=tiny_data_root)
    out = tmp_path / "stopped"
    reports: list[TrainProgress] = []
    stopped = train(
        config,
        out,
        data_root=tiny_data_root,
        progress_fn=reports.append,
        should_stop=lambda: any(r.epoch_end and r.epoch >= 3 for r in reports),
    )
    assert stopped.status == "cancelled" and epochs_on_disk(out) == [3]
    point = run_state.latest(out)
    assert point is not None and point.epoch == 3
    resumed = train(config, out, data_root=tiny_data_root, resume_from=point.stem)
    assert resumed.status == "completed" and epochs_on_disk(out) == [5]
    assert straight.final_checkpoint is not None and resumed.final_checkpoint is not None
    a, _ = checkpoint.load(straight.final_checkpoint)
    b, _ = checkpoint.load(resumed.final_checkpoint)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_checkpoint_of_a_config_without_the_field_still_resumes(tiny_data_root: Path, tmp_path: Path) -> None:
    """A run written before `keep_checkpoints` existed has no such key in its stored config: it still resumes."""
    config = BASE.model_copy(update={"epochs": 2})
    out = tmp_path / "old"
    reports: list[TrainProgress] = []
    stop = lambda: any(r.epoch_end for r in reports)  # noqa: E731
    train(config, out, data_root=tiny_data_root, progress_fn=reports.append, should_stop=stop)
    point = run_state.latest(out)
    assert point is not None and point.epoch == 1
    json_path = point.stem.with_suffix(".json")
    meta = json.loads(json_path.read_text())
    del meta["train_config"]["keep_checkpoints"]
    json_path.write_text(json.dumps(meta))
    assert train(config, out, data_root=tiny_data_root, resume_from=point.stem).status == "completed"


# --- the parameter count --------------------------------------------------------------------------------------


def test_the_parameter_count_is_the_built_networks(tiny_data_root: Path) -> None:
    from training.architectures import build_models

    for fields in ({}, {"architecture": "dcgan"}, {"conditional": True}, {"dataset": "ring-2d"}):
        config = TrainConfig.model_validate({"model_name": "n", **fields})
        g, d = build_models(config, (2,) if config.is_toy else (1, 28, 28), 10)
        real = sum(p.numel() for p in [*g.parameters(), *d.parameters()])
        assert count_parameters(config) == real, fields


def test_a_huge_mlp_is_counted_without_its_memory() -> None:
    config = TrainConfig(model_name="huge", g_hidden=[16384] * 16, d_hidden=[16384] * 16)
    # 15 hidden-to-hidden layers in each net alone are 2 × 15 × 16384² weights: about 8 billion parameters,
    # 32 GB as float32, which the meta device never allocates.
    assert count_parameters(config) > 2 * 15 * 16384**2


def test_image_size_and_an_uploaded_shape_change_the_count() -> None:
    config = TrainConfig(model_name="n", image_size=56)
    assert count_parameters(config) > count_parameters(TrainConfig(model_name="n"))
    uploaded = TrainConfig(model_name="n", dataset="ds-000000000000")
    assert count_parameters(uploaded, (3, 16, 16)) < count_parameters(uploaded, (3, 64, 64))
