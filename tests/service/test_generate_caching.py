"""HTTP caching of /generate (service/api/caching.py): strong ETags, Cache-Control by whether the version is
pinned, 304 on `If-None-Match`, and the in-process cache of encoded answers."""

import pytest
from fastapi.testclient import TestClient
from svc_support import AUTH

from service.api.caching import Answer, AnswerCache, etag_matches

IMMUTABLE = "public, max-age=31536000, immutable"


def forwards(client: TestClient) -> int:
    """Forwards the app's render process has run (it reports each before the answers it made)."""
    return client.app.state.ganserve.metrics.batch_summary()[0]  # type: ignore[attr-defined]


def test_a_pinned_seed_is_immutable_and_revalidates_to_304(served: TestClient) -> None:
    client = served
    params = {"seed": 5, "version": 1}
    r = client.get("/generate", params=params)
    assert r.status_code == 200
    tag = r.headers["etag"]
    assert tag.startswith('"') and tag.endswith('"') and len(tag) > 16  # strong: no W/
    assert r.headers["cache-control"] == IMMUTABLE and r.headers["vary"] == "Accept"
    for header in (tag, f"W/{tag}", f'"other", {tag}', "*"):
        again = client.get("/generate", params=params, headers={"if-none-match": header})
        assert again.status_code == 304, header
        assert again.content == b"" and again.headers["etag"] == tag
        assert again.headers["cache-control"] == IMMUTABLE and again.headers["x-model-version"] == "1"
    other = client.get("/generate", params=params, headers={"if-none-match": '"not-it"'})
    assert other.status_code == 200 and other.content == r.content and other.headers["etag"] == tag


def test_the_latest_version_is_no_cache_and_its_etag_follows_new_versions(
    served: TestClient, publish_served, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, params = served, {"model": "follow", "seed": 5}
    publish_served("follow")
    r = client.get("/generate", params=params)
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["etag"] == client.get("/generate", params={**params, "version": 1}).headers["etag"]
    assert client.get("/generate", params=params, headers={"if-none-match": r.headers["etag"]}).status_code == 304
    monkeypatch.setattr(client.app.state.ganserve.registry, "rescan_interval_s", 0.0)  # type: ignore[attr-defined]
    publish_served("follow", weights_seed=1)  # version 2 becomes the latest
    newer = client.get("/generate", params=params, headers={"if-none-match": r.headers["etag"]})
    assert newer.status_code == 200 and newer.headers["x-model-version"] == "2"
    assert newer.headers["etag"] != r.headers["etag"] and newer.content != r.content


def test_the_etag_names_everything_the_answer_depends_on(make_app, publish_model) -> None:
    def tag(c: TestClient, headers: dict | None = None, **params: int) -> str:
        # `*` matches any ETag: the answer is a 304 that names it, and nothing is rendered.
        r = c.get(
            "/generate", params={"seed": 5, "version": 1, **params}, headers={"if-none-match": "*", **(headers or {})}
        )
        assert r.status_code == 304, r.text
        return r.headers["etag"]

    publish_model()
    publish_model(weights_seed=1)
    with TestClient(make_app(), headers=AUTH) as client:
        base = tag(client)
        variants = [
            tag(client, seed=6),
            tag(client, count=2),
            tag(client, version=2),
            tag(client, headers={"accept": "application/json"}),
        ]
    with TestClient(make_app(batch_max=8), headers=AUTH) as other_batches:
        variants.append(tag(other_batches))
    assert len({base, *variants}) == 1 + len(variants)
    with TestClient(make_app(), headers=AUTH) as restarted:  # the same deployment again: the same tag
        assert tag(restarted) == base


def test_random_seeds_and_posts_carry_no_validator(served: TestClient) -> None:
    client = served
    kept = len(client.app.state.ganserve.answers)  # type: ignore[attr-defined]
    r = client.get("/generate")
    assert r.headers["cache-control"] == "no-store" and "etag" not in r.headers
    assert len(client.app.state.ganserve.answers) == kept  # type: ignore[attr-defined]  # nor are they kept
    r = client.post("/generate", json={"seed": 5, "version": 1})
    assert r.status_code == 200 and "etag" not in r.headers and "cache-control" not in r.headers


def test_validation_comes_before_a_304(served: TestClient) -> None:
    r = served.get("/generate", params={"seed": 5, "count": 65}, headers={"if-none-match": "*"})
    assert r.status_code == 422


def test_without_public_generate_answers_are_private(make_app, publish_model) -> None:
    publish_model()
    with TestClient(make_app(public_generate=False), headers=AUTH) as c:
        r = c.get("/generate", params={"seed": 5, "version": 1}, headers={"if-none-match": "*"})  # no render
        assert r.status_code == 304 and r.headers["cache-control"] == "private, max-age=31536000, immutable"


def test_hot_seeds_skip_the_forward_and_give_the_same_bytes(served: TestClient) -> None:
    client = served
    asks = [
        ("get", {"seed": 4242}, {}),
        ("get", {"seed": 4242, "count": 4}, {}),
        ("get", {"seed": 4242}, {"accept": "application/json"}),
    ]
    done = forwards(client)
    first = [_ask(client, *a) for a in asks]
    assert forwards(client) == done + 3
    assert [_ask(client, *a) for a in asks] == first
    assert _ask(client, "post", {"seed": 4242}, {}) == first[0]  # a POST of the same seed: the GET's entry
    assert forwards(client) == done + 3  # every answer came from the cache


def _ask(client: TestClient, method: str, params: dict, headers: dict) -> tuple[bytes, str]:
    r = (
        client.get("/generate", params=params, headers=headers)
        if method == "get"
        else client.post("/generate", json=params, headers=headers)
    )
    assert r.status_code == 200, r.text
    return r.content, r.headers["content-type"]


def test_a_small_cache_renders_again(make_app, publish_model) -> None:
    publish_model()
    with TestClient(make_app(png_cache_size=1), headers=AUTH) as c:
        a = c.get("/generate", params={"seed": 1}).content
        b = c.get("/generate", params={"seed": 2}).content
        assert c.get("/generate", params={"seed": 1}).content == a != b
        assert forwards(c) == 3  # seed 2 evicted seed 1
        assert len(c.app.state.ganserve.answers) == 1  # type: ignore[attr-defined]


def test_a_cache_of_size_zero_keeps_nothing() -> None:
    cache = AnswerCache(0)
    cache.put("a", Answer(b"a", "image/png"))
    assert cache.get("a") is None and len(cache) == 0


def test_answer_cache_drops_the_least_recently_used() -> None:
    cache = AnswerCache(2)
    for key in "abc":
        cache.put(key, Answer(key.encode(), "image/png"))
        if key == "b":
            assert cache.get("a") is not None  # a is now more recent than b
    assert cache.get("b") is None and cache.get("a") == Answer(b"a", "image/png") and len(cache) == 2


@pytest.mark.parametrize(
    ("header", "matches"),
    [(None, False), ("", False), ('"x"', False), ('"t"', True), ('W/"t"', True), ('"x" , "t"', True), (" * ", True)],
)
def test_if_none_match(header: str | None, matches: bool) -> None:
    assert etag_matches(header, '"t"') is matches


def test_one_etag_never_carries_two_bodies(
    client: TestClient, settings, publish_model, make_app, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What (name, version) resolves to changes under the service (the version's record replaced by one naming
    other weights, as a database restored or a bundled name shadowed before did): the ETag changes with the
    weights, and each ETag keeps its one body, in the API, in its render process and after a restart."""
    import dataclasses

    from sqlalchemy import delete

    from core import db as tables
    from core.db import connect
    from service.serving.batching import Seeds
    from service.serving.render_process import ModelGone

    state = client.app.state.ganserve  # type: ignore[attr-defined]
    monkeypatch.setattr(state.registry, "rescan_interval_s", 0.0)
    params = {"model": "swap", "version": 1, "seed": 4}
    publish_model("swap")
    first = client.get("/generate", params=params)
    assert first.status_code == 200 and first.headers["cache-control"] == IMMUTABLE
    old = state.registry.get("swap", 1)
    with connect(settings.effective_database_url).begin() as conn:
        conn.execute(delete(tables.model_versions).where(tables.model_versions.c.name == "swap"))
    assert publish_model("swap", weights_seed=7) == 1  # version 1 again, other weights
    second = client.get("/generate", params=params, headers={"if-none-match": first.headers["etag"]})
    assert second.status_code == 200  # not a 304: the old tag does not name these weights
    assert second.headers["etag"] != first.headers["etag"] and second.content != first.content
    # Each tag answers with its own body: the cached answer, and the render process asked for either weights.
    again = client.get("/generate", params=params)
    assert (again.headers["etag"], again.content) == (second.headers["etag"], second.content)
    render = state.renderer.render
    assert client.portal.call(render, old, Seeds([4]), None, None, "grid") == first.content  # type: ignore[union-attr]
    new = state.registry.get("swap", 1)
    assert client.portal.call(render, new, Seeds([4]), None, None, "grid") == second.content  # type: ignore[union-attr]
    # Weights nobody has: refused (a 503 to retry), never rendered with whatever (swap, 1) holds.
    unknown = dataclasses.replace(new, meta={**new.meta, "sha256": "0" * 64})
    with pytest.raises(ModelGone, match="not the ones"):
        client.portal.call(render, unknown, Seeds([4]), None, None, "grid")  # type: ignore[union-attr]
    with TestClient(make_app(), headers=AUTH) as restarted:  # another process: the same pair
        after = restarted.get("/generate", params=params)
        assert (after.headers["etag"], after.content) == (second.headers["etag"], second.content)
