"""Evaluation jobs (POST /models/{name}/evaluate) and the results they leave for GET /models/{name}.

An evaluation job's record is `<checkpoint_dir>/evaluations/jobs/<id>.json`, replaced atomically like a
training job's. Its result is also filed under the model version it measured,
`<checkpoint_dir>/evaluations/models/<name>/<version>.json` (a list, newest last), together with the
SHA-256 of the weights it measured: the registry shows a result only while the version's weights are
still those, so a model re-published under a name and version once used never inherits another's
figures. One place for every model, bundled ones included, since the bundled folder is read-only.
Imported by the worker: keep it free of FastAPI.
"""

import json
import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, ValidationError

from core.files import atomic_write_json
from core.jobs import JobStatus, finite_json, new_job_id, now
from core.train_config import NAME_PATTERN

log = logging.getLogger(__name__)

MAX_RESULTS_PER_VERSION = 20  # a version's file keeps its newest results; older ones only in their job record


class EvaluateRequest(BaseModel):
    model_config = {
        "extra": "forbid",
        "strict": True,
        "json_schema_extra": {"examples": [{"n": 10000}, {"version": 1, "n": 2000, "extractor": "mnist-cnn"}]},
    }

    version: int | None = Field(None, ge=1, description="The version to measure; default the newest.")
    n: int = Field(
        10_000,
        ge=100,
        le=50_000,
        description="Generated images (seeds 0..n-1) and as many training images; FID is biased upwards "
        "for small n, so compare figures measured with the same n.",
    )
    extractor: Literal["auto", "mnist-cnn", "inception"] = Field(
        "auto", description="Feature space: `auto` is `mnist-cnn` for MNIST models, `inception` otherwise."
    )


class EvaluationRecord(BaseModel):
    id: str
    status: JobStatus
    model: str
    version: int
    source: Literal["volume", "bundled"]
    stem: str = Field(description="The weights measured, as a path on the shared volume or in the image.")
    weights_sha256: str | None = None
    request: EvaluateRequest
    stage: str | None = Field(
        None, description="What a running evaluation is doing now, e.g. `generating 10000 images`."
    )
    result: Annotated[dict[str, Any] | None, AfterValidator(finite_json)] = Field(
        None, description="FID, KID, IS, precision/recall, coverage and nearest-neighbour distances."
    )
    nearest_neighbours_png: str | None = Field(None, description="Path of the side-by-side PNG on the volume.")
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class EvaluationStore:
    def __init__(self, root: Path):
        self.root = root

    def _path(self, eval_id: str) -> Path:
        if not re.fullmatch(NAME_PATTERN, eval_id):
            raise KeyError(eval_id)
        return self.root / "jobs" / f"{eval_id}.json"

    def nn_png(self, eval_id: str) -> Path:
        return self.root / "jobs" / f"{eval_id}-nearest.png"

    def create(self, **fields: Any) -> EvaluationRecord:
        record = EvaluationRecord(id=new_job_id(), status=JobStatus.queued, created_at=now(), **fields)
        self.save(record)
        return record

    def save(self, record: EvaluationRecord) -> None:
        atomic_write_json(self._path(record.id), record.model_dump(mode="json"))

    def get(self, eval_id: str) -> EvaluationRecord:
        """Raises KeyError for an unknown (or unreadable) id."""
        path = self._path(eval_id)
        try:
            return EvaluationRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise KeyError(eval_id) from None
        except ValidationError as e:
            log.warning("evaluation %s: unreadable record %s: %s", eval_id, path, e)
            raise KeyError(eval_id) from None

    def update(self, eval_id: str, **changes: Any) -> EvaluationRecord:
        record = EvaluationRecord.model_validate({**dict(self.get(eval_id)), **changes})
        self.save(record)
        return record

    # --- results filed under the model version ---------------------------------------------------------

    def _results_path(self, name: str, version: int) -> Path:
        return self.root / "models" / name / f"{version}.json"

    def file_result(self, record: EvaluationRecord) -> None:
        """Append a finished evaluation to its model version's list (newest last, bounded)."""
        path = self._results_path(record.model, record.version)
        results = self._read_results(path)
        entry = {
            "evaluation_id": record.id,
            "finished_at": record.finished_at.isoformat() if record.finished_at else None,
            "weights_sha256": record.weights_sha256,
            "n": record.request.n,
            **(record.result or {}),
        }
        atomic_write_json(path, [*results, entry][-MAX_RESULTS_PER_VERSION:])

    def results(self, name: str, version: int, weights_sha256: str | None) -> list[dict[str, Any]]:
        """The results filed for this version whose weights are the ones there now, newest first."""
        found = self._read_results(self._results_path(name, version))
        return [r for r in reversed(found) if r.get("weights_sha256") == weights_sha256]

    @staticmethod
    def _read_results(path: Path) -> list[dict[str, Any]]:
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            log.warning("unreadable evaluation results %s: %s", path, e)
            return []
        return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []

    # Last in the class: a method named `list` shadows the builtin in the annotations of those below it.
    def list(self) -> list[EvaluationRecord]:
        """Every readable record, in no particular order (the metrics count them by status)."""
        records = []
        for path in (self.root / "jobs").glob("*.json"):
            try:
                records.append(EvaluationRecord.model_validate_json(path.read_bytes()))
            except (OSError, ValidationError):
                continue  # a record from an incompatible version, or being replaced right now
        return records
