"""Fixtures for the API tests: a tmp volume with tiny published models, and an app whose broker-facing
dependencies are fakes (no Redis, no worker). The settings hold three API keys (svc_support.TEST_KEYS);
`client` sends the admin key on every request, `anon` sends none."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from svc_support import AUTH, DEFAULT_MODEL, TEST_KEYS, FakeBrokerCheck, FakeSender, FakeTasks, publish_tiny_model

from core.settings import Settings
from service.main import create_app


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        checkpoint_dir=tmp_path / "volume",
        bundled_models_dir=bundled,
        default_model=DEFAULT_MODEL,
        broker_url="filesystem://",  # also: the rate limiter counts in the process, not in a Redis
        max_count=64,
        api_keys=TEST_KEYS,
        # The routes' tests render in threads of the app's own process; tests/service/test_render_process.py
        # and the end-to-end tests run the render process (the default).
        render_process=False,
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
def make_app(settings: Settings, sender: FakeSender, broker_check: FakeBrokerCheck) -> Callable[..., FastAPI]:
    """`make_app(**setting_overrides)`: a fresh app on the same volume (a restart), with fake broker deps."""

    def _make(**overrides: Any) -> FastAPI:
        # One fake queue for both tasks.
        return create_app(
            settings.model_copy(update=overrides) if overrides else settings, FakeTasks(sender, broker_check)
        )

    return _make


@pytest.fixture
def app(make_app: Callable[..., FastAPI], publish_model: Callable[..., int]) -> FastAPI:
    publish_model(DEFAULT_MODEL)
    return make_app()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, headers=AUTH) as c:  # `with`: runs the lifespan (loads the default model)
        yield c


@pytest.fixture
def anon(app: FastAPI) -> Iterator[TestClient]:
    """A client that sends no API key."""
    with TestClient(app) as c:
        yield c
