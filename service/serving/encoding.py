"""A request's rendered images (N×C×H×W uint8) → the bytes it is answered with: a PNG per image, one grid or
strip PNG, an animated PNG or a GIF. The render process calls `finish` on what it rendered; so does the
command line (`ganserve sample`), so that both give the same bytes for the same images.
"""

import io
from typing import Literal

import PIL
import torch
from PIL import Image

from training.images import grid, png_bytes

PNG_LEVEL = 3
"""zlib level of every PNG made here (benchmarks/README.md, "PNG level"). Not a setting: it changes the bytes
(never the pixels), so it is part of every ETag."""

Form = Literal["pngs", "grid", "strip", "apng", "gif"]
"""What a request gets back: `pngs`, one PNG per image; `grid`, one PNG of all its images (row-major, as
square as possible; a single image as itself); `strip`, one PNG of its images in one row; `apng`, `gif`:
one animation showing the images in turn for `duration_ms` each, looping forever."""

FORMS: tuple[Form, ...] = ("pngs", "grid", "strip", "apng", "gif")

FileFormat = Literal["png", "apng", "gif"]
FILE_FORMS: dict[FileFormat, Form] = {"png": "strip", "apng": "apng", "gif": "gif"}
"""An /interpolate `format` → the form that makes it (a strip PNG, or an animation)."""
MEDIA_TYPES: dict[FileFormat, str] = {"png": "image/png", "apng": "image/apng", "gif": "image/gif"}


def encoder(form: Form) -> str:
    """Who makes the bytes of `form` (for an ETag): torchvision's PNG encoder, or Pillow (with its version)."""
    return f"pillow-{PIL.__version__}" if form in ("apng", "gif") else "torchvision"


def finish(form: Form, images: torch.Tensor, duration_ms: int = 100) -> list[bytes] | bytes:
    """N×C×H×W uint8 images → what `form` asks for: a list of PNGs (`pngs`), else one file's bytes."""
    if form == "pngs":
        return [png_bytes(image, PNG_LEVEL) for image in images]
    if form == "grid":
        return png_bytes(images[0] if len(images) == 1 else grid(images), PNG_LEVEL)
    if form == "strip":
        return png_bytes(grid(images, nrow=images.shape[0]), PNG_LEVEL)
    if form not in ("apng", "gif"):
        raise ValueError(f"unknown form {form!r}; one of {', '.join(FORMS)}")
    frames = [_pil(image) for image in images]
    buffer = io.BytesIO()
    options = {"compress_level": PNG_LEVEL} if form == "apng" else {}
    frames[0].save(
        buffer,
        format="PNG" if form == "apng" else "GIF",
        save_all=True,
        append_images=frames[1:],
        duration=duration_ms,
        loop=0,
        **options,
    )
    return buffer.getvalue()


def _pil(image: torch.Tensor) -> Image.Image:
    array = image.permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(array[:, :, 0], "L") if array.shape[2] == 1 else Image.fromarray(array, "RGB")
