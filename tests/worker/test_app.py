"""The Celery app speaks JSON only: a pickled message is refused by kombu before anything is deserialised."""

import pickle
from pathlib import Path

import pytest
from kombu.exceptions import ContentDisallowed
from kombu.serialization import dumps, loads, prepare_accept_content

from worker.app import celery_app


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_json_is_the_only_content_accepted() -> None:
    conf = celery_app.conf
    assert conf.task_serializer == "json" and conf.result_serializer == "json"
    assert list(conf.accept_content) == ["json"]


def test_a_pickled_message_is_refused_unread(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    accept = prepare_accept_content(celery_app.conf.accept_content)  # as the worker's consumer does
    with pytest.raises(ContentDisallowed):
        loads(pickle.dumps(_Payload(marker)), "application/x-python-serialize", "binary", accept=accept)
    assert not marker.exists()
    content_type, encoding, data = dumps(["job-id"], serializer="json")
    assert loads(data, content_type, encoding, accept=accept) == ["job-id"]
