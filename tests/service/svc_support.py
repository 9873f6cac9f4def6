"""Helpers shared by the API tests (a module, not the conftest, so test files can import them)."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient
from torch import nn

from core.db import connect
from core.keys import ApiKeyEntry, Scope, hash_key
from core.model_versions import ModelVersions
from core.settings import Settings
from core.storage import open_storage
from core.tasks import default_queue
from training.architectures import MADGANGenerator, MLPGenerator, MLPGeneratorConfig, config_to_json
from training.checkpoint import MODEL_STEM, list_versions, prefixed, publish, save, write_model

LATENT_DIM = 8
DEFAULT_MODEL = "tiny"

# The API keys of the tests' settings: the `client` fixture sends ADMIN_KEY; `anon` sends none.
ADMIN_KEY = "gsk_test-admin-key"
TRAIN_KEY = "gsk_test-train-key"
GENERATE_KEY = "gsk_test-generate-key"
TEST_KEYS = [
    ApiKeyEntry(name="test-admin", sha256=hash_key(ADMIN_KEY), scopes=[Scope.admin]),
    ApiKeyEntry(name="test-train", sha256=hash_key(TRAIN_KEY), scopes=[Scope.train]),
    ApiKeyEntry(name="test-generate", sha256=hash_key(GENERATE_KEY), scopes=[Scope.generate]),
]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


AUTH = bearer(ADMIN_KEY)


def client_on(started: TestClient, **kwargs: Any) -> TestClient:
    """Another client (other headers, another address) of `started`'s app, on its event loop: an app runs one
    lifespan, as under a server, however many clients a test uses (a second `with TestClient(app)` would start
    it again, render process included, on another loop). Not for `with`, which would do just that."""
    client = TestClient(started.app, **kwargs)
    client.portal = started.portal
    return client


Target = Settings | Path  # published as the service does (settings' database and storage), or a bundled folder


def publish_tiny_model(
    target: Target, name: str, *, weights_seed: int = 0, latent_dim: int = LATENT_DIM, epoch: int = 1
) -> int:
    """Publish a tiny random MLP generator as the next version of `name` into `target`; returns its version."""
    torch.manual_seed(weights_seed)
    cfg = MLPGeneratorConfig(latent_dim=latent_dim, hidden=(16,), image_shape=(1, 28, 28))
    generator = MLPGenerator(cfg)
    staging = _scratch(target) / f"{name}-{weights_seed}-{epoch}"
    metadata = {
        "generator": config_to_json(cfg),
        "latent_dim": latent_dim,
        "image_shape": list(cfg.image_shape),
        "value_range": [-1, 1],
        "dataset": "mnist",
        "epoch": epoch,
        "step": 10 * epoch,
        "losses": {"d": 1.25, "g": 0.75},
        "train_config": {"epochs": epoch, "dataset": "mnist"},
        "model_name": name,
    }
    save(staging / "ckpt", prefixed(generator, "generator"), metadata)
    return publish_to(target, name, staging / "ckpt")


def _scratch(target: Target) -> Path:
    return (target.checkpoint_dir if isinstance(target, Settings) else target.parent) / "staging"


def publish_to(target: Target, name: str, stem: Path) -> int:
    """Publish checkpoint `stem` as the next version of `name`: as the service does, into the database and storage
    of settings; or into a folder laid out as the bundled models are. Returns its version."""
    if isinstance(target, Settings):
        storage = open_storage(target.effective_storage_url, target.s3_endpoint_url)
        return publish(storage, ModelVersions(connect(target.effective_database_url)), name, stem)
    version = max(list_versions(target, name), default=0) + 1
    write_model(stem, target / name / str(version) / MODEL_STEM)
    return version


def published_stem(settings: Settings, name: str, version: int) -> Path:
    """Where a published version's files lie on the volume (a test that damages them)."""
    row = ModelVersions(connect(settings.effective_database_url)).get(name, version)
    assert row is not None, f"{name} has no version {version}"
    return settings.checkpoint_dir / row.location / MODEL_STEM


NUM_CLASSES = 3
NUM_GENERATORS = 3


def publish_generator(target: Target, name: str, generator: nn.Module, **metadata: Any) -> int:
    """Publish any generator (with its `.spec`) and the given metadata fields; returns its version."""
    scratch = _scratch(target)
    staging = scratch / f"{name}-{len(list(scratch.glob('*')))}"
    meta = {"generator": generator.spec, "latent_dim": LATENT_DIM, "value_range": [-1, 1], "model_name": name}
    save(staging / "ckpt", prefixed(generator, "generator"), {**meta, **metadata})
    return publish_to(target, name, staging / "ckpt")


def tiny_image_g(*, num_classes: int | None = None, weights_seed: int = 0) -> MLPGenerator:
    torch.manual_seed(weights_seed)
    cfg = MLPGeneratorConfig(latent_dim=LATENT_DIM, hidden=(16,), image_shape=(1, 28, 28), num_classes=num_classes)
    return MLPGenerator(cfg)


def publish_conditional_model(target: Target, name: str = "cond") -> int:
    g = tiny_image_g(num_classes=NUM_CLASSES)
    return publish_generator(
        target,
        name,
        g,
        architecture="mlp",
        kind="image",
        image_shape=[1, 28, 28],
        sample_shape=[1, 28, 28],
        conditional=True,
        num_classes=NUM_CLASSES,
    )


def publish_madgan_model(target: Target, name: str = "mad") -> int:
    torch.manual_seed(0)
    base = tiny_image_g().spec
    g = MADGANGenerator(base, NUM_GENERATORS)
    return publish_generator(
        target,
        name,
        g,
        architecture="mad-gan",
        kind="image",
        image_shape=[1, 28, 28],
        sample_shape=[1, 28, 28],
        num_generators=NUM_GENERATORS,
    )


def publish_points_model(target: Target, name: str = "ring") -> int:
    torch.manual_seed(0)
    cfg = MLPGeneratorConfig(
        latent_dim=LATENT_DIM, hidden=(16,), image_shape=(2,), output="linear", activation="relu", batchnorm=False
    )
    return publish_generator(
        target, name, MLPGenerator(cfg), architecture="mlp", kind="points", sample_shape=[2], dataset="ring-2d"
    )


@dataclass
class FakeSender:
    sent: list[str] = field(default_factory=list)
    error: Exception | None = None

    def __call__(self, job_id: str) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append(job_id)


@dataclass
class FakeBrokerCheck:
    error: Exception | None = None

    def __call__(self) -> str:
        if self.error is not None:
            raise self.error
        return "fake broker answers"


@dataclass
class FakeTasks:
    """The broker, faked, in the shape of `AppState.tasks` (core/tasks.py `TaskQueue`): training and evaluation
    tasks land in one `sender`; `check` answers through `broker`."""

    sender: FakeSender = field(default_factory=FakeSender)
    broker: FakeBrokerCheck = field(default_factory=FakeBrokerCheck)
    queues: dict[str, str] = field(default_factory=dict)  # record id → the queue it was sent to

    def send(self, task: str, record_id: str, queue: str | None = None) -> None:
        self.sender(record_id)
        self.queues[record_id] = queue or default_queue(task)

    def check(self) -> str:
        return self.broker()
