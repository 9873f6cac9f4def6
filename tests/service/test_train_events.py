"""GET /train/{id}/events: the job record as server-sent events, on every change, until it finishes."""

import asyncio
import json
import threading
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete

from core import db as tables
from core.jobs import JobStore, Progress
from core.records import JobStatus, now
from service.api.routes import train as train_routes

BODY = {"model_name": "my-digits", "epochs": 2, "max_samples": 256}


@pytest.fixture(autouse=True)
def fast_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_routes, "EVENTS_POLL_S", 0.01)
    monkeypatch.setattr(train_routes, "EVENTS_HEARTBEAT_S", 0.05)


def store(client: TestClient) -> JobStore:
    return client.app.state.ganserve.jobs  # type: ignore[attr-defined]


def parse(stream: str) -> tuple[list[tuple[str, dict]], list[str]]:
    """The events (`id`, record) and the comment lines of an SSE stream."""
    events, comments = [], []
    for block in stream.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                comments.append(line)
            else:
                name, _, value = line.partition(": ")
                fields[name] = value
        if "data" in fields:
            assert "event" not in fields, block  # plain `message` events, as EventSource expects
            events.append((fields["id"], json.loads(fields["data"])))
    return events, comments


def test_streams_each_change_until_the_job_finishes(client: TestClient) -> None:
    job_id = client.post("/train", json=BODY).json()["id"]
    jobs = store(client)

    def run_the_job() -> None:
        time.sleep(0.2)
        jobs.update(job_id, status=JobStatus.running, started_at=now())
        for step in (1, 2):
            time.sleep(0.2)  # quiet for longer than the heartbeat
            progress = Progress(epoch=step, epochs=2, step=step, total_steps=2, fraction=step / 2)
            jobs.update(job_id, progress=progress)
        time.sleep(0.2)
        jobs.update(job_id, status=JobStatus.succeeded, finished_at=now())

    worker = threading.Thread(target=run_the_job)
    worker.start()
    try:
        with client.stream("GET", f"/train/{job_id}/events") as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["cache-control"] == "no-cache"
            text = "".join(r.iter_text())  # ends by itself once the job has finished
    finally:
        worker.join()
    events, comments = parse(text)
    assert [e[0] for e in events] == [str(i) for i in range(1, len(events) + 1)]  # `id:` counts the changes
    statuses = [record["status"] for _, record in events]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded"
    assert "running" in statuses
    steps = [record["progress"]["step"] for _, record in events if record["progress"]]
    assert steps == sorted(steps) and steps[-1] == 2
    assert all(record["id"] == job_id for _, record in events)
    assert events[-1][1] == client.get(f"/train/{job_id}").json()  # the same record as GET /train/{id}
    assert ": heartbeat" in comments


def test_a_finished_job_gives_one_event_and_the_end(client: TestClient) -> None:
    job_id = client.post("/train", json=BODY).json()["id"]
    store(client).update(job_id, status=JobStatus.cancelled, finished_at=now())
    r = client.get(f"/train/{job_id}/events")
    events, _ = parse(r.text)
    assert [(i, record["status"]) for i, record in events] == [("1", "cancelled")]


def test_needs_a_train_key_and_a_known_job(client: TestClient, anon: TestClient) -> None:
    job_id = client.post("/train", json=BODY).json()["id"]
    r = anon.get(f"/train/{job_id}/events")
    assert r.status_code == 401 and r.json()["error"] == "api_key_required"
    r = anon.get(f"/train/{job_id}/events", params={"key": "anything"})  # never a key in the URL
    assert r.status_code == 401
    r = client.get("/train/no-such-job/events")
    assert r.status_code == 404 and r.json()["error"] == "job_not_found"


def test_stops_when_the_client_goes(client: TestClient) -> None:
    job_id = client.post("/train", json=BODY).json()["id"]
    jobs = store(client)
    checks = 0

    async def gone() -> bool:
        nonlocal checks
        checks += 1
        return True

    async def read() -> list[str]:
        return [chunk.encode().decode() async for chunk in train_routes.job_events(jobs, jobs.get(job_id), gone)]

    chunks = asyncio.run(asyncio.wait_for(read(), timeout=5))
    assert len(chunks) == 1 and chunks[0].startswith("id: 1\n") and checks == 1  # the job is still queued


def test_ends_when_the_record_is_gone(client: TestClient) -> None:
    job_id = client.post("/train", json=BODY).json()["id"]
    jobs = store(client)
    first = jobs.get(job_id)
    with jobs.db.begin() as conn:  # deleted behind the API's back
        conn.execute(delete(tables.jobs).where(tables.jobs.c.id == job_id))

    async def here() -> bool:
        return False

    async def read() -> list[str]:
        return [chunk.encode().decode() async for chunk in train_routes.job_events(jobs, first, here)]

    chunks = asyncio.run(asyncio.wait_for(read(), timeout=5))
    assert chunks[-1] == f'event: gone\ndata: {{"id": "{job_id}"}}\n\n'
