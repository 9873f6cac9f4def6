"""The API keys the server accepts: `GANSERVE_API_KEYS` merged with the keys in the database (core/keys.py), the
database read again at most once a second, in a thread of its own, and a presented key found by its hash in
constant time.

The read is off the event loop because the database may be slow or gone: /generate goes through the key check,
and must keep serving while the database does not answer. Until a read succeeds again the keys last read stay,
and the outage is logged once.
"""

import hmac
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from core.db import Database, DatabaseUnavailable, describe
from core.keys import CREATE_COMMAND, ApiKeyEntry, KeyFileError, hash_key, import_key_file, stored_keys

log = logging.getLogger(__name__)

REFRESH_S = 1.0  # `ganserve keys create` and `… revoke` apply within this long on every API process


class KeyRing:
    """The configured keys: `GANSERVE_API_KEYS` merged with the database's (the database wins on a name).

    `old_key_file`: an older version's keys file, imported into the database by the first read that finds no
    key there (core/keys.py `import_key_file`). `clock`: seconds, for the refresh interval."""

    def __init__(
        self,
        from_settings: list[ApiKeyEntry],
        db: Database,
        *,
        old_key_file: Path | None = None,
        interval_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.from_settings = list(from_settings)
        self.db = db
        self.old_key_file = old_key_file
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._stored: list[ApiKeyEntry] = []
        self._merged = self._merge()
        self._due = -math.inf  # the first refresh reads
        self._reader: threading.Thread | None = None
        self._failing = False  # the last read failed (and that was logged)

    def _merge(self) -> list[ApiKeyEntry]:
        stored_names = {e.name for e in self._stored}
        return [*self._stored, *(e for e in self.from_settings if e.name not in stored_names)]

    def refresh(self) -> threading.Thread | None:
        """Called on every request: when the last read is `interval_s` old and none is under way, start one in a
        thread (returned; None when none was started). The request itself goes on with the keys it has."""
        now = self._clock()
        if now < self._due:
            return None
        with self._lock:
            if now < self._due or (self._reader is not None and self._reader.is_alive()):
                return None
            self._due = now + self.interval_s
            self._reader = threading.Thread(target=self.load, name="keyring-refresh", daemon=True)
            self._reader.start()
            return self._reader

    def load(self) -> bool:
        """Read the database's keys now, in this thread; False when it did not answer (the keys last read stay)."""
        try:
            if self.old_key_file is not None:
                self._import_old_key_file(self.old_key_file)
            stored = stored_keys(self.db)
        except (SQLAlchemyError, DatabaseUnavailable, OSError, ValueError) as e:
            if not self._failing:
                self._failing = True
                log.warning(
                    "API keys: %s did not answer (%s); the %d key(s) last read stay until it does (tried again "
                    "every %g s)",
                    describe(self.db.url),
                    _reason(e),
                    len(self._merged),
                    self.interval_s,
                )
            return False
        finally:
            self._due = self._clock() + self.interval_s
        if self._failing:
            self._failing = False
            log.info("API keys: %s answers again: %d key(s) stored", describe(self.db.url), len(stored))
        self._stored = stored
        self._merged = self._merge()  # one assignment: a lookup sees the old list or the new one, never half
        return True

    def _import_old_key_file(self, path: Path) -> None:
        try:
            imported = import_key_file(self.db, path)
        except KeyFileError as e:
            log.error("%s; none of its keys is imported until it is fixed", e)
        else:
            if imported is not None:
                log.warning("%s", imported.message)
        self.old_key_file = None  # looked at: once per process is enough (an import happens once at all)

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
        """At start-up: read the database's keys (so the first request has them), and log one line: which keys
        (names and scopes only), or how to make the first."""
        self.load()
        if not self._merged:
            log.warning(
                "no API keys configured (GANSERVE_API_KEYS, the database): /train and model administration answer "
                "401 until one exists; make one with `%s`",
                CREATE_COMMAND,
            )
            return
        names = ", ".join(f"{e.name} ({','.join(e.scopes)})" for e in self._merged)
        log.info("API keys: %s", names)


def _reason(e: BaseException) -> str:
    original = getattr(e, "orig", None)
    lines = str(original if original is not None else e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
