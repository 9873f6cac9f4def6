"""The networks of a run: G and D built and seeded from the config, their optimisers and learning-rate
schedules, the EMA of G's weights, and how G is called."""

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from core.train_config import TrainConfig
from training import architectures, distributed, regularizers
from training.data import DeviceDataset
from training.distributed import World


@dataclass
class Nets:
    """`g` and `d` own the weights (checkpoints, EMA, optimisers, penalties that differentiate twice);
    `g_run` and `d_run` are what the step calls for its forward passes: the same modules, or their
    `torch.compile`d wrappers, which share those weights; under several processes, their DDP wrappers
    (`training.distributed`). `d_for_g` is the D that G's step looks through (D is frozen there): `d_run`, but
    never a DDP wrapper, which would wait for D gradients that G's step does not make."""

    g: nn.Module
    d: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    ema: nn.Module | None = None
    schedulers: list[torch.optim.lr_scheduler.LRScheduler] = field(default_factory=list)
    g_run: Callable[..., torch.Tensor] | None = None
    d_run: Callable[..., torch.Tensor] | None = None
    d_for_g: Callable[..., torch.Tensor] | None = None

    def __post_init__(self) -> None:
        self.g_run = self.g if self.g_run is None else self.g_run
        self.d_run = self.d if self.d_run is None else self.d_run
        self.d_for_g = self.d_run if self.d_for_g is None else self.d_for_g


def _optimizer(
    params: Any, config: TrainConfig, lr: float, betas: tuple[float, float] | None, device: torch.device
) -> torch.optim.Optimizer:
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, foreach=True)
    # On CUDA, fused Adam: the whole update in one kernel per parameter group. On CPU, foreach (one multi-tensor
    # update instead of a Python loop over the parameters): CPU results are reproducible across releases of
    # this code only while the update's arithmetic is unchanged, and the committed ones were made with foreach.
    betas = tuple(betas or (0.5, 0.999))
    if device.type == "cuda":
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    return torch.optim.Adam(params, lr=lr, betas=betas, foreach=True)


def channels_last(device: torch.device) -> bool:
    """Whether convolutional nets train in channels-last (NHWC) memory: on CUDA, where cuDNN's tensor-core
    convolutions read NHWC without a transpose per layer. Execution only: the same numbers to float rounding."""
    return device.type == "cuda"


def _in_memory_format(module: nn.Module, device: torch.device) -> nn.Module:
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules())
    return module.to(memory_format=torch.channels_last) if has_conv and channels_last(device) else module


def _compiled(module: nn.Module, mode: str) -> Callable[..., torch.Tensor]:
    """`module` through torch.compile, or itself with `compile: off`. dynamic=False: a run's batch shapes
    are fixed (the last partial batch is dropped), so one specialised graph serves every step."""
    if mode == "off":
        return module
    return torch.compile(module, mode=mode, dynamic=False)  # type: ignore[return-value]


def schedulers(
    config: TrainConfig, total_steps: int, *opts: torch.optim.Optimizer, at_step: int = 0
) -> list[torch.optim.lr_scheduler.LRScheduler]:
    """Per-G-step learning-rate schedules; D's falls with G's, whatever its `d_steps`. `at_step` > 0 rebuilds
    them for a resumed run: a LambdaLR is a function of the step alone, so one built at step t (on optimisers
    whose state, `initial_lr` included, was restored) sets exactly the rate an uninterrupted run has there."""
    if config.lr_schedule == "constant":
        return []
    return [
        torch.optim.lr_scheduler.LambdaLR(o, lambda t: max(0.0, 1.0 - t / total_steps), last_epoch=at_step - 1)
        for o in opts
    ]


def build_nets(
    config: TrainConfig,
    data: DeviceDataset,
    reg: regularizers.Regularization,
    device: torch.device,
    total_steps: int,
    world: World = distributed.SINGLE,
) -> Nets:
    # Weight init draws from the global RNG; fork it so seeding here leaves the caller's state alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        g, d = architectures.build_models(config, data.sample_shape, data.num_classes)
        d = reg.apply_to_discriminator(d)
    g, d = g.to(device).train(), d.to(device).train()
    g, d = _in_memory_format(g, device), _in_memory_format(d, device)
    if world.distributed:
        g = distributed.sync_batchnorm(g)  # before the optimisers and the EMA copy: the same parameters
    opt_g = _optimizer(g.parameters(), config, config.lr_g or config.lr or 2e-4, config.betas_g, device)
    opt_d = _optimizer(d.parameters(), config, config.lr_d or config.lr or 2e-4, config.betas_d, device)
    ema = None
    if config.ema is not None:
        ema = copy.deepcopy(g).requires_grad_(False)
    if world.distributed:  # compile is refused with several processes (training.distributed.check_supported)
        return Nets(
            g,
            d,
            opt_g,
            opt_d,
            ema,
            schedulers(config, total_steps, opt_g, opt_d),
            g_run=distributed.data_parallel(g, device),
            d_run=distributed.data_parallel(d, device),
            d_for_g=d,
        )
    return Nets(
        g,
        d,
        opt_g,
        opt_d,
        ema,
        schedulers(config, total_steps, opt_g, opt_d),
        g_run=_compiled(g, config.compile),
        d_run=_compiled(d, config.compile),
    )


def call_g(
    g: nn.Module | Callable[..., torch.Tensor],
    z: torch.Tensor,
    labels: torch.Tensor | None = None,
    generator: torch.Tensor | None = None,
) -> torch.Tensor:
    """G(z) with its class labels (conditional) and generator indices (MAD-GAN), each None where unused."""
    return g(z, labels=labels, generator=generator)


@torch.no_grad()
def ema_decay(decay: float, step: int) -> float:
    """The decay used at G step `step` (0-based): min(decay, (1 + step)/(10 + step)), the warm-up of TensorFlow's
    ExponentialMovingAverage. Without it the EMA starts from G's random initial weights and forgets them at the
    rate of `decay` only: at 0.999 a fifth of the average is still the initial G after 1,500 steps
    (measured: docs/training.md, "Objectives and regularizers")."""
    return min(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema: nn.Module, g: nn.Module, decay: float) -> None:
    """θ_ema ← decay·θ_ema + (1 − decay)·θ; buffers (BatchNorm statistics) are copied, since averaging
    running statistics of different weights describes no network."""
    ema_params, params = list(ema.parameters()), list(g.parameters())
    if len(ema_params) != len(params):
        raise ValueError("EMA and generator differ in their parameters")
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for be, b in zip(ema.buffers(), g.buffers(), strict=True):
        be.copy_(b)
