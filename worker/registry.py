"""A worker process's identity: the devices it trains on (its resource class) and its row in the `workers` table
(core/workers.py), written when Celery says the worker is ready, refreshed by a thread every
GANSERVE_WORKER_HEARTBEAT_S, deleted when it shuts down. The API reads the rows to route jobs, to refuse one no
worker could run (422), and to say when a queued job has no live worker (GET /workers, /readyz, the job's record).

Hooked in worker/app.py (Celery's `worker_ready` and `worker_shutdown` signals); worker/tasks.py knows nothing of
it. A job's record names its worker as `host:pid`, which is this row's host and pid.
"""

import logging
import os
import socket
import threading

from core.settings import Settings
from core.workers import WorkerClass, WorkerStore

log = logging.getLogger(__name__)


class DeviceError(ValueError):
    """GANSERVE_DEVICES or GANSERVE_GPUS_PER_WORKER cannot be honoured; the message says why and what to set."""


def parse_devices(text: str) -> list[int]:
    """`0,1` → [0, 1]; empty → [] (a CPU worker). Raises DeviceError on anything else."""
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise DeviceError(
                f"GANSERVE_DEVICES={text!r}: {part!r} is not a CUDA device id (e.g. GANSERVE_DEVICES=0,1)"
            )
        if int(part) in ids:
            raise DeviceError(f"GANSERVE_DEVICES={text!r} names device {part} twice")
        ids.append(int(part))
    return ids


def resolve_devices(settings: Settings) -> list[int]:
    """The devices this machine's workers train on: GANSERVE_DEVICES when set (empty: none); else none when
    GANSERVE_DEVICE is `cpu`; else every device torch sees (none on a machine without CUDA)."""
    if settings.devices is not None:
        ids = parse_devices(settings.devices)
        if ids and settings.device == "cpu":
            raise DeviceError(
                f"GANSERVE_DEVICES={settings.devices} names GPUs but GANSERVE_DEVICE=cpu; unset one of them"
            )
        return ids
    if settings.device == "cpu":
        return []
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def device_groups(devices: list[int], per_worker: int) -> list[list[int]]:
    """One worker process per group of `per_worker` devices, in order; [[]]: one CPU worker."""
    if not devices:
        return [[]]
    if len(devices) % per_worker:
        raise DeviceError(
            f"{len(devices)} device(s) ({','.join(map(str, devices))}) do not split into groups of "
            f"GANSERVE_GPUS_PER_WORKER={per_worker}; name a multiple of {per_worker} devices in GANSERVE_DEVICES"
        )
    return [devices[i : i + per_worker] for i in range(0, len(devices), per_worker)]


def process_env(devices: list[int], visible: str | None = None) -> dict[str, str]:
    """The environment of the worker process that trains on `devices`: CUDA shows it those devices only (so
    GANSERVE_DEVICE=auto trains on the first of them), and a CPU worker never touches a GPU. `devices` are CUDA's
    numbers in this environment: under a CUDA_VISIBLE_DEVICES already set (`visible`, by Slurm say), they index it."""
    if not devices:
        return {"GANSERVE_DEVICES": "", "CUDA_VISIBLE_DEVICES": "", "GANSERVE_DEVICE": "cpu"}
    base = [v.strip() for v in visible.split(",") if v.strip()] if visible else None
    if base is not None and max(devices) >= len(base):
        raise DeviceError(
            f"GANSERVE_DEVICES={','.join(map(str, devices))} names device {max(devices)}, but CUDA_VISIBLE_DEVICES="
            f"{visible} shows {len(base)} device(s), numbered from 0"
        )
    shown = [base[i] for i in devices] if base is not None else [str(i) for i in devices]
    return {"GANSERVE_DEVICES": ",".join(map(str, devices)), "CUDA_VISIBLE_DEVICES": ",".join(shown)}


class Registration:
    """This worker's row: advertised on `start`, refreshed by a daemon thread, deleted on `stop`. A refresh that
    finds no row (deleted meanwhile) advertises it again; one that fails (the database down) is tried again at the
    next beat, and the worker is shown not live meanwhile."""

    def __init__(self, store: WorkerStore, name: str, devices: list[int], queues: list[str]):
        self.store, self.name, self.devices, self.queues = store, name, devices, queues
        self.worker_class = WorkerClass.gpu if devices else WorkerClass.cpu
        self.host, self.pid = socket.gethostname(), os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="worker-registration", daemon=True)

    def advertise(self) -> None:
        self.store.advertise(self.name, self.worker_class, self.devices, self.queues, self.host, self.pid)

    def start(self) -> None:
        try:
            self.advertise()
            log.info(
                "worker %s advertised: class %s, devices %s, queues %s",
                self.name,
                self.worker_class.value,
                self.devices or "none",
                ",".join(self.queues),
            )
        except Exception:  # the thread tries again; the worker still works
            log.exception("worker %s: not advertised yet", self.name)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.store.heartbeat_s):
            try:
                if not self.store.beat(self.name):
                    self.advertise()
            except Exception:
                log.exception("worker %s: its row in the workers table not refreshed", self.name)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        try:
            self.store.remove(self.name)
        except Exception:  # the row goes stale, and GET /workers shows it not live
            log.exception("worker %s: its row in the workers table not deleted", self.name)
