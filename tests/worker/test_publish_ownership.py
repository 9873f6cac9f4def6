"""A finished job publishes under its key's claim on the model name (worker/publishing.py): an unclaimed name is
claimed for the job's key (or, not over HTTP, the operator); a name another key holds by then is published under
only by an admin key's job or the operator's, and otherwise the job fails saying whose the name is, its
checkpoints kept and nothing published."""

from pathlib import Path

import pytest
from worker_support import TINY

import training.checkpoint
from core.db import connect
from core.jobs import JobStore
from core.keys import ApiKeyEntry, Scope, hash_key
from core.model_names import ModelNames
from core.model_versions import ModelVersions
from core.records import JobStatus
from core.settings import Settings
from core.train_config import TrainConfig
from worker import tasks

ROOT = ApiKeyEntry(name="root", sha256=hash_key("gsk_root"), scopes=[Scope.admin])
ALICE = ApiKeyEntry(name="alice", sha256=hash_key("gsk_alice"), scopes=[Scope.train])


@pytest.fixture
def owned(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The worker's settings with two keys (`root`, admin; `alice`, train), private names by default and a bundled
    model `bundled-digits`."""
    bundled = tmp_path / "bundled"
    (bundled / "bundled-digits").mkdir(parents=True)
    s = settings.model_copy(
        update={"api_keys": [ROOT, ALICE], "bundled_models_dir": bundled, "model_visibility": "private"}
    )
    monkeypatch.setattr(tasks, "get_settings", lambda: s)
    return s


def run_job(store: JobStore, owner: str | None, name: str) -> str:
    job = store.create(owner=owner, config=TrainConfig.model_validate({**TINY, "epochs": 1, "model_name": name}))
    tasks.train(job.id)
    return job.id


def names(settings: Settings) -> ModelNames:
    return ModelNames(connect(settings.effective_database_url))


def versions(settings: Settings) -> ModelVersions:
    return ModelVersions(connect(settings.effective_database_url))


@pytest.mark.parametrize("owner", ["alice", None], ids=["a-key", "not-over-http"])
def test_an_unclaimed_name_is_claimed_for_the_jobs_key(owned: Settings, store: JobStore, owner: str | None) -> None:
    job = run_job(store, owner, "fresh")
    assert store.get(job).status == JobStatus.succeeded
    claim = names(owned).get("fresh")
    assert claim is not None and claim.owner == owner and claim.visibility == "private"  # GANSERVE_MODEL_VISIBILITY
    assert [(v.version, v.owner) for v in versions(owned).all("fresh")] == [(1, owner)]


def test_the_owners_next_job_publishes_the_next_version(owned: Settings, store: JobStore) -> None:
    names(owned).claim("mine", "alice", visibility="public")
    run_job(store, "alice", "mine")
    run_job(store, "alice", "mine")
    assert versions(owned).versions("mine") == [1, 2]
    assert names(owned).get("mine").visibility == "public"  # a claim made before keeps its visibility


def test_another_keys_name_fails_the_job_and_keeps_its_checkpoints(owned: Settings, store: JobStore) -> None:
    names(owned).claim("bobs", "bob")
    job = run_job(store, "alice", "bobs")
    record = store.get(job)
    assert record.status == JobStatus.failed and record.model is None
    assert record.error is not None and record.error.startswith("PublishRefused: trained to the end but not published")
    assert "belongs to key 'bob'" in record.error and "checkpoints are kept" in record.error
    assert record.checkpoints  # the trained weights are not lost
    for stem in record.checkpoints:
        training.checkpoint.load(owned.checkpoint_dir / stem)  # intact
    assert versions(owned).versions("bobs") == []
    assert names(owned).get("bobs").owner == "bob"


@pytest.mark.parametrize("owner", ["root", None], ids=["admin-key", "not-over-http"])
def test_an_admin_or_the_operator_publishes_under_another_keys_name(
    owned: Settings, store: JobStore, owner: str | None
) -> None:
    names(owned).claim("bobs", "bob")
    job = run_job(store, owner, "bobs")
    assert store.get(job).status == JobStatus.succeeded
    assert [(v.version, v.owner) for v in versions(owned).all("bobs")] == [(1, owner)]
    assert names(owned).get("bobs").owner == "bob"  # the name stays its owner's


def test_a_bundled_models_name_is_never_published_over(owned: Settings, store: JobStore) -> None:
    record = store.get(run_job(store, "root", "bundled-digits"))
    assert record.status == JobStatus.failed and "bundled model's" in (record.error or "")
    assert record.checkpoints and versions(owned).versions("bundled-digits") == []
    assert names(owned).get("bundled-digits") is None
