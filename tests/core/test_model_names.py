"""Model-name claims (core/model_names.py) on SQLite and PostgreSQL: the first claim wins, the owner (or an admin)
holds it, bundled names are reserved, visibility and grants decide who reads, and a migration-era name reads
back."""

import threading

import pytest

from core.db import Database
from core.model_names import ModelNames, NameOwned, NameReserved


@pytest.fixture
def names(any_db: Database) -> ModelNames:
    return ModelNames(any_db, reserved=["mnist-mlp"])


def test_the_first_claim_wins_and_the_owner_keeps_it(names: ModelNames) -> None:
    first = names.claim("faces", "alice", visibility="private")
    assert (first.owner, first.visibility) == ("alice", "private")
    assert names.claim("faces", "alice").visibility == "private"  # the owner again: the same claim, unchanged
    with pytest.raises(NameOwned) as e:
        names.claim("faces", "bob")
    assert e.value.owner == "alice" and "belongs to key 'alice'" in str(e.value)
    assert names.claim("faces", "root", admin=True).owner == "alice"  # an admin publishes; the name stays alice's


def test_bundled_names_are_reserved_even_for_an_admin(names: ModelNames) -> None:
    with pytest.raises(NameReserved):
        names.claim("mnist-mlp", "root", admin=True)
    assert names.get("mnist-mlp") is None


def test_visibility_and_grants_decide_who_reads(names: ModelNames) -> None:
    names.claim("faces", "alice", visibility="private")
    faces = names.get("faces")
    assert faces is not None
    assert faces.readable_by("alice") and faces.readable_by("root", admin=True)
    assert not faces.readable_by("bob") and not faces.readable_by(None)
    assert names.grant("faces", "bob") is True and names.grant("faces", "bob") is False
    faces = names.get("faces")
    assert faces is not None and faces.grantees == ("bob",)
    assert faces.readable_by("bob") and not faces.owned_by("bob")
    assert names.revoke("faces", "bob") and not names.get("faces").readable_by("bob")  # type: ignore[union-attr]
    assert names.set_visibility("faces", "public") and names.get("faces").readable_by(None)  # type: ignore[union-attr]
    assert set(names.all()) == {"faces"}


def test_two_first_claims_at_once_make_one_owner(names: ModelNames) -> None:
    results: list[str] = []

    def claim(owner: str) -> None:
        try:
            results.append(names.claim("race", owner).owner or "")
        except NameOwned:
            results.append("refused")

    threads = [threading.Thread(target=claim, args=(o,)) for o in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    owner = names.get("race").owner  # type: ignore[union-attr]
    assert sorted(results) == sorted([owner, "refused"])
