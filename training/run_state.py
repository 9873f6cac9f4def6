"""A run's checkpoints: the state at the end of an epoch — G, D, the EMA of G, both optimisers, the random
streams — and everything needed to rebuild and describe the networks, in one format written by one function.

`save` is the only writer of a run's checkpoints, `<out_dir>/checkpoints/epoch-NNNN.{safetensors,json}`. The
loop calls it for the epochs it keeps (every `sample_every`, and the last) and, in between, for the latest
state only (an older such checkpoint is removed once a newer one is complete); its `files_fn` tells the
caller which files it wrote and removed, so a worker can copy the run folder into object storage. `latest` finds
the newest intact checkpoint of a run, `restore` continues from it with exactly the numbers a run that never
stopped gives (on the same machine and device), and `training.checkpoint.publish` turns the last one into a
served model.

Learning-rate schedules are not stored: `LambdaLR` is a function of the step alone, rebuilt at the resumed
step. Nothing is unpickled: tensors are safetensors, the rest JSON (training/checkpoint.py).
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
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
) -> Path | None:
    """Write the run's state after `epoch` epochs (`step` G steps) as `epoch-NNNN`; returns its stem. `kept`:
    the run keeps it; otherwise it only stands in for the epochs since the last kept one, and the previous such
    stand-in is removed once this one is complete. `last`: the newest kept checkpoint and sample grid.
    `files_fn(written, removed)`: called once both are done. `may_write()`: asked before writing and again
    before removing anything; on False nothing more is done and None is returned (the checkpoint, if it was
    written, is then neither pruned around nor reported)."""
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
    }
    stem = stem_for(out_dir, epoch)
    checkpoint.save(stem, tensors, meta)
    if may_write is not None and not may_write():
        return None
    removed = _prune(stem)
    if files_fn is not None:
        files_fn([stem.with_suffix(".safetensors"), stem.with_suffix(".json")], removed)
    return stem


def _epoch(stem: Path) -> int:
    return int(stem.name.removeprefix("epoch-"))


def _prune(newest: Path) -> list[Path]:
    """Stand-ins older than `newest` (a legacy resume folder's are all stand-ins), and temporary files a killed
    writer left; `newest` is complete by now. Returns the checkpoint files removed."""
    run_dir = newest.parent.parent
    removed: list[Path] = []
    for folder in (CHECKPOINTS_DIR, LEGACY_RESUME_DIR):
        for json_path in (run_dir / folder).glob("epoch-*.json"):
            stem = json_path.with_suffix("")
            if stem == newest or (folder == CHECKPOINTS_DIR and _epoch(stem) >= _epoch(newest)):
                continue
            if folder == CHECKPOINTS_DIR and _is_kept(stem):
                continue
            # The JSON first: without it the weights are no checkpoint, so a reader never sees half of one.
            for path in (json_path, stem.with_suffix(".safetensors")):
                path.unlink(missing_ok=True)
                removed.append(path)
        for tmp in (run_dir / folder).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
    return removed


def _is_kept(stem: Path) -> bool:
    try:
        return bool(checkpoint.load_metadata(stem).get("kept", True))  # written before stand-ins existed: kept
    except checkpoint.CheckpointError:
        return False  # unreadable: no use to anyone


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


def restore(stem: Path, s: Step, config: TrainConfig, out_dir: Path, total_steps: int) -> ResumePoint:
    """Load a checkpoint into a freshly built `Step` of the same config. Raises CheckpointError when it is
    damaged or was written by a different config."""
    tensors, meta = checkpoint.load(stem, s.device)
    if "optimizers" not in meta:
        raise checkpoint.CheckpointError(f"{stem} holds no optimiser state; it cannot be resumed from")
    if meta.get("train_config") != config.model_dump(mode="json"):
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
