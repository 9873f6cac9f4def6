"""An uploaded dataset archive (POST /datasets) → the canonical dataset file that jobs train from.

Accepted: a zip, tar or tar.gz of PNG/JPEG images, at the top or in one level of class sub-folders (labels 0..K-1
in the sorted order of the folder names; folders that wrap everything are looked through), or MNIST's IDX files
(`<split>-images-idx3-ubyte[.gz]`, labels from `<split>-labels-idx1-ubyte[.gz]`), in such an archive or alone.
Hidden files, `__MACOSX/` and text files (README, .txt, .csv …) are passed over; anything else is refused.

Nothing in the archive is trusted: links, special files, absolute paths and `..` are refused (nothing is ever
extracted to disk); an image's size is checked against the pixel budget before it is decoded (a decompression
bomb is refused, not decoded), and only Pillow's PNG and JPEG decoders run; the archive's bytes, its entries and
images, and what it unpacks and decodes to are bounded (`ArchiveLimits`, from the GANSERVE_DATASET_* settings).
Every refusal is a `DatasetRejected`: an HTTP status (413 for a size or count, 422 otherwise), a code, and a
message naming the limit and its setting or the entry at fault.

Images are greyscale when all of them are, RGB otherwise; one size, or `image_size` (each centre-cropped to a
square, then resized). Out: a safetensors file (uint8 `images` N×C×H×W, int64 `labels` when labelled, the class
names in its metadata), identified by its SHA-256 alone, and a preview grid PNG. Decoded images go to a scratch
file as they arrive, so memory holds about one image at a time, whatever the archive's size.
"""

import gzip
import hashlib
import io
import json
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps

from core.datasets import DatasetFormat
from core.settings import Settings

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
IDX_IMAGES = re.compile(r"^(?P<split>.+)-images-idx3-ubyte(?:\.gz)?$")
IDX_LABELS = re.compile(r"^(?P<split>.+)-labels-idx1-ubyte(?:\.gz)?$")
DECODERS = ["PNG", "JPEG"]  # the only Pillow plugins an upload reaches
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
PASSED_OVER_SUFFIXES = frozenset({".txt", ".md", ".rst", ".csv", ".tsv", ".json", ".yaml", ".yml", ".xml", ".html"})
PASSED_OVER_FILES = frozenset({"thumbs.db", "desktop.ini"})
PASSED_OVER_STEMS = frozenset({"readme", "license", "licence", "notice", "copying"})
GREY_MODES = frozenset({"1", "L", "LA", "La"})
MAX_CLASSES = 10_000
ENTRIES_PER_IMAGE = 2  # entries an archive may hold per image it may hold: a folder per image, at most
PREVIEW_COUNT = 64
PREVIEW_TILE = 64  # the longest side of an image in the preview grid, in pixels
IDX_CHUNK = 4096  # IDX images read and staged at a time
HEAD = 512


class DatasetRejected(Exception):
    """The upload is refused: `status` 413 (a size or count limit) or 422, a short `code`, a message that says
    what is wrong and how to fix it, and `detail` (the limit and its setting, or the entry at fault)."""

    def __init__(self, status: int, code: str, message: str, detail: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail


@dataclass(frozen=True)
class ArchiveLimits:
    max_bytes: int  # the archive as uploaded
    max_images: int
    max_image_pixels: int  # of one image, before it is decoded
    max_decoded_bytes: int  # what the archive unpacks to, and what its images decode to, each in all

    @classmethod
    def of(cls, settings: Settings) -> "ArchiveLimits":
        return cls(
            max_bytes=settings.dataset_max_bytes,
            max_images=settings.dataset_max_images,
            max_image_pixels=settings.dataset_max_image_pixels,
            max_decoded_bytes=settings.dataset_max_decoded_bytes,
        )


@dataclass(frozen=True)
class CanonicalDataset:
    path: Path  # the safetensors file
    preview: Path  # a PNG grid of PREVIEW_COUNT of its images, spread over the dataset (every class shows)
    sha256: str
    size_bytes: int
    format: DatasetFormat
    count: int
    shape: tuple[int, int, int]  # C, H, W
    classes: list[str] | None


# --- refusals -----------------------------------------------------------------------------------------------


def _limit(status: int, code: str, message: str, limit: int, setting: str) -> DatasetRejected:
    return DatasetRejected(status, code, message, {"limit": limit, "setting": setting})


def archive_too_large(limits: ArchiveLimits, size: int | None = None) -> DatasetRejected:
    had = f" ({size} bytes)" if size is not None else ""
    return _limit(
        413,
        "archive_too_large",
        f"The dataset archive{had} is larger than this server accepts: at most {limits.max_bytes} bytes "
        "(GANSERVE_DATASET_MAX_BYTES). Upload fewer or smaller images, or ask the operator to raise the limit.",
        limits.max_bytes,
        "GANSERVE_DATASET_MAX_BYTES",
    )


def _entry_too_large(where: str, limits: ArchiveLimits) -> DatasetRejected:
    return DatasetRejected(
        413,
        "entry_too_large",
        f"Archive entry {where!r} unpacks to more than {limits.max_bytes} bytes, more than a whole archive may have "
        "(GANSERVE_DATASET_MAX_BYTES); no image is that large. Remove it.",
        {"entry": where, "limit": limits.max_bytes, "setting": "GANSERVE_DATASET_MAX_BYTES"},
    )


def _too_many_images(limits: ArchiveLimits) -> DatasetRejected:
    return _limit(
        413,
        "too_many_images",
        f"The archive holds more than {limits.max_images} images, the most this server accepts in one dataset "
        "(GANSERVE_DATASET_MAX_IMAGES). Upload a subset.",
        limits.max_images,
        "GANSERVE_DATASET_MAX_IMAGES",
    )


def _too_many_entries(limits: ArchiveLimits, most: int) -> DatasetRejected:
    return _limit(
        413,
        "too_many_entries",
        f"The archive has more than {most} entries ({ENTRIES_PER_IMAGE} per image this server accepts, "
        f"GANSERVE_DATASET_MAX_IMAGES={limits.max_images}). Archive the images alone.",
        most,
        "GANSERVE_DATASET_MAX_IMAGES",
    )


def _too_much_unpacked(limits: ArchiveLimits) -> DatasetRejected:
    return _limit(
        413,
        "archive_unpacks_too_large",
        f"The archive unpacks to more than {limits.max_decoded_bytes} bytes, the most this server unpacks "
        "(GANSERVE_DATASET_MAX_DECODED_BYTES). Upload fewer or smaller images.",
        limits.max_decoded_bytes,
        "GANSERVE_DATASET_MAX_DECODED_BYTES",
    )


def _too_much_decoded(limits: ArchiveLimits, total: int | None = None) -> DatasetRejected:
    had = f" ({total} bytes)" if total is not None else ""
    return _limit(
        413,
        "dataset_decodes_too_large",
        f"The images decode to more{had} than {limits.max_decoded_bytes} bytes in all, the most this server holds "
        "for one dataset (GANSERVE_DATASET_MAX_DECODED_BYTES). Upload fewer images, or smaller ones (`image_size`).",
        limits.max_decoded_bytes,
        "GANSERVE_DATASET_MAX_DECODED_BYTES",
    )


def _too_many_pixels(where: str, width: int, height: int, limits: ArchiveLimits) -> DatasetRejected:
    return DatasetRejected(
        422,
        "image_too_large",
        f"{where} is {width}×{height} = {width * height} pixels, more than one image may have on this server: "
        f"{limits.max_image_pixels} (GANSERVE_DATASET_MAX_IMAGE_PIXELS). It was not decoded; shrink it first.",
        {"entry": where, "limit": limits.max_image_pixels, "setting": "GANSERVE_DATASET_MAX_IMAGE_PIXELS"},
    )


def _bad_entry(code: str, where: str, message: str) -> DatasetRejected:
    return DatasetRejected(422, code, message, {"entry": where})


ACCEPTED = (
    "a .zip, .tar or .tar.gz of PNG/JPEG images (optionally one level of class sub-folders), or MNIST IDX files "
    "(*-images-idx3-ubyte[.gz], with *-labels-idx1-ubyte[.gz])"
)


def _unsupported(what: str) -> DatasetRejected:
    return DatasetRejected(422, "unsupported_format", f"{what}; upload {ACCEPTED}.")


# --- reading within budgets ---------------------------------------------------------------------------------


@dataclass
class _Budget:
    """Bytes unpacked from the archive so far, refused past the limit."""

    limits: ArchiveLimits
    used: int = 0

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.limits.max_decoded_bytes:
            raise _too_much_unpacked(self.limits)


class _Counted(io.RawIOBase):
    """A stream whose bytes are taken from a `_Budget` as they are read, after an optional prefix already read."""

    def __init__(self, stream: IO[bytes], budget: _Budget, prefix: bytes = b""):
        self.stream, self.budget, self.prefix = stream, budget, prefix

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.prefix:
            n = min(len(view), len(self.prefix))
            view[:n], self.prefix = self.prefix[:n], self.prefix[n:]
            return n
        data = self.stream.read(len(view))
        self.budget.take(len(data))
        view[: len(data)] = data
        return len(data)


def _read_up_to(stream: IO[bytes], n: int) -> bytes:
    """Up to `n` bytes: fewer only at the end of the stream."""
    chunks, left = [], n
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# --- paths ----------------------------------------------------------------------------------------------------


def _safe_parts(name: str) -> tuple[str, ...]:
    """The entry's path as parts, refusing what could leave the archive if it were extracted."""
    try:
        name.encode("utf-8")  # a tar's undecodable bytes (kept as surrogates) could name no class, nor be shown
    except UnicodeEncodeError:
        shown = name.encode("utf-8", "replace").decode()
        raise _bad_entry(
            "unsafe_path", shown, f"Archive entry {shown!r} has a name that is not UTF-8; rename it."
        ) from None
    unix = name.replace("\\", "/")  # a Windows archiver's separators are separators
    if "\x00" in name or unix.startswith("/") or re.match(r"^[A-Za-z]:", unix):
        raise _bad_entry(
            "unsafe_path", name, f"Archive entry {name!r} has an absolute path; archive the files by relative paths."
        )
    parts = tuple(p for p in unix.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _bad_entry(
            "unsafe_path", name, f"Archive entry {name!r} has '..' in its path, which leaves the archive; refused."
        )
    return parts


def _passed_over(parts: tuple[str, ...]) -> bool:
    """Hidden files and folders, `__MACOSX/`, Thumbs.db, README, LICENSE and text files: not images, and not
    refused either."""
    base = Path(parts[-1].lower())
    return (
        any(p.startswith(".") or p.lower() == "__macosx" for p in parts)
        or base.name in PASSED_OVER_FILES
        or base.suffix in PASSED_OVER_SUFFIXES
        or base.stem in PASSED_OVER_STEMS
    )


def _link(where: str) -> DatasetRejected:
    return _bad_entry(
        "link_in_archive", where, f"Archive entry {where!r} is a link; links are refused: archive the file itself."
    )


def _special(where: str) -> DatasetRejected:
    return _bad_entry(
        "special_file", where, f"Archive entry {where!r} is a device, pipe or socket, not a file; remove it."
    )


# --- decoding one image ---------------------------------------------------------------------------------------


def _pixels(img: Image.Image) -> np.ndarray:
    """C×H×W uint8: C 1 for greyscale modes (16-bit ones scaled to 8 bits), else 3 (RGB, alpha dropped)."""
    if img.mode.startswith("I") or img.mode == "F":  # 16-bit (or float) greyscale PNGs
        a = np.asarray(img, dtype=np.float64)
        scale = 257.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 1.0
        return np.clip(np.rint(a / scale), 0, 255).astype(np.uint8)[None]
    if img.mode in GREY_MODES:
        return np.asarray(img.convert("L"), dtype=np.uint8)[None]
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))


def _fit(pixels: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop C×H×W to a square, resize it to size×size (Lanczos)."""
    img = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    fitted = ImageOps.fit(img, (size, size), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    out = np.asarray(fitted, dtype=np.uint8)
    return out[None] if out.ndim == 2 else np.ascontiguousarray(out.transpose(2, 0, 1))


def decode_image(data: bytes, where: str, limits: ArchiveLimits, image_size: int | None = None) -> np.ndarray:
    """One PNG or JPEG → C×H×W uint8, its pixel count checked before its pixels are decoded."""
    try:
        with Image.open(io.BytesIO(data), formats=DECODERS) as img:
            width, height = img.size
            if width * height > limits.max_image_pixels:
                raise _too_many_pixels(where, width, height, limits)
            img.load()
            pixels = _pixels(ImageOps.exif_transpose(img))  # as a viewer shows it: camera rotation applied
    except DatasetRejected:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own ceiling, when the setting is above it
        raise DatasetRejected(
            422,
            "image_too_large",
            f"{where}: {e} It was not decoded; shrink it first.",
            {"entry": where, "limit": limits.max_image_pixels, "setting": "GANSERVE_DATASET_MAX_IMAGE_PIXELS"},
        ) from None
    except Exception as e:  # whatever a decoder raises on bytes made to break it: the image is unreadable
        raise _bad_entry(
            "unreadable_image",
            where,
            f"{where} is not a readable PNG or JPEG image ({type(e).__name__}: {e}); replace or remove it.",
        ) from None
    return _fit(pixels, image_size) if image_size is not None else pixels


# --- staging: decoded images on scratch disk as they arrive --------------------------------------------------


@dataclass(frozen=True)
class _Block:
    """`count` images of one shape, contiguous in the scratch file from `offset`."""

    key: tuple[Any, ...]  # the order of the canonical dataset
    group: str  # an image's folder path ("" at the top); an IDX split's name
    where: str  # the entry it came from
    offset: int
    count: int
    shape: tuple[int, int, int]

    @property
    def nbytes(self) -> int:
        c, h, w = self.shape
        return self.count * c * h * w


@dataclass
class _Staging:
    file: BinaryIO
    limits: ArchiveLimits
    blocks: list[_Block] = field(default_factory=list)
    images: int = 0
    decoded: int = 0

    def room_for(self, count: int) -> None:
        if self.images + count > self.limits.max_images:
            raise _too_many_images(self.limits)

    def add(self, key: tuple[Any, ...], group: str, where: str, pixels: np.ndarray) -> None:
        """N×C×H×W (or one C×H×W) uint8 images."""
        batch = pixels if pixels.ndim == 4 else pixels[None]
        self.room_for(len(batch))
        self.decoded += batch.nbytes
        if self.decoded > self.limits.max_decoded_bytes:
            raise _too_much_decoded(self.limits)
        offset = self.file.seek(0, io.SEEK_END)
        self.file.write(np.ascontiguousarray(batch).tobytes())
        shape = tuple(int(d) for d in batch.shape[1:])
        self.blocks.append(_Block(key, group, where, offset, len(batch), shape))  # type: ignore[arg-type]
        self.images += len(batch)

    def read(self, block: _Block, first: int = 0, count: int | None = None) -> np.ndarray:
        c, h, w = block.shape
        count = block.count - first if count is None else count
        self.file.seek(block.offset + first * c * h * w)
        return np.frombuffer(self.file.read(count * c * h * w), dtype=np.uint8).reshape(count, c, h, w)


# --- the archive reader ---------------------------------------------------------------------------------------


@dataclass
class _Reader:
    limits: ArchiveLimits
    staging: _Staging
    image_size: int | None
    budget: _Budget
    entries: int = 0
    idx_labels: dict[str, np.ndarray] = field(default_factory=dict)

    def entry(self, name: str) -> tuple[str, ...]:
        """Count an entry and check its path."""
        most = ENTRIES_PER_IMAGE * self.limits.max_images + 100
        self.entries += 1
        if self.entries > most:
            raise _too_many_entries(self.limits, most)
        return _safe_parts(name)

    def file(self, parts: tuple[str, ...], where: str, stream: IO[bytes]) -> None:
        """A regular file of the archive (`stream`: its bytes, counted against the unpacked budget by the caller)."""
        if not parts or _passed_over(parts):
            return
        base = parts[-1]
        if IDX_IMAGES.match(base) or IDX_LABELS.match(base):
            self.idx(parts, where, _gunzipped(stream, self.budget) if base.endswith(".gz") else stream)
            return
        data = _read_up_to(stream, self.limits.max_bytes + 1)
        if len(data) > self.limits.max_bytes:
            raise _entry_too_large(where, self.limits)
        if not (data.startswith(PNG_SIGNATURE) or data.startswith(JPEG_SIGNATURE)):
            raise _bad_entry(
                "unsupported_file",
                where,
                f"Archive entry {where!r} is neither a PNG or JPEG image nor an IDX file; remove it (accepted: "
                f"{ACCEPTED}).",
            )
        self.staging.room_for(1)
        pixels = decode_image(data, where, self.limits, self.image_size)
        self.staging.add(("images", "/".join(parts)), "/".join(parts[:-1]), where, pixels)

    def idx(self, parts: tuple[str, ...], where: str, stream: IO[bytes]) -> None:
        base = parts[-1]
        labels = IDX_LABELS.match(base)
        if labels is not None:
            split = labels["split"]
            if split in self.idx_labels:
                raise _bad_entry("invalid_idx", where, f"Two label files for split {split!r}; keep one.")
            self.idx_labels[split] = _idx_labels(stream, where, self.limits)
            return
        match = IDX_IMAGES.match(base)
        assert match is not None
        split = match["split"]
        if any(b.group == split for b in self.staging.blocks):
            raise _bad_entry("invalid_idx", where, f"Two image files for split {split!r}; keep one.")
        self._idx_images(split, where, stream)

    def _idx_images(self, split: str, where: str, stream: IO[bytes]) -> None:
        head = _read_up_to(stream, 16)
        if len(head) < 16 or struct.unpack(">I", head[:4])[0] != IDX_IMAGES_MAGIC:
            raise _bad_entry(
                "invalid_idx", where, f"{where} is not an IDX image file (magic 0x00000803, unsigned bytes, N×H×W)."
            )
        _, n, rows, cols = struct.unpack(">IIII", head)
        if rows == 0 or cols == 0:
            raise _bad_entry("invalid_idx", where, f"{where} says its images are {rows}×{cols}.")
        if rows * cols > self.limits.max_image_pixels:
            raise _too_many_pixels(where, cols, rows, self.limits)
        self.staging.room_for(n)
        rank = 0 if split == "train" else 1  # the training split first, as the built-in datasets load
        done = 0
        while done < n:
            count = min(IDX_CHUNK, n - done)
            data = _read_up_to(stream, count * rows * cols)
            if len(data) < count * rows * cols:
                whole = done + len(data) // (rows * cols)
                raise _bad_entry(
                    "invalid_idx", where, f"{where} says it holds {n} images of {rows}×{cols} but ends after {whole}."
                )
            batch = np.frombuffer(data, dtype=np.uint8).reshape(count, 1, rows, cols)
            if self.image_size is not None:
                batch = np.stack([_fit(img, self.image_size) for img in batch])
            self.staging.add(("idx", rank, split, done), split, where, batch)
            done += count
        if stream.read(1):
            raise _bad_entry("invalid_idx", where, f"{where} has bytes after its {n} images of {rows}×{cols}.")

    # --- the kinds of archive ---

    def zip(self, source: BinaryIO) -> None:
        try:
            with zipfile.ZipFile(source) as zf:
                for info in zf.infolist():
                    parts = self.entry(info.filename)
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode):
                        raise _link(info.filename)
                    if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                        raise _special(info.filename)
                    # A damaged central directory can name an entry "" (ZipInfo.is_dir would fail on it): as
                    # with any entry whose path has no parts, there is nothing to read.
                    if not info.filename or info.is_dir():
                        continue
                    if info.flag_bits & 0x1:
                        raise _bad_entry(
                            "encrypted_entry", info.filename, f"Archive entry {info.filename!r} is encrypted."
                        )
                    with zf.open(info) as f:
                        self.file(parts, info.filename, io.BufferedReader(_Counted(f, self.budget), 1 << 16))
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError, ValueError, struct.error) as e:
            raise _invalid_archive("zip", e) from None

    def tar(self, stream: IO[bytes]) -> None:
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tf:
                for member in tf:
                    parts = self.entry(member.name)
                    if member.issym() or member.islnk():
                        raise _link(member.name)
                    if member.isdir():
                        continue
                    if not member.isreg():
                        raise _special(member.name)
                    f = tf.extractfile(member)
                    assert f is not None  # a regular file
                    self.file(parts, member.name, f)  # counted as the archive's stream
        except (tarfile.TarError, zlib.error, EOFError, OSError, ValueError) as e:
            raise _invalid_archive("tar", e) from None


def _invalid_archive(kind: str, e: Exception) -> DatasetRejected:
    return DatasetRejected(
        422, "invalid_archive", f"The {kind} archive cannot be read ({type(e).__name__}: {e}); upload it again."
    )


def _gunzipped(stream: IO[bytes], budget: _Budget) -> IO[bytes]:
    return io.BufferedReader(_Counted(gzip.GzipFile(fileobj=stream, mode="rb"), budget), 1 << 16)


def _idx_labels(stream: IO[bytes], where: str, limits: ArchiveLimits) -> np.ndarray:
    head = _read_up_to(stream, 8)
    if len(head) < 8 or struct.unpack(">I", head[:4])[0] != IDX_LABELS_MAGIC:
        raise _bad_entry("invalid_idx", where, f"{where} is not an IDX label file (magic 0x00000801, unsigned bytes).")
    n = struct.unpack(">I", head[4:])[0]
    if n > limits.max_images:
        raise _too_many_images(limits)
    data = _read_up_to(stream, n + 1)
    if len(data) != n:
        raise _bad_entry("invalid_idx", where, f"{where} says it holds {n} labels but has {len(data)} bytes of them.")
    return np.frombuffer(data, dtype=np.uint8).astype(np.int64)


def _looks_like_tar(head: bytes) -> bool:
    if len(head) < HEAD:
        return False
    if head[:HEAD] == bytes(HEAD):  # an empty archive's end-of-archive blocks
        return True
    try:
        tarfile.TarInfo.frombuf(head[:HEAD], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def _read(source: BinaryIO, reader: _Reader) -> None:
    """Tell the kind of upload by its first bytes (never by its name), and read it."""
    head = _read_up_to(source, HEAD)
    source.seek(0)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        reader.zip(source)
        return
    if head[:2] == b"\x1f\x8b":
        try:
            inner = gzip.GzipFile(fileobj=source, mode="rb")
            inner_head = _read_up_to(inner, HEAD)
        except (OSError, EOFError, zlib.error) as e:
            raise _invalid_archive("gzip", e) from None
        reader.budget.take(len(inner_head))
        stream = io.BufferedReader(_Counted(inner, reader.budget, prefix=inner_head), 1 << 16)
        if inner_head[:4] == struct.pack(">I", IDX_IMAGES_MAGIC):
            try:
                reader._idx_images("upload", "the uploaded IDX file", stream)
            except (OSError, EOFError, zlib.error) as e:
                raise _invalid_archive("gzip", e) from None
        elif _looks_like_tar(inner_head):
            reader.tar(stream)
        else:
            raise _unsupported("The upload is gzip-compressed, but holds neither a tar archive nor an IDX image file")
        return
    if head[:4] == struct.pack(">I", IDX_IMAGES_MAGIC):
        reader._idx_images("upload", "the uploaded IDX file", source)
        return
    if head[:4] == struct.pack(">I", IDX_LABELS_MAGIC):
        raise _unsupported("The upload is an IDX label file alone: archive it with its image file")
    if _looks_like_tar(head):
        reader.tar(source)
        return
    if head.startswith((b"BZh", b"\xfd7zXZ", b"7z\xbc\xaf", b"Rar!")):
        raise _unsupported("The upload is compressed with bzip2, xz, 7-Zip or RAR, which this server does not read")
    if head.startswith((PNG_SIGNATURE, JPEG_SIGNATURE)):
        raise _unsupported("The upload is a single image, not a dataset: archive the folder of images")
    raise _unsupported("The upload is not an archive this server reads")


# --- from staged images to the canonical dataset --------------------------------------------------------------


def _layout(blocks: list[_Block], idx_labels: dict[str, np.ndarray]) -> tuple[DatasetFormat, list[_Block], Any]:
    """The format, the blocks in the dataset's order, and (labels per block, class names) or None."""
    if not blocks:
        if idx_labels:
            raise DatasetRejected(422, "no_images", "The archive holds IDX labels but no IDX image file for them.")
        raise DatasetRejected(422, "no_images", f"The archive holds no images; upload {ACCEPTED}.")
    kinds = {b.key[0] for b in blocks}
    if len(kinds) > 1 or (kinds == {"images"} and idx_labels):
        raise DatasetRejected(
            422, "archive_layout", "The archive holds both PNG/JPEG images and IDX files; upload one kind."
        )
    ordered = sorted(blocks, key=lambda b: b.key)
    if kinds == {"idx"}:
        return "idx", ordered, _idx_classes(ordered, idx_labels)
    return "images", ordered, _folder_classes(ordered)


def _idx_classes(blocks: list[_Block], idx_labels: dict[str, np.ndarray]) -> Any:
    splits = list(dict.fromkeys(b.group for b in blocks))
    if not idx_labels:
        return None
    orphans = sorted(set(idx_labels) - set(splits))
    missing = [s for s in splits if s not in idx_labels]
    if orphans or missing:
        raise DatasetRejected(
            422,
            "archive_layout",
            f"IDX labels and images do not pair up (images without labels: {missing or 'none'}; labels without "
            f"images: {orphans or 'none'}); include both files of each split, or no label file at all.",
        )
    per_block, counts = [], Counter[str]()
    for b in blocks:
        labels = idx_labels[b.group]
        counts[b.group] += b.count
        per_block.append(labels[counts[b.group] - b.count : counts[b.group]])
    for split in splits:
        if counts[split] != len(idx_labels[split]):
            raise DatasetRejected(
                422,
                "invalid_idx",
                f"Split {split!r} has {counts[split]} images but {len(idx_labels[split])} labels; use the files of "
                "one release.",
            )
    top = int(max(int(labels.max(initial=0)) for labels in idx_labels.values()))
    return per_block, [str(i) for i in range(top + 1)]


def _folder_classes(blocks: list[_Block]) -> Any:
    """Images at the top: unlabelled. Images one folder down: a class per folder. Folders that hold everything
    (a folder archived with its own name, say) are looked through."""
    folders = [b.group.split("/") if b.group else [] for b in blocks]
    while all(len(f) >= 1 for f in folders) and len({f[0] for f in folders}) == 1:
        folders = [f[1:] for f in folders]
    depths = {len(f) for f in folders}
    if depths == {0}:
        return None
    if depths != {1}:
        example = {len(f): b.where for b, f in zip(blocks, folders, strict=True)}
        found = [example[d] for d in sorted(example)[:2]]
        raise DatasetRejected(
            422,
            "archive_layout",
            f"Images are either all at the archive's top, or all one folder down (a folder per class); here "
            f"{found[0]!r} and {found[1]!r} are at different depths. Move the images so that they are.",
            {"entries": found},
        )
    classes = sorted({f[0] for f in folders})
    if len(classes) > MAX_CLASSES:
        raise DatasetRejected(
            422, "too_many_classes", f"The archive has {len(classes)} class folders; at most {MAX_CLASSES}."
        )
    index = {name: i for i, name in enumerate(classes)}
    return [np.full(b.count, index[f[0]], dtype=np.int64) for b, f in zip(blocks, folders, strict=True)], classes


def _one_size(blocks: list[_Block]) -> tuple[int, int]:
    sizes = Counter[tuple[int, int]]()
    example: dict[tuple[int, int], str] = {}
    for b in blocks:
        size = b.shape[1:]
        sizes[size] += b.count
        example.setdefault(size, b.where)
    if len(sizes) > 1:
        found = [
            {"width": w, "height": h, "images": n, "example": example[(h, w)]} for (h, w), n in sizes.most_common()
        ]
        listed = ", ".join(f"{f['width']}×{f['height']} ({f['images']}, e.g. {f['example']})" for f in found[:6])
        more = f" and {len(found) - 6} more" if len(found) > 6 else ""
        raise DatasetRejected(
            422,
            "image_sizes_differ",
            f"The images have {len(found)} sizes: {listed}{more}. Send `image_size` to centre-crop and resize every "
            "image to one square size, or resize them yourself.",
            {"sizes": found[:20]},
        )
    return next(iter(sizes))


def _write_canonical(
    staging: _Staging, blocks: list[_Block], labels: list[np.ndarray] | None, classes: list[str] | None, path: Path
) -> tuple[str, tuple[int, int, int]]:
    """The safetensors file, written by hand so that the images stream from the scratch file to it (the library
    wants them whole in memory, twice): header length (u64 LE), the JSON header padded to 8 bytes, then the
    labels (8-aligned first) and the images. Returns its SHA-256 and the images' C, H, W."""
    h, w = _one_size(blocks)
    c = 3 if any(b.shape[0] == 3 for b in blocks) else 1
    n = sum(b.count for b in blocks)
    if n * c * h * w > staging.limits.max_decoded_bytes:  # greyscale images made RGB beside colour ones
        raise _too_much_decoded(staging.limits, n * c * h * w)
    header: dict[str, Any] = {}
    start = 0
    if labels is not None:
        header["labels"] = {"dtype": "I64", "shape": [n], "data_offsets": [0, 8 * n]}
        start = 8 * n
    header["images"] = {"dtype": "U8", "shape": [n, c, h, w], "data_offsets": [start, start + n * c * h * w]}
    if classes is not None:
        header["__metadata__"] = {"classes": json.dumps(classes, ensure_ascii=False)}
    raw = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-len(raw) % 8)
    digest = hashlib.sha256()

    def out(data: bytes) -> None:
        f.write(data)
        digest.update(data)

    with path.open("wb") as f:
        out(struct.pack("<Q", len(raw)) + raw)
        if labels is not None:
            out(np.concatenate(labels).astype("<i8").tobytes())
        for b in blocks:
            for first in range(0, b.count, IDX_CHUNK):
                batch = staging.read(b, first, min(IDX_CHUNK, b.count - first))
                out((np.repeat(batch, 3, axis=1) if batch.shape[1] < c else batch).tobytes())
    return digest.hexdigest(), (c, h, w)


def _spread_images(staging: _Staging, blocks: list[_Block], count: int, channels: int) -> np.ndarray:
    """`count` images evenly spaced over the dataset's order (sorted by class, then path), so that a preview
    shows every class in proportion rather than the first class only."""
    total = sum(b.count for b in blocks)
    wanted = np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(np.int64))
    starts = np.cumsum([0] + [b.count for b in blocks])
    taken = []
    for i in wanted.tolist():
        k = int(np.searchsorted(starts, i, side="right")) - 1
        image = staging.read(blocks[k], i - int(starts[k]), 1)
        taken.append(np.repeat(image, 3, axis=1) if image.shape[1] < channels else image)
    return np.concatenate(taken)


def preview_png(first: np.ndarray) -> bytes:
    """A grid of the images (N×C×H×W uint8), each shrunk to at most PREVIEW_TILE pixels a side, 8 a row."""
    import torch  # the grid is training's (training/images.py); imported when a dataset is read, not before

    from training import images

    _, c, h, w = first.shape
    scale = min(1.0, PREVIEW_TILE / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        tiles = []
        for img in first:
            pil = Image.fromarray(img[0] if c == 1 else img.transpose(1, 2, 0))
            small = np.asarray(pil.resize(size, Image.Resampling.LANCZOS), dtype=np.uint8)
            tiles.append(small[None] if small.ndim == 2 else small.transpose(2, 0, 1))
        first = np.stack(tiles)
    return images.png_bytes(images.grid(torch.from_numpy(np.ascontiguousarray(first)), nrow=8))


def read_archive(
    source: BinaryIO, workdir: Path, limits: ArchiveLimits, image_size: int | None = None
) -> CanonicalDataset:
    """Validate the uploaded archive (a seekable binary file) and write its canonical dataset and preview into
    `workdir`. Raises DatasetRejected."""
    size = source.seek(0, io.SEEK_END)
    source.seek(0)
    if size > limits.max_bytes:
        raise archive_too_large(limits, size)
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / "staged.u8").open("w+b") as scratch:
        staging = _Staging(scratch, limits)
        reader = _Reader(limits, staging, image_size, _Budget(limits))
        _read(source, reader)
        fmt, blocks, labelled = _layout(staging.blocks, reader.idx_labels)
        labels, classes = labelled if labelled is not None else (None, None)
        path = workdir / "dataset.safetensors"
        sha256, shape = _write_canonical(staging, blocks, labels, classes, path)
        preview = workdir / "preview.png"
        preview.write_bytes(preview_png(_spread_images(staging, blocks, PREVIEW_COUNT, shape[0])))
    (workdir / "staged.u8").unlink()
    return CanonicalDataset(
        path=path,
        preview=preview,
        sha256=sha256,
        size_bytes=path.stat().st_size,
        format=fmt,
        count=staging.images,
        shape=shape,
        classes=classes,
    )
