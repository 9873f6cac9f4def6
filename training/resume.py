"""Resume checkpoints: everything that decides how a run goes on, written at the end of every epoch, so that a
run stopped anywhere (its worker killed, its machine rebooted) continues from its last finished epoch instead
of from step 0 — and, on the same machine and device, with exactly the numbers a run that never stopped gives.

`<out_dir>/resume/epoch-NNNN.{safetensors,json}`, only the newest pair kept (the published, per-`sample_every`
checkpoints beside it are the run's history; this one is its state):

- tensors: G, D and the EMA of G (parameters and buffers: BatchNorm statistics, spectral-norm vectors), both
  optimisers' state tensors, and the random states as uint8 tensors — the loop's `torch.Generator` (shuffling,
  noise, labels) and the global torch generator (and CUDA's when the run is on a GPU);
- JSON: epoch, step, the epoch's mean losses, both optimisers' parameter groups (learning rates, betas …), the
  run's config (a resume with another config is refused), the device type, and the last published checkpoint
  and sample grid (so a run resumed after its last epoch returns them at once).

Learning-rate schedules are not stored: `LambdaLR` is a function of the step alone, so it is rebuilt at the
resumed step. Written like every checkpoint: safetensors + JSON with the tensors' SHA-256, each file to a
temporary name then renamed, the JSON last, and the previous pair removed only after the new one is complete:
a crash at any instant leaves one complete pair. Nothing is unpickled.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.train_config import TrainConfig
from training import checkpoint
from training.nets import schedulers
from training.step import Step

log = logging.getLogger(__name__)

RESUME_DIR = "resume"
KIND = "resume"
_OPTIMIZERS = ("opt_g", "opt_d")


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run starts: after `epoch` epochs and `step` generator steps."""

    stem: Path
    epoch: int
    step: int
    losses: dict[str, float]
    last_checkpoint: Path | None  # the newest published checkpoint at that point, if any
    last_samples: Path | None


def resume_dir(out_dir: Path) -> Path:
    return Path(out_dir) / RESUME_DIR


def _stems(out_dir: Path) -> list[Path]:
    """Resume stems in `out_dir`, newest first."""
    folder = resume_dir(out_dir)
    if not folder.is_dir():
        return []
    return sorted((p.with_suffix("") for p in folder.glob("epoch-*.json")), reverse=True)


def _relative(path: Path | None, out_dir: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(Path(path).relative_to(out_dir))
    except ValueError:
        return str(path)


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


def save(
    out_dir: Path,
    s: Step,
    epoch: int,
    step: int,
    losses: dict[str, float],
    last_checkpoint: Path | None,
    last_samples: Path | None,
) -> Path:
    """Write the state after `epoch` epochs (`step` G steps) and remove older resume checkpoints."""
    out_dir = Path(out_dir)
    nets = s.nets
    tensors = {**checkpoint.prefixed(nets.g, "generator"), **checkpoint.prefixed(nets.d, "discriminator")}
    if nets.ema is not None:
        tensors |= checkpoint.prefixed(nets.ema, checkpoint.EMA_PREFIX)
    optimizers: dict[str, Any] = {}
    for prefix, opt in zip(_OPTIMIZERS, (nets.opt_g, nets.opt_d), strict=True):
        opt_tensors, optimizers[prefix] = _optimizer_state(opt, prefix)
        tensors |= opt_tensors
    tensors["rng.loop"] = s.rng.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if s.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(s.device)
    meta = {
        "kind": KIND,
        "epoch": epoch,
        "step": step,
        "losses": losses,
        "optimizers": optimizers,
        "device_type": s.device.type,
        "last_checkpoint": _relative(last_checkpoint, out_dir),
        "last_samples": _relative(last_samples, out_dir),
        "train_config": s.config.model_dump(mode="json"),
        "model_name": s.config.model_name,
    }
    stem = resume_dir(out_dir) / f"epoch-{epoch:04d}"
    checkpoint.save(stem, tensors, meta)
    _prune(stem)
    return stem


def _prune(keep: Path) -> None:
    """Every other resume pair, and temporary files a killed writer left, go; `keep` is complete by now."""
    for path in keep.parent.iterdir():
        if path.with_suffix("") != keep and (path.name.startswith("epoch-") or path.name.endswith(".tmp")):
            path.unlink(missing_ok=True)


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
    """The newest resume checkpoint in `out_dir` that is intact (its SHA-256 checked), or None. A damaged
    one is logged and passed over."""
    out_dir = Path(out_dir)
    for stem in _stems(out_dir):
        try:
            _, meta = checkpoint.load(stem)
            if meta.get("kind") != KIND:
                raise checkpoint.CheckpointError(f"{stem} is not a resume checkpoint")
            return _point(stem, meta, out_dir)
        except (checkpoint.CheckpointError, KeyError, TypeError, ValueError) as e:
            log.warning("resume checkpoint %s is unusable, ignored: %s", stem, e)
    return None


def restore(stem: Path, s: Step, config: TrainConfig, out_dir: Path, total_steps: int) -> ResumePoint:
    """Load a resume checkpoint into a freshly built `Step` of the same config. Raises CheckpointError when it
    is damaged or was written by a different config."""
    tensors, meta = checkpoint.load(stem, s.device)
    if meta.get("kind") != KIND:
        raise checkpoint.CheckpointError(f"{stem} is not a resume checkpoint")
    if meta.get("train_config") != config.model_dump(mode="json"):
        raise checkpoint.CheckpointError(f"{stem} was written by a run with another config; it cannot be resumed")
    nets = s.nets
    try:
        nets.g.load_state_dict(checkpoint.unprefixed(tensors, "generator"))
        nets.d.load_state_dict(checkpoint.unprefixed(tensors, "discriminator"))
        if nets.ema is not None:
            nets.ema.load_state_dict(checkpoint.unprefixed(tensors, checkpoint.EMA_PREFIX))
        for prefix, opt in zip(_OPTIMIZERS, (nets.opt_g, nets.opt_d), strict=True):
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
