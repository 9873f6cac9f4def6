"""The database stops answering under a running API (PostgreSQL, its connections cut and refused): `/readyz`
says 503 naming the database, `/generate` goes on serving, `/train` answers 503 with Retry-After and changes
nothing; once the database is back, the API works again without a restart and nothing was lost."""

import time
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from svc_support import AUTH, DEFAULT_MODEL, FakeTasks, publish_tiny_model

from service.api.routes.health import expire_probes
from service.main import create_app

BODY = {"model_name": "my-digits", "epochs": 1, "max_samples": 256}


@pytest.fixture
def own_database(postgres_url: str) -> Iterator[tuple[str, object]]:
    """A PostgreSQL database of this test's own, and the admin engine that can cut it off."""
    admin = create_engine(make_url(postgres_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    name = f"ganserve_outage_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False), (admin, name)
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))
        conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        conn.execute(text(f'DROP DATABASE "{name}"'))
    admin.dispose()


def cut(admin, name: str, down: bool) -> None:
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {"false" if down else "true"}'))
        if down:
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))


def ready(client: TestClient) -> dict:
    deadline = time.monotonic() + 60
    while (r := client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, r.json()
        time.sleep(0.1)
    return r.json()


def test_an_outage_is_a_503_and_the_api_recovers(own_database, settings) -> None:
    url, (admin, name) = own_database
    settings = settings.model_copy(update={"database_url": url})
    publish_tiny_model(settings, DEFAULT_MODEL)
    with TestClient(create_app(settings, FakeTasks()), headers=AUTH) as c:
        assert ready(c)["checks"]["database"]["detail"].startswith("postgresql, at revision")
        before = c.post("/train", json=BODY)
        assert before.status_code == 202

        cut(admin, name, down=True)
        expire_probes(c.app)  # /readyz probes the database once a second: ask it now, not a second later
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["detail"]["database"]["ok"] is False
        assert "database" in r.json()["message"] and name not in r.text  # no host or database name in public
        assert c.get("/generate", params={"seed": 1}).status_code == 200
        refused = c.post("/train", json=BODY)
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert refused.json()["error"] == "database_unavailable"
        assert c.get(f"/train/{before.json()['id']}").status_code == 503

        cut(admin, name, down=False)
        ready(c)
        jobs = c.get("/train").json()
        assert [j["id"] for j in jobs["jobs"]] == [before.json()["id"]]  # the first kept, the refused never made
        assert c.post("/train", json=BODY).status_code == 202
