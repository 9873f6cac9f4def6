"""The one training loop (Goodfellow et al. 2014, Algorithm 1), shared by the CLI and the Celery worker.

Per generator step: `d_steps` discriminator updates on fresh real batches, then one generator update, for
every objective (`training.losses`) and regularizer (`training.regularizers`); optionally the generator
sees D unrolled `unrolled_steps` ahead (Metz et al. 2017) and an EMA of its weights is kept and served.

It knows nothing of Celery or HTTP: the caller passes `progress_fn` to hear about progress and
`should_stop` to ask for cancellation, and gets a `TrainResult` back.
"""

import copy
import functools
import io
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.func import functional_call

from training import checkpoint, data, images, losses, models, regularizers
from training.config import TrainConfig
from training.latents import latents_from_seeds, seed_generators, seed_labels

SAMPLE_SEEDS = list(range(64))  # the grid shows seeds 0..63, so it matches /generate for those seeds
POINT_SEEDS = list(range(2500))  # the scatter of a toy run: enough points to see every mode
LOSS_KEYS = ("d_loss", "g_loss", "d_real", "d_fake")
MADGAN_LOSSES = ("minimax", "non-saturating")
UNROLL_EPS = 1e-8  # inside the √ of the unrolled update, so a zero gradient does not give an infinite derivative

DFn = Callable[..., torch.Tensor]


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


def check_supported(config: TrainConfig) -> None:
    """Refuse what the loop cannot train, before any data is read."""
    if config.architecture == "mad-gan" and config.loss not in MADGAN_LOSSES:
        raise ValueError(
            f"`mad-gan` trains its (k+1)-way discriminator with cross-entropy, so `loss` must be one of "
            f"{', '.join(MADGAN_LOSSES)}, not {config.loss!r}"
        )


# --- data ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Data:
    samples: torch.Tensor  # uint8 images N×C×H×W or float32 points N×D, on the training device
    labels: torch.Tensor | None
    num_classes: int | None
    kind: Literal["image", "points"]
    to_model_range: Callable[[torch.Tensor], torch.Tensor]

    @property
    def n(self) -> int:
        return self.samples.shape[0]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.samples.shape[1:])


def load_data(config: TrainConfig, data_root: Path, device: torch.device) -> _Data:
    ds = data.load_training_data(config, data_root)
    labels = ds.labels.to(device) if ds.labels is not None else None
    return _Data(ds.samples.to(device), labels, ds.num_classes, ds.kind, data.to_model_range)


# --- networks -----------------------------------------------------------------------------------------


@dataclass
class _Nets:
    g: nn.Module
    d: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    ema: nn.Module | None = None


def _build_models(config: TrainConfig, d: _Data) -> tuple[nn.Module, nn.Module]:
    return models.build_models(config, d.sample_shape, d.num_classes)


def _optimizer(params: Any, config: TrainConfig, lr: float, betas: tuple[float, float] | None) -> torch.optim.Optimizer:
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, foreach=True)
    # foreach: one multi-tensor update per step instead of a Python loop over the parameters (torch's own
    # default on CUDA); on CPU for these small MLPs it saves little, but the committed results were made with it.
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas or (0.5, 0.999)), foreach=True)


def _build(config: TrainConfig, data: _Data, reg: regularizers.Regularization, device: torch.device) -> _Nets:
    # Weight init draws from the global RNG; fork it so seeding here leaves the caller's state alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        g, d = _build_models(config, data)
        d = reg.apply_to_discriminator(d)
    g, d = g.to(device).train(), d.to(device).train()
    opt_g = _optimizer(g.parameters(), config, config.lr_g or config.lr or 2e-4, config.betas_g)
    opt_d = _optimizer(d.parameters(), config, config.lr_d or config.lr or 2e-4, config.betas_d)
    ema = None
    if config.ema is not None:
        ema = copy.deepcopy(g).requires_grad_(False)
    return _Nets(g, d, opt_g, opt_d, ema)


def _spec(module: nn.Module) -> dict[str, Any]:
    return dict(module.spec)  # type: ignore[arg-type]


def _num_generators(g: nn.Module) -> int | None:
    return getattr(g, "num_generators", None)


def call_g(
    g: nn.Module, z: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Tensor | None = None
) -> torch.Tensor:
    """G(z) with its class labels (conditional) and generator indices (MAD-GAN), each None where unused."""
    return g(z, labels=labels, generator=generator)


@torch.no_grad()
def ema_update(ema: nn.Module, g: nn.Module, decay: float) -> None:
    """θ_ema ← decay·θ_ema + (1 − decay)·θ; buffers (BatchNorm statistics) are copied, since averaging
    running statistics of different weights describes no network."""
    ema_params, params = list(ema.parameters()), list(g.parameters())
    if len(ema_params) != len(params):
        raise ValueError("EMA and generator differ in their parameters")
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for be, b in zip(ema.buffers(), g.buffers(), strict=True):
        be.copy_(b)


# --- one step -----------------------------------------------------------------------------------------


@dataclass
class _Step:
    """What every D and G step needs, so those functions take one argument besides the batch."""

    config: TrainConfig
    nets: _Nets
    data: _Data
    objective: losses.Objective
    reg: regularizers.Regularization
    rng: torch.Generator
    batch: int
    device: torch.device
    num_generators: int | None = None
    extra_keys: tuple[str, ...] = field(default=())

    @property
    def keys(self) -> tuple[str, ...]:
        return LOSS_KEYS + self.extra_keys

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.config.latent_dim, generator=self.rng, device=self.device)

    def fake_inputs(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(z, labels, generator indices) for a fake batch: random labels when conditional, G_i for i % k."""
        z = self.noise(n)
        labels = None
        if self.config.conditional and self.data.num_classes:
            labels = torch.randint(self.data.num_classes, (n,), generator=self.rng, device=self.device)
        gen = None
        if self.num_generators:
            gen = torch.arange(n, device=self.device) % self.num_generators
        return z, labels, gen

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


def d_step(s: _Step, real: torch.Tensor, real_labels: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
    """One discriminator update; returns its loss terms and mean outputs as detached device tensors."""
    nets = s.nets
    z, fake_labels, gen = s.fake_inputs(real.shape[0])
    with torch.no_grad():
        fake = call_g(nets.g, z, fake_labels, gen)
    real_in, fake_in = s.reg.perturb(real, step, s.rng), s.reg.perturb(fake, step, s.rng)
    real_out = losses.call_d(nets.d, real_in, real_labels)
    fake_out = losses.call_d(nets.d, fake_in, fake_labels)
    loss = s.d_objective(real_out, fake_out, gen)
    extras = s.reg.d_penalty(nets.d, real_in, fake_in, real_labels, fake_labels)
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


def g_step(s: _Step, step: int) -> torch.Tensor:
    """One generator update against D, or against D unrolled `unrolled_steps` ahead; D is never changed."""
    nets = s.nets
    d_fn: DFn = unrolled_discriminator(s) if s.config.unrolled_steps else nets.d
    nets.d.requires_grad_(False)  # D's own weight gradients would be thrown away anyway
    try:
        z, labels, gen = s.fake_inputs(s.batch)
        fake = s.reg.perturb(call_g(nets.g, z, labels, gen), step, s.rng)
        loss = s.g_objective(losses.call_d(d_fn, fake, labels))
        nets.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        nets.opt_g.step()
    finally:
        nets.d.requires_grad_(True)
    if nets.ema is not None:
        ema_update(nets.ema, nets.g, s.config.ema or 0.0)
    return loss.detach()


# --- unrolled GAN -------------------------------------------------------------------------------------


def unrolled_discriminator(s: _Step) -> DFn:
    """D after `unrolled_steps` differentiable optimisation steps on a functional copy of its parameters
    (Metz et al. 2017, eq. 4–6), as a function D_K(x, labels).

    What is differentiated: θ_0 is D's current parameters, detached (G cannot move them). Each unrolled step
    draws a fresh real batch and a fresh fake batch G(z) *with* its graph to G, and applies D's own update
    rule (Adam or RMSprop, continuing from copies of D's optimiser moments) with `create_graph=True`, so
    θ_K is a differentiable function of G's parameters through every fake batch of the unroll. G's loss on
    D_K then back-propagates both through D_K(G(z)) directly and through θ_K(G). D's parameters, buffers and
    optimiser state are only read: the copy's buffers are clones, and every update is out of place.
    The unrolled steps use the objective's loss (and WGAN clipping) only; penalties (gp, R1, R2) and
    instance noise are left out of the unroll to avoid third-order derivatives."""
    d, opt = s.nets.d, s.nets.opt_d
    names = [n for n, _ in d.named_parameters()]
    params = {n: p.detach().clone().requires_grad_(True) for n, p in d.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in d.named_buffers()}
    moments = _optimizer_moments(opt, d)

    def d_at(theta: dict[str, torch.Tensor]) -> DFn:
        def fn(x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
            args = (x,) if labels is None else (x, labels)
            return functional_call(d, (theta, buffers), args)

        return fn

    for _ in range(s.config.unrolled_steps):
        real, real_labels = s.random_real_batch()
        z, fake_labels, gen = s.fake_inputs(s.batch)
        fake = call_g(s.nets.g, z, fake_labels, gen)
        d_k = d_at(params)
        loss = s.d_objective(losses.call_d(d_k, real, real_labels), losses.call_d(d_k, fake, fake_labels), gen)
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
        params = _unrolled_update(opt, params, dict(zip(names, grads, strict=True)), moments)
        if s.config.clip_value is not None:
            c = s.config.clip_value
            params = {n: p.clamp(-c, c) for n, p in params.items()}
    return d_at(params)


@dataclass
class _Moments:
    """Copies of D's optimiser state, advanced out of place along the unroll."""

    step: int
    first: dict[str, torch.Tensor]  # Adam's m (zeros for RMSprop, unused)
    second: dict[str, torch.Tensor]  # Adam's v / RMSprop's square average


def _optimizer_moments(opt: torch.optim.Optimizer, d: nn.Module) -> _Moments:
    step, first, second = 0, {}, {}
    for name, p in d.named_parameters():
        state = opt.state.get(p, {})
        step = int(state["step"]) if "step" in state else step  # the one host sync of an unrolled G step
        first[name] = state["exp_avg"].detach().clone() if "exp_avg" in state else torch.zeros_like(p)
        sq = state.get("exp_avg_sq", state.get("square_avg"))
        second[name] = sq.detach().clone() if sq is not None else torch.zeros_like(p)
    return _Moments(step, first, second)


def _unrolled_update(
    opt: torch.optim.Optimizer, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], m: _Moments
) -> dict[str, torch.Tensor]:
    """One out-of-place step of D's own rule. Differs from torch's only in ε under the √ (not after it):
    √v has an infinite derivative at v = 0, which a dead unit's zero gradient would otherwise hit."""
    group = opt.param_groups[0]
    lr = float(group["lr"])
    m.step += 1
    out = {}
    for name, p in params.items():
        g = grads[name]
        if isinstance(opt, torch.optim.Adam):
            b1, b2 = group["betas"]
            m.first[name] = b1 * m.first[name] + (1 - b1) * g
            m.second[name] = b2 * m.second[name] + (1 - b2) * g * g
            m_hat = m.first[name] / (1 - b1**m.step)
            v_hat = m.second[name] / (1 - b2**m.step)
            out[name] = p - lr * m_hat / (torch.sqrt(v_hat + UNROLL_EPS**2) + group["eps"])
        else:
            alpha = group.get("alpha", 0.99)
            m.second[name] = alpha * m.second[name] + (1 - alpha) * g * g
            out[name] = p - lr * g / (torch.sqrt(m.second[name] + UNROLL_EPS**2) + group["eps"])
    return out


# --- samples and checkpoints --------------------------------------------------------------------------


def sample_conditioning(
    n: int, num_classes: int | None, num_generators: int | None, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Labels and generator indices of seeds 0…n−1, mapped as /generate maps them."""
    seeds = range(n)
    labels, gen = seed_labels(seeds, num_classes), seed_generators(seeds, num_generators)
    return (
        None if labels is None else torch.tensor(labels, device=device),
        None if gen is None else torch.tensor(gen, device=device),
    )


def _generate(g: nn.Module, z: torch.Tensor, labels: torch.Tensor | None, gen: torch.Tensor | None) -> torch.Tensor:
    g.eval()
    try:
        with torch.no_grad():
            return call_g(g, z, labels, gen)
    finally:
        g.train()


@functools.lru_cache(maxsize=4)
def _point_latents(latent_dim: int) -> torch.Tensor:
    # 2,500 RandomState draws cost ~0.5 s; a toy run writes a scatter every epoch, so draw them once.
    return latents_from_seeds(POINT_SEEDS, latent_dim)


def _write_samples(s: _Step, path: Path, fixed_z: torch.Tensor) -> None:
    g = s.nets.ema if s.nets.ema is not None else s.nets.g  # the samples show what will be served
    num_classes = s.data.num_classes if s.config.conditional else None
    if s.data.kind == "image":
        # A conditional grid is one class per column (seed s has class s % num_classes).
        nrow = num_classes or math.ceil(math.sqrt(fixed_z.shape[0]))
        labels, gen = sample_conditioning(fixed_z.shape[0], num_classes, s.num_generators, s.device)
        fake = _generate(g, fixed_z, labels, gen)
        png = images.png_bytes(images.grid(images.to_uint8(fake), nrow=nrow))
    else:
        z = _point_latents(s.config.latent_dim).to(s.device)
        labels, gen = sample_conditioning(len(POINT_SEEDS), None, s.num_generators, s.device)
        fake = _generate(g, z, labels, gen)
        png = scatter_png(s.data.to_model_range(s.data.samples).cpu(), fake.cpu(), s.config.dataset)
    checkpoint.atomic_write_bytes(path, png)


def scatter_png(real: torch.Tensor, fake: torch.Tensor, title: str) -> bytes:
    """Generated points over the data: a scatter for 2-D, histograms (as densities) for 1-D."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a worker
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.add_subplot()
    real, fake = real.flatten(1).numpy(), fake.flatten(1).numpy()
    if real.shape[1] == 1:
        bins = 100
        ax.hist(real[:, 0], bins=bins, density=True, alpha=0.5, color="tab:blue", label="data")
        ax.hist(fake[:, 0], bins=bins, density=True, alpha=0.5, color="tab:orange", label="generated")
        ax.set_ylabel("density")
    else:
        ax.scatter(real[:, 0], real[:, 1], s=2, alpha=0.3, color="tab:blue", label="data")
        ax.scatter(fake[:, 0], fake[:, 1], s=2, alpha=0.5, color="tab:orange", label="generated")
        ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="upper right")
    ax.set_title(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.{idx}.{key}": value
        for idx, state in opt.state_dict()["state"].items()
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    }


def _metadata(s: _Step, epoch: int, step: int, loss_values: dict[str, float]) -> dict[str, Any]:
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
        "epoch": epoch,
        "step": step,
        "losses": loss_values,
        "train_config": config.model_dump(mode="json"),
        "model_name": config.model_name,
    }
    if s.data.kind == "image":
        meta |= {"image_shape": list(s.data.sample_shape), "value_range": [-1, 1]}
    if s.num_generators:
        meta["num_generators"] = s.num_generators
    return meta


def _save_checkpoint(stem: Path, s: _Step, epoch: int, step: int, lv: dict[str, float]) -> None:
    nets = s.nets
    tensors = {
        **checkpoint.prefixed(nets.g, "generator"),
        **checkpoint.prefixed(nets.d, "discriminator"),
        **_optimizer_tensors(nets.opt_g, "opt_g"),
        **_optimizer_tensors(nets.opt_d, "opt_d"),
    }
    if nets.ema is not None:
        tensors |= checkpoint.prefixed(nets.ema, checkpoint.EMA_PREFIX)
    checkpoint.save(stem, tensors, _metadata(s, epoch, step, lv))


def _loss_dict(keys: tuple[str, ...], sums: torch.Tensor, count: int) -> dict[str, float]:
    if count == 0:
        return {k: math.nan for k in keys}
    return dict(zip(keys, (sums / count).tolist(), strict=True))  # the only host sync: on report


def build_step(config: TrainConfig, data: _Data, device: torch.device, total_steps: int, batch: int) -> _Step:
    """Networks, optimisers, objective, regularizers and RNG for a run, seeded from `config.seed`."""
    reg = regularizers.prepare(config, total_steps)
    nets = _build(config, data, reg, device)
    return _Step(
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
    )


# --- the loop -----------------------------------------------------------------------------------------


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
    check_supported(config)
    dev = resolve_device(device)
    _use_all_cores(dev)
    data = load_data(config, Path(data_root), dev)
    n = data.n
    batch = min(config.batch_size, n)  # a dataset smaller than a batch is trained on as one batch
    n_batches = max(1, n // batch)
    d_steps = config.d_steps or 1
    per_epoch = steps_per_epoch(n, batch, d_steps)
    total_steps = config.steps or per_epoch * config.epochs
    epochs = math.ceil(total_steps / per_epoch)  # `steps` wins: the last epoch may be partial

    s = build_step(config, data, dev, total_steps, batch)
    keys = s.keys
    fixed_z = latents_from_seeds(SAMPLE_SEEDS, config.latent_dim).to(dev)
    out_dir = Path(out_dir)

    def report(progress: TrainProgress) -> None:
        if progress_fn is not None:
            progress_fn(progress)

    step, last_stem, last_samples = 0, None, None
    epoch_losses: dict[str, float] = {k: math.nan for k in keys}
    start = last_report = time.monotonic()

    def progress(epoch: int, sums: torch.Tensor, count: int, **files: Path | None) -> TrainProgress:
        elapsed = max(time.monotonic() - start, 1e-9)
        rate = step / elapsed
        return TrainProgress(
            epoch=epoch,
            epochs=epochs,
            step=step,
            total_steps=total_steps,
            losses=_loss_dict(keys, sums, count),
            images_per_sec=step * d_steps * batch / elapsed,
            eta_seconds=(total_steps - step) / rate if rate > 0 else math.inf,
            **files,
        )

    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n, generator=s.rng, device=dev)
        sums = torch.zeros(len(keys), device=dev)
        this_epoch = min(per_epoch, total_steps - step)
        for i in range(this_epoch):
            if should_stop is not None and should_stop():
                partial = _loss_dict(keys, sums, i) if i > 0 else epoch_losses
                return TrainResult("cancelled", epoch - 1, step, last_stem, last_samples, partial)
            for k in range(d_steps):
                j = (i * d_steps + k) % n_batches
                real, real_labels = s.real_batch(perm[j * batch : (j + 1) * batch])
                d_stats = d_step(s, real, real_labels, step)
            d_stats["g_loss"] = g_step(s, step)
            sums += torch.stack([d_stats[key] for key in keys])
            step += 1
            now = time.monotonic()
            if now - last_report >= report_every_s and i + 1 < this_epoch:
                last_report = now
                report(progress(epoch - 1, sums, i + 1))

        epoch_losses = _loss_dict(keys, sums, this_epoch)
        files: dict[str, Path | None] = {}
        if epoch % config.sample_every == 0 or epoch == epochs:
            last_stem = out_dir / "checkpoints" / f"epoch-{epoch:04d}"
            last_samples = out_dir / "samples" / f"epoch-{epoch:04d}.png"
            _save_checkpoint(last_stem, s, epoch, step, epoch_losses)
            _write_samples(s, last_samples, fixed_z)
            files = {"checkpoint": last_stem, "samples": last_samples}
        last_report = time.monotonic()
        report(progress(epoch, sums, this_epoch, **files))

    return TrainResult("completed", epochs, step, last_stem, last_samples, epoch_losses)
