"""/interpolate through the Python client and the `ganserve interpolate` command: the API's bytes."""

import io
from pathlib import Path

import pytest
from click.testing import Result
from fastapi.testclient import TestClient
from PIL import Image
from svc_support import DEFAULT_MODEL
from typer.testing import CliRunner

from ganserve.cli import app
from ganserve.client import Client, GanserveError, Interpolation

SERVER = "http://ganserve.test"


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), prog_name="ganserve")


def test_interpolate_is_the_bytes_of_get_interpolate(api: Client, http: TestClient, tmp_path: Path) -> None:
    strip = api.interpolate(1, 2, steps=4, version=1)
    assert isinstance(strip, Interpolation)
    assert strip.data == http.get("/interpolate", params={"from": 1, "to": 2, "steps": 4, "version": 1}).content
    assert (strip.media_type, strip.model, strip.version, strip.seeds) == ("image/png", DEFAULT_MODEL, 1, (1, 2))
    assert strip.label is None and strip.generator is None
    gif = api.interpolate(1, 2, steps=3, format="gif", duration_ms=40)
    assert gif.media_type == "image/gif" and gif.save(tmp_path / "x.gif").read_bytes() == gif.data
    with Image.open(io.BytesIO(gif.data)) as im:
        assert im.n_frames == 3


def test_interpolate_errors_are_the_servers(api: Client) -> None:
    with pytest.raises(GanserveError) as e:
        api.interpolate(1, 2, steps=1)
    assert e.value.status == 422 and "query.steps" in e.value.message


@pytest.mark.parametrize("where", ["local", "remote"])
def test_the_command_writes_the_apis_bytes(http: TestClient, use_api, tmp_path: Path, where: str) -> None:
    out = tmp_path / "walk.gif"
    remote = ["--server", SERVER] if where == "remote" else []
    args = ["interpolate", "--from", "1", "--to", "2", "--steps", "5", "--format", "gif", "--out", str(out)]
    result = run(*args, *remote)
    assert result.exit_code == 0, result.output
    params = {"from": 1, "to": 2, "steps": 5, "format": "gif"}
    assert out.read_bytes() == http.get("/interpolate", params=params).content
    assert "wrote 5 frames" in result.stderr


def test_the_command_refuses_an_unknown_format(tmp_path: Path) -> None:
    result = run("interpolate", "--from", "1", "--to", "2", "--format", "bmp", "--out", str(tmp_path / "x"))
    assert result.exit_code == 2 and "png, apng or gif" in result.stderr
