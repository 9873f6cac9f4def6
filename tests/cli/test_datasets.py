"""`ganserve datasets upload|list|show|delete`: the bytes sent as a bar, the new dataset's id on stdout and its
summary, what a folder leaves out as a warning, and a server's refusal or a bad argument as one red line and
the exit code of every other command."""

import re
import shutil
from pathlib import Path

import pytest
from click.testing import Result
from conftest import Receiver
from fastapi.testclient import TestClient
from PIL import Image
from svc_support import ADMIN_KEY, GENERATE_KEY, bearer
from typer.testing import CliRunner

from ganserve.cli import app
from ganserve.client import Client, GanserveError

SERVER = "http://ganserve.test"
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


@pytest.mark.parametrize(
    ("name", "why"), [("My Pets", "lower-case letters"), ("mnist", "built-in"), ("ds-0123456789ab", "dataset id")]
)
def test_a_bad_name_is_refused_before_anything_is_sent(name: str, why: str, receiver: Receiver, tmp_path: Path) -> None:
    result = run("datasets", "upload", str(pets(tmp_path / "pets")), "--name", name, "--server", receiver.url)
    assert failed_readably(result, 2) and f"--name {name!r}" in result.stderr and why in result.stderr
    assert receiver.received == []


def test_a_missing_path_is_a_usage_error(receiver: Receiver, tmp_path: Path) -> None:
    result = run("datasets", "upload", str(tmp_path / "nope"), "--server", receiver.url)
    assert result.exit_code == 2 and "does not exist" in result.output
    assert receiver.received == []


# --- against the real app -----------------------------------------------------------------------------


def digits(root: Path, per_class: int = 6, classes: int = 3, size: int = 28) -> Path:
    """Real PNGs, a folder per class (`digit-0` …), each image a bar at a column of its own."""
    for c in range(classes):
        for i in range(per_class):
            image = Image.new("L", (size, size), 0)
            image.paste(255, (2 + 3 * i, 4, 5 + 3 * i, size - 4))
            path = root / f"digit-{c}" / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
    return root


def uploaded(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def test_upload_list_show_delete_on_the_app(api: Client, use_api, tmp_path: Path) -> None:
    folder = digits(tmp_path / "digits")
    (folder / "README.txt").write_text("not an image: passed over by the server")
    dataset_id = uploaded(run("datasets", "upload", str(folder), "--name", "my-digits", "--server", SERVER))
    assert re.fullmatch(r"ds-[0-9a-f]{12}", dataset_id)
    found = api.dataset(dataset_id)
    assert (found["count"], found["shape"], found["classes"]) == (18, [1, 28, 28], ["digit-0", "digit-1", "digit-2"])
    assert api.dataset("my-digits") == found and api.datasets() == [found]

    listed = run("datasets", "list", "--server", SERVER)
    assert listed.exit_code == 0, listed.output
    assert dataset_id in listed.stdout and "my-digits" in listed.stdout and "1×28×28" in listed.stdout

    shown = run("datasets", "show", "my-digits", "--preview", str(tmp_path / "preview.png"), "--server", SERVER)
    assert shown.exit_code == 0, shown.output
    assert found["sha256"] in shown.stdout and "3 classes (digit-0, digit-1, digit-2)" in shown.stdout
    assert (tmp_path / "preview.png").read_bytes() == api.dataset_preview(dataset_id)
    assert (tmp_path / "preview.png").read_bytes().startswith(b"\x89PNG")

    deleted = run("datasets", "delete", dataset_id, "--server", SERVER)
    assert deleted.exit_code == 0 and f"deleted dataset {dataset_id}" in deleted.stderr
    gone = run("datasets", "show", dataset_id, "--server", SERVER)
    assert failed_readably(gone) and "(HTTP 404 dataset_not_found)" in gone.stderr
    assert api.datasets() == []


def test_the_summary_line_is_the_servers_dataset(use_api, tmp_path: Path) -> None:
    result = run("datasets", "upload", str(digits(tmp_path / "d", classes=2)), "--image-size", "16", "--server", SERVER)
    dataset_id = uploaded(result)
    assert f"dataset {dataset_id}: 12 images, 1×16×16, 2 classes (digit-0, digit-1)" in result.stderr


def test_images_of_different_sizes_need_an_image_size(use_api, tmp_path: Path) -> None:
    folder = digits(tmp_path / "d", classes=1)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(folder / "digit-0" / "wide.png")
    refused = run("datasets", "upload", str(folder), "--server", SERVER)
    assert failed_readably(refused) and "(HTTP 422" in refused.stderr and "image_size" in refused.stderr
    dataset_id = uploaded(run("datasets", "upload", str(folder), "--image-size", "24", "--server", SERVER))
    assert dataset_id.startswith("ds-")


def test_a_name_taken_is_the_servers_409(use_api, tmp_path: Path) -> None:
    folder = digits(tmp_path / "d", classes=1)
    uploaded(run("datasets", "upload", str(folder), "--name", "mine", "--server", SERVER))
    again = run("datasets", "upload", str(folder), "--name", "mine", "--server", SERVER)
    assert failed_readably(again) and "(HTTP 409 dataset_name_taken)" in again.stderr


def test_a_dataset_in_use_is_not_deleted(api: Client, use_api, tmp_path: Path) -> None:
    dataset_id = uploaded(run("datasets", "upload", str(digits(tmp_path / "d")), "--server", SERVER))
    job = api.train({"model_name": "on-mine", "dataset": dataset_id, "epochs": 1})
    refused = run("datasets", "delete", dataset_id, "--server", SERVER)
    assert failed_readably(refused) and "(HTTP 409 dataset_in_use)" in refused.stderr and job.id in refused.stderr
    api.cancel(job.id)
    assert run("datasets", "delete", dataset_id, "--server", SERVER).exit_code == 0


def test_files_are_sent_as_they_are(api: Client, use_api, tiny_data_root: Path, tmp_path: Path) -> None:
    """MNIST's IDX file alone, and a .zip and a .tar.gz of a folder of images."""
    idx = tiny_data_root / "mnist" / "t10k-images-idx3-ubyte.gz"
    found = api.dataset(uploaded(run("datasets", "upload", str(idx), "--server", SERVER)))
    assert (found["format"], found["count"], found["shape"], found["classes"]) == ("idx", 64, [1, 28, 28], None)
    folder = digits(tmp_path / "d", classes=2)
    zipped = shutil.make_archive(str(tmp_path / "digits"), "zip", folder)
    tarred = shutil.make_archive(str(tmp_path / "digits"), "gztar", folder)
    for archive in (zipped, tarred):
        found = api.dataset(uploaded(run("datasets", "upload", archive, "--server", SERVER)))
        assert (found["format"], found["count"], found["classes"]) == ("images", 12, ["digit-0", "digit-1"])


def test_the_client_returns_the_datasets_json(api: Client, http: TestClient, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    answer = api.upload_dataset(digits(tmp_path / "d"), name="via-client", progress=lambda *a: calls.append(a))
    assert answer == http.get(f"/datasets/{answer['id']}", headers=bearer(ADMIN_KEY)).json()
    assert answer["name"] == "via-client" and answer["preview"] == f"/datasets/{answer['id']}/preview.png"
    assert calls[0][0] == 0 and calls[-1][0] == calls[-1][1]


def test_a_key_without_the_scope_is_refused(http: TestClient, tmp_path: Path) -> None:
    with pytest.raises(GanserveError) as caught:
        Client(api_key=GENERATE_KEY, http=http).upload_dataset(digits(tmp_path / "d"))
    assert caught.value.status == 403
