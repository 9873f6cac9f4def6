"""What the worker's tests share besides fixtures: a tiny job and a tiny MNIST."""

import gzip
import struct
from pathlib import Path

import numpy as np

# 64 images, batch 16: 4 steps an epoch; small MLPs, no evaluation, so a job takes a fraction of a second.
TINY = {
    "dataset": "mnist",
    "epochs": 4,
    "batch_size": 16,
    "latent_dim": 8,
    "g_hidden": [32],
    "d_hidden": [32],
    "eval_extractor": "none",
}


def write_mnist(root: Path, n: int = 64) -> Path:
    rng = np.random.default_rng(0)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for img, col in zip(images, rng.integers(4, 22, n), strict=True):
        img[4:24, col : col + 3] = 255
    (root / "mnist").mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "mnist" / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x00000803, n, 28, 28) + images.tobytes())
    # with labels, as MNIST comes: its default recipe is class-conditional
    labels = (np.arange(n) % 10).astype(np.uint8)
    with gzip.open(root / "mnist" / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x00000801, n) + labels.tobytes())
    return root
