"""`/workers`: the workers as they advertise themselves (core/workers.py), for an admin."""

from fastapi import APIRouter, Depends

from service.api.errors import error_responses
from service.api.schemas import WorkerList
from service.security.auth import require_admin
from service.state import StateDep

router = APIRouter(
    prefix="/workers",
    tags=["workers"],
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 403, 429),
)


@router.get(
    "",
    response_model=WorkerList,
    summary="The workers: class, devices, queues, host, and whether each is live",
    description=(
        "Every worker process that advertised itself: its resource class (`gpu` or `cpu`), CUDA devices, the "
        "queues it consumes, host and pid, when it started and when it was last seen. `live`: seen within "
        "3 × GANSERVE_WORKER_HEARTBEAT_S. A worker that stops cleanly is removed; one that vanished stays, not "
        "live, for a day. Needs scope `admin`."
    ),
)
def list_workers(state: StateDep) -> WorkerList:
    workers = state.workers.list()
    live: dict[str, int] = {"cpu": 0, "gpu": 0}
    for w in workers:
        live[w.worker_class.value] += w.live
    return WorkerList(workers=workers, count=len(workers), live=live)
