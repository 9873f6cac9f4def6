"""A job's webhook, end to end: the Celery worker process finishes the job (and owes the call, in the database's
outbox, in the same transaction), the API process calls a receiver of this test's own, which fails once and then
answers 200; the call is signed with the secret the stack was given. Once on the volume's SQLite, once on
PostgreSQL."""

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from e2e_support import TINY, submit, wait_for

from core.db import Database
from core.jobs import JobStore, OutboxState
from core.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "e2e-webhook-secret"


class Receiver:
    """An HTTP server on a free local port: answers 503 to the first POST, 200 to the rest; keeps them all."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = 503 if not receiver.calls else 200
                receiver.calls.append(({k.lower(): v for k, v in self.headers.items()}, body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ganserve"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The stack's database: the default (SQLite on its volume), or the session's PostgreSQL database."""
    if request.param == "sqlite":
        return {}
    return {"GANSERVE_DATABASE_URL": request.getfixturevalue("postgres_url")}


def test_a_finished_job_calls_its_webhook(
    redis_url, start_stack, tmp_path: Path, receiver: Receiver, database_env: dict[str, str]
) -> None:
    env = {
        "GANSERVE_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "GANSERVE_WEBHOOK_SECRET": SECRET,
        "GANSERVE_WEBHOOK_BACKOFF_S": "0.2",
        **database_env,
    }
    s = start_stack(redis_url, tmp_path, **env)
    try:
        with s.client() as client:
            job_id, _ = submit(client, model_name="e2e-hooked", webhook=receiver.url, **TINY)
            job, _ = wait_for(client, job_id, {"succeeded"}, timeout_s=120)
            deadline = time.monotonic() + 30
            while job["webhook_status"] != "delivered":
                assert time.monotonic() < deadline, job
                time.sleep(0.2)
                job = client.get(f"/train/{job_id}").json()
    finally:
        s.stop()

    assert [status for _, _, status in receiver.calls] == [503, 200]
    assert [(d["attempt"], d["status_code"]) for d in job["webhook_deliveries"]] == [(1, 503), (2, 200)]
    headers, body, _ = receiver.calls[-1]
    signed = headers["x-ganserve-timestamp"].encode() + b"." + body
    assert headers["x-ganserve-signature"] == "sha256=" + hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
    sent = json.loads(body)
    assert sent["event"] == "job.finished" and sent["job"]["id"] == job_id
    assert sent["job"]["status"] == "succeeded" and sent["job"]["model"] == job["model"]
    assert receiver.calls[0][0]["x-ganserve-delivery"] == headers["x-ganserve-delivery"]

    # The stack's outbox entry, as the API left it: settled, after two attempts of the one delivery.
    url = database_env.get("GANSERVE_DATABASE_URL")
    stack = Settings(_env_file=None, checkpoint_dir=s.volume, database_url=url)  # type: ignore[call-arg]
    db = Database(stack.effective_database_url)
    try:
        entry = JobStore(db).webhook(job_id)
    finally:
        db.dispose()
    assert entry is not None and (entry.state, entry.attempts) == (OutboxState.delivered, 2)
    assert entry.delivery == headers["x-ganserve-delivery"] and entry.claimed_at is None
