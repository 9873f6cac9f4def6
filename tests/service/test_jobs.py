"""The job store: records on the volume that both API and worker read."""

import json
import math
from pathlib import Path

import pytest

from core.jobs import JobStore, Progress
from core.records import JobStatus
from core.train_config import TrainConfig


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs")


def test_non_finite_numbers_are_stored_as_null(store: JobStore) -> None:
    record = store.create(config=TrainConfig(model_name="x"))
    progress = Progress(epochs=1, total_steps=10, eta_seconds=math.inf, images_per_sec=math.nan)
    store.update(record.id, metrics={"d_loss": math.nan, "g_loss": 0.5}, progress=progress)

    raw = json.loads((store.job_dir(record.id) / "job.json").read_text())  # strict JSON: no NaN literal
    assert raw["metrics"] == {"d_loss": None, "g_loss": 0.5}
    assert raw["progress"]["eta_seconds"] is None
    again = store.get(record.id)
    assert again.metrics == {"d_loss": None, "g_loss": 0.5}
    assert again.status is JobStatus.queued


def test_malformed_ids_are_unknown(store: JobStore) -> None:
    for bad in ("../etc", "", ".hidden", "A" * 65):
        with pytest.raises(KeyError):
            store.get(bad)


def test_list_is_newest_first_and_skips_unreadable(store: JobStore) -> None:
    first = store.create(config=TrainConfig(model_name="a"))
    second = store.create(config=TrainConfig(model_name="b"))
    broken = store.root / "broken"
    broken.mkdir()
    (broken / "job.json").write_text("{not json")
    assert [r.id for r in store.list()] == [second.id, first.id]


def test_cancel_request_is_a_separate_file(store: JobStore) -> None:
    record = store.create(config=TrainConfig(model_name="x"))
    assert not store.cancel_requested(record.id)
    store.request_cancel(record.id)
    assert store.cancel_requested(record.id)
    assert store.get(record.id).status is JobStatus.queued  # the record itself is the worker's to change


def test_a_record_this_version_cannot_read_is_unknown(store: JobStore) -> None:
    record = store.create(config=TrainConfig(model_name="x"))
    path = store.job_dir(record.id) / "job.json"
    raw = json.loads(path.read_text())
    raw["config"]["no_such_field"] = 1  # e.g. written by a newer ganserve
    path.write_text(json.dumps(raw))
    with pytest.raises(KeyError):
        store.get(record.id)
    assert store.list() == []
