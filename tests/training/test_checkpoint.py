from pathlib import Path

import pytest
import torch

from core.db import Database
from core.model_versions import ModelVersions, local_stem
from core.storage import BlobCache, open_storage
from training import checkpoint
from training.architectures import MLPGenerator, MLPGeneratorConfig, config_to_json


def _save_generator(stem: Path) -> MLPGenerator:
    torch.manual_seed(0)
    g = MLPGenerator(MLPGeneratorConfig(latent_dim=8)).eval()
    meta = {"generator": config_to_json(g.cfg), "latent_dim": 8, "value_range": [-1, 1]}
    checkpoint.save(stem, checkpoint.prefixed(g, "generator") | {"extra.x": torch.arange(3.0)}, meta)
    return g


def test_round_trip_gives_identical_tensors(tmp_path: Path) -> None:
    g = _save_generator(tmp_path / "ckpt")
    tensors, meta = checkpoint.load(tmp_path / "ckpt")
    for k, v in g.state_dict().items():
        assert torch.equal(tensors[f"generator.{k}"], v)
    assert torch.equal(tensors["extra.x"], torch.arange(3.0))
    assert meta["latent_dim"] == 8 and meta["format"] == checkpoint.FORMAT and len(meta["sha256"]) == 64


def test_corrupted_byte_is_refused(tmp_path: Path) -> None:
    _save_generator(tmp_path / "ckpt")
    path = tmp_path / "ckpt.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(checkpoint.CheckpointError, match="SHA-256"):
        checkpoint.load(tmp_path / "ckpt")


def test_missing_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nothing")


def test_load_generator_gives_the_same_output(tmp_path: Path) -> None:
    g = _save_generator(tmp_path / "ckpt")
    loaded, _ = checkpoint.load_generator(tmp_path / "ckpt")
    z = torch.randn(4, 8)
    with torch.no_grad():
        assert torch.equal(loaded(z), g(z))
    assert not loaded.training


def test_publish_gives_versions_one_then_two(tmp_path: Path, sqlite_db: Database) -> None:
    _save_generator(tmp_path / "ckpt")
    png = tmp_path / "grid.png"
    png.write_bytes(b"\x89PNG fake")
    storage, versions = open_storage(f"file://{tmp_path / 'blobs'}"), ModelVersions(sqlite_db)
    assert checkpoint.publish(storage, versions, "digits", tmp_path / "ckpt", png, owner="k1") == 1
    assert checkpoint.publish(storage, versions, "digits", tmp_path / "ckpt") == 2
    assert versions.versions("digits") == [1, 2]
    first = versions.get("digits", 1)
    assert first is not None and first.owner == "k1" and first.samples_key is not None
    assert storage.get_bytes(first.samples_key) == png.read_bytes()
    second = versions.get("digits", 2)
    assert second is not None and second.samples_key is None
    # Same weights, same folder: a version's files are named by their content.
    assert second.location == first.location == f"models/digits/{first.weights_sha256}"
    stem = local_stem(second, storage, BlobCache(tmp_path / "cache", 1 << 20))
    tensors, meta = checkpoint.load(stem)
    assert all(k.startswith("generator.") for k in tensors)
    assert "discriminator" not in meta and meta == second.metadata


def test_published_to_s3_loads_through_the_cache(
    tmp_path: Path, sqlite_db: Database, s3_server: str, s3_bucket: str
) -> None:
    """Object storage elsewhere: the version's weights come back into the cache, checked by SHA-256, and rebuild
    the same generator; a second load reads the cache, not the server."""
    g = _save_generator(tmp_path / "ckpt")
    storage, versions = open_storage(s3_bucket, s3_server), ModelVersions(sqlite_db)
    version = checkpoint.publish(storage, versions, "remote", tmp_path / "ckpt")
    row = versions.get("remote", version)
    assert row is not None and storage.exists(f"{row.location}/model.json")
    cache = BlobCache(tmp_path / "cache", 1 << 20)
    stem = local_stem(row, storage, cache)
    assert stem.is_relative_to(tmp_path / "cache")
    loaded, _ = checkpoint.load_generator(stem)
    z = torch.randn(2, 8)
    with torch.no_grad():
        assert torch.equal(loaded(z), g(z))
    storage.delete(f"{row.location}/model.safetensors")
    assert local_stem(row, storage, cache) == stem  # from the cache


class _Payload:
    """Unpickling this would create `marker`: proof that a pickle ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_in_place_of_the_weights_is_refused_without_running(tmp_path: Path) -> None:
    """A torch.save/pickle file dressed as a checkpoint, with a metadata file whose checksum matches it (an
    attacker who can write the volume can write both): it is refused as not safetensors, and nothing runs."""
    import hashlib
    import json
    import pickle

    marker = tmp_path / "pwned"
    _save_generator(tmp_path / "ckpt")
    blob = pickle.dumps({"generator.net.0.weight": _Payload(marker)})
    (tmp_path / "ckpt.safetensors").write_bytes(blob)
    meta = json.loads((tmp_path / "ckpt.json").read_text())
    meta["sha256"] = hashlib.sha256(blob).hexdigest()
    (tmp_path / "ckpt.json").write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(tmp_path / "ckpt")
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load_generator(tmp_path / "ckpt")
    assert not marker.exists()
