"""A volume written by a version before the database: its jobs and evaluations are imported once, with their
owner, cancel request, attempts and webhook state, so the upgraded service still lists and runs them; its
published models become versions with the same numbers, their files left in place or copied to remote storage."""

import json
from pathlib import Path

import pytest
import torch

from core.db import Database
from core.evaluations import EvaluateRequest, EvaluationRecord, EvaluationStore
from core.jobs import JobRecord, JobStore, OutboxState
from core.legacy import MARKER, import_volume
from core.model_versions import MODEL_STEM, ModelVersions, local_stem
from core.records import JobStatus, now
from core.storage import BlobCache, open_storage
from core.submissions import Submissions
from core.train_config import TrainConfig
from training import checkpoint
from training.architectures import MLPGenerator, MLPGeneratorConfig, config_to_json


def old_job(volume: Path, status: JobStatus, **files: str) -> JobRecord:
    record = JobRecord(
        id=f"job{len(list((volume / 'jobs').glob('*')))}",
        status=status,
        config=TrainConfig(model_name="x"),
        created_at=now(),
    )
    folder = volume / "jobs" / record.id
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(record.model_dump_json())
    for name, text in files.items():
        (folder / name.replace("_", ".").replace("attempt.", "attempt-")).write_text(text)
    return record


def test_the_files_of_an_older_version_are_imported_once(any_db: Database, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    (volume / "jobs").mkdir(parents=True)
    running = old_job(volume, JobStatus.running, cancel="", attempt_1="")
    owed = {"delivery": "d-1", "attempts": 2, "next_attempt_at": 123.0}
    finished = old_job(volume, JobStatus.succeeded, webhook_sending=json.dumps(owed))
    (volume / "jobs" / "broken").mkdir()
    (volume / "jobs" / "broken" / "job.json").write_text("{not json")
    (volume / "submissions" / "alice" / "jobs").mkdir(parents=True)
    (volume / "submissions" / "alice" / "jobs" / running.id).touch()
    evaluation = EvaluationRecord(
        id="ev1", status=JobStatus.succeeded, model="m", version=1, source="volume", stem="m/1/model",
        request=EvaluateRequest(), created_at=now(),
    )  # fmt: skip
    (volume / "evaluations" / "jobs").mkdir(parents=True)
    (volume / "evaluations" / "jobs" / "ev1.json").write_text(evaluation.model_dump_json())

    assert import_volume(any_db, volume) == (2, 1, 0)
    jobs = JobStore(any_db)
    assert jobs.get(running.id) == running and jobs.cancel_requested(running.id)
    assert not jobs.claim(running.id, 1, "host:new") and jobs.claim(running.id, 2, "host:new")
    assert Submissions(any_db).jobs_of("alice") == {running.id}
    entry = jobs.webhook(finished.id)  # claimed by a deliverer of the old version: owed again
    assert entry is not None and (entry.state, entry.delivery, entry.attempts) == (OutboxState.pending, "d-1", 2)
    assert EvaluationStore(any_db, volume / "evaluations").get("ev1") == evaluation
    assert (volume / MARKER).exists()

    jobs.update(running.id, status=JobStatus.cancelled)
    assert import_volume(any_db, volume) == (0, 0, 0)  # once: the marker
    (volume / MARKER).unlink()
    assert import_volume(any_db, volume) == (0, 0, 0)  # and never over what the database holds
    assert jobs.get(running.id).status is JobStatus.cancelled


def test_a_volume_without_old_files_imports_nothing(sqlite_db: Database, tmp_path: Path) -> None:
    assert import_volume(sqlite_db, tmp_path / "fresh") == (0, 0, 0)
    assert not (tmp_path / "fresh" / MARKER).exists()


def old_model(volume: Path, name: str, version: int, weights_seed: int) -> Path:
    """A version as an older release published it: `<volume>/models/<name>/<version>/model.*` + samples.png."""
    torch.manual_seed(weights_seed)
    g = MLPGenerator(MLPGeneratorConfig(latent_dim=8, hidden=(16,)))
    run = volume.parent / f"run-{name}-{version}"
    checkpoint.save(run, checkpoint.prefixed(g, "generator"), {"generator": config_to_json(g.cfg), "latent_dim": 8})
    folder = volume / "models" / name / str(version)
    checkpoint.write_model(run, folder / MODEL_STEM)
    (folder / "samples.png").write_bytes(b"\x89PNG grid")
    return folder


@pytest.mark.parametrize("where", ["volume", "s3"])
def test_published_models_of_an_older_version_become_versions(
    sqlite_db: Database, tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    volume = tmp_path / "volume"
    folders = [old_model(volume, "digits", 1, 0), old_model(volume, "digits", 2, 1), old_model(volume, "faces", 4, 2)]
    (volume / "models" / "not a name" / "1").mkdir(parents=True)
    if where == "volume":
        storage = open_storage(volume.as_uri())
    else:
        storage = open_storage(request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_server"))

    assert import_volume(sqlite_db, volume, storage) == (0, 0, 3)
    versions = ModelVersions(sqlite_db)
    assert versions.names() == ["digits", "faces"] and versions.versions("digits") == [1, 2]
    cache = BlobCache(tmp_path / "cache", 1 << 20)
    for (name, number), folder in zip([("digits", 1), ("digits", 2), ("faces", 4)], folders, strict=True):
        row = versions.get(name, number)
        assert row is not None and row.has_samples and row.owner is None
        assert row.metadata == checkpoint.load_metadata(folder / MODEL_STEM)
        stem = local_stem(row, storage, cache)
        if where == "volume":  # nothing copied: the row names the folder it was in
            assert stem == (folder / MODEL_STEM).resolve()
        else:
            assert storage.get_bytes(f"{row.location}/samples.png") == b"\x89PNG grid"
        tensors, _ = checkpoint.load(stem)
        assert tensors.keys() == checkpoint.load(folder / MODEL_STEM)[0].keys()
    assert import_volume(sqlite_db, volume, storage) == (0, 0, 0)
