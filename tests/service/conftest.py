"""Fixtures for the API tests: a tmp volume with tiny published models, and an app whose broker-facing
dependencies are fakes (no Redis, no worker). The settings hold three API keys (svc_support.TEST_KEYS);
`client` sends the admin key on every request, `anon` sends none.

Every app renders through its own render process, as deployed; starting one costs seconds (torch's import), and
an app starts it without waiting for it, so an app that never renders costs little. Tests that render and
need no volume or settings of their own share one app for the whole run: `served`."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from svc_support import (
    AUTH,
    DEFAULT_MODEL,
    TEST_KEYS,
    FakeBrokerCheck,
    FakeSender,
    FakeTasks,
    client_on,
    publish_conditional_model,
    publish_madgan_model,
    publish_points_model,
    publish_tiny_model,
)

from core.settings import Settings
from service.main import create_app


def make_settings(root: Path, **overrides: Any) -> Settings:
    bundled = root / "bundled"
    bundled.mkdir()
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        checkpoint_dir=root / "volume",
        bundled_models_dir=bundled,
        default_model=DEFAULT_MODEL,
        broker_url="filesystem://",  # also: the rate limiter counts in the process, not in a Redis
        max_count=64,
        api_keys=TEST_KEYS,
        **overrides,
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture(scope="session")
def served_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The shared app's: `tiny` version 1 (the default model), `cond`, `mad` and `ring`; no rate limit."""
    settings = make_settings(tmp_path_factory.mktemp("served"), rate_limit_per_min=0)
    publish_tiny_model(settings, DEFAULT_MODEL)
    publish_conditional_model(settings)
    publish_madgan_model(settings)
    publish_points_model(settings)
    return settings


@pytest.fixture(scope="session")
def served(served_settings: Settings) -> Iterator[TestClient]:
    """One app and render process for the tests that only render (with the admin key): their assertions hold
    whatever other tests asked before (counters are compared before and after), and a test that publishes a
    model gives it a name of its own (`publish_served`)."""
    with TestClient(create_app(served_settings, FakeTasks()), headers=AUTH) as c:
        yield c


@pytest.fixture
def publish_served(served_settings: Settings) -> Callable[..., int]:
    """`publish_served(name, **kwargs)`: the next version of a tiny model `name` in the shared app's volume."""

    def _publish(name: str, **kwargs: int) -> int:
        return publish_tiny_model(served_settings, name, **kwargs)

    return _publish


@pytest.fixture
def publish_model(settings: Settings) -> Callable[..., int]:
    def _publish(name: str = DEFAULT_MODEL, **kwargs: int) -> int:
        return publish_tiny_model(settings, name, **kwargs)

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
def running(app: FastAPI) -> Iterator[TestClient]:
    """`app` started: its lifespan run (the default model loaded, the render process started), and stopped after."""
    with TestClient(app) as started:
        yield started


@pytest.fixture
def client(running: TestClient) -> Iterator[TestClient]:
    c = client_on(running, headers=AUTH)
    yield c
    c.close()


@pytest.fixture
def anon(running: TestClient) -> Iterator[TestClient]:
    """A client that sends no API key."""
    c = client_on(running)
    yield c
    c.close()


@pytest.fixture
def served_anon(served: TestClient) -> Iterator[TestClient]:
    """The shared app, without an API key."""
    c = client_on(served)
    yield c
    c.close()
