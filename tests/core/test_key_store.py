"""API keys in the database (core/keys.py), on SQLite and PostgreSQL: only hashes are stored, a name is taken
once, the first key is made once however many first starts race, and an older version's keys file is imported
once."""

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import select

from core.db import Database, api_keys
from core.keys import (
    FIRST_KEY_NAME,
    ApiKeyEntry,
    KeyExists,
    KeyFileError,
    Scope,
    create_key,
    ensure_first_key,
    hash_key,
    import_key_file,
    revoke_key,
    stored_keys,
)

T = TypeVar("T")


def rows(db: Database) -> list[dict]:
    with db.begin() as conn:
        return [dict(r._mapping) for r in conn.execute(select(api_keys))]


def at_once(n: int, call: Callable[[], T]) -> list[T]:
    """`call` in `n` threads released together: what each returned."""
    barrier = threading.Barrier(n)
    results: list[T] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait()
        result = call()
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == n  # none of them raised
    return results


def write_old_file(path: Path, *entries: tuple[str, str, list[str]]) -> None:
    path.write_text(json.dumps([{"name": n, "sha256": hash_key(k), "scopes": s} for n, k, s in entries]))


def test_create_list_and_revoke_store_only_hashes(any_db: Database) -> None:
    ci = create_key(any_db, "ci", [Scope.train, Scope.generate])
    ops = create_key(any_db, "ops", [Scope.admin])
    assert ci.startswith("gsk_") and ci != ops
    assert stored_keys(any_db) == [
        ApiKeyEntry(name="ci", sha256=hash_key(ci), scopes=[Scope.train, Scope.generate]),
        ApiKeyEntry(name="ops", sha256=hash_key(ops), scopes=[Scope.admin]),
    ]
    stored = json.dumps(rows(any_db), default=str)
    assert ci not in stored and ops not in stored  # the hash, never the key
    assert revoke_key(any_db, "ci") is True
    assert [e.name for e in stored_keys(any_db)] == ["ops"]
    assert revoke_key(any_db, "ci") is False


def test_a_name_is_taken_once(any_db: Database) -> None:
    create_key(any_db, "ci", [Scope.train])
    before = rows(any_db)
    with pytest.raises(KeyExists, match=r"already has a key named 'ci'.*ganserve keys revoke --name ci"):
        create_key(any_db, "ci", [Scope.admin])
    assert rows(any_db) == before


def test_concurrent_creates_of_one_name_store_one_key(any_db: Database) -> None:
    def create() -> str | None:
        try:
            return create_key(any_db, "ci", [Scope.train])
        except KeyExists:
            return None

    made = [k for k in at_once(6, create) if k is not None]
    assert len(made) == 1
    assert stored_keys(any_db) == [ApiKeyEntry(name="ci", sha256=hash_key(made[0]), scopes=[Scope.train])]


def test_the_first_key_is_made_once(any_db: Database) -> None:
    keys = [k for k in at_once(6, lambda: ensure_first_key([], any_db)) if k is not None]
    assert len(keys) == 1  # six first starts at once: one key
    assert stored_keys(any_db) == [ApiKeyEntry(name=FIRST_KEY_NAME, sha256=hash_key(keys[0]), scopes=[Scope.admin])]
    assert ensure_first_key([], any_db) is None


def test_no_first_key_when_a_key_is_configured_or_stored(any_db: Database) -> None:
    configured = [ApiKeyEntry(name="ops", sha256=hash_key("k"), scopes=[Scope.train])]
    assert ensure_first_key(configured, any_db) is None
    assert rows(any_db) == []
    create_key(any_db, "ci", [Scope.train])
    assert ensure_first_key([], any_db) is None
    assert [e.name for e in stored_keys(any_db)] == ["ci"]


# --- the keys file of older versions ------------------------------------------------------------------------


def test_an_old_keys_file_is_imported_once(any_db: Database, tmp_path: Path) -> None:
    old = tmp_path / "api-keys.json"
    write_old_file(old, ("ci", "gsk_ci", ["train", "generate"]), ("ops", "gsk_ops", ["admin"]))
    imported = import_key_file(any_db, old)
    assert imported is not None
    assert [e.name for e in imported.entries] == ["ci", "ops"]
    assert imported.kept_as == tmp_path / "api-keys.json.imported"
    assert "imported 2 API key(s) [ci (train,generate), ops (admin)]" in imported.message
    assert stored_keys(any_db) == [
        ApiKeyEntry(name="ci", sha256=hash_key("gsk_ci"), scopes=[Scope.train, Scope.generate]),
        ApiKeyEntry(name="ops", sha256=hash_key("gsk_ops"), scopes=[Scope.admin]),
    ]
    assert not old.exists() and imported.kept_as.exists()
    # Every key revoked later: the file is not read again, so its keys stay revoked.
    revoke_key(any_db, "ci")
    revoke_key(any_db, "ops")
    assert import_key_file(any_db, old) is None and stored_keys(any_db) == []


def test_an_old_keys_file_is_not_imported_into_a_database_with_keys(any_db: Database, tmp_path: Path) -> None:
    create_key(any_db, "new", [Scope.train])
    old = tmp_path / "api-keys.json"
    write_old_file(old, ("ci", "gsk_ci", ["train"]))
    assert import_key_file(any_db, old) is None
    assert [e.name for e in stored_keys(any_db)] == ["new"] and old.exists()
    assert import_key_file(any_db, tmp_path / "none.json") is None


def test_concurrent_imports_store_the_file_once(any_db: Database, tmp_path: Path) -> None:
    old = tmp_path / "api-keys.json"
    write_old_file(old, ("ci", "gsk_ci", ["train"]), ("ops", "gsk_ops", ["admin"]))
    done = [r for r in at_once(4, lambda: import_key_file(any_db, old)) if r is not None]
    assert len(done) == 1 and [e.name for e in stored_keys(any_db)] == ["ci", "ops"]


@pytest.mark.parametrize(
    "content, complaint",
    [
        ("{not json", "is not a JSON list"),
        ('[{"name": "ci", "key": "gsk_plain", "scopes": ["train"]}]', "is not a JSON list"),
        (json.dumps([{"name": "ci", "sha256": "0" * 64, "scopes": ["train"]}] * 2), "names a key twice: ci"),
        (
            json.dumps([{"name": n, "sha256": "0" * 64, "scopes": ["train"]} for n in ("a", "b")]),
            "two entries with the same sha256",
        ),
    ],
)
def test_a_malformed_old_keys_file_imports_nothing(any_db: Database, tmp_path: Path, content: str, complaint: str):
    old = tmp_path / "api-keys.json"
    old.write_text(content)
    with pytest.raises(KeyFileError, match=complaint) as raised:
        import_key_file(any_db, old)
    assert str(old) in str(raised.value) and "gsk_plain" not in str(raised.value)
    assert rows(any_db) == [] and old.read_text() == content


def test_an_old_keys_file_that_cannot_be_renamed_is_imported_and_says_so(
    any_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "api-keys.json"
    write_old_file(old, ("ci", "gsk_ci", ["train"]))

    def read_only(src: object, dst: object) -> None:
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr("core.keys.os.replace", read_only)  # as on a volume mounted read-only
    imported = import_key_file(any_db, old)
    assert imported is not None and imported.kept_as is None
    assert "could not be renamed: delete it" in imported.message
    assert [e.name for e in stored_keys(any_db)] == ["ci"] and old.exists()
