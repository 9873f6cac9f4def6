"""Helpers of the end-to-end tests: submit a job over HTTP, wait for a status, list the models."""

import time

import httpx
import pytest

FINISHED = {"succeeded", "failed", "cancelled"}
TINY = {"dataset": "mnist", "epochs": 1, "max_samples": 256, "batch_size": 64}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def submit(client: httpx.Client, **body) -> tuple[str, str]:
    r = client.post("/train", json=body)
    assert r.status_code == 202, r.text
    assert "location" in r.headers, r.headers
    job = r.json()
    assert job["status"] == "queued"
    assert r.headers["location"].rstrip("/").endswith(f"/train/{job['id']}")
    return job["id"], r.headers["location"]


def wait_for(client: httpx.Client, job_id: str, until: set[str], timeout_s: float) -> tuple[dict, list[str]]:
    """Poll the job until its status is in `until`; returns the record and the distinct statuses seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
        r = client.get(f"/train/{job_id}")
        assert r.status_code == 200, r.text
        job = r.json()
        if not seen or seen[-1] != job["status"]:
            seen.append(job["status"])
        if job["status"] in until:
            return job, seen
        if job["status"] in FINISHED:
            pytest.fail(f"job {job_id} ended {job['status']} (error: {job.get('error')}); waited for {until}")
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} still {job['status']} after {timeout_s:.0f} s; waited for {until}")
        time.sleep(0.2)


def model_names(client: httpx.Client) -> set[str]:
    r = client.get("/models")
    assert r.status_code == 200, r.text
    return {m["name"] for m in r.json()["models"]}
