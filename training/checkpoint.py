"""Checkpoints and published models: safetensors tensors + a JSON of everything needed to rebuild and describe
them. Nothing is ever unpickled.

A checkpoint is a pair `<stem>.safetensors` + `<stem>.json`; the JSON carries the SHA-256 of the tensor file, so
a truncated or swapped file is refused instead of served. Both files are written to a temporary name and renamed,
so a reader sees the old pair or the new one, never half of one.

`publish` turns a run's checkpoint into the next version of a model: the generator's weights and JSON (and the
sample grid) in object storage, then the version's database row (core/model_versions.py). A folder laid out as
`<root>/<name>/<version>/model.*` — the bundled models — is read with `list_versions` and `model_stem`.
"""

import hashlib
import json
import platform
import tempfile
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from safetensors.torch import load as load_safetensors
from torch import nn

from core.files import atomic_write_bytes, atomic_write_json
from core.model_versions import MODEL_STEM, ModelVersions
from core.storage import Storage
from training.architectures import build_generator

FORMAT = "ganserve-checkpoint/1"
GENERATOR_PREFIX = "generator"
EMA_PREFIX = "generator_ema"  # an exponential moving average of G's weights: served instead of G when present


class CheckpointError(Exception):
    """A checkpoint is missing, truncated, corrupt or not ours."""


def library_versions() -> dict[str, str]:
    import torchvision

    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save(stem: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write `<stem>.safetensors` then `<stem>.json` (the JSON last: it is the commit record)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    blob = safetensors.torch.save(tensors)
    atomic_write_bytes(stem.with_suffix(".safetensors"), blob)
    meta = {
        **metadata,
        "format": FORMAT,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "versions": library_versions(),
    }
    atomic_write_json(stem.with_suffix(".json"), meta)


def load_metadata(stem: Path) -> dict[str, Any]:
    path = stem.with_suffix(".json")
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not readable JSON: {e}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load(stem: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and verify a checkpoint; raises CheckpointError rather than returning damaged weights."""
    meta = load_metadata(stem)
    path = stem.with_suffix(".safetensors")
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path} is not readable: {e}") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != meta.get("sha256"):
        raise CheckpointError(f"{path} has SHA-256 {digest[:12]}…, its metadata says {meta.get('sha256')}")
    try:
        tensors = load_safetensors(blob)  # tensors only: the format cannot hold code (unlike a pickle)
    except Exception as e:  # safetensors raises its own SafetensorError on a malformed header
        raise CheckpointError(f"{path} is not a valid safetensors file: {e}") from None
    return {k: v.to(device) for k, v in tensors.items()}, meta


def prefixed(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def unprefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    p = prefix + "."
    return {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}


def served_prefix(tensors: dict[str, torch.Tensor]) -> str:
    """The generator weights to serve: the EMA's when the checkpoint has them (they give smoother, better
    samples than the last raw iterate), else the raw generator's."""
    ema = EMA_PREFIX + "."
    return EMA_PREFIX if any(k.startswith(ema) for k in tensors) else GENERATOR_PREFIX


def load_generator(stem: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the served generator (EMA weights when present) from the checkpoint alone, in eval mode
    (BatchNorm uses running statistics, so an image depends on its own latent only)."""
    tensors, meta = load(stem, device)
    prefix = served_prefix(tensors)
    try:
        generator = build_generator(meta["generator"])
        generator.load_state_dict(unprefixed(tensors, prefix))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{stem}: generator cannot be rebuilt: {e}") from None
    meta = {**meta, "served_weights": "ema" if prefix == EMA_PREFIX else "raw"}
    return generator.to(device).eval(), meta


def write_model(stem: Path, target: Path) -> dict[str, Any]:
    """Write checkpoint `stem`'s generator as the model pair `target` (what a version holds); its metadata."""
    tensors, meta = load(stem)
    # Both sets of generator weights travel: the EMA is what is served, the raw ones allow comparing them.
    gen_only = {k: v for k, v in tensors.items() if k.startswith((f"{GENERATOR_PREFIX}.", f"{EMA_PREFIX}."))}
    meta = {**meta, "served_weights": "ema" if served_prefix(tensors) == EMA_PREFIX else "raw"}
    save(target, gen_only, _strip(meta))
    return load_metadata(target)


def publish(
    storage: Storage,
    versions: ModelVersions,
    name: str,
    stem: Path,
    samples_png: Path | None = None,
    owner: str | None = None,
) -> int:
    """Publish a checkpoint's generator as the next version of model `name`; returns that version. Its files go
    to storage first, under a folder named by the weights' SHA-256 (the JSON, their commit record, last); then the
    version's row is committed: until then the version does not exist (core/model_versions.py)."""
    with tempfile.TemporaryDirectory(prefix="ganserve-publish-") as tmp:
        staged = Path(tmp) / MODEL_STEM
        published = write_model(stem, staged)
        location = f"models/{name}/{published['sha256']}"
        storage.put_file(f"{location}/{MODEL_STEM}.safetensors", staged.with_suffix(".safetensors"))
        has_samples = samples_png is not None and samples_png.exists()
        if has_samples:
            storage.put_file(f"{location}/samples.png", samples_png)
        storage.put_file(f"{location}/{MODEL_STEM}.json", staged.with_suffix(".json"))
        # What the version holds in storage, counted against its owner's quota (core/quota.py).
        files = [staged.with_suffix(".safetensors"), staged.with_suffix(".json")]
        if samples_png is not None and has_samples:
            files.append(samples_png)
        size = sum(f.stat().st_size for f in files)
    return versions.add(
        name,
        owner=owner,
        weights_sha256=published["sha256"],
        metadata=published,
        location=location,
        has_samples=has_samples,
        storage_bytes=size,
    )


# A run checkpoint's fields that describe the run's state or the file, not the published generator.
RUN_FIELDS = {"format", "sha256", "versions", "discriminator", "optimizers", "device_type", "kept", "fid"}
RUN_FIELDS |= {"last_checkpoint", "last_samples"}


def _strip(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in RUN_FIELDS}


def list_versions(models_dir: Path, name: str) -> list[int]:
    try:
        return sorted(int(p.name) for p in (models_dir / name).iterdir() if p.name.isdigit())
    except FileNotFoundError:
        return []


def model_stem(models_dir: Path, name: str, version: int) -> Path:
    return models_dir / name / str(version) / MODEL_STEM
