"""Fixtures for the API tests: a tmp volume with tiny published models, and an app whose broker-facing
dependencies are fakes (no Redis, no worker)."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from svc_support import DEFAULT_MODEL, FakeBrokerCheck, FakeSender, publish_tiny_model

from service.deps import get_broker_check, get_evaluation_sender, get_task_sender
from service.main import create_app
from service.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        checkpoint_dir=tmp_path / "volume",
        bundled_models_dir=bundled,
        default_model=DEFAULT_MODEL,
        broker_url="filesystem://",
        max_count=64,
    )


@pytest.fixture
def publish_model(settings: Settings) -> Callable[..., int]:
    def _publish(name: str = DEFAULT_MODEL, **kwargs: int) -> int:
        return publish_tiny_model(settings.models_dir, name, **kwargs)

    return _publish


@pytest.fixture
def sender() -> FakeSender:
    return FakeSender()


@pytest.fixture
def broker_check() -> FakeBrokerCheck:
    return FakeBrokerCheck()


@pytest.fixture
def make_app(settings: Settings, sender: FakeSender, broker_check: FakeBrokerCheck) -> Callable[[], FastAPI]:
    def _make() -> FastAPI:
        app = create_app(settings)
        app.dependency_overrides[get_task_sender] = lambda: sender
        app.dependency_overrides[get_evaluation_sender] = lambda: sender  # one fake queue for both tasks
        app.dependency_overrides[get_broker_check] = lambda: broker_check
        return app

    return _make


@pytest.fixture
def app(make_app: Callable[[], FastAPI], publish_model: Callable[..., int]) -> FastAPI:
    publish_model(DEFAULT_MODEL)
    return make_app()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:  # `with`: runs the lifespan (loads the default model)
        yield c
