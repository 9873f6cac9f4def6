"""Error messages that say what is wrong and how to fix it, where they used to mislead or say nothing: a
non-finite number is named as such (not "should be less than or equal to 1"), a body that is not JSON or not
UTF-8 says where and what was expected, a scope error names the scope that would do (once), and an invalid key on a
public route says that the route needs no key."""

import pytest
from fastapi.testclient import TestClient
from svc_support import DEFAULT_MODEL, GENERATE_KEY, TRAIN_KEY, bearer

JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("literal", "spelled", "bound"),
    [
        ("NaN", "NaN", "less than or equal to 1"),
        ("Infinity", "Infinity", "less than or equal to 1"),
        ("-Infinity", "-Infinity", "greater than 0"),
        ("1e999", "Infinity", "less than or equal to 1"),
    ],
)
def test_a_non_finite_number_is_named_as_such(client: TestClient, literal: str, spelled: str, bound: str) -> None:
    r = client.post("/train", content=f'{{"model_name": "m", "lr": {literal}}}', headers=JSON)
    assert r.status_code == 422
    body = r.json()
    assert body["message"].startswith(f"body.lr: lr is {spelled}: give a finite number")
    assert bound in body["message"]  # the field's own rule, after what is wrong
    assert body["detail"] == [{"type": "finite_number", "loc": ["body", "lr"], "msg": body["message"][9:]}]


def test_a_non_finite_latent_entry_is_named_too(client: TestClient) -> None:
    r = client.post("/generate", content='{"latent": [0.5, NaN]}', headers=JSON)
    assert r.status_code == 422
    assert r.json()["message"] == "body.latent.1: latent is NaN: give a finite number"


@pytest.mark.parametrize(
    ("body", "expected", "line", "column", "pos"),
    [
        ('{"model_name": "m",', "expecting property name enclosed in double quotes", 1, 20, 19),
        ('{\n  "model_name": "m"\n  "epochs": 1\n}', "expecting ',' delimiter", 3, 3, 24),
        ('{"model_name": "m", "epochs": 1,}', "expecting property name enclosed in double quotes", 1, 33, 32),
        ("not json", "expecting value", 1, 1, 0),
    ],
)
def test_a_body_that_is_not_json_says_where_and_what_was_expected(
    client: TestClient, body: str, expected: str, line: int, column: int, pos: int
) -> None:
    r = client.post("/train", content=body, headers=JSON)
    assert r.status_code == 422
    answer = r.json()
    assert answer["error"] == "validation_error"
    assert f"not valid JSON: {expected} at line {line}, column {column} (character {pos})" in answer["message"]
    assert answer["detail"][0] | {"msg": ""} == {
        "type": "json_invalid",
        "loc": ["body", pos],
        "msg": "",
        "line": line,
        "column": column,
        "pos": pos,
    }


def test_a_body_that_is_not_utf8_says_which_byte_and_where(client: TestClient) -> None:
    r = client.post("/train", content=b'{\n"model_name": "caf\xe9"}', headers=JSON)  # Latin-1, not UTF-8
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "body_not_utf8"
    assert "byte 0xe9 at line 2, byte 19 (byte offset 20)" in body["message"]
    assert "Send JSON encoded as UTF-8" in body["message"]
    assert body["detail"] == {
        "encoding": "utf-8",
        "reason": "invalid continuation byte",
        "line": 2,
        "column": 19,
        "pos": 20,
    }


def test_a_scope_error_names_the_scope_that_would_do_once(anon: TestClient) -> None:
    r = anon.get("/workers", headers=bearer(TRAIN_KEY))  # an admin route
    assert r.status_code == 403
    message = r.json()["message"]
    assert "GET /workers needs a key with scope `admin`." in message
    assert message.count("`admin`") == 1 and "--scopes admin" in message
    r = anon.post("/train", json={"model_name": "m"}, headers=bearer(GENERATE_KEY))
    assert "needs a key with scope `train` (or `admin`, which implies every scope)" in r.json()["message"]


def test_an_invalid_key_on_a_public_route_says_it_needs_no_key(anon: TestClient) -> None:
    for method, path in [("GET", "/generate?seed=1"), ("POST", "/generate"), ("GET", "/models")]:
        r = anon.request(method, path, json={"seed": 1} if method == "POST" else None, headers=bearer("gsk_wrong"))
        assert r.status_code == 401 and r.json()["error"] == "invalid_api_key", path
        message = r.json()["message"]
        assert "not valid on this server" in message and "needs no key here: send it without one" in message
    assert anon.get("/generate?seed=1").status_code == 200  # as it says


def test_an_invalid_key_on_a_private_route_says_which_scope(make_app, publish_model) -> None:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(public_generate=False)) as c:
        r = c.get("/generate?seed=1", headers=bearer("gsk_wrong"))
        assert r.status_code == 401
        message = r.json()["message"]
        assert "needs no key" not in message and "needs a key with scope `generate`" in message
