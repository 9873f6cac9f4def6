"""A run's checkpoints: the state at the end of an epoch — G, D, the EMA of G, both optimisers, the random
streams — and everything needed to rebuild and describe the networks, in one format written by one function.

`save` is the only writer of a run's checkpoints, `<out_dir>/checkpoints/epoch-NNNN.{safetensors,json}`. The
loop calls it for the epochs it keeps (every `sample_every`, and the last) and, in between, for the latest
state only (an older such checkpoint is removed once a newer one is complete); its `files_fn` tells the
caller which files it wrote and removed, so a worker can copy the run folder into object storage.

Retention (`keep`): once a checkpoint is complete, only the newest `keep` kept checkpoints stay, with the one of
the lowest FID measured so far (an evaluation's epoch is saved, its FID in the JSON) and the newest checkpoint of
all; every older one is removed. `keep` None keeps every kept checkpoint, as runs always did. `latest` finds
the newest intact checkpoint of a run, `restore` continues from it with exactly the numbers a run that never
stopped gives (on the same machine and device), and `training.checkpoint.publish` turns the last one into a
served model.

Learning-rate schedules are not stored: `LambdaLR` is a function of the step alone, rebuilt at the resumed
step. Nothing is unpickled: tensors are safetensors, the rest JSON (training/checkpoint.py).
"""

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from core.train_config import TrainConfig
from training import checkpoint
from training.nets import schedulers
from training.step import Step

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
LEGACY_RESUME_DIR = "resume"  # where runs started before checkpoints and resume states were one format keep theirs
OPTIMIZERS = ("opt_g", "opt_d")

# Told which run files were written (in the order written: a checkpoint's JSON, its commit record, last) and
# which removed; paths inside the run folder.
FilesFn = Callable[[list[Path], list[Path]], None]


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run starts: after `epoch` epochs and `step` generator steps."""

    stem: Path
    epoch: int
    step: int
    losses: dict[str, float]
    last_checkpoint: Path | None  # the newest kept checkpoint at that point, if any
    last_samples: Path | None


def stem_for(out_dir: Path, epoch: int) -> Path:
    return Path(out_dir) / CHECKPOINTS_DIR / f"epoch-{epoch:04d}"


def keeps(config: TrainConfig, epoch: int, epochs: int) -> bool:
    """Whether the run keeps epoch `epoch`'s checkpoint (and writes its sample grid): every `sample_every`
    epochs, and the last."""
    return epoch % config.sample_every == 0 or epoch == epochs


def _spec(module: nn.Module) -> dict[str, Any]:
    return dict(module.spec)  # type: ignore[arg-type]


def _networks(s: Step) -> dict[str, Any]:
    """What rebuilds and describes the networks: their specs (training/architectures.py) and the data's shape."""
    config, nets = s.config, s.nets
    meta: dict[str, Any] = {
        "generator": _spec(nets.g),
        "discriminator": _spec(nets.d),
        "architecture": config.architecture,
        "kind": s.data.kind,
        "sample_shape": list(s.data.sample_shape),
        "num_classes": s.data.num_classes if config.conditional else None,
        "conditional": config.conditional,
        "loss": config.loss,
        "served_weights": "ema" if nets.ema is not None else "raw",
        "latent_dim": config.latent_dim,
        "dataset": config.dataset,
        "train_config": config.model_dump(mode="json"),
        "model_name": config.model_name,
    }
    if s.data.kind == "image":
        meta |= {"image_shape": list(s.data.sample_shape), "value_range": [-1, 1]}
    if s.num_generators:
        meta["num_generators"] = s.num_generators
    return meta


def _optimizer_state(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{idx}.{key}"] = value
            else:
                other.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "state": other}


def _load_optimizer(opt: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {int(idx): dict(values) for idx, values in meta["state"].items()}
    for key, value in checkpoint.unprefixed(tensors, prefix).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})
    # Checkpoints hold contiguous tensors; a parameter in channels-last memory needs its moments laid out alike
    # (the fused and foreach updates walk parameter and state element by element in memory order).
    for group in opt.param_groups:
        for p in group["params"]:
            for name, value in opt.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    opt.state[p][name] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _relative(path: Path | None, out_dir: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(Path(path).relative_to(out_dir))
    except ValueError:
        return str(path)


def save(
    out_dir: Path,
    s: Step,
    *,
    epoch: int,
    step: int,
    losses: dict[str, float],
    kept: bool,
    last: tuple[Path | None, Path | None],
    files_fn: FilesFn | None = None,
    may_write: Callable[[], bool] | None = None,
    keep: int | None = None,
    fid: float | None = None,
) -> Path | None:
    """Write the run's state after `epoch` epochs (`step` G steps) as `epoch-NNNN`; returns its stem. `kept`:
    the run keeps it; otherwise it only stands in for the epochs since the last kept one, and the previous such
    stand-in is removed once this one is complete. `last`: the newest kept checkpoint and sample grid.
    `files_fn(written, removed)`: called once both are done. `may_write()`: asked before writing and again
    before removing anything; on False nothing more is done and None is returned (the checkpoint, if it was
    written, is then neither pruned around nor reported). `keep`: how many kept checkpoints stay (None: all);
    `fid`: the FID this epoch's evaluation measured, which may make it the best checkpoint, kept beyond those."""
    if may_write is not None and not may_write():
        return None
    last_checkpoint, last_samples = last
    out_dir = Path(out_dir)
    nets = s.nets
    tensors = {**checkpoint.prefixed(nets.g, "generator"), **checkpoint.prefixed(nets.d, "discriminator")}
    if nets.ema is not None:
        tensors |= checkpoint.prefixed(nets.ema, checkpoint.EMA_PREFIX)
    optimizers: dict[str, Any] = {}
    for prefix, opt in zip(OPTIMIZERS, (nets.opt_g, nets.opt_d), strict=True):
        opt_tensors, optimizers[prefix] = _optimizer_state(opt, prefix)
        tensors |= opt_tensors
    tensors["rng.loop"] = s.rng.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if s.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(s.device)
    meta = {
        **_networks(s),
        "epoch": epoch,
        "step": step,
        "losses": losses,
        "kept": kept,
        "optimizers": optimizers,
        "device_type": s.device.type,
        "last_checkpoint": _relative(last_checkpoint, out_dir),
        "last_samples": _relative(last_samples, out_dir),
        "fid": fid if fid is not None and math.isfinite(fid) else None,
    }
    stem = stem_for(out_dir, epoch)
    checkpoint.save(stem, tensors, meta)
    if may_write is not None and not may_write():
        return None
    removed = _prune(stem, keep)
    if files_fn is not None:
        files_fn([stem.with_suffix(".safetensors"), stem.with_suffix(".json")], removed)
    return stem


def _epoch(stem: Path) -> int:
    return int(stem.name.removeprefix("epoch-"))


def retained(stems: dict[Path, dict[str, Any] | None], newest: Path, keep: int | None) -> set[Path]:
    """Which of a run's checkpoints (stem → its JSON, None when unreadable) stay once `newest` is complete: itself
    and any later one (not this writer's to judge), the newest `keep` kept ones up to it (all when `keep` is None),
    and the one of the lowest finite FID. Stand-ins older than `newest` and unreadable ones go."""
    spare = {stem for stem in stems if _epoch(stem) >= _epoch(newest)}
    # Written before stand-ins existed: a checkpoint without `kept` was kept.
    kept = [stem for stem, meta in stems.items() if meta is not None and meta.get("kept", True)]
    kept = sorted((stem for stem in kept if _epoch(stem) <= _epoch(newest)), key=_epoch, reverse=True)
    spare |= set(kept if keep is None else kept[:keep])
    scored = [(float(meta["fid"]), -_epoch(stem), stem) for stem, meta in stems.items() if _fid(meta) is not None]
    if scored:
        spare.add(min(scored)[2])  # the lowest FID; of equal ones, the newest
    return spare


def _fid(meta: dict[str, Any] | None) -> float | None:
    value = None if meta is None else meta.get("fid")
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _prune(newest: Path, keep: int | None = None) -> list[Path]:
    """Checkpoints `retained` does not keep (a legacy resume folder's are all stand-ins), and temporary files a
    killed writer left; `newest` is complete by now. Returns the checkpoint files removed."""
    run_dir = newest.parent.parent
    removed: list[Path] = []
    for folder in (CHECKPOINTS_DIR, LEGACY_RESUME_DIR):
        stems = {p.with_suffix(""): _metadata(p.with_suffix("")) for p in (run_dir / folder).glob("epoch-*.json")}
        spare = retained(stems, newest, keep) if folder == CHECKPOINTS_DIR else set()
        for stem in sorted(stems, key=_epoch):
            if stem in spare:
                continue
            # The JSON first: without it the weights are no checkpoint, so a reader never sees half of one.
            for path in (stem.with_suffix(".json"), stem.with_suffix(".safetensors")):
                path.unlink(missing_ok=True)
                removed.append(path)
        for tmp in (run_dir / folder).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
    return removed


def _metadata(stem: Path) -> dict[str, Any] | None:
    try:
        return checkpoint.load_metadata(stem)
    except checkpoint.CheckpointError:
        return None  # unreadable: no use to anyone


def _stems(out_dir: Path) -> list[Path]:
    """A run's checkpoint stems (a legacy resume folder's too), newest first."""
    stems = [
        p.with_suffix("")
        for folder in (CHECKPOINTS_DIR, LEGACY_RESUME_DIR)
        for p in (Path(out_dir) / folder).glob("epoch-*.json")
    ]
    return sorted(stems, key=_epoch, reverse=True)


def _point(stem: Path, meta: dict[str, Any], out_dir: Path) -> ResumePoint:
    def path(rel: str | None) -> Path | None:
        return None if rel is None else out_dir / rel

    return ResumePoint(
        stem=stem,
        epoch=int(meta["epoch"]),
        step=int(meta["step"]),
        losses={k: float(v) if v is not None else float("nan") for k, v in meta["losses"].items()},
        last_checkpoint=path(meta.get("last_checkpoint")),
        last_samples=path(meta.get("last_samples")),
    )


def latest(out_dir: Path) -> ResumePoint | None:
    """The newest intact checkpoint of the run in `out_dir` (its SHA-256 checked) that holds the whole state,
    or None. A damaged one is logged and passed over."""
    out_dir = Path(out_dir)
    for stem in _stems(out_dir):
        try:
            _, meta = checkpoint.load(stem)
            if "optimizers" not in meta:
                raise checkpoint.CheckpointError(f"{stem} holds no optimiser state")
            return _point(stem, meta, out_dir)
        except (checkpoint.CheckpointError, KeyError, TypeError, ValueError) as e:
            log.warning("checkpoint %s cannot be resumed from, passed over: %s", stem, e)
    return None


def _config_of(meta: dict[str, Any]) -> Any:
    """The config a checkpoint was written by, read as this version reads it: a field added since (e.g.
    `keep_checkpoints`) takes its default, so a run from before an upgrade still resumes."""
    try:
        return TrainConfig.model_validate(meta.get("train_config")).model_dump(mode="json")
    except ValidationError:
        return meta.get("train_config")


def restore(stem: Path, s: Step, config: TrainConfig, out_dir: Path, total_steps: int) -> ResumePoint:
    """Load a checkpoint into a freshly built `Step` of the same config. Raises CheckpointError when it is
    damaged or was written by a different config."""
    tensors, meta = checkpoint.load(stem, s.device)
    if "optimizers" not in meta:
        raise checkpoint.CheckpointError(f"{stem} holds no optimiser state; it cannot be resumed from")
    if _config_of(meta) != config.model_dump(mode="json"):
        raise checkpoint.CheckpointError(f"{stem} was written by a run with another config; it cannot be resumed")
    nets = s.nets
    try:
        nets.g.load_state_dict(checkpoint.unprefixed(tensors, "generator"))
        nets.d.load_state_dict(checkpoint.unprefixed(tensors, "discriminator"))
        if nets.ema is not None:
            nets.ema.load_state_dict(checkpoint.unprefixed(tensors, checkpoint.EMA_PREFIX))
        for prefix, opt in zip(OPTIMIZERS, (nets.opt_g, nets.opt_d), strict=True):
            _load_optimizer(opt, prefix, tensors, meta["optimizers"][prefix])
    except (KeyError, ValueError, RuntimeError) as e:
        raise checkpoint.CheckpointError(f"{stem}: the run's state cannot be restored: {e}") from None
    point = _point(stem, meta, Path(out_dir))
    nets.schedulers = schedulers(config, total_steps, nets.opt_g, nets.opt_d, at_step=point.step)
    torch.set_rng_state(tensors["rng.torch"].cpu())
    if meta.get("device_type") == s.device.type:
        s.rng.set_state(tensors["rng.loop"].cpu())
        if s.device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"].cpu(), s.device)
    else:
        # A CPU generator's state means nothing to a CUDA one: continue on a stream derived from the step.
        log.warning(
            "%s was written on %s, resuming on %s: random draws differ from an uninterrupted run",
            stem,
            meta.get("device_type"),
            s.device.type,
        )
        s.rng.manual_seed(config.seed + point.step)
    return point
