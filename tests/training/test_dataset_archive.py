"""Uploaded dataset archives (training/dataset_archive.py) → the canonical dataset, and nothing else: class folders
become labels, IDX files are read with their labels, sizes and modes are made one; bombs, links, paths that leave
the archive, other formats and every limit are refused with the status, code and setting the API answers; the
canonical file loads into the training `Dataset` (training/data.py)."""

import gzip
import hashlib
import io
import json
import struct
import tarfile
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile
from safetensors import safe_open

from core.train_config import TrainConfig
from training.data import DatasetError, load_training_data
from training.dataset_archive import ArchiveLimits, CanonicalDataset, DatasetRejected, read_archive

LIMITS = ArchiveLimits(max_bytes=1 << 20, max_images=100, max_image_pixels=64 * 64, max_decoded_bytes=1 << 20)


def png(pixels: np.ndarray, fmt: str = "PNG", **save: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, **save)
    return out.getvalue()


def grey(value: int, size: tuple[int, int] = (8, 8)) -> np.ndarray:
    """An H×W image of one value, a pixel in its corner marking it."""
    pixels = np.full(size, value, dtype=np.uint8)
    pixels[0, 0] = 255 - value
    return pixels


def zip_of(entries: Mapping[str, bytes]) -> io.BytesIO:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    out.seek(0)
    return out


def tar_of(entries: Mapping[str, bytes | tarfile.TarInfo], mode: str = "w") -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as t:
        for name, data in entries.items():
            if isinstance(data, tarfile.TarInfo):
                t.addfile(data)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    out.seek(0)
    return out


def idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", 0x803, n, h, w) + images.astype(np.uint8).tobytes()


def idx_labels(labels: list[int]) -> bytes:
    return struct.pack(">II", 0x801, len(labels)) + bytes(labels)


def read(source: io.BytesIO, tmp_path: Path, limits: ArchiveLimits = LIMITS, **kwargs: object) -> CanonicalDataset:
    return read_archive(source, tmp_path / "out", limits, **kwargs)  # type: ignore[arg-type]


def refused(source: io.BytesIO, tmp_path: Path, limits: ArchiveLimits = LIMITS, **kwargs: object) -> DatasetRejected:
    with pytest.raises(DatasetRejected) as caught:
        read(source, tmp_path, limits, **kwargs)
    return caught.value


def tensors(data: CanonicalDataset) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, str]]:
    with safe_open(str(data.path), framework="pt") as f:
        labels = f.get_tensor("labels") if "labels" in f.keys() else None  # noqa: SIM118 (safe_open is no dict)
        return f.get_tensor("images"), labels, f.metadata() or {}


# --- what an archive becomes -------------------------------------------------------------------------------------


def test_class_folders_become_labels_in_sorted_order(tmp_path: Path) -> None:
    archive = zip_of(
        {
            "faces/dog/b.png": png(grey(30)),
            "faces/cat/a.png": png(grey(10)),
            "faces/dog/a.png": png(grey(20)),
            "faces/README.md": b"about these faces",  # text and hidden files are passed over
            "faces/cat/.DS_Store": b"\0\0",
            "__MACOSX/faces/cat/._a.png": b"resource fork",
        }
    )
    data = read(archive, tmp_path)
    assert (data.format, data.count, data.shape, data.classes) == ("images", 3, (1, 8, 8), ["cat", "dog"])
    images, labels, meta = tensors(data)
    assert images.dtype == torch.uint8 and images.shape == (3, 1, 8, 8)
    assert [int(images[i, 0, 1, 1]) for i in range(3)] == [10, 20, 30]  # cat/a, dog/a, dog/b
    assert labels is not None and labels.dtype == torch.int64 and labels.tolist() == [0, 1, 1]
    assert json.loads(meta["classes"]) == ["cat", "dog"]
    assert (
        data.sha256 == hashlib.sha256(data.path.read_bytes()).hexdigest()
        and data.size_bytes == data.path.stat().st_size
    )
    with Image.open(data.preview) as preview:
        assert preview.format == "PNG" and preview.size[0] > 8


def test_the_preview_spreads_over_every_class(tmp_path: Path) -> None:
    """90 images in 10 classes of 9, a grey level each: the 64 tiles show all ten, not the first eight."""
    levels = [20 * (k + 1) for k in range(10)]
    archive = zip_of({f"digits/{k}/{i:02d}.png": png(grey(level)) for k, level in enumerate(levels) for i in range(9)})
    data = read(archive, tmp_path)
    with Image.open(data.preview) as preview:
        shown = set(np.unique(np.asarray(preview.convert("L"))).tolist())
    assert set(levels) <= shown


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_images_at_the_top_are_unlabelled_and_sorted_by_path(tmp_path: Path, mode: str) -> None:
    archive = tar_of({"./b.png": png(grey(2)), "a.jpg": png(grey(1), "JPEG", quality=100), "c.png": png(grey(3))}, mode)
    data = read(archive, tmp_path)
    images, labels, meta = tensors(data)
    assert data.classes is None and labels is None and "classes" not in meta
    assert images.shape == (3, 1, 8, 8) and abs(int(images[0, 0, 4, 4]) - 1) <= 2  # the JPEG, a.jpg, first
    assert [int(images[i, 0, 4, 4]) for i in (1, 2)] == [2, 3]


def test_the_same_images_give_the_same_file(tmp_path: Path) -> None:
    entries = {"x/1.png": png(grey(5)), "y/2.png": png(grey(6))}
    one = read(zip_of(entries), tmp_path / "one")
    two = read(tar_of(dict(reversed(entries.items())), "w:gz"), tmp_path / "two")
    assert one.sha256 == two.sha256 and one.classes == ["x", "y"]


def test_greyscale_beside_colour_makes_everything_rgb(tmp_path: Path) -> None:
    red = np.zeros((8, 8, 3), dtype=np.uint8)
    red[..., 0] = 200
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 1] = 100
    wide = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)  # 16-bit greyscale
    archive = zip_of({"a.png": png(grey(50)), "b.png": png(red), "c.png": png(rgba), "d.png": png(wide)})
    data = read(archive, tmp_path)
    images, _, _ = tensors(data)
    assert data.shape == (3, 8, 8)
    assert images[0, :, 4, 4].tolist() == [50, 50, 50]  # grey, made RGB
    assert images[1, :, 4, 4].tolist() == [200, 0, 0]
    assert images[2, :, 4, 4].tolist() == [0, 100, 0]  # alpha dropped
    assert images[3, 0, 7, 7] == round(63 * 1000 / 257)  # 16 bits scaled to 8


def test_all_greyscale_stays_one_channel(tmp_path: Path) -> None:
    one_bit = Image.fromarray(grey(0) > 0)  # mode "1"
    out = io.BytesIO()
    one_bit.save(out, "PNG")
    assert read(zip_of({"a.png": png(grey(9)), "b.png": out.getvalue()}), tmp_path).shape == (1, 8, 8)


def test_images_of_different_sizes_are_refused_naming_the_sizes(tmp_path: Path) -> None:
    entries = {"a.png": png(grey(1, (8, 8))), "b.png": png(grey(2, (8, 8))), "c.png": png(grey(3, (6, 10)))}
    e = refused(zip_of(entries), tmp_path)
    assert (e.status, e.code) == (422, "image_sizes_differ")
    assert "8×8 (2, e.g. a.png)" in e.message and "10×6 (1, e.g. c.png)" in e.message and "image_size" in e.message
    assert e.detail is not None and e.detail["sizes"][1] == {"width": 10, "height": 6, "images": 1, "example": "c.png"}


def test_image_size_crops_the_centre_and_resizes(tmp_path: Path) -> None:
    wide = np.zeros((8, 16), dtype=np.uint8)
    wide[:, 4:12] = 255  # the centre square white, the sides black
    data = read(zip_of({"a.png": png(wide), "b.png": png(grey(7, (12, 12)))}), tmp_path, image_size=4)
    images, _, _ = tensors(data)
    assert data.shape == (1, 4, 4) and int(images[0].min()) >= 200  # no black side left (Lanczos bleeds a little)


def test_idx_files_with_labels_train_split_first(tmp_path: Path) -> None:
    train, test = np.full((3, 5, 5), 1), np.full((2, 5, 5), 2)
    archive = tar_of(
        {
            "mnist/t10k-images-idx3-ubyte.gz": gzip.compress(idx_images(test)),
            "mnist/t10k-labels-idx1-ubyte": idx_labels([9, 0]),
            "mnist/train-images-idx3-ubyte": idx_images(train),
            "mnist/train-labels-idx1-ubyte.gz": gzip.compress(idx_labels([3, 1, 4])),
        },
        "w:gz",
    )
    data = read(archive, tmp_path)
    images, labels, _ = tensors(data)
    assert (data.format, data.count, data.shape) == ("idx", 5, (1, 5, 5))
    assert images[:, 0, 0, 0].tolist() == [1, 1, 1, 2, 2] and labels is not None
    assert labels.tolist() == [3, 1, 4, 9, 0] and data.classes == [str(i) for i in range(10)]


@pytest.mark.parametrize("compress", [False, True])
def test_a_lone_idx_file_is_a_dataset(tmp_path: Path, compress: bool) -> None:
    raw = idx_images(np.arange(2 * 4 * 6).reshape(2, 4, 6))
    data = read(io.BytesIO(gzip.compress(raw) if compress else raw), tmp_path)
    images, labels, _ = tensors(data)
    assert (data.format, data.shape, labels) == ("idx", (1, 4, 6), None)
    assert images.flatten().tolist() == list(range(48))


@pytest.mark.parametrize(
    ("entries", "complaint"),
    [
        ({"a-images-idx3-ubyte": idx_images(np.zeros((3, 2, 2))), "a-labels-idx1-ubyte": idx_labels([1])}, "3 images"),
        ({"a-images-idx3-ubyte": idx_images(np.zeros((1, 2, 2))), "b-labels-idx1-ubyte": idx_labels([1])}, "pair up"),
        ({"a-images-idx3-ubyte": idx_images(np.zeros((3, 2, 2)))[:-1]}, "ends after 2"),
        ({"a-images-idx3-ubyte": b"\0\0\x08\x01" + bytes(20)}, "not an IDX image file"),
        ({"a-images-idx3-ubyte": idx_images(np.zeros((1, 2, 2))), "b.png": png(grey(1))}, "one kind"),
    ],
)
def test_idx_files_that_do_not_add_up_are_refused(tmp_path: Path, entries: dict[str, bytes], complaint: str) -> None:
    e = refused(zip_of(entries), tmp_path)
    assert e.status == 422 and complaint in e.message


# --- what an archive may not do ------------------------------------------------------------------------------


def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bomb = png(np.zeros((400, 300), dtype=np.uint8))  # 120,000 pixels in a few hundred bytes
    assert len(bomb) < 2000
    decoded: list[tuple[int, int]] = []
    decode = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile):  # what Pillow's PNG decoder runs to decode the pixels
        decoded.append(self.size)
        return decode(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    e = refused(zip_of({"ok/a.png": png(grey(1)), "ok/bomb.png": bomb}), tmp_path)
    assert (e.status, e.code) == (422, "image_too_large") and "ok/bomb.png is 300×400 = 120000 pixels" in e.message
    assert e.detail == {"entry": "ok/bomb.png", "limit": 4096, "setting": "GANSERVE_DATASET_MAX_IMAGE_PIXELS"}
    assert (8, 8) in decoded and (300, 400) not in decoded  # a.png's pixels only


def test_an_idx_file_of_too_large_images_is_refused(tmp_path: Path) -> None:
    e = refused(io.BytesIO(struct.pack(">IIII", 0x803, 1, 100, 100) + bytes(10)), tmp_path)
    assert e.code == "image_too_large" and "GANSERVE_DATASET_MAX_IMAGE_PIXELS" in e.message


def special(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    ("archive", "code", "entry"),
    [
        (lambda: zip_of({"../evil.png": png(grey(1))}), "unsafe_path", "../evil.png"),
        (lambda: zip_of({"a/../../evil.png": png(grey(1))}), "unsafe_path", "a/../../evil.png"),
        (lambda: zip_of({"..\\..\\evil.png": png(grey(1))}), "unsafe_path", "..\\..\\evil.png"),
        (lambda: zip_of({"C:/evil.png": png(grey(1))}), "unsafe_path", "C:/evil.png"),
        (lambda: tar_of({"/etc/evil.png": png(grey(1))}), "unsafe_path", "/etc/evil.png"),
        (lambda: tar_of({"x.png": special("x.png", tarfile.SYMTYPE, "/etc/passwd")}), "link_in_archive", "x.png"),
        (
            lambda: tar_of({"a.png": png(grey(1)), "b.png": special("b.png", tarfile.LNKTYPE, "a.png")}),
            "link_in_archive",
            "b.png",
        ),
        (lambda: tar_of({"p": special("p", tarfile.FIFOTYPE)}), "special_file", "p"),
        (lambda: tar_of({"d": special("d", tarfile.CHRTYPE)}), "special_file", "d"),
    ],
)
def test_links_special_files_and_paths_leaving_the_archive_are_refused(tmp_path: Path, archive, code, entry) -> None:
    e = refused(archive(), tmp_path)
    assert (e.status, e.code) == (422, code) and e.detail == {"entry": entry}


def test_a_zip_symlink_is_refused(tmp_path: Path) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        link = zipfile.ZipInfo("faces/a.png")
        link.external_attr = 0o120777 << 16  # S_IFLNK
        z.writestr(link, "/etc/passwd")
    out.seek(0)
    assert refused(out, tmp_path).code == "link_in_archive"


@pytest.mark.parametrize(
    ("upload", "code", "complaint"),
    [
        (b"just some text, not an archive", "unsupported_format", "not an archive"),
        (png(grey(1)), "unsupported_format", "single image"),
        (b"BZh91AY&SY" + bytes(600), "unsupported_format", "bzip2"),
        (gzip.compress(b"plain text in a gzip"), "unsupported_format", "neither a tar"),
        (b"PK\x03\x04" + bytes(100), "invalid_archive", "zip archive cannot be read"),
        (idx_labels([1, 2]), "unsupported_format", "label file alone"),
    ],
)
def test_uploads_of_other_formats_are_refused(tmp_path: Path, upload: bytes, code: str, complaint: str) -> None:
    e = refused(io.BytesIO(upload), tmp_path)
    assert (e.status, e.code) == (422, code) and complaint in e.message and "zip" in e.message


@pytest.mark.parametrize(
    ("entries", "code", "complaint"),
    [
        ({"a.gif": b"GIF89a" + bytes(20)}, "unsupported_file", "neither a PNG or JPEG image"),
        (
            {"a.png": png(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8))[:2000]},
            "unreadable_image",
            "a.png is not",
        ),
        ({"a.png": b"\x89PNG\r\n\x1a\n" + b"garbage"}, "unreadable_image", "a.png"),
        ({"README.txt": b"nothing else"}, "no_images", "no images"),
        ({"a.png": png(grey(1)), "cats/b.png": png(grey(2))}, "archive_layout", "'cats/b.png'"),
        ({"a/b/c.png": png(grey(1)), "a/d.png": png(grey(2))}, "archive_layout", "'a/b/c.png'"),
    ],
)
def test_entries_that_are_not_a_dataset_are_refused(tmp_path: Path, entries, code: str, complaint: str) -> None:
    e = refused(zip_of(entries), tmp_path)
    assert (e.status, e.code) == (422, code) and complaint in e.message


def test_an_empty_tar_has_no_images(tmp_path: Path) -> None:
    assert refused(tar_of({}), tmp_path).code == "no_images"


# --- limits ----------------------------------------------------------------------------------------------------


def limits(**changes: int) -> ArchiveLimits:
    return ArchiveLimits(**{**LIMITS.__dict__, **changes})


def test_an_archive_over_the_byte_limit_is_413(tmp_path: Path) -> None:
    archive = zip_of({f"{i}.png": png(np.random.default_rng(i).integers(0, 255, (8, 8), np.uint8)) for i in range(9)})
    e = refused(archive, tmp_path, limits(max_bytes=500))
    assert (e.status, e.code) == (413, "archive_too_large") and "GANSERVE_DATASET_MAX_BYTES" in e.message
    assert e.detail == {"limit": 500, "setting": "GANSERVE_DATASET_MAX_BYTES"}


def test_more_images_than_the_limit_is_413(tmp_path: Path) -> None:
    e = refused(zip_of({f"{i}.png": png(grey(i)) for i in range(6)}), tmp_path, limits(max_images=5))
    assert (e.status, e.code) == (413, "too_many_images") and "at most" not in e.message
    assert e.detail == {"limit": 5, "setting": "GANSERVE_DATASET_MAX_IMAGES"}
    e = refused(io.BytesIO(idx_images(np.zeros((6, 2, 2)))), tmp_path, limits(max_images=5))
    assert e.code == "too_many_images"  # from the IDX header, before the images are read


def test_more_entries_than_images_allow_is_413(tmp_path: Path) -> None:
    e = refused(zip_of({f"{i}.txt": b"" for i in range(111)}), tmp_path, limits(max_images=5))  # 2 × 5 + 100
    assert (e.status, e.code) == (413, "too_many_entries")


def test_images_decoding_past_the_limit_are_413(tmp_path: Path) -> None:
    archive = zip_of({f"{i}.png": png(grey(i, (32, 32))) for i in range(5)})  # 1 KiB each decoded
    e = refused(archive, tmp_path, limits(max_decoded_bytes=4 * 1024 + 100))
    assert (e.status, e.code) == (413, "dataset_decodes_too_large")
    assert e.detail == {"limit": 4196, "setting": "GANSERVE_DATASET_MAX_DECODED_BYTES"}


def test_greyscale_made_rgb_past_the_limit_is_413(tmp_path: Path) -> None:
    colour = np.zeros((32, 32, 3), dtype=np.uint8)
    archive = zip_of({"a.png": png(colour), **{f"{i}.png": png(grey(i, (32, 32))) for i in range(3)}})
    e = refused(archive, tmp_path, limits(max_decoded_bytes=3 * 1024 * 3 + 100))  # 6 KiB staged, 12 KiB as RGB
    assert e.code == "dataset_decodes_too_large" and "(12288 bytes)" in e.message


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_an_archive_that_unpacks_past_the_limit_is_413(tmp_path: Path, kind: str) -> None:
    """A few KiB of zeros that unpack to megabytes."""
    # A tar.gz is unpacked as a stream (text files included); a zip's entries one by one (text files not read).
    archive = tar_of({"notes.txt": bytes(8 << 20)}, "w:gz") if kind == "tar.gz" else zip_of({"a.png": bytes(8 << 20)})
    assert len(archive.getvalue()) < 64 * 1024
    e = refused(archive, tmp_path)
    assert (e.status, e.code) == (
        413,
        "archive_unpacks_too_large",
    ) and "GANSERVE_DATASET_MAX_DECODED_BYTES" in e.message


def test_an_entry_larger_than_an_archive_may_be_is_413(tmp_path: Path) -> None:
    e = refused(zip_of({"a.png": bytes(2 << 20)}), tmp_path, limits(max_decoded_bytes=8 << 20))
    assert (e.status, e.code) == (413, "entry_too_large") and e.detail is not None and e.detail["entry"] == "a.png"


# --- into training ---------------------------------------------------------------------------------------------


def canonical(tmp_path: Path, **kwargs: object) -> CanonicalDataset:
    entries = {f"{c}/{i}.png": png(grey(10 * i + k, (6, 6))) for k, c in enumerate("ab") for i in range(3)}
    return read(zip_of(entries), tmp_path, **kwargs)


def test_the_canonical_file_loads_as_a_training_dataset(tmp_path: Path) -> None:
    data = canonical(tmp_path)
    config = TrainConfig(model_name="x", dataset="ds-0123456789ab", max_samples=4, image_size=12)
    ds = load_training_data(config, tmp_path, data.path)
    assert ds.samples.shape == (4, 1, 12, 12) and ds.samples.dtype == torch.uint8
    assert ds.labels is not None and ds.labels.tolist() == [0, 0, 0, 1] and ds.num_classes == 2
    unlabelled = read(zip_of({"a.png": png(grey(1))}), tmp_path / "u")
    assert load_training_data(TrainConfig(model_name="x", dataset="faces"), tmp_path, unlabelled.path).labels is None


def test_an_uploaded_dataset_needs_its_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="submit the job with POST /train"):
        load_training_data(TrainConfig(model_name="x", dataset="faces"), tmp_path)
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DatasetError, match="not a readable dataset file"):
        load_training_data(TrainConfig(model_name="x", dataset="faces"), tmp_path, tmp_path / "bad.safetensors")


# --- any bytes -------------------------------------------------------------------------------------------------

SEEDS = {
    "zip": zip_of({"a/1.png": png(grey(1)), "b/2.jpg": png(grey(2), "JPEG")}).getvalue(),
    "tar.gz": tar_of({"1.png": png(grey(1)), "2.png": png(grey(2))}, "w:gz").getvalue(),
    "tar": tar_of({"x/1.png": png(grey(1)), "x/t-labels-idx1-ubyte": idx_labels([1])}).getvalue(),
    "idx.gz": gzip.compress(idx_images(np.zeros((2, 3, 3)))),
}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(sorted(SEEDS)),
    edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(min_value=0)),
)
def test_any_damaged_upload_is_read_or_refused_never_an_error(kind: str, edits, cut: int | None) -> None:
    data = bytearray(SEEDS[kind])
    for at, value in edits:
        data[at % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    with tempfile.TemporaryDirectory() as folder:
        try:
            read_archive(io.BytesIO(bytes(data)), Path(folder), LIMITS)
        except DatasetRejected as e:
            assert e.status in (413, 422) and e.message


def test_a_zip_entry_with_an_empty_name_is_passed_over() -> None:
    """Found by the test above (CI, 2026-12-05): a damaged central directory naming an entry "" made zipfile's
    ZipInfo.is_dir raise IndexError, a 500. Such an entry has nothing to read, like any entry whose path has no
    parts; the images beside it are read."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(zipfile.ZipInfo(""), b"x")
        zf.writestr("a/1.png", png(grey(1)))
        zf.writestr("b/2.png", png(grey(2)))
    archive.seek(0)
    with tempfile.TemporaryDirectory() as folder:
        read_archive(archive, Path(folder), LIMITS)
