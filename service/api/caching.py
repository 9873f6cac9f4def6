"""Caching /generate's answers for an explicit seed: its ETag, Cache-Control, `If-None-Match`, and a small
in-process LRU of encoded answers (so that a hot seed skips the forward and the encoding).

An answer is a pure function of what goes into its ETag (model, version, the weights' SHA-256, seed, count,
label, PNG or JSON, the forward's row count, the PNG level), so the ETag is strong and, for a pinned
version, the answer is immutable. The body always comes from the weights the ETag names: the render process is
sent their SHA-256 and renders with exactly those or fails the request (service/serving/render_process.py), and
this cache is keyed by the ETag itself.
"""

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass

ONE_YEAR_S = 31_536_000


@dataclass(frozen=True)
class Answer:
    body: bytes
    media_type: str


def etag(*parts: str | int | None) -> str:
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()
    return f'"{digest[:32]}"'


def etag_matches(if_none_match: str | None, tag: str) -> bool:
    """`If-None-Match` (a list of tags, or `*`) names `tag`; weak comparison, as RFC 9110 § 13.1.2 asks."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(t.strip().removeprefix("W/") == tag for t in if_none_match.split(","))


def cache_control(pinned: bool, public: bool) -> str:
    """A pinned version never changes; the latest one may, so a cache must ask again (and gets a 304)."""
    if not pinned:
        return "no-cache"
    # With GANSERVE_PUBLIC_GENERATE=false the answers need a key: no shared cache may hand them out.
    return f"{'public' if public else 'private'}, max-age={ONE_YEAR_S}, immutable"


class AnswerCache:
    """Least recently used answers, at most `size` (0: none kept)."""

    def __init__(self, size: int):
        self.size = size
        self._lock = threading.Lock()
        self._answers: OrderedDict[str, Answer] = OrderedDict()

    def get(self, key: str) -> Answer | None:
        with self._lock:
            answer = self._answers.get(key)
            if answer is not None:
                self._answers.move_to_end(key)
            return answer

    def put(self, key: str, answer: Answer) -> None:
        if self.size == 0:
            return
        with self._lock:
            self._answers[key] = answer
            self._answers.move_to_end(key)
            while len(self._answers) > self.size:
                self._answers.popitem(last=False)

    def __len__(self) -> int:
        return len(self._answers)
