"""Evaluation jobs (POST /models/{name}/evaluate) and the results they leave for GET /models/{name}.

An evaluation's record (core/records.py) is `<checkpoint_dir>/evaluations/jobs/<id>.json`. Its result is also
filed under the model version it measured, `<checkpoint_dir>/evaluations/models/<name>/<version>.json` (a list,
newest last), with the SHA-256 of the weights it measured: a result is shown only while the version's weights
are still those, so a model re-published under a name and version once used never inherits another's figures.
One place for every model, bundled ones included, since the bundled folder is read-only.
"""

import json
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from core.files import atomic_write_json
from core.records import Record, RecordStore, finite_json

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


class EvaluationRecord(Record):
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


class EvaluationStore(RecordStore[EvaluationRecord]):
    def __init__(self, root: Path):
        super().__init__(root, EvaluationRecord, "jobs/{id}.json")

    def nn_png(self, eval_id: str) -> Path:
        return self.path(eval_id).with_name(f"{eval_id}-nearest.png")

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
