"""Two "nodes" as torchrun starts them (`--nnodes 2`, one process each, static rendezvous on 127.0.0.1): as far
as one machine can show a multi-host run. Each node has a folder of its own; rank 0's node alone gets files,
and its final checkpoint holds the weights a one-process run at the same global batch ends with."""

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from core.train_config import TrainConfig
from training import checkpoint
from training.loop import train

pytestmark = pytest.mark.slow  # two torchrun agents, each starting a Python with torch

CONFIG = TrainConfig(
    model_name="nodes", epochs=2, batch_size=16, latent_dim=8, g_hidden=[32], d_hidden=[32], seed=5,
    eval_extractor="none",
)  # fmt: skip

RANK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from core.train_config import TrainConfig
    from training import distributed
    from training.loop import train

    config, data_root, out = TrainConfig.model_validate_json(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    world = distributed.init("cpu")
    try:
        result = train(config, out, data_root=data_root, world=world)
        if world.is_main:
            (out / "result.json").write_text(json.dumps({"checkpoint": str(result.final_checkpoint),
                                                         "rank": world.rank, "size": world.size}))
    finally:
        distributed.teardown()
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_of_one_process_take_the_one_process_steps(tiny_data_root: Path, tmp_path: Path) -> None:
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    port = free_port()
    nodes = []
    for node in (0, 1):
        (tmp_path / f"node{node}").mkdir()
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
            str(script), CONFIG.model_dump_json(), str(tiny_data_root), str(tmp_path / f"node{node}"),
        ]  # fmt: skip
        nodes.append(subprocess.Popen(command, cwd=tmp_path / f"node{node}"))
    assert [p.wait(timeout=240) for p in nodes] == [0, 0]

    result = json.loads((tmp_path / "node0" / "result.json").read_text())
    assert (result["rank"], result["size"]) == (0, 2)
    assert not any((tmp_path / "node1").iterdir())  # rank 1's node: nothing written

    one = train(CONFIG, tmp_path / "one", data_root=tiny_data_root)
    assert one.final_checkpoint is not None and Path(result["checkpoint"]).name == one.final_checkpoint.name
    a, _ = checkpoint.load(one.final_checkpoint)
    b, _ = checkpoint.load(Path(result["checkpoint"]))
    for key in a:
        if key.startswith(("generator.", "discriminator.")):
            torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4, msg=lambda m, k=key: f"{k}: {m}")
