"""One discriminator update (`d_step`) and one generator update (`g_step`), for every objective
(`training.losses`) and regularizer (`training.regularizers`); G may see D unrolled `unrolled_steps` ahead
(`training.unrolled`, Metz et al. 2017), and an EMA of its weights is kept. `Step` holds what both need;
`build_step` makes it for a run, seeded from its config.
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from core.train_config import TrainConfig
from training import distributed, losses, regularizers
from training.data import DeviceDataset
from training.distributed import World
from training.nets import Nets, build_nets, call_g, ema_decay, ema_update
from training.unrolled import DFn, unrolled_discriminator

LOSS_KEYS = ("d_loss", "g_loss", "d_real", "d_fake")


@dataclass
class Step:
    """What every D and G step needs, so those functions take one argument besides the batch."""

    config: TrainConfig
    nets: Nets
    data: DeviceDataset
    objective: losses.Objective
    reg: regularizers.Regularization
    rng: torch.Generator
    batch: int  # the global batch: what one process trains on, or all processes together
    device: torch.device
    num_generators: int | None = None
    extra_keys: tuple[str, ...] = field(default=())
    world: World = distributed.SINGLE

    @property
    def keys(self) -> tuple[str, ...]:
        return LOSS_KEYS + self.extra_keys

    def autocast(self) -> torch.autocast:
        """The forward passes' precision: bfloat16 autocast with `precision: bfloat16`, else a no-op."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bfloat16")

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.config.latent_dim, generator=self.rng, device=self.device)

    def fake_inputs(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(z, labels, generator indices) for a fake batch of `n` (global: all processes'): random labels when
        conditional, G_i for i % k; each drawn for the whole batch by every process, which keeps its shard."""
        z = self.world.shard(self.noise(n))
        labels = None
        if self.config.conditional and self.data.num_classes:
            labels = torch.randint(self.data.num_classes, (n,), generator=self.rng, device=self.device)
            labels = self.world.shard(labels)
        gen = None
        if self.num_generators:
            gen = self.world.shard(torch.arange(n, device=self.device) % self.num_generators)
        return z, labels, gen

    def perturb(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """`x` (this process's shard) with the regularizers' input noise, drawn for the whole global batch."""
        if not self.world.distributed:
            return self.reg.perturb(x, step, self.rng)
        full = torch.zeros((x.shape[0] * self.world.size, *x.shape[1:]), device=x.device, dtype=x.dtype)
        return x + self.world.shard(self.reg.perturb(full, step, self.rng))  # 0 + σε is σε: as one process

    def real_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        real = self.data.to_model_range(self.data.samples[idx])
        labels = self.data.labels[idx] if self.config.conditional and self.data.labels is not None else None
        return real, labels

    def random_real_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.real_batch(torch.randint(self.data.n, (self.batch,), generator=self.rng, device=self.device))

    def d_objective(self, real_out: torch.Tensor, fake_out: torch.Tensor, gen: torch.Tensor | None) -> torch.Tensor:
        if gen is not None:
            return losses.madgan_d_loss(real_out, fake_out, gen)
        return self.objective.d_loss(real_out, fake_out)

    def g_objective(self, fake_out: torch.Tensor) -> torch.Tensor:
        if self.num_generators:
            return losses.madgan_g_loss(fake_out, saturating=self.config.loss == "minimax")
        return self.objective.g_loss(fake_out)

    def score(self, out: torch.Tensor) -> torch.Tensor:
        """Mean D output for reporting: P(real) where D is a classifier, the raw critic value otherwise."""
        r = losses.realness(out.detach())
        return torch.sigmoid(r).mean() if self.objective.probabilistic or out.dim() == 2 else r.mean()


def _num_generators(g: nn.Module) -> int | None:
    return getattr(g, "num_generators", None)


def build_step(
    config: TrainConfig,
    data: DeviceDataset,
    device: torch.device,
    total_steps: int,
    batch: int,
    world: World = distributed.SINGLE,
) -> Step:
    """Networks, optimisers, objective, regularizers and RNG for a run, seeded from `config.seed`; `batch` is
    the global batch, of which each of `world`'s processes trains on its shard."""
    reg = regularizers.prepare(config, total_steps)
    nets = build_nets(config, data, reg, device, total_steps, world)
    return Step(
        config=config,
        nets=nets,
        data=data,
        objective=losses.objective(config.loss),
        reg=reg,
        rng=torch.Generator(device=device).manual_seed(config.seed),
        batch=batch,
        device=device,
        num_generators=_num_generators(nets.g),
        extra_keys=(("gp",) if config.loss == "wgan-gp" else ()) + reg.penalty_names,
        world=world,
    )


def d_step(s: Step, real: torch.Tensor, real_labels: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
    """One discriminator update; returns its loss terms and mean outputs as detached device tensors."""
    nets = s.nets
    z, fake_labels, gen = s.fake_inputs(real.shape[0] * s.world.size)  # `real`: this process's shard
    with torch.no_grad(), s.autocast():
        fake = call_g(nets.g_run, z, fake_labels, gen).float()
    real_in, fake_in = s.perturb(real, step), s.perturb(fake, step)
    with s.autocast():  # the losses themselves in float32: outputs are cast back before them
        real_out = losses.call_d(nets.d_run, real_in, real_labels).float()
        fake_out = losses.call_d(nets.d_run, fake_in, fake_labels).float()
    loss = s.d_objective(real_out, fake_out, gen)
    extras = s.reg.d_penalty(nets.d, real_in, fake_in, real_labels, fake_labels, step=step)
    if s.config.loss == "wgan-gp":
        gp = losses.gradient_penalty(nets.d, real_in, fake_in, real_labels, s.rng)
        extras = {"gp": (s.config.gp_lambda or 0.0) * gp, **extras}
    nets.opt_d.zero_grad(set_to_none=True)
    sum([loss, *extras.values()]).backward()  # type: ignore[union-attr]
    nets.opt_d.step()
    if s.config.clip_value is not None:
        _clip(nets.d, s.config.clip_value)
    stats = {"d_loss": loss.detach(), "d_real": s.score(real_out), "d_fake": s.score(fake_out)}
    return stats | {k: v.detach() for k, v in extras.items()}


@torch.no_grad()
def _clip(d: nn.Module, c: float) -> None:
    # WGAN's crude Lipschitz bound (Arjovsky et al. 2017, Algorithm 1): every weight into [−c, c].
    for p in d.parameters():
        p.clamp_(-c, c)


def g_step(s: Step, step: int) -> torch.Tensor:
    """One generator update against D, or against D unrolled `unrolled_steps` ahead; D is never changed."""
    nets = s.nets
    d_fn: DFn = unrolled_discriminator(s) if s.config.unrolled_steps else nets.d_for_g  # type: ignore[assignment]
    nets.d.requires_grad_(False)  # D's own weight gradients would be thrown away anyway
    try:
        z, labels, gen = s.fake_inputs(s.batch)
        with s.autocast():
            fake = s.perturb(call_g(nets.g_run, z, labels, gen).float(), step)
            fake_out = losses.call_d(d_fn, fake, labels).float()
        loss = s.g_objective(fake_out)
        nets.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        nets.opt_g.step()
    finally:
        nets.d.requires_grad_(True)
    if nets.ema is not None:
        ema_update(nets.ema, nets.g, ema_decay(s.config.ema or 0.0, step))
    for scheduler in nets.schedulers:
        scheduler.step()
    return loss.detach()
