"""From generator output to pixels: quantisation, grids and PNG bytes (torchvision's encoder, so the
same tensor always gives the same bytes)."""

import math

import torch
from torchvision.io import encode_png  # noqa: F401  (registers torch.ops.image.encode_png)
from torchvision.utils import make_grid


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """N×C×H×W floats in `value_range` → N×C×H×W uint8, clamped (an unbounded head can overshoot)."""
    lo, hi = value_range
    x = (images.detach().float().cpu() - lo) / (hi - lo)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def grid(images_uint8: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """Tile N images into one C×H×W image, as square as possible, 2-pixel black borders."""
    n = images_uint8.shape[0]
    return make_grid(images_uint8, nrow=nrow or math.ceil(math.sqrt(n)), padding=2, pad_value=0)


def png_bytes(image_uint8: torch.Tensor, compression_level: int = 6) -> bytes:
    """One C×H×W uint8 image → PNG bytes, by torchvision's encoder op. Called as the op: `encode_png`'s Python
    wrapper adds only a usage log and a deprecation warning (torchvision 0.29 points to TorchCodec), whose
    per-call cost was a tenth of /generate's; importing it above is what registers the op."""
    if image_uint8.dtype != torch.uint8 or image_uint8.dim() != 3 or image_uint8.shape[0] not in (1, 3):
        raise ValueError(
            f"expected a 1- or 3-channel C×H×W uint8 image, got {image_uint8.dtype} {tuple(image_uint8.shape)}"
        )
    return torch.ops.image.encode_png(image_uint8.contiguous(), compression_level).numpy().tobytes()
