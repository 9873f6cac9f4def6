"""Every operation of the app's own OpenAPI schema, fuzzed by schemathesis (bounded examples): no 5xx, and every
answer — status code, content type, body — is one the schema documents. Sent with the admin key, so that the
generated requests reach the handlers rather than stopping at 401; the broker is a fake that accepts every
job, and the volume holds one tiny model.

The app is built at import, not in a fixture: schemathesis' `from_fixture` loader fails under this pytest
(`'Function' object has no attribute '_nodeid'`)."""

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from svc_support import AUTH, DEFAULT_MODEL, TEST_KEYS, FakeTasks, publish_tiny_model

from core.settings import Settings
from service.main import create_app


def _app():
    root = Path(tempfile.mkdtemp(prefix="ganserve-fuzz-"))
    (root / "bundled").mkdir()
    config = Settings(
        _env_file=None,  # type: ignore[call-arg]
        checkpoint_dir=root / "volume",
        bundled_models_dir=root / "bundled",
        default_model=DEFAULT_MODEL,
        broker_url="filesystem://",
        api_keys=TEST_KEYS,
        rate_limit_per_min=0,
        render_process=False,  # the lifespan runs once per example here: no process start each time
    )
    publish_tiny_model(config.models_dir, DEFAULT_MODEL)
    return create_app(config, FakeTasks())


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_answers_match_the_schema(case) -> None:
    # positive_data_acceptance is left out: a schema-valid request can still be wrong for the model it names
    # (a `label` for an unconditional model, a latent of another length), which is a documented 422.
    case.call_and_validate(headers=AUTH, excluded_checks=[schemathesis.checks.positive_data_acceptance])
