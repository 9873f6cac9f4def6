"""`ganserve datasets upload|list|show|delete`: the bytes sent as a bar, the new dataset's id on stdout and its
summary, what a folder leaves out as a warning, and a server's refusal or a bad argument as one red line and
the exit code of every other command."""

from pathlib import Path

from click.testing import Result
from conftest import Receiver
from PIL import Image
from typer.testing import CliRunner

from ganserve.cli import app

DATASET = {
    "id": "ds-0123456789ab",
    "name": "pets",
    "format": "images",
    "count": 3,
    "shape": [1, 8, 8],
    "classes": ["cat", "dog"],
    "sha256": "ab" * 32,
    "size_bytes": 12_345,
    "created_at": "2026-01-02T03:04:05+00:00",
    "preview": "/datasets/ds-0123456789ab/preview.png",
}


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), prog_name="ganserve")


def failed_readably(result: Result, code: int = 1) -> bool:
    return result.exit_code == code and isinstance(result.exception, SystemExit) and "Traceback" not in result.output


def pets(root: Path) -> Path:
    for i, name in enumerate(["cat/a.png", "cat/b.png", "dog/c.png"]):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), 60 * i).save(root / name)
    return root


def test_upload_shows_the_bytes_sent_and_prints_the_id(receiver: Receiver, tmp_path: Path) -> None:
    receiver.answer = DATASET
    folder = pets(tmp_path / "pets")
    (folder / "dog" / "also.png").symlink_to(folder / "cat" / "a.png")
    result = run("datasets", "upload", str(folder), "--name", "pets", "--image-size", "8", "--server", receiver.url)
    assert result.exit_code == 0, result.output
    assert result.stdout == "ds-0123456789ab\n"  # only the id: DS=$(ganserve datasets upload …)
    (got,) = receiver.received
    sent = int(got.headers["Content-Length"])
    assert f"{sent / 1000:.1f}/{sent / 1000:.1f} kB" in result.stderr  # the bar reached the body's length
    assert "dataset ds-0123456789ab (pets): 3 images, 1×8×8, 2 classes (cat, dog)" in result.stderr
    assert "warning: left out 1 entry" in result.stderr and "dog/also.png" in result.stderr


def test_a_refusal_is_one_red_line_and_exit_1(receiver: Receiver, tmp_path: Path) -> None:
    receiver.limit = 100
    result = run("datasets", "upload", str(pets(tmp_path / "pets")), "--server", receiver.url)
    assert failed_readably(result)
    assert "error: the body has" in result.stderr and "(HTTP 413 dataset_too_large)" in result.stderr
    assert result.stdout == ""


def test_a_bad_name_is_refused_before_anything_is_sent(receiver: Receiver, tmp_path: Path) -> None:
    result = run("datasets", "upload", str(pets(tmp_path / "pets")), "--name", "My Pets", "--server", receiver.url)
    assert failed_readably(result, 2) and "--name 'My Pets'" in result.stderr
    assert receiver.received == []


def test_a_missing_path_is_a_usage_error(receiver: Receiver, tmp_path: Path) -> None:
    result = run("datasets", "upload", str(tmp_path / "nope"), "--server", receiver.url)
    assert result.exit_code == 2 and "does not exist" in result.output
    assert receiver.received == []
