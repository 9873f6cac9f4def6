"""Operations: Prometheus metrics, request ids and JSON logs (docs/operations.md).

- `Metrics` holds one `CollectorRegistry` per app (never prometheus_client's global one, so that several apps
  in one process — the tests — do not collide): HTTP requests by route template, method and status, their
  durations, the rows of every generator forward, the images /generate served; and, from the database,
  training and evaluation jobs by status, running jobs' images/s and the workers (so every API process
  sharing the database reports the same numbers). Those are read into a `JobsSnapshot` at most once every
  `SNAPSHOT_MAX_AGE_S`, whatever the rate of scrapes, /stats and /readyz: counts by status (SQL COUNTs),
  the running and queued jobs' records only, never every record.
- `serving_metrics`: the registry on a port of its own (GANSERVE_METRICS_PORT), prometheus_client's HTTP
  server in a thread of this process, for a scraper that holds no key.
- `ObserveRequests` is a pure ASGI middleware: it takes the client's `X-Request-ID` (or makes one), keeps it
  in a contextvar for the log lines of the request, returns it in the answer, and counts the request. With
  `GANSERVE_LOG_FORMAT=json` it also writes one access line per request.
- `JsonFormatter`: one JSON object per log line, with the request id while a request is being handled.

The render process's log lines carry no request id: it serves many requests in one forward.
"""

import contextvars
import json
import logging
import re
import threading
import time
import uuid
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.evaluations import EvaluationStore
from core.jobs import JobRecord, JobStore
from core.records import JobStatus, RecordStore
from core.settings import Settings
from core.workers import WorkerClass, WorkerInfo, WorkerStore, waiting_for, wanted

log = logging.getLogger(__name__)

access_log = logging.getLogger("service.access")

REQUEST_ID_HEADER = b"x-request-id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("ganserve_request_id", default=None)

UNMATCHED = "unmatched"  # the route label of a request no route matched (404s of unknown paths, 413s before routing)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # any other: "other"

# Seconds. /generate answers in 1–5 ms on a CPU, /train and /models in tens of ms, a model load in seconds.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def current_request_id() -> str | None:
    """The id of the request being handled in this context (None outside one)."""
    return _request_id.get()


def request_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's `X-Request-ID` when it is a sane token (≤ 128 of `[A-Za-z0-9._-]`), else a new uuid4 hex:
    anything else could forge log lines or carry a secret into them."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            text = value.decode("latin-1")
            if _SANE_REQUEST_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id (inside a request),
    exc (a traceback), and the fields an access line carries (`extra={"access": {...}}`)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = _request_id.get()
        if rid is not None:
            line["request_id"] = rid
        fields = getattr(record, "access", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


# A scrape, /stats or /readyz reads the database at most this often per API process, however often they come.
SNAPSHOT_MAX_AGE_S = 1.0

T = TypeVar("T")


class Snapshot(Generic[T]):
    """`read()`'s value, read again only when the last one is `max_age_s` old. One read at a time: callers that
    find it stale while another thread reads wait for that read rather than start their own, so the reads are
    at most one per `max_age_s` whatever the number of callers. A read that raises is kept too, for as long: a
    flood during a database outage waits on one failing connection a second, not one each. `clock`:
    time.monotonic (tests pass their own)."""

    def __init__(
        self, read: Callable[[], T], max_age_s: float = SNAPSHOT_MAX_AGE_S, clock: Callable[[], float] = time.monotonic
    ):
        self.read = read
        self.max_age_s = max_age_s
        self.clock = clock
        self._lock = threading.Lock()
        self._taken: float | None = None  # when the kept value or error was read; None: nothing kept
        self._value: T | None = None
        self._error: Exception | None = None
        self._traceback: TracebackType | None = None

    def get(self) -> T:
        with self._lock:
            if self._taken is None or self.clock() - self._taken >= self.max_age_s:
                try:
                    self._value, self._error = self.read(), None
                except Exception as e:
                    self._value, self._error, self._traceback = None, e, e.__traceback__
                self._taken = self.clock()
            if self._error is not None:
                # Its own traceback each time, not one that grows by a frame at every re-raise.
                raise self._error.with_traceback(self._traceback)
            return self._value  # type: ignore[return-value]  # set whenever no error is

    def expire(self) -> None:
        """The next `get` reads (tests that change the database and look at once)."""
        with self._lock:
            self._taken = None


@dataclass(frozen=True)
class JobsSnapshot:
    """What /metrics, /stats and /readyz report from the database, read at one moment."""

    jobs: dict[str, int]  # training jobs by status (every status present)
    evaluations: dict[str, int] | None  # evaluation jobs by status; None: no evaluation store
    running: list[JobRecord]  # the running jobs' records (their progress)
    workers: list[WorkerInfo] | None  # None: no worker store
    waiting: dict[str, int]  # queued jobs no live worker can take, by what they wait for (core.workers.wanted)

    @property
    def without_live_worker(self) -> int:
        return sum(self.waiting.values())


def _by_status(store: RecordStore[Any]) -> dict[str, int]:
    """One COUNT per status in one transaction: the index on status answers, no record is read or parsed."""
    with store.db.begin() as conn:
        return {s.value: store.count({s}, conn=conn) for s in JobStatus}


def read_jobs(
    jobs: JobStore, evaluations: EvaluationStore | None = None, workers: WorkerStore | None = None
) -> JobsSnapshot:
    """The snapshot, read now: counts by status, and the records of running jobs (and, with workers, queued
    ones, to say which no live worker can take): bounded by the workers and the queue, not by the history."""
    listed = workers.list() if workers is not None else None
    waiting: dict[str, int] = {}
    if listed is not None:
        for r in jobs.list(status=JobStatus.queued):
            gpus = r.resources.gpus if r.resources is not None else None  # an older version's job: any worker
            if waiting_for(gpus, listed) is not None:
                waiting[wanted(gpus)] = waiting.get(wanted(gpus), 0) + 1
    return JobsSnapshot(
        jobs=_by_status(jobs),
        evaluations=_by_status(evaluations) if evaluations is not None else None,
        running=jobs.list(status=JobStatus.running),
        workers=listed,
        waiting=waiting,
    )


class JobsCollector(Collector):
    """Jobs by status, running jobs' throughput and the workers, from the snapshot (at most a second old)."""

    def __init__(self, snapshot: Callable[[], JobsSnapshot]):
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        jobs = GaugeMetricFamily("ganserve_jobs", "Training jobs on the volume, by status.", labels=["status"])
        for status, n in snap.jobs.items():
            jobs.add_metric([status], n)
        yield jobs
        speed = GaugeMetricFamily(
            "ganserve_training_images_per_second",
            "Real images per second of each running training job (its last progress report).",
            labels=["job", "model"],
        )
        for r in snap.running:
            if r.progress is not None and r.progress.images_per_sec is not None:
                speed.add_metric([r.id, r.config.model_name], r.progress.images_per_sec)
        yield speed
        if snap.evaluations is not None:
            evals = GaugeMetricFamily(
                "ganserve_evaluations", "Evaluation jobs on the volume, by status.", labels=["status"]
            )
            for status, n in snap.evaluations.items():
                evals.add_metric([status], n)
            yield evals
        if snap.workers is not None:
            yield from self._workers(snap.workers, snap.without_live_worker)

    def _workers(self, workers: list[WorkerInfo], waiting: int) -> Iterator[Metric]:
        """Workers by class and liveness, and the queued jobs that no live worker can take (alert on it)."""
        counts = Tally((w.worker_class.value, w.live) for w in workers)
        family = GaugeMetricFamily(
            "ganserve_workers",
            "Workers advertised in the workers table, by class and liveness.",
            labels=["class", "live"],
        )
        for cls in WorkerClass:
            for live in (True, False):
                family.add_metric([cls.value, str(live).lower()], counts.get((cls.value, live), 0))
        yield family
        yield GaugeMetricFamily(
            "ganserve_jobs_without_live_worker",
            "Queued training jobs that no live worker can take (their record's waiting_for).",
            value=waiting,
        )


class Metrics:
    """The app's metrics (`app.state.metrics`) and its registry, which `GET /metrics` renders."""

    def __init__(
        self,
        jobs: JobStore | None = None,
        evaluations: EvaluationStore | None = None,
        workers: WorkerStore | None = None,
    ):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ganserve_http_requests",
            "HTTP requests answered, by route template (`unmatched`: no route), method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "ganserve_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route template and method.",
            ["route", "method"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "ganserve_generator_batch_rows",
            "Rows of real requests in each generator forward of /generate (before padding to GANSERVE_BATCH_MAX).",
            buckets=BATCH_ROW_BUCKETS,
            registry=self.registry,
        )
        self.generated_images = Counter(
            "ganserve_generate_images", "Images /generate answered with (cached ones included).", registry=self.registry
        )
        # Read at each scrape from the renderer (`watch_renderer`): the queue in front of the generator.
        self.rendering = Gauge(
            "ganserve_render_in_flight",
            "/generate and /interpolate requests sent to the render process and not answered yet.",
            registry=self.registry,
        )
        # The database's part, read at most once a second (`SNAPSHOT_MAX_AGE_S`) for every reader.
        self.jobs: Snapshot[JobsSnapshot] | None = None
        if jobs is not None:
            self.jobs = Snapshot(lambda: read_jobs(jobs, evaluations, workers))
            self.registry.register(JobsCollector(self.jobs.get))
        self.started_at = datetime.now(UTC)
        self._started = time.monotonic()
        # (route, method, status) → its counter and histogram children: `.labels()` costs more than the update.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self._started

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.duration.labels(route, method))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def route_stats(self) -> list[dict[str, Any]]:
        """Per route and method: requests, 5xx answers, and p50 / p99 in ms estimated from the histogram's
        buckets (linear within a bucket, as Prometheus' `histogram_quantile`)."""
        counts: dict[tuple[str, str], list[int]] = {}  # [requests, 5xx]
        for sample in self.requests.collect()[0].samples:
            if sample.name.endswith("_total"):
                key = (sample.labels["route"], sample.labels["method"])
                tally = counts.setdefault(key, [0, 0])
                tally[0] += int(sample.value)
                if sample.labels["status"].startswith("5"):
                    tally[1] += int(sample.value)
        buckets: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for sample in self.duration.collect()[0].samples:
            if sample.name.endswith("_bucket"):
                key = (sample.labels["route"], sample.labels["method"])
                buckets.setdefault(key, []).append((float(sample.labels["le"]), sample.value))
        stats = []
        for (route, method), (n, errors) in sorted(counts.items()):
            cumulative = sorted(buckets.get((route, method), []))
            stats.append(
                {
                    "route": route,
                    "method": method,
                    "count": n,
                    "errors": errors,
                    "p50_ms": _quantile_ms(0.5, cumulative),
                    "p99_ms": _quantile_ms(0.99, cumulative),
                }
            )
        return stats

    def watch_renderer(self, in_flight: Callable[[], int]) -> None:
        self.rendering.set_function(in_flight)

    def images_generated(self) -> int:
        return int(sum(s.value for s in self.generated_images.collect()[0].samples if s.name.endswith("_total")))

    def batch_summary(self) -> tuple[int, float]:
        """(forwards, real rows) the render process reported."""
        forwards = rows = 0.0
        for sample in self.batch_rows.collect()[0].samples:
            if sample.name.endswith("_count"):
                forwards = sample.value
            elif sample.name.endswith("_sum"):
                rows = sample.value
        return int(forwards), rows


@asynccontextmanager
async def serving_metrics(settings: Settings, registry: CollectorRegistry) -> AsyncIterator[None]:
    """`registry` on GANSERVE_METRICS_HOST:GANSERVE_METRICS_PORT (0: nothing), without a key, while the app
    runs: prometheus_client's own HTTP server, in a thread of this process. A port another process holds (a
    second API process of `uvicorn --workers`, which `ganserve api` refuses before it starts) fails the start
    with a message naming the setting: a port serving one of several processes' counts would mislead."""
    if not settings.metrics_port:
        yield
        return
    where = f"{settings.metrics_host}:{settings.metrics_port}"
    try:
        server, thread = start_http_server(settings.metrics_port, settings.metrics_host, registry)
    except OSError as e:
        raise RuntimeError(
            f"GANSERVE_METRICS_PORT: cannot serve /metrics on {where} ({e.strerror or e}). Another process holds "
            "the port (with several API processes, GANSERVE_WORKERS > 1, only one could: run one per port, or set "
            "GANSERVE_METRICS_PORT=0 and scrape GET /metrics with an admin key)."
        ) from e
    log.info("metrics: /metrics served without a key on http://%s/metrics", where)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _quantile_ms(q: float, cumulative: list[tuple[float, float]]) -> float | None:
    if not cumulative or cumulative[-1][1] == 0:
        return None
    rank = q * cumulative[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if bound == float("inf"):  # beyond the largest finite bucket: its bound is all we know
                return round(lower_bound * 1000, 3)
            fraction = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return round((lower_bound + (bound - lower_bound) * fraction) * 1000, 3)
        lower_bound, lower_count = bound, count
    return None


def _route_of(scope: Scope, root_path: str) -> str:
    """The matched route's path template (FastAPI sets `scope["route"]`), a mount's prefix + `/{path}`, or
    `unmatched`: never the raw path, whose values would make a label per job id or file."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if isinstance(template, str):
        return template
    mounted = scope.get("root_path", "")
    if "endpoint" in scope and len(mounted) > len(root_path):
        return mounted[len(root_path) :] + "/{path}"
    return UNMATCHED


class ObserveRequests:
    """Pure ASGI middleware: request id in and out, the request counted and timed, and (`access_log`) one
    JSON access line.

    Cost, measured in-process (200,000 requests through it to a trivial ASGI app, minus the app alone, on a
    busy 2-core AMD EPYC): 16–25 µs a request, of which uuid4 ≈ 5 µs and the counter + histogram ≈ 5 µs;
    the JSON access line adds 40–90 µs (the logging module's record and `json.dumps`), which is why it is
    written only with `GANSERVE_LOG_FORMAT=json`. A /generate takes 1–5 ms."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool = False):
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_from(scope["headers"])
        token = _request_id.set(rid)
        header = (REQUEST_ID_HEADER, rid.encode("ascii"))
        status = 500  # what the client gets when the app raises (ServerErrorMiddleware answers, outside us)
        root_path = scope.get("root_path", "")
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            method = scope["method"] if scope["method"] in METHODS else "other"
            route = _route_of(scope, root_path)
            self.metrics.observe_request(route, method, status, seconds)
            if self.access_log:
                duration_ms = round(seconds * 1000, 3)
                fields = {"method": method, "route": route, "path": scope["path"], "status": status}
                access_log.info(
                    "%s %s %d %.1f ms",
                    method,
                    scope["path"],
                    status,
                    duration_ms,
                    extra={"access": {**fields, "duration_ms": duration_ms}},
                )
            _request_id.reset(token)
