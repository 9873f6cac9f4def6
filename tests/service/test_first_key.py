"""The first `make run` makes one admin key when there is none (core/keys.py, service/__main__.py)."""

from pathlib import Path

from core.keys import FIRST_KEY_NAME, ApiKeyEntry, Scope, ensure_first_key, hash_key, read_key_file
from core.settings import Settings
from service.__main__ import announce_first_key


def test_first_key_is_made_once_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "api-keys.json"
    key = ensure_first_key([], path)
    assert key is not None and key.startswith("gsk_")
    assert read_key_file(path) == [ApiKeyEntry(name=FIRST_KEY_NAME, sha256=hash_key(key), scopes=[Scope.admin])]
    assert key not in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600
    assert ensure_first_key([], path) is None  # a key exists now: nothing more is made
    assert len(read_key_file(path)) == 1


def test_no_first_key_when_keys_are_configured_or_the_file_is_broken(tmp_path: Path) -> None:
    configured = [ApiKeyEntry(name="ops", sha256=hash_key("k"), scopes=[Scope.train])]
    assert ensure_first_key(configured, tmp_path / "a.json") is None
    assert not (tmp_path / "a.json").exists()
    broken = tmp_path / "b.json"
    broken.write_text("{not json")
    assert ensure_first_key([], broken) is None
    assert broken.read_text() == "{not json"  # never overwritten: the operator fixes it


def test_the_launcher_prints_the_key_once_and_can_be_told_not_to(tmp_path: Path, capsys) -> None:
    settings = Settings(checkpoint_dir=tmp_path / "var", api_keys=[])
    key = announce_first_key(settings)
    assert key is not None and f"    {key}\n" in capsys.readouterr().err
    assert announce_first_key(settings) is None and capsys.readouterr().err == ""
    off = Settings(checkpoint_dir=tmp_path / "other", api_keys=[], first_key=False)
    assert announce_first_key(off) is None
    assert not off.effective_api_keys_file.exists()
