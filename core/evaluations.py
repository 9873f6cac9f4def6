"""Evaluation jobs (POST /models/{name}/evaluate) and the results they leave for GET /models/{name}.

An evaluation's record (core/records.py) is a row of the `evaluations` table, owned by the key that started it
(`owner`: the API shows it to that key, the model's owner and `admin` keys); its nearest-neighbour PNG is a
file on the volume. A succeeded evaluation is also the result shown under the model version it measured, while
the version's weights are still the ones it measured (their SHA-256): a model re-published under a name and
version once used never inherits another's figures. Bundled models' results are kept the same way.
"""

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field
from sqlalchemy import select

from core import db as db_tables
from core.db import Database
from core.records import JobStatus, Record, RecordStore, finite_json

log = logging.getLogger(__name__)

MAX_RESULTS_PER_VERSION = 20  # shown under a version: its newest results


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
    stem: str = Field(
        description="Where the API that queued it found the weights (its blob cache for a published version, the "
        "image for a bundled one); the worker looks the version up by model and version."
    )
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
    def __init__(self, db: Database, evaluations_dir: Path):
        super().__init__(
            db, db_tables.evaluations, EvaluationRecord, lambda r: {"model": r.model, "version": r.version}
        )
        self.evaluations_dir = evaluations_dir  # the nearest-neighbour PNGs

    def owner(self, eval_id: str) -> str | None:
        """The API key's name that started the evaluation (None: not over HTTP, or no such evaluation)."""
        table = db_tables.evaluations
        with self.db.begin() as c:
            return c.execute(select(table.c.owner).where(table.c.id == eval_id)).scalar()

    def nn_png(self, eval_id: str) -> Path:
        return self.evaluations_dir / "jobs" / f"{eval_id}-nearest.png"

    def results(self, name: str, version: int, weights_sha256: str | None) -> list[dict[str, Any]]:
        """The succeeded evaluations of this version whose weights are the ones there now, newest first (the
        newest MAX_RESULTS_PER_VERSION)."""
        table = db_tables.evaluations
        query = (
            select(table.c.id, table.c.record)
            .where(table.c.model == name, table.c.version == version, table.c.status == JobStatus.succeeded.value)
            .order_by(table.c.created_at.desc())
        )
        with self.db.begin() as c:
            rows = c.execute(query).all()
        found = [r for record_id, data in rows if (r := self._parse(record_id, data)) is not None]
        return [_result(r) for r in found if r.weights_sha256 == weights_sha256][:MAX_RESULTS_PER_VERSION]


def _result(record: EvaluationRecord) -> dict[str, Any]:
    return {
        "evaluation_id": record.id,
        "finished_at": record.finished_at.isoformat() if record.finished_at else None,
        "weights_sha256": record.weights_sha256,
        "n": record.request.n,
        **(record.result or {}),
    }
