"""The one training loop (Goodfellow et al. 2014, Algorithm 1), shared by the CLI and the Celery worker.

It knows nothing of Celery or HTTP: the caller passes `progress_fn` to hear about progress and
`should_stop` to ask for cancellation, and gets a `TrainResult` back.
"""

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from training import checkpoint, images, losses
from training.config import TrainConfig
from training.data import load_dataset
from training.latents import latents_from_seeds
from training.models import MLPDiscriminator, MLPDiscriminatorConfig, MLPGenerator, MLPGeneratorConfig, config_to_json

SAMPLE_SEEDS = list(range(64))  # the grid shows seeds 0..63, so it matches /generate for those seeds
LOSS_KEYS = ("d_loss", "g_loss", "d_real", "d_fake")


@dataclass(frozen=True)
class TrainProgress:
    epoch: int  # epochs completed so far
    epochs: int
    step: int  # generator steps completed so far
    total_steps: int
    losses: dict[str, float]  # means over the current epoch so far
    images_per_sec: float
    eta_seconds: float
    checkpoint: Path | None = None  # stem written at the end of this epoch, on that report only
    samples: Path | None = None  # sample grid written at the end of this epoch, on that report only


@dataclass(frozen=True)
class TrainResult:
    status: Literal["completed", "cancelled"]
    epochs_done: int
    steps_done: int
    final_checkpoint: Path | None
    samples: Path | None
    losses: dict[str, float]


def resolve_device(spec: str) -> torch.device:
    """`auto` → CUDA when present, else CPU; `cpu` and `cuda[:N]` as given (refused when absent)."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"unknown device {spec!r}; use 'auto', 'cpu' or 'cuda[:N]'") from None
    if device.type not in {"cpu", "cuda"}:
        raise ValueError(f"unsupported device {spec!r}; use 'auto', 'cpu' or 'cuda[:N]'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available")
    return device


def _use_all_cores(device: torch.device) -> None:
    # A worker runs one job at a time, so it may have every core; an explicit OMP_NUM_THREADS still wins.
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))


def steps_per_epoch(n_images: int, batch_size: int, d_steps: int) -> int:
    """G steps per epoch: one epoch is one pass of D's real batches, `d_steps` of them per G step."""
    n_batches = max(1, n_images // batch_size)
    return max(1, n_batches // d_steps)


def _to_unit_range(batch_uint8: torch.Tensor) -> torch.Tensor:
    return batch_uint8.float().div_(127.5).sub_(1.0)


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def _optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.{idx}.{key}": value
        for idx, state in opt.state_dict()["state"].items()
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    }


@dataclass
class _Nets:
    g: MLPGenerator
    d: MLPDiscriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer


def _build(config: TrainConfig, image_shape: tuple[int, int, int], device: torch.device) -> _Nets:
    # Weight init draws from the global RNG; fork it so seeding here leaves the caller's state alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        g = MLPGenerator(
            MLPGeneratorConfig(latent_dim=config.latent_dim, output=config.output, image_shape=image_shape)
        )
        d = MLPDiscriminator(MLPDiscriminatorConfig(image_shape=image_shape))
    g, d = g.to(device).train(), d.to(device).train()
    betas = tuple(config.betas)
    opt_g = torch.optim.Adam(g.parameters(), lr=config.lr, betas=betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=config.lr, betas=betas)
    return _Nets(g, d, opt_g, opt_d)


def _write_samples(g: nn.Module, z: torch.Tensor, path: Path) -> None:
    g.eval()
    try:
        with torch.no_grad():
            fake = g(z)
    finally:
        g.train()
    checkpoint.atomic_write_bytes(path, images.png_bytes(images.grid(images.to_uint8(fake))))


def _metadata(config: TrainConfig, nets: _Nets, epoch: int, step: int, loss_values: dict[str, float]) -> dict[str, Any]:
    return {
        "generator": config_to_json(nets.g.cfg),
        "discriminator": config_to_json(nets.d.cfg),
        "latent_dim": config.latent_dim,
        "image_shape": list(nets.g.cfg.image_shape),
        "value_range": [-1, 1],
        "dataset": config.dataset,
        "epoch": epoch,
        "step": step,
        "losses": loss_values,
        "train_config": config.model_dump(mode="json"),
        "model_name": config.model_name,
    }


def _save_checkpoint(stem: Path, config: TrainConfig, nets: _Nets, epoch: int, step: int, lv: dict[str, float]) -> None:
    tensors = {
        **checkpoint.prefixed(nets.g, "generator"),
        **checkpoint.prefixed(nets.d, "discriminator"),
        **_optimizer_tensors(nets.opt_g, "opt_g"),
        **_optimizer_tensors(nets.opt_d, "opt_d"),
    }
    checkpoint.save(stem, tensors, _metadata(config, nets, epoch, step, lv))


def _loss_dict(sums: torch.Tensor, count: int) -> dict[str, float]:
    if count == 0:
        return {k: math.nan for k in LOSS_KEYS}
    return dict(zip(LOSS_KEYS, (sums / count).tolist(), strict=True))  # the only host sync: on report


def train(
    config: TrainConfig,
    out_dir: Path,
    *,
    data_root: Path,
    device: str = "cpu",
    progress_fn: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    report_every_s: float = 1.0,
) -> TrainResult:
    dev = resolve_device(device)
    _use_all_cores(dev)
    data = load_dataset(config.dataset, Path(data_root), config.max_samples).to(dev)
    n, image_shape = data.shape[0], tuple(data.shape[1:])
    batch = min(config.batch_size, n)  # a dataset smaller than a batch is trained on as one batch
    n_batches = max(1, n // batch)
    per_epoch = steps_per_epoch(n, batch, config.d_steps)
    total_steps = per_epoch * config.epochs

    nets = _build(config, image_shape, dev)
    g_loss_fn = losses.generator_loss(config.loss)
    rng = torch.Generator(device=dev).manual_seed(config.seed)
    fixed_z = latents_from_seeds(SAMPLE_SEEDS, config.latent_dim).to(dev)
    out_dir = Path(out_dir)

    def noise() -> torch.Tensor:
        return torch.randn(batch, config.latent_dim, generator=rng, device=dev)

    def report(progress: TrainProgress) -> None:
        if progress_fn is not None:
            progress_fn(progress)

    step, last_stem, last_samples = 0, None, None
    epoch_losses: dict[str, float] = {k: math.nan for k in LOSS_KEYS}
    start = last_report = time.monotonic()

    def progress(epoch: int, sums: torch.Tensor, count: int, **files: Path | None) -> TrainProgress:
        elapsed = max(time.monotonic() - start, 1e-9)
        rate = step / elapsed
        return TrainProgress(
            epoch=epoch,
            epochs=config.epochs,
            step=step,
            total_steps=total_steps,
            losses=_loss_dict(sums, count),
            images_per_sec=step * config.d_steps * batch / elapsed,
            eta_seconds=(total_steps - step) / rate if rate > 0 else math.inf,
            **files,
        )

    for epoch in range(1, config.epochs + 1):
        perm = torch.randperm(n, generator=rng, device=dev)
        sums = torch.zeros(len(LOSS_KEYS), device=dev)
        for i in range(per_epoch):
            if should_stop is not None and should_stop():
                partial = _loss_dict(sums, i) if i > 0 else epoch_losses
                return TrainResult("cancelled", epoch - 1, step, last_stem, last_samples, partial)
            for k in range(config.d_steps):
                j = (i * config.d_steps + k) % n_batches
                real = _to_unit_range(data[perm[j * batch : (j + 1) * batch]])
                d_stats = _d_step(nets, real, noise())
            g_loss = _g_step(nets, g_loss_fn, noise())
            sums += torch.stack([d_stats[0], g_loss, d_stats[1], d_stats[2]])
            step += 1
            now = time.monotonic()
            if now - last_report >= report_every_s and i + 1 < per_epoch:
                last_report = now
                report(progress(epoch - 1, sums, i + 1))

        epoch_losses = _loss_dict(sums, per_epoch)
        files: dict[str, Path | None] = {}
        if epoch % config.sample_every == 0 or epoch == config.epochs:
            last_stem = out_dir / "checkpoints" / f"epoch-{epoch:04d}"
            last_samples = out_dir / "samples" / f"epoch-{epoch:04d}.png"
            _save_checkpoint(last_stem, config, nets, epoch, step, epoch_losses)
            _write_samples(nets.g, fixed_z, last_samples)
            files = {"checkpoint": last_stem, "samples": last_samples}
        last_report = time.monotonic()
        report(progress(epoch, sums, per_epoch, **files))

    return TrainResult("completed", config.epochs, step, last_stem, last_samples, epoch_losses)


def _d_step(nets: _Nets, real: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One discriminator update; returns (loss, mean D(x), mean D(G(z))) as detached device tensors."""
    with torch.no_grad():
        fake = nets.g(z)
    real_logits, fake_logits = nets.d(real), nets.d(fake)
    loss = losses.discriminator_bce(real_logits, fake_logits)
    nets.opt_d.zero_grad(set_to_none=True)
    loss.backward()
    nets.opt_d.step()
    return loss.detach(), torch.sigmoid(real_logits.detach()).mean(), torch.sigmoid(fake_logits.detach()).mean()


def _g_step(nets: _Nets, loss_fn: losses.LossFn, z: torch.Tensor) -> torch.Tensor:
    """One generator update through a frozen D (its weight gradients would be thrown away anyway)."""
    _set_requires_grad(nets.d, False)
    try:
        loss = loss_fn(nets.d(nets.g(z)))
        nets.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        nets.opt_g.step()
    finally:
        _set_requires_grad(nets.d, True)
    return loss.detach()
