"""A worker's identity (worker/registry.py) and its queues: GANSERVE_DEVICES read and split into one process per
group, the environment each process gets, the `-Q` queues `ganserve worker` gives Celery, and the row a worker
keeps in the `workers` table while it runs (a real database, a real thread)."""

import time
from pathlib import Path

import pytest

from core.db import Database
from core.settings import Settings
from core.workers import WorkerClass, WorkerStore
from ganserve.cli.processes import node_name, worker_argv
from worker.registry import DeviceError, Registration, device_groups, parse_devices, process_env, resolve_devices


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_devices_are_read_and_split_into_one_worker_per_group() -> None:
    assert parse_devices("0,1, 2,3") == [0, 1, 2, 3] and parse_devices("") == []
    assert device_groups([0, 1, 2, 3], 2) == [[0, 1], [2, 3]]
    assert device_groups([0, 1, 2, 3], 1) == [[0], [1], [2], [3]]
    assert device_groups([], 2) == [[]]  # one CPU worker
    with pytest.raises(DeviceError, match="do not split into groups of GANSERVE_GPUS_PER_WORKER=2"):
        device_groups([0, 1, 2], 2)
    for bad in ("gpu0", "0,0", "-1"):
        with pytest.raises(DeviceError, match="GANSERVE_DEVICES"):
            parse_devices(bad)


def test_which_devices_a_machine_s_workers_train_on() -> None:
    assert resolve_devices(settings(devices="2,3")) == [2, 3]
    assert resolve_devices(settings(devices="")) == []  # set but empty: a CPU worker, even on a GPU machine
    assert resolve_devices(settings(device="cpu")) == []  # unset, and GANSERVE_DEVICE=cpu: no GPU is looked for
    with pytest.raises(DeviceError, match="GANSERVE_DEVICE=cpu"):
        resolve_devices(settings(devices="0", device="cpu"))


def test_each_worker_process_sees_its_own_devices_only() -> None:
    assert process_env([2, 3]) == {"GANSERVE_DEVICES": "2,3", "CUDA_VISIBLE_DEVICES": "2,3"}
    assert process_env([]) == {"GANSERVE_DEVICES": "", "CUDA_VISIBLE_DEVICES": "", "GANSERVE_DEVICE": "cpu"}
    # Under a CUDA_VISIBLE_DEVICES already set (Slurm, a container), the ids are CUDA's numbers there.
    assert process_env([1], visible="5,6")["CUDA_VISIBLE_DEVICES"] == "6"
    with pytest.raises(DeviceError, match="shows 2 device"):
        process_env([2], visible="5,6")


def queues_of(argv: list[str]) -> list[str]:
    return argv[argv.index("-Q") + 1].split(",")


def test_a_worker_consumes_evaluations_first_then_the_jobs_its_devices_can_run() -> None:
    s = settings()
    assert queues_of(worker_argv(s)) == ["evaluate", "cpu", "training"]
    assert queues_of(worker_argv(s, devices=[0])) == ["evaluate", "gpu-1", "training"]
    assert queues_of(worker_argv(s, devices=[2, 3])) == ["evaluate", "gpu-2", "gpu-1", "training"]
    argv = worker_argv(s, "gpu2-3@%h", [2, 3])
    assert argv[argv.index("-n") + 1] == "gpu2-3@%h"
    assert argv[argv.index("--pool") + 1] == "solo" and argv[argv.index("--concurrency") + 1] == "1"


def test_each_worker_of_a_machine_has_a_name_of_its_own() -> None:
    assert node_name(None, [], several=False) == "cpu@%h"
    assert node_name(None, [0, 1], several=True) == "gpu0-1@%h"
    assert node_name("big@%h", [0, 1], several=False) == "big@%h"
    assert node_name("big@%h", [2, 3], several=True) == "big-2-3@%h"
    assert node_name("big", [2], several=True) == "big-2@%h"


def test_a_running_worker_keeps_its_row_fresh_and_removes_it_when_it_stops(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'w.db'}")
    db.upgrade()
    store = WorkerStore(db, heartbeat_s=0.3)
    registration = Registration(store, "gpu0@h", [0], ["evaluate", "gpu-1", "training"])
    registration.start()
    try:
        (row,) = store.list()
        assert (row.worker_class, row.devices, row.live) == (WorkerClass.gpu, [0], True)
        store.remove("gpu0@h")  # deleted under it (say, by an operator): the next beat advertises it again
        deadline = time.monotonic() + 5
        while not store.list():
            assert time.monotonic() < deadline, "not advertised again"
            time.sleep(0.05)
        time.sleep(1.5)  # long enough to be stale (3 beats) without the beats
        (row,) = store.list()
        assert row.live, row
    finally:
        registration.stop()
    assert store.list() == []
