"""Multi-process data-parallel training on this CPU (gloo, 2 processes on 127.0.0.1): the 2-process run at global
batch B takes the 1-process run's steps at batch B (same weights, optimiser state, random streams and losses, to
float rounding); a 2-process run stopped and resumed ends as one that never stopped; a checkpoint of either
world size resumes in the other; what cannot be exact is refused. The processes are started as
`torch.multiprocessing.spawn` starts them, each running `train()` as a torchrun rank would."""

import json
import os
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from core.train_config import TrainConfig
from training import checkpoint, distributed, run_state
from training.distributed import World
from training.loop import TrainProgress, train

WORLD = 2
# The reference MLP recipe (G Linear → LeakyReLU → BatchNorm1d per hidden layer, tanh head; D with LeakyReLU;
# Adam 2e-4, β₁ 0.5; the non-saturating loss), at tiny widths: 64 images, 4 G steps an epoch at batch 16.
REFERENCE: dict[str, Any] = {
    "model_name": "ddp",
    "epochs": 2,
    "batch_size": 16,
    "g_hidden": [32, 64],
    "d_hidden": [64, 32],
    "seed": 3,
    "eval_extractor": "none",
}
MLP_WIDTHS = ("g_hidden", "d_hidden")
VARIANTS: dict[str, dict[str, Any]] = {
    "reference": {},
    # labels drawn for the global batch, instance noise drawn for it too, R1 and weight decay as means, the EMA
    # of identical weights, a linear schedule of the step alone
    "conditional-noise-r1-ema": {
        "conditional": True,
        "regularizers": [
            {"name": "instance-noise", "sigma": 0.2},
            {"name": "r1", "gamma": 1.0},
            {"name": "weight-decay", "coefficient": 1e-3},
        ],
        "ema": 0.9,
        "lr_schedule": "linear",
    },
    # 2 critic steps a G step, each on its global batch's shards; RMSprop, clipping; spectral norm's vectors
    "wasserstein-spectral-norm": {"loss": "wasserstein", "d_steps": 2, "regularizers": [{"name": "spectral-norm"}]},
    # Roth et al.'s penalty: per-sample input gradients of D's logit, weighted by D(x), as a mean over each shard
    # (like R1), its γ annealed by the G step that every rank counts alike
    "roth-annealed": {"regularizers": [{"name": "roth", "gamma": 2.0, "anneal": True}]},
    # BatchNorm2d in G's transposed convolutions, synced as the MLP's BatchNorm1d. Not with the hinge loss: there
    # the two runs parted by 8e-4 in two epochs on an AVX-512 Xeon, one thread each (and matched on the CPU before
    # it), beyond any tolerance that still catches an overlapping shard; the non-saturating loss matches.
    "dcgan": {"architecture": "dcgan", "latent_dim": 16},
}
# Float rounding only: the synced BatchNorm sums its statistics in another order than BatchNorm, and DDP sums
# two half-batch gradients. An overlapping shard or other noise moves weights by 1e-3 and more in two epochs.
TOLERANCE = {"atol": 2e-5, "rtol": 1e-4}


@pytest.fixture(autouse=True)
def one_thread_everywhere(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One torch thread in the one-process run and in each rank (spawned ranks inherit OMP_NUM_THREADS): a
    convolution's backward sums over the batch in an order that depends on the thread count, so 2 threads here
    against 1 per rank parted the dcgan variant by 1.4e-4 in two epochs on an AVX-512 Xeon."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def data_root(tmp_path: Path, idx_writer: Callable[..., Path], fake_images: Callable[..., np.ndarray]) -> Path:
    """64 fake digits with labels (10 classes), as MNIST's t10k split."""
    root = tmp_path / "data"
    idx_writer(root / "mnist" / "t10k-images-idx3-ubyte", fake_images(64))
    labels = np.arange(64, dtype=np.uint8) % 10
    (root / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x00000801, 64) + labels.tobytes())
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, port: int, runs: list[dict[str, Any]], data_root: str) -> None:
    """One rank: join the group, then each run in turn, as a torchrun rank runs `train()`. Rank 0 writes each
    run's reports and result to `<out>/result.json` (the others get no callbacks at all)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        world = World(rank, WORLD, rank, WORLD)
        for run in runs:
            config = TrainConfig.model_validate(run["config"])
            out = Path(run["out"])
            reports: list[TrainProgress] = []
            should_stop = None
            if rank == 0 and run.get("stop_after") is not None:
                n = run["stop_after"]
                should_stop = lambda n=n, reports=reports: any(r.epoch_end and r.epoch >= n for r in reports)  # noqa: E731
            resume = run.get("resume_from")
            result = train(
                config,
                out,
                data_root=Path(data_root),
                world=world,
                resume_from=Path(resume) if resume else None,
                progress_fn=reports.append if rank == 0 else None,
                should_stop=should_stop,
                report_every_s=0.0,
            )
            if rank == 0:
                (out / "result.json").write_text(json.dumps(_summary(result, reports)))
    finally:
        dist.destroy_process_group()


def _summary(result, reports: list[TrainProgress]) -> dict[str, Any]:
    return {
        "status": result.status,
        "steps": result.steps_done,
        "checkpoint": str(result.final_checkpoint) if result.final_checkpoint else None,
        "epoch_losses": {str(r.epoch): r.losses for r in reports if r.epoch_end and r.checkpoint is None},
        "mid_epoch_reports": sum(not r.epoch_end for r in reports),
    }


def two_processes(runs: list[dict[str, Any]], data_root: Path) -> list[dict[str, Any]]:
    """Run each of `runs` ({config, out, resume_from?, stop_after?}) on 2 processes; rank 0's summaries."""
    mp.spawn(_rank_main, args=(free_port(), runs, str(data_root)), nprocs=WORLD, join=True)
    return [json.loads((Path(run["out"]) / "result.json").read_text()) for run in runs]


def one_process(run: dict[str, Any], data_root: Path) -> dict[str, Any]:
    reports: list[TrainProgress] = []
    resume = run.get("resume_from")
    result = train(
        TrainConfig.model_validate(run["config"]),
        Path(run["out"]),
        data_root=data_root,
        resume_from=Path(resume) if resume else None,
        progress_fn=reports.append,
        report_every_s=0.0,
    )
    return json.loads(json.dumps(_summary(result, reports)))


def weights(summary: dict[str, Any]) -> dict[str, torch.Tensor]:
    tensors, _ = checkpoint.load(Path(summary["checkpoint"]))
    return tensors


def assert_same_run(a: dict[str, Any], b: dict[str, Any], exact: bool = False) -> None:
    """Same steps, per-epoch losses, and every tensor of the last checkpoint: G, D, EMA, both optimisers' state
    and the loop's random stream (the global torch stream is not the loop's: left out)."""
    assert a["status"] == b["status"] == "completed" and a["steps"] == b["steps"]
    assert a["epoch_losses"].keys() == b["epoch_losses"].keys()
    for epoch, losses in a["epoch_losses"].items():
        assert losses == pytest.approx(b["epoch_losses"][epoch], rel=1e-4, abs=1e-5), epoch
    ta, tb = weights(a), weights(b)
    assert ta.keys() == tb.keys()
    assert any(k.startswith("opt_g.") for k in ta)
    for key in ta:
        if key == "rng.torch":
            continue
        if exact or key == "rng.loop":
            assert torch.equal(ta[key], tb[key]), key
        else:
            torch.testing.assert_close(ta[key], tb[key], **TOLERANCE, msg=lambda m, k=key: f"{k}: {m}")


def config_of(variant: str, **extra: Any) -> dict[str, Any]:
    fields = {**REFERENCE, **VARIANTS[variant], **extra}
    if fields.get("architecture") == "dcgan":
        fields = {k: v for k, v in fields.items() if k not in MLP_WIDTHS}
    return TrainConfig.model_validate(fields).model_dump(mode="json")


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_two_processes_take_the_one_process_steps(variant: str, data_root: Path, tmp_path: Path) -> None:
    config = config_of(variant)
    (two,) = two_processes([{"config": config, "out": str(tmp_path / "two")}], data_root)
    one = one_process({"config": config, "out": str(tmp_path / "one")}, data_root)
    assert one["steps"] == two["steps"] >= 4 and one["mid_epoch_reports"] == two["mid_epoch_reports"] > 0
    assert_same_run(two, one)
    # rank 0 wrote what a one-process run writes, and nothing else did
    written = [
        sorted(str(p.relative_to(tmp_path / run)) for p in (tmp_path / run).rglob("*")) for run in ("two", "one")
    ]
    assert [p for p in written[0] if p != "result.json"] == written[1]


@pytest.mark.slow
def test_resume_across_world_sizes(data_root: Path, tmp_path: Path) -> None:
    """2 processes stopped after epoch 2 and resumed on 2 end as the uninterrupted 2-process run, bit for bit; its
    epoch-2 checkpoint resumed on 1 process ends there too, and a 1-process checkpoint resumed on 2 as well."""
    config = config_of("reference", epochs=3)
    stopped_out = tmp_path / "stopped"
    straight, stopped = two_processes(
        [
            {"config": config, "out": str(tmp_path / "straight")},
            {"config": config, "out": str(stopped_out), "stop_after": 2},
        ],
        data_root,
    )
    assert stopped["status"] == "cancelled" and stopped["steps"] == 8
    point = run_state.latest(stopped_out)
    assert point is not None and point.epoch == 2 and point.step == 8

    one_alone = one_process({"config": config, "out": str(tmp_path / "one")}, data_root)
    one_point = run_state.latest(tmp_path / "one")
    assert one_point is not None and one_point.epoch == 3
    one_epoch2 = run_state.stem_for(tmp_path / "one", 2)

    resumed, resumed_from_one = two_processes(
        [
            {"config": config, "out": str(stopped_out), "resume_from": str(point.stem)},
            {"config": config, "out": str(tmp_path / "two-from-one"), "resume_from": str(one_epoch2)},
        ],
        data_root,
    )
    assert list(resumed["epoch_losses"]) == ["3"]
    straight_epoch3 = {**straight, "epoch_losses": {"3": straight["epoch_losses"]["3"]}}
    assert_same_run(resumed, straight_epoch3, exact=True)

    on_one = one_process(
        {"config": config, "out": str(tmp_path / "one-from-two"), "resume_from": str(point.stem)}, data_root
    )
    assert_same_run(on_one, straight_epoch3)
    assert_same_run(resumed_from_one, {**one_alone, "epoch_losses": {"3": one_alone["epoch_losses"]["3"]}})


@pytest.mark.parametrize(
    "fields",
    [{"loss": "wgan-gp"}, {"unrolled_steps": 2}, {"architecture": "mad-gan"}, {"compile": "default"}],
    ids=lambda f: next(iter(f)),
)
def test_what_is_not_exact_is_refused(fields: dict[str, Any]) -> None:
    config = TrainConfig.model_validate({**REFERENCE, **fields})
    distributed.check_supported(config, distributed.SINGLE)  # one process: as before
    with pytest.raises(ValueError, match="multi-process training"):
        distributed.check_supported(config, World(0, 2))


def test_a_global_batch_that_does_not_split_is_refused() -> None:
    distributed.check_batch(15, distributed.SINGLE)
    with pytest.raises(ValueError, match="divide evenly"):
        distributed.check_batch(15, World(1, 2))


def test_shards_are_disjoint_and_cover_the_batch() -> None:
    batch = torch.arange(12)
    shards = [World(r, 3).shard(batch) for r in range(3)]
    assert torch.equal(torch.cat(shards), batch)
    assert World().shard(batch) is batch


def test_world_from_torchrun_environment() -> None:
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert distributed.world_from_env(env) == World(3, 4, 1, 2)
    assert distributed.world_from_env({}) == distributed.SINGLE
    assert not distributed.SINGLE.distributed and distributed.SINGLE.is_main
    assert distributed.cpu_threads(World(0, 2, 0, 2)) == max(1, (os.cpu_count() or 1) // 2)
