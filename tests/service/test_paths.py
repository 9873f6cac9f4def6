"""Names that reach the filesystem (jobs, models, evaluations, epochs) are validated and never leave their root:
traversal attempts are 404/422 and read nothing."""

import pytest
from fastapi.testclient import TestClient

# A bare ".." never reaches the app as a segment: HTTP clients resolve dot segments before sending.
TRAVERSALS = ["..%2F..%2Fetc%2Fpasswd", "%2e%2e", "a%2F..%2F..", "x" * 65, "UPPER", ".hidden"]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_job_ids(client: TestClient, name: str) -> None:
    for path in (f"/train/{name}", f"/train/{name}/metrics", f"/train/{name}/plots/losses.png"):
        r = client.get(path)
        assert r.status_code in (404, 422) and r.headers["content-type"] == "application/json", (path, r.text)


@pytest.mark.parametrize("name", TRAVERSALS)
def test_model_names_and_evaluation_ids(client: TestClient, name: str) -> None:
    assert client.get(f"/models/{name}").status_code in (404, 422)
    assert client.get("/generate", params={"model": name, "seed": 1}).status_code in (404, 422)
    assert client.post(f"/models/{name}/evaluate", json={}).status_code in (404, 422)
    assert client.get(f"/models/tiny/evaluations/{name}").status_code in (404, 422)


def test_a_training_job_name_must_be_a_plain_name(client: TestClient) -> None:
    for name in ("../evil", "a/b", "", "x" * 65, "Evil"):
        r = client.post("/train", json={"model_name": name})
        assert r.status_code == 422, r.text
    r = client.post("/train", json={"model_name": "ok", "dataset": "image-folder", "image_folder": "../../etc"})
    assert r.status_code == 422, r.text
