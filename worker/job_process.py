"""A training job's attempt in a process of its own, and the worker's watch over it.

The Celery task (worker/tasks.py) claims an attempt, then `supervise` runs it in a spawned child process (a fresh
interpreter: nothing of the worker's CUDA state, threads or leaks carries over, and whatever the job leaves
behind dies with it). The child trains and writes the job's record itself, as the worker's identity. The
worker's process only watches, and acts on what the child cannot:

- a cancel the child has not honoured within GANSERVE_STOP_GRACE_S (it hangs): the child is killed, the job
  `cancelled`;
- the job's `max_runtime_s` (capped by GANSERVE_MAX_RUNTIME_S): the child is asked to stop, and killed after the
  grace; the job `failed`, saying so;
- a worker shutdown: the child is asked to stop and the job goes back to the queue;
- no training step and no progress report for GANSERVE_STALL_AFTER_S (a hang: the child's heartbeat thread
  would beat on): the child is killed at once, and the job re-queued, or failed on its last attempt;
- the child dying without an answer (the kernel's OOM killer, a segfault): the same.

The child dies with the worker (Linux's PR_SET_PDEATHSIG), so a SIGKILLed worker leaves nothing training on, and
the API's reaper re-queues the job once its heartbeat stops.
"""

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from celery.worker import state as worker_state
from sqlalchemy.exc import OperationalError

from core.db import DatabaseUnavailable
from core.jobs import JobRecord, JobStore
from core.records import JobStatus, now
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)

REQUEUE = "requeue"  # an outcome's status: the task rejects its message with requeue, and a worker starts it again
POLL_S = 0.5
EXIT_GRACE_S = 30.0  # for the processes of an attempt that has answered: they are only exiting


DATABASE_DOWN = (OperationalError, DatabaseUnavailable)


def cancel_asked(store: JobStore, job_id: str) -> bool:
    """Whether the job's cancel was requested; False while the database does not answer (the job goes on)."""
    try:
        return store.cancel_requested(job_id)
    except DATABASE_DOWN:
        return False


def worker_stopping() -> bool:
    """True once this worker began a warm or cold shutdown (SIGTERM, Ctrl-C, SIGQUIT)."""
    return worker_state.should_stop is not None or worker_state.should_terminate is not None


@dataclass
class Signals:
    """What the worker's process and the job's share: requests to stop, and when the job last showed progress.
    The watch reads the cancel request from the database and passes it on, so a training step never queries."""

    shutdown: Any  # an Event: the worker is shutting down
    time_up: Any  # an Event: the job ran past its max_runtime_s
    cancel: Any  # an Event: the job's cancel was requested
    alive: Any  # a shared double (`.value`): time.time() of the job's last step or report

    def touch(self) -> None:
        self.alive.value = time.time()

    def stop_asked(self) -> bool:
        return self.shutdown.is_set() or self.time_up.is_set() or self.cancel.is_set()


class _WorkerStopping:
    """`shutdown` for a job run in the worker's own process (tests): the worker's own state, read when asked."""

    def is_set(self) -> bool:
        return worker_stopping()


@dataclass
class _CancelAsked:
    """`cancel` for a job run in the worker's own process (tests): the database, read when asked."""

    store: JobStore
    job_id: str

    def is_set(self) -> bool:
        return cancel_asked(self.store, self.job_id)


@dataclass
class _Clock:
    value: float


def signals_here(store: JobStore, job_id: str) -> Signals:
    """Signals for an attempt run in this very process (no watch: unit tests that patch the training code)."""
    import threading

    return Signals(
        shutdown=_WorkerStopping(),
        time_up=threading.Event(),
        cancel=_CancelAsked(store, job_id),
        alive=_Clock(time.time()),
    )


def supervise(
    store: JobStore, job_id: str, attempt: int, me: str, max_runtime_s: int | None, ranks: int = 1
) -> dict[str, Any]:
    """Run attempt `attempt` of the job in child processes, `ranks` of them (one per GPU: a data-parallel world, as
    torchrun would start it, training/distributed.py), and watch them; returns the attempt's outcome (rank 0's
    own, or what this process recorded after stopping them: `status` REQUEUE asks for the message back)."""
    settings = get_settings()
    limit = min(max_runtime_s or settings.max_runtime_s, settings.max_runtime_s)
    ctx = multiprocessing.get_context("spawn")
    signals = Signals(shutdown=ctx.Event(), time_up=ctx.Event(), cancel=ctx.Event(), alive=ctx.Value("d", time.time()))
    port = _free_port() if ranks > 1 else 0
    children, receivers = [], []
    for rank in range(ranks):
        receiver, sender = ctx.Pipe(duplex=False)
        env = _rank_env(rank, ranks, port) if ranks > 1 else {}
        name = f"ganserve-job-{job_id[:12]}" + (f"-rank{rank}" if ranks > 1 else "")
        child = ctx.Process(target=child_main, args=(job_id, attempt, me, sender, signals, env), name=name)
        child.start()
        sender.close()  # only the child's end writes: a child that dies closes the pipe, and recv() says so
        children.append(child)
        receivers.append(receiver)
    pids = ", ".join(str(c.pid) for c in children)
    log.info("job %s: attempt %d runs in process(es) %s (max run time %d s)", job_id, attempt, pids, limit)
    started = time.monotonic()
    why: str | None = None  # why the children were asked to stop, or are killed
    asked_at = 0.0
    outcomes: dict[int, dict[str, Any]] = {}
    try:
        while 0 not in outcomes:
            for rank, receiver in enumerate(receivers):
                if rank not in outcomes and receiver.poll(POLL_S / ranks):
                    try:
                        outcomes[rank] = receiver.recv()
                    except EOFError:  # it died without an answer
                        outcomes[rank] = {"status": "died"}
            lost = [c for r, c in enumerate(children) if r not in outcomes and not c.is_alive()]
            if 0 in outcomes or lost or any(o["status"] == "died" for o in outcomes.values()):
                break
            if why is None:
                why = _reason_to_stop(store, job_id, signals, settings, time.monotonic() - started, limit)
                asked_at = time.monotonic()
            if why == "stall" or (why is not None and time.monotonic() - asked_at > settings.stop_grace_s):
                log.error("job %s: killing its process(es) %s (%s)", job_id, pids, why)
                break
        _end_all(children, EXIT_GRACE_S if 0 in outcomes else 0.0)
    finally:
        for receiver in receivers:
            receiver.close()
    outcome = outcomes.get(0, {"status": "died"})
    if outcome["status"] not in ("died", "error"):
        return outcome  # rank 0 ended the attempt and wrote its record
    errors = sorted((o for o in outcomes.values() if o["status"] == "error"), key=lambda o: o["at"])
    # A rank that answered did not die, whatever its exit (one leaving a broken group may abort on its way out).
    answered = {r for r, o in outcomes.items() if o["status"] != "died"}
    died = [c for r, c in enumerate(children) if r not in answered and c.exitcode != 0]
    if errors and not died:  # the job's own failure, first where it happened (the other ranks' follow from it)
        return _fail(store, job_id, attempt, me, errors[0]["error"])
    exitcode = died[0].exitcode if died else None
    return _after(store, settings, job_id, attempt, me, why, exitcode, limit)


def _end_all(children: list[Any], grace_s: float) -> None:
    """Let the children exit within `grace_s`, then kill whoever is left (all at once when 0)."""
    deadline = time.monotonic() + grace_s
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()
        child.join()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_env(rank: int, ranks: int, port: int) -> dict[str, str]:
    """What torchrun tells each process of a one-host world (training/distributed.py reads it)."""
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(ranks),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(ranks),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def _reason_to_stop(
    store: JobStore, job_id: str, signals: Signals, settings: Settings, elapsed: float, limit: int
) -> str | None:
    """Whether the child must stop now, and why; the child is told (it stops at its next step) where it can be."""
    if worker_stopping():
        signals.shutdown.set()
        return "shutdown"
    if elapsed > limit:
        signals.time_up.set()
        return "max_runtime"
    if cancel_asked(store, job_id):
        signals.cancel.set()  # the child stops at its next step; the grace times its answer
        return "cancel"
    if time.time() - signals.alive.value > settings.stall_after_s:
        return "stall"
    return None


def _after(
    store: JobStore,
    settings: Settings,
    job_id: str,
    attempt: int,
    me: str,
    why: str | None,
    exitcode: int | None,
    limit: int,
) -> dict[str, Any]:
    """The record, once the child is gone without an answer: killed by this process (`why`), or dead on its own."""
    if why == "cancel":
        reason = f"it did not stop within {settings.stop_grace_s:.0f} s of the cancel (GANSERVE_STOP_GRACE_S)"
        if _end(store, job_id, attempt, me, status=JobStatus.cancelled, finished_at=now()):
            log.warning("job %s cancelled: %s; its process was killed", job_id, reason)
            return {"job": job_id, "status": JobStatus.cancelled.value}
        return {"job": job_id, "status": "superseded"}
    if why == "max_runtime":
        error = (
            f"stopped after its max_runtime_s ({limit} s): it did not stop within {settings.stop_grace_s:.0f} s of "
            "being asked, so its process was killed; its checkpoints are kept"
        )
        return _fail(store, job_id, attempt, me, error)
    if why == "shutdown":
        if _end(store, job_id, attempt, me, status=JobStatus.queued, started_at=None):
            log.warning("job %s: its process did not stop for the shutdown in time and was killed; requeued", job_id)
            return {"job": job_id, "status": REQUEUE}
        return {"job": job_id, "status": "superseded"}
    if why == "stall":
        what = (
            f"stalled: no training step or progress for {settings.stall_after_s:.0f} s (GANSERVE_STALL_AFTER_S), "
            "so the worker killed its process"
        )
    else:
        what = f"its process died without finishing ({describe_exit(exitcode)})"
    if attempt >= settings.max_attempts:
        return _fail(store, job_id, attempt, me, f"{what}, on its last attempt ({attempt} of {settings.max_attempts})")
    if _end(store, job_id, attempt, me, status=JobStatus.queued, started_at=None, error=f"attempt {attempt}: {what}"):
        log.error("job %s: %s; requeued for attempt %d", job_id, what, attempt + 1)
        return {"job": job_id, "status": REQUEUE}
    return {"job": job_id, "status": "superseded"}


def _fail(store: JobStore, job_id: str, attempt: int, me: str, error: str) -> dict[str, Any]:
    if _end(store, job_id, attempt, me, status=JobStatus.failed, error=error, finished_at=now()):
        log.error("job %s failed: %s", job_id, error)
        return {"job": job_id, "status": JobStatus.failed.value}
    return {"job": job_id, "status": "superseded"}


def describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (the kernel's out-of-memory killer sends it)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exit code {exitcode}"


class _NotOurs(Exception):
    pass


def _end(store: JobStore, job_id: str, attempt: int, me: str, **changes: Any) -> bool:
    """Write `changes` only while the job is still this attempt's: running here, or queued and not yet marked
    running by the child (this worker holds the attempt's claim, so nobody else has moved it since)."""

    def ours(current: JobRecord) -> dict[str, Any]:
        here = current.status == JobStatus.running and current.worker == me
        not_started = current.status == JobStatus.queued and current.attempts < attempt
        if not (here or not_started):
            raise _NotOurs
        # A child that died before marking its attempt leaves the count behind: the next claim must be the next one.
        return {"attempts": max(current.attempts, attempt), **changes}

    try:
        store.update(job_id, apply=ours)
        return True
    except _NotOurs:
        log.warning("job %s is no longer this worker's; its record is left as it is", job_id)
        return False


def run_evaluation_in_child(eval_id: str) -> dict[str, Any]:
    """An evaluation in a spawned child that dies with the worker: its outcome, or `status` "died" with the
    child's `exitcode`. No stall watch: an evaluation reports no steps, and a worker shutting down lets it finish
    (it is short)."""
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=evaluation_main, args=(eval_id, sender), name=f"ganserve-evaluation-{eval_id[:12]}")
    child.start()
    sender.close()
    try:
        outcome = receiver.recv()
    except EOFError:
        outcome = None
    finally:
        receiver.close()
        child.join()
    return outcome if outcome is not None else {"evaluation": eval_id, "status": "died", "exitcode": child.exitcode}


# --- the children ---------------------------------------------------------------------------------------------


def evaluation_main(eval_id: str, results: Connection) -> None:
    _child_setup()
    from worker.tasks import run_evaluation

    results.send(run_evaluation(eval_id))
    results.close()


def child_main(job_id: str, attempt: int, me: str, results: Connection, signals: Signals, env: dict[str, str]) -> None:
    """The job's process (one rank of it, with `env`): dies with the worker, leaves Ctrl-C to the worker (which
    asks it to stop), runs the attempt and sends its outcome."""
    os.environ.update(env)
    _child_setup()
    from worker.tasks import run_attempt  # the worker's task module: the job's body

    results.send(run_attempt(job_id, attempt, me, signals))
    results.close()


def _child_setup() -> None:
    """Die with the worker, leave Ctrl-C to it, and log as it does."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=get_settings().log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [job process %(process)d]: %(message)s",
        stream=sys.stderr,
    )


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the worker's process dies (elsewhere: nothing to ask)."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before the request was made
        os._exit(1)
