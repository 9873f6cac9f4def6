"""The API keys the server accepts: `GANSERVE_API_KEYS` merged with the keys file (core/keys.py), the file
read again whenever it changes (one stat per request), and a presented key found by its hash in constant time."""

import hmac
import logging
import os
import threading
from pathlib import Path

from core.keys import CREATE_COMMAND, ApiKeyEntry, KeyFileError, hash_key, read_key_file

log = logging.getLogger(__name__)


class KeyRing:
    """The configured keys: `GANSERVE_API_KEYS` merged with the keys file (the file wins on a name)."""

    def __init__(self, from_settings: list[ApiKeyEntry], file: Path):
        self.from_settings = list(from_settings)
        self.file = file
        self._lock = threading.Lock()
        self._file_signature: tuple[int, int, int] | None = None
        self._file_entries: list[ApiKeyEntry] = []
        self._file_error: str | None = None
        self._merged = self._merge()
        self.refresh()

    def _merge(self) -> list[ApiKeyEntry]:
        file_names = {e.name for e in self._file_entries}
        return [*self._file_entries, *(e for e in self.from_settings if e.name not in file_names)]

    def refresh(self) -> None:
        """Re-read the keys file if it changed (one stat per request). A malformed file is logged and its
        keys are dropped until it is fixed: fail closed, never keep a key someone meant to revoke."""
        try:
            st = os.stat(self.file)
            signature: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            signature = None
        if signature == self._file_signature:
            return
        with self._lock:
            if signature == self._file_signature:
                return
            try:
                entries, error = read_key_file(self.file), None
            except KeyFileError as e:
                entries, error = [], str(e)
                log.error("%s; its keys are refused until it is fixed", error)
            self._file_entries, self._file_error, self._file_signature = entries, error, signature
            self._merged = self._merge()
            if signature is not None and error is None:
                log.info("API keys file %s: %d key(s)", self.file, len(entries))

    @property
    def entries(self) -> list[ApiKeyEntry]:
        return self._merged

    def lookup(self, key: str) -> ApiKeyEntry | None:
        digest = hash_key(key)
        found = None
        for entry in self._merged:  # every entry, always: the time taken says nothing about which matched
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        return found

    def log_status(self) -> None:
        """One line at startup: which keys (names and scopes only), or how to make the first."""
        if not self._merged:
            log.warning(
                "no API keys configured (GANSERVE_API_KEYS, %s): /train and model administration answer 401 "
                "until one exists; make one with `%s`",
                self.file,
                CREATE_COMMAND,
            )
            return
        names = ", ".join(f"{e.name} ({','.join(e.scopes)})" for e in self._merged)
        log.info("API keys: %s", names)
