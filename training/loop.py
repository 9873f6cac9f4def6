"""The one training loop (Goodfellow et al. 2014, Algorithm 1), shared by the CLI and the Celery worker.

Per generator step: `d_steps` discriminator updates on fresh real batches, then one generator update
(`training.step`). At the end of every epoch it reports progress; every `sample_every` epochs, and after the
last, it writes a sample grid or scatter (`training.samples`) and keeps a checkpoint; every `eval_every`
epochs, or by default as often as a tenth of the job's wall time allows, it measures sample quality
(`training.evaluation`). Between kept checkpoints it writes the latest state (at most every `resume_every_s`),
so `train(..., resume_from=...)` continues a stopped run exactly (`training.run_state`); with
`keep_checkpoints`, only the newest kept checkpoints stay, and the best by FID. Losses are checked for NaN/inf
every `FINITE_CHECK_EVERY` steps and at every report: a diverged run stops with `NonFiniteLossError` instead of
checkpointing garbage.

It knows nothing of Celery, HTTP or object storage: the caller passes `progress_fn` to hear about progress,
`should_stop` to ask for cancellation and `files_fn` to hear which run files were written and removed (to copy
them elsewhere), and gets a `TrainResult` back.

Under several processes (`world`, `training.distributed`) each rank trains on its shard of every global batch
with DDP; rank 0 alone calls `progress_fn`, `should_stop`, `may_write` and `files_fn` and writes anything, and
its answers reach the other ranks, so every rank stops, reports and returns at the same step.
"""

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from core.train_config import TrainConfig
from training import distributed, run_state
from training.data import load_to_device
from training.distributed import World
from training.evaluation import EvalSchedule, build_evaluator
from training.latents import latents_from_seeds
from training.samples import SAMPLE_SEEDS, write_samples
from training.step import build_step, d_step, g_step

MADGAN_LOSSES = ("minimax", "non-saturating")
FINITE_CHECK_EVERY = 10  # steps between NaN/inf checks of the running loss sums (one host sync each)


class NonFiniteLossError(RuntimeError):
    """The run diverged: a loss or D output became NaN or infinite."""


@dataclass(frozen=True)
class TrainProgress:
    epoch: int  # epochs completed so far
    epochs: int
    step: int  # generator steps completed so far
    total_steps: int
    losses: dict[str, float]  # means over the current epoch so far
    images_per_sec: float
    eta_seconds: float
    checkpoint: Path | None = None  # a kept checkpoint's stem, on the report that follows its (whole) writing
    samples: Path | None = None  # sample grid written at the end of this epoch, on that report only
    epoch_end: bool = False  # the report that closes epoch `epoch` (its losses are the epoch's means)
    evaluation: dict[str, Any] | None = None  # sample-quality metrics of this epoch, when one was due
    evaluation_skipped: str | None = None  # why this run measures no sample quality (on epoch-end reports)


@dataclass(frozen=True)
class TrainResult:
    status: Literal["completed", "cancelled", "superseded"]  # superseded: may_write said no; nothing written
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


def _use_all_cores(device: torch.device, world: World = distributed.SINGLE) -> None:
    # A worker runs one job at a time, so it may have every core (its ranks share them); an explicit
    # OMP_NUM_THREADS still wins.
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(distributed.cpu_threads(world))


def steps_per_epoch(n_images: int, batch_size: int, d_steps: int) -> int:
    """G steps per epoch: one epoch is one pass of D's real batches, `d_steps` of them per G step."""
    n_batches = max(1, n_images // batch_size)
    return max(1, n_batches // d_steps)


def check_supported(config: TrainConfig, world: World = distributed.SINGLE) -> None:
    """Refuse what the loop cannot train, before any data is read."""
    distributed.check_supported(config, world)
    if config.architecture == "mad-gan" and config.loss not in MADGAN_LOSSES:
        raise ValueError(
            f"`mad-gan` trains its (k+1)-way discriminator with cross-entropy, so `loss` must be one of "
            f"{', '.join(MADGAN_LOSSES)}, not {config.loss!r}"
        )


def _loss_dict(
    keys: tuple[str, ...], sums: torch.Tensor, count: int, world: World = distributed.SINGLE
) -> dict[str, float]:
    """Means over `count` steps; over the ranks too (a collective: every rank calls it at the same step)."""
    if count == 0:
        return {k: math.nan for k in keys}
    sums = distributed.mean_over_ranks(sums, world)
    return dict(zip(keys, (sums / count).tolist(), strict=True))  # a host sync: on report


def _check_finite(losses: dict[str, float], epoch: int, step: int) -> None:
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        values = ", ".join(f"{k} = {v}" for k, v in bad.items())
        raise NonFiniteLossError(
            f"the run diverged: {values} by step {step} (epoch {epoch}); lower the learning rate, or use another "
            f"loss or a regularizer (e.g. spectral-norm or r1)"
        )


def _fid(evaluation: dict[str, Any] | None) -> float | None:
    """An evaluation's FID, when it measured one (image datasets) and it is finite."""
    value = None if evaluation is None else evaluation.get("fid")
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


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
    resume_from: Path | None = None,
    resume_every_s: float = 0.0,
    files_fn: run_state.FilesFn | None = None,
    dataset_file: Path | None = None,
    may_write: Callable[[], bool] | None = None,
    world: World | None = None,
    keep_checkpoints: int | None = None,
) -> TrainResult:
    """Train `config`, writing into `out_dir`. `resume_from`: a checkpoint's stem (see
    `training.run_state.latest(out_dir)`) written by an earlier run of the same config into the same `out_dir`;
    the run continues after its epoch, with the numbers an uninterrupted run gives. `resume_every_s` > 0
    writes the state between kept checkpoints at most that often instead of after every epoch:
    for runs of many short epochs, where writing G, D and both optimisers' state each epoch would cost more
    than the epoch (a killed run then redoes the epochs since the last one written). `files_fn(written,
    removed)` hears of every sample grid and checkpoint written into `out_dir` and every checkpoint removed,
    once each is complete (`training.run_state.FilesFn`). `dataset_file`: an uploaded dataset's canonical file,
    when `config.dataset` names one. `may_write()` is asked right before the run writes or removes anything (a
    sample grid, a checkpoint, the pruning of stand-ins): False ends the run at once, `superseded`, with nothing
    more written (a worker whose job has moved on to another must not touch the run). `world`: this process's
    rank among several training together (`training.distributed`; default: the initialised process group's, or
    one process); each passes the same arguments, and only rank 0's callbacks are called (the others' may be
    None), `out_dir` then being rank 0's (every rank reads `resume_from`). `keep_checkpoints`: how many kept
    checkpoints stay, the newest (default: `config.keep_checkpoints`; None: all); with it, an evaluation's epoch
    is saved too, so that the best-by-FID checkpoint can stay beside them (`training.run_state.retained`)."""
    began = time.monotonic()  # the job's wall time, which the default evaluation schedule takes a tenth of
    world = distributed.current() if world is None else world
    if config.architecture == "adagan":  # T GANs one after another: its own driver (refused under DDP there)
        from training import adagan  # it imports this module

        distributed.check_supported(config, world)
        return adagan.train(
            config,
            out_dir,
            data_root=data_root,
            device=device,
            progress_fn=progress_fn,
            should_stop=should_stop,
            report_every_s=report_every_s,
            files_fn=files_fn,
            dataset_file=dataset_file,
            may_write=may_write,
        )
    keep = config.keep_checkpoints if keep_checkpoints is None else keep_checkpoints
    check_supported(config, world)
    dev = distributed.device_for(world, resolve_device(device))
    _use_all_cores(dev, world)
    data = load_to_device(config, Path(data_root), dev, dataset_file)
    n = data.n
    batch = min(config.batch_size, n)  # a dataset smaller than a batch is trained on as one batch
    distributed.check_batch(batch, world)
    n_batches = max(1, n // batch)
    d_steps = config.d_steps or 1
    per_epoch = steps_per_epoch(n, batch, d_steps)
    total_steps = config.steps or per_epoch * config.epochs
    epochs = math.ceil(total_steps / per_epoch)  # `steps` wins: the last epoch may be partial

    s = build_step(config, data, dev, total_steps, batch, world)
    keys = s.keys
    plan = build_evaluator(config, data, s.num_generators, dev)  # refuses a named extractor it cannot load
    schedule = EvalSchedule.for_run(config, plan.evaluator, began)
    fixed_z = latents_from_seeds(SAMPLE_SEEDS, config.latent_dim).to(dev)
    out_dir = Path(out_dir)

    def report(progress: TrainProgress) -> None:
        if progress_fn is not None and world.is_main:
            progress_fn(progress)

    def writable() -> bool:  # rank 0's may_write(), on every rank
        return distributed.agree(world, world.is_main and (may_write is None or may_write()))[0]

    step, first_epoch, last_stem, last_samples = 0, 1, None, None
    epoch_losses: dict[str, float] = {k: math.nan for k in keys}
    if resume_from is not None:
        point = run_state.restore(Path(resume_from), s, config, out_dir, total_steps)
        step, first_epoch, epoch_losses = point.step, point.epoch + 1, point.losses
        last_stem, last_samples = point.last_checkpoint, point.last_samples
    start_step = step
    start = last_report = time.monotonic()
    last_saved = -math.inf

    def progress(epoch: int, losses: dict[str, float], **extra: Any) -> TrainProgress:
        elapsed = max(time.monotonic() - start, 1e-9)
        rate = (step - start_step) / elapsed  # this run's own steps: a resumed run did the others earlier
        _check_finite(losses, epoch + (0 if extra.get("epoch_end") else 1), step)
        return TrainProgress(
            epoch=epoch,
            epochs=epochs,
            step=step,
            total_steps=total_steps,
            losses=losses,
            images_per_sec=rate * d_steps * batch,
            eta_seconds=(total_steps - step) / rate if rate > 0 else math.inf,
            **extra,
        )

    for epoch in range(first_epoch, epochs + 1):
        perm = torch.randperm(n, generator=s.rng, device=dev)
        sums = torch.zeros(len(keys), device=dev)
        this_epoch = min(per_epoch, total_steps - step)
        for i in range(this_epoch):
            now = time.monotonic()
            stop, report_due = distributed.agree(  # rank 0's clock and caller decide, for every rank
                world,
                world.is_main and should_stop is not None and should_stop(),
                i > 0 and now - last_report >= report_every_s,
            )
            if report_due:
                last_report = now
                report(progress(epoch - 1, _loss_dict(keys, sums, i, world)))
            if stop:
                partial = _loss_dict(keys, sums, i, world) if i > 0 else epoch_losses
                return TrainResult("cancelled", epoch - 1, step, last_stem, last_samples, partial)
            for k in range(d_steps):
                j = (i * d_steps + k) % n_batches
                # Every rank holds the same permutation and takes its contiguous shard of the global batch.
                real, real_labels = s.real_batch(world.shard(perm[j * batch : (j + 1) * batch]))
                d_stats = d_step(s, real, real_labels, step)
            d_stats["g_loss"] = g_step(s, step)
            sums += torch.stack([d_stats[key] for key in keys])
            step += 1
            if (i + 1) % FINITE_CHECK_EVERY == 0:
                finite = distributed.mean_over_ranks(sums, world)
                if not bool(torch.isfinite(finite).all()):
                    _check_finite(_loss_dict(keys, sums, i + 1, world), epoch, step)

        epoch_losses = _loss_dict(keys, sums, this_epoch, world)
        _check_finite(epoch_losses, epoch, step)  # before anything diverged is checkpointed
        kept = run_state.keeps(config, epoch, epochs)
        extra: dict[str, Any] = {"epoch_end": True, "evaluation_skipped": plan.skipped_because}
        served = s.nets.ema if s.nets.ema is not None else s.nets.g  # samples and metrics: what will be served
        if kept and not writable():
            return TrainResult("superseded", epoch - 1, step, last_stem, last_samples, epoch_losses)
        if kept:
            last_stem = run_state.stem_for(out_dir, epoch)
            last_samples = out_dir / "samples" / f"epoch-{epoch:04d}.png"
            if world.is_main:
                write_samples(last_samples, served, fixed_z, config, s.data, s.num_generators, s.device)
                if files_fn is not None:
                    files_fn([last_samples], [])
            extra["samples"] = last_samples
        # Rank 0's clock decides (only it evaluates, so only its clock knows the cost), for every rank.
        evaluating = plan.evaluator is not None and distributed.agree(world, schedule.due(epoch, epochs))[0]
        if evaluating and world.is_main:
            assert plan.evaluator is not None
            extra["evaluation"] = {"extractor": plan.evaluator.extractor, **schedule.run(plan.evaluator, served)}
        elif plan.evaluator is not None and not evaluating and epoch == epochs:  # the budget's doing: say so
            extra["evaluation_skipped"] = schedule.skipped_because()
        last_report = time.monotonic()
        report(progress(epoch, epoch_losses, **extra))  # the epoch's means, computed (and synced) once
        # After the report: a run killed between the two resumes from the epoch before and redoes this one,
        # identically, so the caller's per-epoch history never has a gap.
        # With retention, an evaluated epoch is saved: it may be the best by FID, kept beyond the newest ones.
        best_candidate = keep is not None and evaluating
        (save_due,) = distributed.agree(
            world, kept or best_candidate or time.monotonic() - last_saved >= resume_every_s
        )
        if save_due:
            saved = None
            if world.is_main:  # the one writer; every rank holds the same state
                saved = run_state.save(
                    out_dir,
                    s,
                    epoch=epoch,
                    step=step,
                    losses=epoch_losses,
                    kept=kept,
                    last=(last_stem, last_samples),
                    files_fn=files_fn,
                    may_write=may_write,
                    keep=keep,
                    fid=_fid(extra.get("evaluation")),
                )
            if not distributed.agree(world, saved is not None)[0]:
                return TrainResult("superseded", epoch - 1, step, last_stem, last_samples, epoch_losses)
            last_saved = time.monotonic()
        if kept:
            # Named only once whole (and, with files_fn, stored): a record never points at a checkpoint that a
            # reader cannot fetch yet.
            report(progress(epoch, epoch_losses, checkpoint=last_stem))

    return TrainResult("completed", epochs, step, last_stem, last_samples, epoch_losses)
