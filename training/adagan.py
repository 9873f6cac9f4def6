"""AdaGAN: boosting GANs into a mixture (Tolstikhin, Gelly, Bousquet, Simon-Gabriel & Schölkopf 2017, "AdaGAN:
Boosting Generative Models", NeurIPS; arXiv:1701.02386), for `architecture: adagan`.

Round t = 1 … T (`rounds`):

1. Unless t = 1: train a binary classifier D to tell the (unweighted) training data from the mixture so far,
   and read off its estimate of the density ratio at every training point, h(xᵢ) = dP_g/dP_d(xᵢ) ≈
   (1 − D(xᵢ))/D(xᵢ) = exp(−logit) (the paper's §3, h(z) = (1 − z)/z for the Jensen-Shannon GAN).
2. Reweight the data (the paper's Theorem/Algorithm for the optimal new component, §3):
   wᵢ = (pᵢ/β)·(λ* − (1 − β)·h(xᵢ))₊ with pᵢ = 1/N and λ* the one number that makes Σwᵢ = 1 (`data_weights`):
   points the mixture already covers (large h) get weight 0, the ones it misses share the mass.
3. Train a fresh `mlp` GAN on the data sampled by those weights (minibatches drawn with replacement by wᵢ;
   round 1: uniform), with the project's own D and G steps (`training.step`).
4. mixture ← (1 − β_t)·mixture + β_t·G_t, β₁ = 1 and β_t = `adagan_beta` or 1/t (the paper discusses both a
   constant β and 1/t; 1/t gives every component weight 1/T).

The mixture (`training.architectures.AdaGANMixture`: T generators and their weights) is checkpointed after every
round and the last one is published; a seed picks its component by the weights (`training.latents.
seed_components`). What differs from the paper: the reweighting classifier is a fresh MLP of the run's D
widths trained for `REWEIGHT_STEPS` (the paper reuses a GAN-style D); every round trains as long as the run's
`steps`/`epochs` say. A stopped run starts again from round 1 (no resume within the boosting).
"""

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.train_config import TrainConfig
from training import architectures, checkpoint, run_state
from training.data import DeviceDataset, load_to_device
from training.latents import latents_from_seeds
from training.loop import (
    NonFiniteLossError,
    TrainProgress,
    TrainResult,
    _use_all_cores,
    check_supported,
    resolve_device,
    steps_per_epoch,
)
from training.nets import call_g
from training.samples import SAMPLE_SEEDS, write_samples
from training.step import build_step, d_step, g_step

REWEIGHT_STEPS = 500  # Adam steps of the reweighting classifier per round (fewer when the round itself is shorter)
REWEIGHT_LR = 1e-3
REWEIGHT_BATCH = 256
LOGIT_CLAMP = 30.0  # |logit| ≤ 30: h = e^{-logit} stays finite in float64 and a sure D gives h ≈ 0 or ≈ 1e13
SCORE_CHUNK = 8192  # training points scored by D at once
ROUND_SEED_STRIDE = 1_000_003  # component t is seeded seed + (t − 1)·stride: rounds differ, runs repeat


def beta_for(config: TrainConfig, t: int) -> float:
    """β_t, the weight of round t's component: 1 for the first, then `adagan_beta` or 1/t."""
    if t == 1:
        return 1.0
    return config.adagan_beta if config.adagan_beta is not None else 1.0 / t


def mixed_weights(weights: list[float], beta: float) -> list[float]:
    """The mixture's weights after adding a component of weight β: (1 − β)·old, then β."""
    return [(1.0 - beta) * w for w in weights] + [beta]


def data_weights(h: torch.Tensor, beta: float) -> torch.Tensor:
    """The training points' weights for the next component, from h(xᵢ) = dP_g/dP_d(xᵢ) (N values ≥ 0):
    wᵢ = (1/(βN))·(λ* − (1 − β)·hᵢ)₊, λ* such that Σwᵢ = 1. With dᵢ = (1 − β)hᵢ sorted ascending, the k smallest
    get weight exactly when λ_k = (βN + d₁ + … + d_k)/k exceeds d_k; λ* is λ_k of the largest such k (λ₁
    always does: λ₁ = βN + d₁ > d₁). Float64; the result sums to 1."""
    if h.dim() != 1 or len(h) == 0 or not bool((h >= 0).all()) or not 0 < beta <= 1:
        raise ValueError("data_weights needs N ≥ 1 ratios h ≥ 0 and β in (0, 1]")
    n = len(h)
    d = (1.0 - beta) * h.to(torch.float64)
    ds = torch.sort(d).values
    lam = (beta * n + torch.cumsum(ds, 0)) / torch.arange(1, n + 1, dtype=torch.float64, device=d.device)
    k = int(torch.nonzero(lam > ds).max())
    w = (lam[k] - d).clamp_min(0.0) / (beta * n)
    return w / w.sum()  # exact by construction up to rounding


def density_ratio(logits: torch.Tensor) -> torch.Tensor:
    """h = (1 − D)/D = exp(−logit) for D = σ(logit) the probability of "data" (float64)."""
    return torch.exp(-logits.to(torch.float64).clamp(-LOGIT_CLAMP, LOGIT_CLAMP))


# --- the mixture -----------------------------------------------------------------------------------------


def build_mixture(components: list[nn.Module], weights: list[float], base: dict[str, Any]) -> nn.Module:
    """An AdaGANMixture holding copies of `components`' weights."""
    mixture = architectures.AdaGANMixture(base, weights)
    for slot, g in zip(mixture.generators, components, strict=True):
        slot.load_state_dict(g.state_dict())
    return mixture.eval()


@torch.no_grad()
def sample_mixture(
    mixture: nn.Module, n: int, latent_dim: int, rng: torch.Generator, device: torch.device
) -> torch.Tensor:
    """n fresh samples of the mixture: components drawn by its weights, latents N(0, I), from `rng`."""
    weights = torch.tensor(mixture.mixture_weights, dtype=torch.float64, device=device)
    gen = torch.multinomial(weights, n, replacement=True, generator=rng)
    z = torch.randn(n, latent_dim, generator=rng, device=device)
    return call_g(mixture, z, None, gen)


# --- one round -------------------------------------------------------------------------------------------


def reweight(
    config: TrainConfig, data: DeviceDataset, mixture: nn.Module, beta: float, steps: int, device: torch.device
) -> torch.Tensor:
    """The training points' weights for the next component: a classifier of data vs the mixture, its density
    ratio h at every point, then `data_weights`."""
    rng = torch.Generator(device=device).manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):  # init from the global RNG: seeded here, the caller's state left alone
        torch.manual_seed(config.seed)
        d_spec = architectures._mlp_d_spec(config, data.sample_shape, None)
        d = architectures.build_discriminator(d_spec).to(device).train()
    opt = torch.optim.Adam(d.parameters(), lr=REWEIGHT_LR, betas=(0.5, 0.999))
    ones, zeros = torch.ones(REWEIGHT_BATCH, device=device), torch.zeros(REWEIGHT_BATCH, device=device)
    for _ in range(steps):
        idx = torch.randint(data.n, (REWEIGHT_BATCH,), generator=rng, device=device)
        real = data.to_model_range(data.samples[idx])
        fake = sample_mixture(mixture, REWEIGHT_BATCH, config.latent_dim, rng, device)
        loss = F.binary_cross_entropy_with_logits(d(real), ones) + F.binary_cross_entropy_with_logits(d(fake), zeros)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    d.eval()
    with torch.no_grad():
        logits = torch.cat(
            [d(data.to_model_range(data.samples[i : i + SCORE_CHUNK])) for i in range(0, data.n, SCORE_CHUNK)]
        )
    return data_weights(density_ratio(logits), beta)


def round_config(config: TrainConfig, t: int) -> TrainConfig:
    """Round t's component: the run's config as a plain `mlp` GAN, seeded apart from the other rounds."""
    seed = (config.seed + (t - 1) * ROUND_SEED_STRIDE) % 2**32
    return config.model_copy(update={"architecture": "mlp", "seed": seed})


# --- the run ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundRecord:
    round: int
    beta: float
    mixture_weights: list[float]
    max_data_weight: float  # the largest wᵢ (1/N when uniform): how focused the round's data was
    zero_weight_fraction: float  # share of the training points the round did not see at all
    losses: dict[str, float]
    seconds: float


def train(
    config: TrainConfig,
    out_dir: Path,
    *,
    data_root: Path,
    device: str = "cpu",
    progress_fn: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    report_every_s: float = 1.0,
    files_fn: run_state.FilesFn | None = None,
    dataset_file: Path | None = None,
    may_write: Callable[[], bool] | None = None,
    round_fn: Callable[[RoundRecord, nn.Module], None] | None = None,
) -> TrainResult:
    """Train `config` (`architecture: adagan`) round by round into `out_dir`: one kept checkpoint (the mixture
    so far) and one sample grid or scatter per round, as `training.loop.train` keeps one per epoch; progress
    counts rounds as epochs. `round_fn(record, mixture)` hears of every finished round (experiments score
    each mixture). The callbacks mean what they mean for `training.loop.train`."""
    check_supported(config)
    dev = resolve_device(device)
    _use_all_cores(dev)
    data = load_to_device(config, Path(data_root), dev, dataset_file)
    batch = min(config.batch_size, data.n)
    d_steps = config.d_steps or 1
    steps = config.steps or steps_per_epoch(data.n, batch, d_steps) * config.epochs  # per round
    rounds = config.rounds
    total = steps * rounds
    reweight_steps = max(1, min(steps, REWEIGHT_STEPS))
    base = architectures._mlp_g_spec(config, data.sample_shape, config.output or "linear", None)
    fixed_z = latents_from_seeds(SAMPLE_SEEDS, config.latent_dim).to(dev)  # the image grid's (points: POINT_SEEDS)
    out_dir = Path(out_dir)
    start = last_report = time.monotonic()
    components: list[nn.Module] = []
    weights: list[float] = []
    history: list[RoundRecord] = []
    last_stem: Path | None = None
    last_samples: Path | None = None
    losses: dict[str, float] = {}
    done = 0  # G steps over all rounds

    def progress(t: int, round_losses: dict[str, float], **extra: Any) -> TrainProgress:
        rate = done / max(time.monotonic() - start, 1e-9)
        return TrainProgress(
            epoch=t,
            epochs=rounds,
            step=done,
            total_steps=total,
            losses=round_losses,
            images_per_sec=rate * d_steps * batch,
            eta_seconds=(total - done) / rate if rate > 0 else math.inf,
            **extra,
        )

    for t in range(1, rounds + 1):
        round_start = time.monotonic()
        beta = beta_for(config, t)
        if components:
            mixture = build_mixture(components, weights, base).to(dev)
            w = reweight(config, data, mixture, beta, reweight_steps, dev).to(torch.float32)
        else:
            w = torch.full((data.n,), 1.0 / data.n, device=dev)
        s = build_step(round_config(config, t), data, dev, steps, batch)
        keys = s.keys
        sums = torch.zeros(len(keys), device=dev)
        for i in range(steps):
            if should_stop is not None and should_stop():
                return TrainResult("cancelled", t - 1, done, last_stem, last_samples, losses)
            for _ in range(d_steps):
                idx = torch.multinomial(w, batch, replacement=True, generator=s.rng)
                real, _ = s.real_batch(idx)
                stats = d_step(s, real, None, i)
            stats["g_loss"] = g_step(s, i)
            sums += torch.stack([stats[k] for k in keys])
            done += 1
            if progress_fn is not None and time.monotonic() - last_report >= report_every_s:
                last_report = time.monotonic()
                progress_fn(progress(t - 1, dict(zip(keys, (sums / (i + 1)).tolist(), strict=True))))
        losses = dict(zip(keys, (sums / steps).tolist(), strict=True))
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if bad:
            raise NonFiniteLossError(f"round {t} diverged: {bad}; lower the learning rate or use another loss")
        served = s.nets.ema if s.nets.ema is not None else s.nets.g
        components.append(served.eval())
        weights = mixed_weights(weights, beta)
        mixture = build_mixture(components, weights, base).to(dev)
        record = RoundRecord(
            t,
            beta,
            list(weights),
            float(w.max()),
            float((w == 0).double().mean()),
            losses,
            time.monotonic() - round_start,
        )
        history.append(record)
        if may_write is not None and not may_write():
            return TrainResult("superseded", t - 1, done, last_stem, last_samples, losses)
        last_samples = out_dir / "samples" / f"epoch-{t:04d}.png"
        write_samples(last_samples, mixture, fixed_z, config, data, mixture.num_generators, dev)
        last_stem = _save(out_dir, t, mixture, config, data, done, history)
        if files_fn is not None:
            files_fn([last_samples, last_stem.with_suffix(".safetensors"), last_stem.with_suffix(".json")], [])
        if round_fn is not None:
            round_fn(record, mixture)
        if progress_fn is not None:
            progress_fn(progress(t, losses, epoch_end=True, samples=last_samples))
            progress_fn(progress(t, losses, checkpoint=last_stem))
    return TrainResult("completed", rounds, done, last_stem, last_samples, losses)


def _save(
    out_dir: Path,
    t: int,
    mixture: nn.Module,
    config: TrainConfig,
    data: DeviceDataset,
    step: int,
    history: list[RoundRecord],
) -> Path:
    """The mixture after round t as the kept checkpoint `epoch-000t`: its generator weights and the metadata
    that rebuilds, describes and publishes it (the fields `training.run_state` writes for one G)."""
    meta: dict[str, Any] = {
        "generator": dict(mixture.spec),
        "architecture": "adagan",
        "kind": data.kind,
        "sample_shape": list(data.sample_shape),
        "num_classes": None,
        "conditional": False,
        "loss": config.loss,
        "served_weights": "ema" if config.ema is not None else "raw",  # each component's, copied in
        "latent_dim": config.latent_dim,
        "dataset": config.dataset,
        "train_config": config.model_dump(mode="json"),
        "model_name": config.model_name,
        "num_generators": mixture.num_generators,
        "mixture_weights": list(mixture.mixture_weights),
        "adagan_rounds": [asdict(r) for r in history],
        "epoch": t,
        "step": step,
        "losses": history[-1].losses,
        "kept": True,
    }
    if data.kind == "image":
        meta |= {"image_shape": list(data.sample_shape), "value_range": [-1, 1]}
    stem = run_state.stem_for(out_dir, t)
    checkpoint.save(stem, checkpoint.prefixed(mixture, checkpoint.GENERATOR_PREFIX), meta)
    return stem
