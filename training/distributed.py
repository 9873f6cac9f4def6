"""Multi-process data-parallel training (torch.distributed): one process per device, each a rank of a world.

The loop stays one function (`training.loop.train`); a `World` says which rank it is. Every rank builds the
same networks from the same seed and draws the same random numbers from the same stream (the global
permutation of each epoch, the noise z, labels and instance noise of the whole global batch), then keeps only
its contiguous slice of each global batch (`World.shard`). Losses are means, so DDP's averaging of the ranks'
gradients is the gradient of the whole batch, and G's BatchNorms compute their statistics over the whole
global batch (`SyncedBatchNorm`). A run on N processes at global batch B therefore takes the steps a
one-process run at batch B takes, to float rounding; the state every rank holds is the same, so rank 0's
checkpoint resumes on any number of processes.

Rank 0 alone reports progress and writes samples and checkpoints; what it decides (stop, write or not) reaches
the others through `agree`. Processes start as torchrun starts them: `init()` reads RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from core.train_config import TrainConfig

# Rank 0 evaluates and writes alone while the others wait at the next collective: give it time.
COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes: rank `rank` of `size`, `local_rank` of
    `local_size` on its host (which device it takes, and its share of the CPU cores)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that reports, writes samples and checkpoints."""
        return self.rank == 0

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch (dim 0, divisible by the world's size)."""
        if not self.distributed:
            return x
        n = x.shape[0] // self.size
        return x[self.rank * n : (self.rank + 1) * n]


SINGLE = World()


def world_from_env(env: Mapping[str, str] = os.environ) -> World:
    """The world torchrun describes in the environment; one process when WORLD_SIZE is unset."""
    size = int(env.get("WORLD_SIZE", "1"))
    local_size = int(env.get("LOCAL_WORLD_SIZE", str(size)))
    return World(int(env.get("RANK", "0")), size, int(env.get("LOCAL_RANK", "0")), local_size)


def current() -> World:
    """The world of the initialised default process group, or one process when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    size = dist.get_world_size()
    env = world_from_env()
    local = env if env.size == size else World(dist.get_rank(), size, dist.get_rank(), size)
    return World(dist.get_rank(), size, local.local_rank, local.local_size)


def init(device: str = "auto", env: Mapping[str, str] = os.environ) -> World:
    """Join the process group torchrun's environment describes (gloo on CPUs, NCCL on CUDA) and return this
    process's world; one process (no group) when WORLD_SIZE is unset or 1."""
    world = world_from_env(env)
    if not world.distributed or dist.is_initialized():
        return world
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(
        "nccl" if cuda else "gloo", rank=world.rank, world_size=world.size, timeout=COLLECTIVE_TIMEOUT
    )
    return world


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(world: World, device: torch.device) -> torch.device:
    """Each rank's own GPU (`cuda:LOCAL_RANK`) when training on CUDA; the CPU is shared."""
    if world.distributed and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


def cpu_threads(world: World) -> int:
    """Torch threads for one rank on a CPU: the host's cores shared by its ranks."""
    return max(1, (os.cpu_count() or 1) // max(1, world.local_size))


def check_supported(config: TrainConfig, world: World) -> None:
    """Refuse, before any data is read, what multi-process training cannot reproduce step for step."""
    if not world.distributed:
        return
    refused = {
        "mad-gan": config.architecture == "mad-gan",
        "adagan": config.architecture == "adagan",  # its rounds run one after another in one process
        "wgan-gp": config.loss == "wgan-gp",
        "unrolled_steps": bool(config.unrolled_steps),
        "compile": config.compile != "off",
    }
    names = [name for name, on in refused.items() if on]
    if names:
        raise ValueError(
            f"multi-process training ({world.size} processes) does not support {', '.join(names)}: "
            "train it with one process (gpus: 1); docs/training.md says why"
        )


def check_batch(batch: int, world: World) -> None:
    if world.distributed and batch % world.size:
        raise ValueError(
            f"the global batch ({batch}) must divide evenly among the {world.size} processes, each a shard of it"
        )


def agree(world: World, *flags: bool) -> tuple[bool, ...]:
    """Rank 0's answers, on every rank (one broadcast); the others' arguments are ignored."""
    if not world.distributed:
        return flags
    t = torch.tensor([int(f) for f in flags], dtype=torch.int64, device=_collective_device())
    dist.broadcast(t, src=0)
    return tuple(bool(v) for v in t.tolist())


def mean_over_ranks(t: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of `t` over the ranks (each rank's a mean over an equal shard: the global batch's mean)."""
    if not world.distributed:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world.size


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


class _AllReduceSum(torch.autograd.Function):
    """Σ over the ranks, differentiable: every rank's loss depends on the sum, so the gradient reaching each
    rank's summand is the sum of the ranks' gradients with respect to it."""

    @staticmethod
    def forward(ctx: object, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


class SyncedBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the whole global batch, summed over the ranks with a
    differentiable all-reduce, so a rank's gradient through them is the one-process gradient's share.
    torch's SyncBatchNorm runs on GPUs only; this one on any backend. In eval mode it is plain BatchNorm (no
    collective: rank 0 alone draws samples). Same parameters, buffers and state-dict keys as the BatchNorm
    it replaces."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = input.numel() // input.shape[1] * dist.get_world_size()
        stats = torch.cat([input.sum(dims), input.square().sum(dims)])
        stats = _AllReduceSum.apply(stats)
        mean, sq_mean = (stats / count).chunk(2)
        var = sq_mean - mean.square()  # biased, as BatchNorm normalises with
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr,operator]
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * count / max(1, count - 1), m)
        out = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm in `module` as a `SyncedBatchNorm` holding the same parameter and buffer objects (an
    optimiser built on them stays valid)."""
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncedBatchNorm):
        synced = SyncedBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        synced._parameters = module._parameters
        synced._buffers = module._buffers
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module._modules[name] = sync_batchnorm(child)
    return module


def data_parallel(module: nn.Module, device: torch.device) -> DistributedDataParallel:
    """`module` under DDP: its gradients averaged over the ranks in backward. Buffers are not broadcast: every
    rank computes them alike (global BatchNorm statistics, spectral norm's vectors from the same weights)."""
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)
