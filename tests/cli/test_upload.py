"""Uploading datasets (ganserve/client.py): a folder archived to a tar as it is (relative names, class
sub-folders kept, links never followed), the multipart body streamed from disk (the server gets the exact
bytes, memory does not grow with the file), the progress of the bytes sent, and the server's refusals."""

import email.parser
import email.policy
import hashlib
import io
import os
import tarfile
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from conftest import Receiver
from PIL import Image

from ganserve.client import Client, GanserveError, LeftOut, archive_folder, multipart

MiB = 1024 * 1024


def png(path: Path, value: int, size: int = 8) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (size, size), value).save(path)
    return path.read_bytes()


def class_folders(root: Path) -> dict[str, bytes]:
    """cat/ and dog/ with two and one PNGs, and a file at the top: relative name → bytes."""
    return {name: png(root / name, i * 40) for i, name in enumerate(["cat/a.png", "cat/b.png", "dog/c.png", "z.png"])}


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        found = {}
        for m in tar.getmembers():
            assert m.isfile(), m.name
            found[m.name] = tar.extractfile(m).read()  # type: ignore[union-attr]
        return found


def form(headers: dict[str, str], body: bytes) -> dict[str, tuple[str | None, str, bytes]]:
    """The body parsed by the standard library's MIME parser: field name → (filename, media type, bytes)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body
    )
    return {
        part.get_param("name", header="content-disposition"): (
            part.get_filename(),
            part.get_content_type(),
            part.get_payload(decode=True),
        )
        for part in message.iter_parts()
    }


def big_file(path: Path, size: int) -> str:
    """A file of `size` pseudo-random bytes, written in chunks; its SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for i in range(0, size, MiB):
            chunk = hashlib.sha256(str(i).encode()).digest() * (min(MiB, size - i) // 32)
            chunk += bytes(min(MiB, size - i) - len(chunk))
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


# --- the folder as a tar --------------------------------------------------------------------------------


def test_a_folder_becomes_a_tar_of_its_files_under_relative_names(tmp_path: Path) -> None:
    files = class_folders(tmp_path / "pets")
    (tmp_path / "pets" / "empty").mkdir()
    (tmp_path / "pets" / "deep" / "er").mkdir(parents=True)
    files["deep/er/x.png"] = png(tmp_path / "pets" / "deep" / "er" / "x.png", 200)
    assert archive_folder(tmp_path / "pets", tmp_path / "pets.tar") == []
    assert members(tmp_path / "pets.tar") == files
    with tarfile.open(tmp_path / "pets.tar") as tar:
        assert tar.getnames() == sorted(files)  # in order, class sub-folders kept
        assert {(m.uid, m.gid, m.uname, m.gname) for m in tar} == {(0, 0, "", "")}  # no owner names
        mtime = int((tmp_path / "pets" / "cat" / "a.png").stat().st_mtime)
        assert tar.getmember("cat/a.png").mtime == mtime
    assert (tmp_path / "pets.tar").stat().st_size % tarfile.RECORDSIZE == 0


def test_names_the_tar_format_cannot_hold_in_its_old_header(tmp_path: Path) -> None:
    long_name = "a" * 120 + "/" + "ü" * 90 + ".png"
    files = {
        long_name: png(tmp_path / "src" / long_name, 7),
        "space and 'quote\".png": png(tmp_path / "src" / "space and 'quote\".png", 9),
    }
    archive_folder(tmp_path / "src", tmp_path / "out.tar")
    assert members(tmp_path / "out.tar") == files


def test_links_are_left_out_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_bytes(b"not for the server")
    png(tmp_path / "outside" / "more" / "x.png", 1)
    files = class_folders(tmp_path / "pets")
    (tmp_path / "pets" / "cat" / "secret.png").symlink_to(secret)
    (tmp_path / "pets" / "more").symlink_to(tmp_path / "outside" / "more", target_is_directory=True)
    (tmp_path / "pets" / "dog" / "loop").symlink_to(tmp_path / "pets")
    os.mkfifo(tmp_path / "pets" / "fifo")
    left_out = archive_folder(tmp_path / "pets", tmp_path / "pets.tar")
    assert sorted(left_out) == ["cat/secret.png", "dog/loop", "fifo", "more"]
    assert members(tmp_path / "pets.tar") == files
    assert b"not for the server" not in (tmp_path / "pets.tar").read_bytes()


def test_archiving_a_big_file_keeps_memory_flat(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    digest = big_file(tmp_path / "src" / "big.bin", 48 * MiB)
    tracemalloc.start()
    try:
        archive_folder(tmp_path / "src", tmp_path / "out.tar")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB, f"archiving a 48 MiB file peaked at {peak / MiB:.1f} MiB"
    with tarfile.open(tmp_path / "out.tar") as tar:
        data = tar.extractfile("big.bin").read()  # type: ignore[union-attr]
    assert hashlib.sha256(data).hexdigest() == digest


# --- the multipart body ---------------------------------------------------------------------------------


def test_the_body_is_a_form_the_standard_parser_reads(tmp_path: Path) -> None:
    file = tmp_path / 'odd "name"\r\n.tar.gz'
    data = os.urandom(700_000) + b"\r\n--ganserve-\r\n\r\n"  # boundary-like bytes inside the file
    file.write_bytes(data)
    headers, body = multipart(file, {"name": "pets", "image_size": 32})
    raw = b"".join(body)
    assert int(headers["Content-Length"]) == len(raw)
    assert form(headers, raw) == {
        "name": (None, "text/plain", b"pets"),
        "image_size": (None, "text/plain", b"32"),
        "file": ("odd %22name%22%0D%0A.tar.gz", "application/gzip", data),
    }


def test_progress_goes_from_zero_to_the_total_in_order(tmp_path: Path) -> None:
    file = tmp_path / "data.zip"
    file.write_bytes(os.urandom(3 * MiB + 5))
    calls: list[tuple[int, int]] = []
    headers, body = multipart(file, {}, lambda sent, total: calls.append((sent, total)))
    taken = 0
    for chunk in body:
        assert calls[-1][0] == taken  # told once a chunk is taken, not before
        taken += len(chunk)
    total = int(headers["Content-Length"])
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [s for s, _ in calls] == sorted(s for s, _ in calls) and {t for _, t in calls} == {total}


# --- uploads over a socket ------------------------------------------------------------------------------


def test_a_file_is_sent_as_it_is_and_the_answer_returned(receiver: Receiver, tmp_path: Path) -> None:
    digest = big_file(tmp_path / "t10k-images-idx3-ubyte.gz", 5 * MiB + 3)
    receiver.answer = {"id": "ds-0123456789ab", "count": 3}
    calls: list[tuple[int, int]] = []
    with Client(receiver.url, api_key="gsk_test") as api:
        answer = api.upload_dataset(
            tmp_path / "t10k-images-idx3-ubyte.gz", name="digits", image_size=28, progress=lambda *a: calls.append(a)
        )
    assert answer == {"id": "ds-0123456789ab", "count": 3}
    (got,) = receiver.received
    assert got.path == "/datasets" and got.headers["Authorization"] == "Bearer gsk_test"
    assert "Transfer-Encoding" not in got.headers  # a Content-Length: the server knows the size up front
    raw = got.body.read_bytes()
    assert len(raw) == int(got.headers["Content-Length"]) == calls[-1][0] == calls[-1][1]
    fields = form(got.headers, raw)
    filename, media_type, data = fields["file"]
    assert (filename, media_type) == ("t10k-images-idx3-ubyte.gz", "application/gzip")
    assert hashlib.sha256(data).hexdigest() == digest
    assert (fields["name"][2], fields["image_size"][2]) == (b"digits", b"28")


def test_a_folder_is_sent_as_a_tar_of_its_files(receiver: Receiver, tmp_path: Path) -> None:
    files = class_folders(tmp_path / "pets")
    with Client(receiver.url) as api:
        api.upload_dataset(tmp_path / "pets")
    (got,) = receiver.received
    filename, media_type, data = form(got.headers, got.body.read_bytes())["file"]
    assert (filename, media_type) == ("pets.tar", "application/x-tar")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar} == files  # type: ignore[union-attr]
    assert "name" not in form(got.headers, got.body.read_bytes())  # no name: none sent


def test_what_a_folder_upload_leaves_out_is_a_warning(receiver: Receiver, tmp_path: Path) -> None:
    class_folders(tmp_path / "pets")
    (tmp_path / "pets" / "cat" / "link.png").symlink_to(tmp_path / "pets" / "z.png")
    with Client(receiver.url) as api, pytest.warns(LeftOut, match=r"left out 1 entry .* cat/link.png"):
        api.upload_dataset(tmp_path / "pets")


def test_the_temporary_tar_is_removed(receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    class_folders(tmp_path / "pets")
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    with Client(receiver.url) as api:
        api.upload_dataset(tmp_path / "pets")
        receiver.limit = 10
        with pytest.raises(GanserveError):
            api.upload_dataset(tmp_path / "pets")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_uploading_keeps_memory_flat(receiver: Receiver, tmp_path: Path) -> None:
    digest = big_file(tmp_path / "big.tar", 64 * MiB)
    with Client(receiver.url) as api:
        tracemalloc.start()
        try:
            api.upload_dataset(tmp_path / "big.tar")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 8 * MiB, f"uploading a 64 MiB file peaked at {peak / MiB:.1f} MiB"  # the server thread's too
    (got,) = receiver.received
    with got.body.open("rb") as body:
        raw = body.read()
    assert hashlib.sha256(form(got.headers, raw)["file"][2]).hexdigest() == digest


def test_a_refusal_is_the_servers_error(receiver: Receiver, tmp_path: Path) -> None:
    """Refused by its Content-Length before the body is read: the client still reads the server's answer."""
    big_file(tmp_path / "big.zip", 16 * MiB)
    receiver.limit = MiB
    with Client(receiver.url) as api, pytest.raises(GanserveError) as caught:
        api.upload_dataset(tmp_path / "big.zip")
    e = caught.value
    assert (e.status, e.code, e.detail) == (413, "dataset_too_large", {"limit": MiB})
    assert "over the limit of 1048576" in e.message


def test_a_missing_path_is_an_error_before_anything_is_sent(receiver: Receiver, tmp_path: Path) -> None:
    with Client(receiver.url) as api, pytest.raises(FileNotFoundError):
        api.upload_dataset(tmp_path / "nope.zip")
    assert receiver.received == []
