"""`ganserve models visibility|grant|revoke|grants` and the client's set_visibility, grant, revoke_grant and
model_access, against the app in-process: the owner's and an admin's changes, the grantees on stdout, and another
key's refusal as one red line and exit 1."""

import pytest
from click.testing import Result
from fastapi.testclient import TestClient
from svc_support import DEFAULT_MODEL, TRAIN_KEY, publish_tiny_model
from typer.testing import CliRunner

from core.db import connect
from core.model_names import ModelNames
from core.settings import Settings
from ganserve.cli import app, common
from ganserve.client import Client, GanserveError

SERVER = "http://ganserve.test"


def run(*args: str) -> Result:
    return CliRunner().invoke(app, [*args, "--server", SERVER], prog_name="ganserve")


@pytest.fixture
def by_key(http: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's server commands on the in-process app, with the key each is given (--api-key)."""
    monkeypatch.setattr(common, "connect", lambda server, api_key: Client(api_key=api_key, http=http))


@pytest.fixture
def mine(settings: Settings, http: TestClient) -> str:
    """A model of test-train's."""
    ModelNames(connect(settings.effective_database_url)).claim("mine", "test-train")
    publish_tiny_model(settings, "mine")
    return "mine"


def test_the_owner_changes_its_models_access(by_key: None, mine: str) -> None:
    key = ("--api-key", TRAIN_KEY)
    result = run("models", "visibility", mine, "private", *key)
    assert result.exit_code == 0, result.output
    assert "model mine: private, owned by key test-train, 0 key(s) granted read access" in result.stderr
    assert result.stdout == ""
    assert run("models", "grant", mine, "test-generate", *key).stdout == "test-generate\n"
    result = run("models", "grants", mine, *key)
    assert result.exit_code == 0 and result.stdout == "test-generate\n" and "private" in result.stderr
    assert run("models", "revoke", mine, "test-generate", *key).stdout == ""
    result = run("models", "revoke", mine, "test-generate", *key)
    assert result.exit_code == 1 and "(HTTP 404 grant_not_found)" in result.stderr and "Traceback" not in result.output


def test_another_keys_model_is_refused_readably(by_key: None) -> None:
    result = run("models", "visibility", DEFAULT_MODEL, "private", "--api-key", TRAIN_KEY)  # the operator's
    assert result.exit_code == 1 and "(HTTP 403 not_model_owner)" in result.stderr
    assert "belongs to the operator" in result.stderr
    result = run("models", "visibility", DEFAULT_MODEL, "secret", "--api-key", TRAIN_KEY)
    assert result.exit_code == 2 and "public|private" in result.output  # refused before anything is sent


def test_the_client_answers_as_the_server(api: Client, http: TestClient, mine: str) -> None:
    access = api.set_visibility(mine, "private")  # an admin key: any key's model
    assert (access.owner, access.visibility, access.grants) == ("test-train", "private", [])
    assert api.grant(mine, "test-generate").grants == ["test-generate"]
    assert (
        api.model_access(mine).model_dump(mode="json") == http.get(f"/models/{mine}/grants", headers=api._auth).json()
    )
    assert api.revoke_grant(mine, "test-generate").grants == []
    with pytest.raises(GanserveError) as e:
        api.grant(mine, "nobody")
    assert e.value.status == 422 and e.value.code == "unknown_key"


def test_models_without_a_command_still_lists(use_api) -> None:
    result = run("models")
    assert result.exit_code == 0 and DEFAULT_MODEL in result.stdout
