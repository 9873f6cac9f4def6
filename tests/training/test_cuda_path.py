"""The CUDA path, on a GPU (marker `gpu`: never in CI, run by `benchmarks/gpu_check.sh` where a GPU is lent).

What no CPU run can show: the eager float32 loop on CUDA, bfloat16 autocast, `torch.compile` with CUDA graphs
(`reduce-overhead`), fused Adam and channels-last convolutions train the same model as the CPU's eager loop to
the tolerances each allows; a checkpoint trained on the GPU is served on a CPU; and with two GPUs, NCCL
data-parallel training takes the one-process steps. Each compares with a run it makes itself, so it fails on a
wrong number, not on a slow one.
"""

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from core.train_config import TrainConfig
from training import checkpoint, distributed
from training.data import load_to_device
from training.loop import train
from training.step import build_step, d_step, g_step

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

STEPS = 12
BASE = TrainConfig(model_name="cuda", batch_size=16, latent_dim=8, seed=7, eval_extractor="none")


def losses(config: TrainConfig, data_root: Path, device: str) -> list[dict[str, float]]:
    """Per-step losses of STEPS D+G steps on `device`, from the config's seed."""
    dev = torch.device(device)
    data = load_to_device(config, data_root, dev)
    s = build_step(config, data, dev, STEPS, config.batch_size)
    perm = torch.randperm(data.n, generator=s.rng, device=dev)
    n_batches = data.n // config.batch_size
    out = []
    for i in range(STEPS):
        j = i % n_batches
        real, labels = s.real_batch(perm[j * config.batch_size : (j + 1) * config.batch_size])
        stats = d_step(s, real, labels, i)
        stats["g_loss"] = g_step(s, i)
        out.append({k: float(v) for k, v in stats.items()})
    return out


def assert_close(a: list[dict[str, float]], b: list[dict[str, float]], rtol: float, atol: float) -> None:
    for step, (x, y) in enumerate(zip(a, b, strict=True)):
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=rtol, abs=atol), (step, k, x[k], y[k])


def test_eager_float32_on_cuda_tracks_the_cpu(tiny_data_root: Path) -> None:
    assert_close(losses(BASE, tiny_data_root, "cuda"), losses(BASE, tiny_data_root, "cpu"), 1e-3, 1e-4)


def test_conv_nets_train_channels_last_on_cuda_and_track_the_cpu(tiny_data_root: Path) -> None:
    dcgan = BASE.model_copy(update={"architecture": "dcgan"})
    dev = torch.device("cuda")
    s = build_step(dcgan, load_to_device(dcgan, tiny_data_root, dev), dev, STEPS, dcgan.batch_size)
    convs = [m for net in (s.nets.g, s.nets.d) for m in net.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert_close(losses(dcgan, tiny_data_root, "cuda"), losses(dcgan, tiny_data_root, "cpu"), 1e-2, 1e-3)


def test_adam_is_fused_on_cuda(tiny_data_root: Path) -> None:
    dev = torch.device("cuda")
    s = build_step(BASE, load_to_device(BASE, tiny_data_root, dev), dev, STEPS, BASE.batch_size)
    assert s.nets.opt_g.defaults.get("fused") and s.nets.opt_d.defaults.get("fused")


def test_bfloat16_tracks_float32(tiny_data_root: Path) -> None:
    bf16 = BASE.model_copy(update={"precision": "bfloat16"})
    assert_close(losses(bf16, tiny_data_root, "cuda"), losses(BASE, tiny_data_root, "cuda"), 5e-2, 2e-2)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_tracks_eager(tiny_data_root: Path, mode: str) -> None:
    compiled = BASE.model_copy(update={"compile": mode})
    assert_close(losses(compiled, tiny_data_root, "cuda"), losses(BASE, tiny_data_root, "cuda"), 1e-3, 1e-4)


def test_a_generator_trained_on_cuda_serves_on_a_cpu(tiny_data_root: Path, tmp_path: Path) -> None:
    config = BASE.model_copy(update={"epochs": 2, "architecture": "dcgan"})
    result = train(config, tmp_path, data_root=tiny_data_root, device="cuda")
    assert result.status == "completed" and result.final_checkpoint is not None
    g_cpu, _ = checkpoint.load_generator(result.final_checkpoint, torch.device("cpu"))
    g_gpu, _ = checkpoint.load_generator(result.final_checkpoint, torch.device("cuda"))
    z = torch.randn(4, config.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(g_cpu(z), g_gpu(z.cuda()).cpu(), atol=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, data_root: str, out: str) -> None:
    import os

    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    world = distributed.init("cuda")
    try:
        train(BASE.model_copy(update={"epochs": 2}), Path(out), data_root=Path(data_root), device="cuda", world=world)
    finally:
        distributed.teardown()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_nccl_two_processes_take_the_one_process_steps(tiny_data_root: Path, tmp_path: Path) -> None:
    config = BASE.model_copy(update={"epochs": 2})
    one = train(config, tmp_path / "one", data_root=tiny_data_root, device="cuda")
    mp.spawn(_rank, args=(_free_port(), str(tiny_data_root), str(tmp_path / "two")), nprocs=2, join=True)
    two = sorted((tmp_path / "two" / "checkpoints").glob("*.json"))[-1].with_suffix("")
    assert one.final_checkpoint is not None and two.name == one.final_checkpoint.name
    a, _ = checkpoint.load(one.final_checkpoint)
    b, _ = checkpoint.load(two)
    for name in a:
        if name.startswith(("generator.", "discriminator.")):
            assert torch.allclose(a[name].float(), b[name].float(), rtol=1e-3, atol=1e-4), name
