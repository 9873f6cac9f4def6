"""A model's card in brief (`card` of GET /models and GET /models/{name}): the recipe it was trained with and
its sample quality next to what real data scores at the same sample size (the FID floor, core/fid_floors.py).

Where the figures come from:
- a bundled model: `card.json` beside its README (`BundledCard`: the figures the model card states). A missing
  file means no figures; a bad one is logged (once per version of the file) and means no figures too, never a
  500. Without a card, a bundled model is treated as a published one;
- a published model: the newest evaluation (POST /models/{name}/evaluate) of the served version's weights; none:
  no figures, the recipe still.
The recipe is the served version's training config's; a bundled model whose config predates recipes gets its
card's.
"""

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError
from sqlalchemy.exc import OperationalError

from core.db import DatabaseUnavailable
from core.evaluations import EvaluationStore
from core.fid_floors import fid_floor
from core.recipes import RecipeName
from service.api.schemas import ModelCard

log = logging.getLogger(__name__)

CARD_FILE = "card.json"  # <bundled models dir>/<name>/card.json
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # a card's path is told relative to it (a repository path)


class BundledCard(BaseModel):
    """`card.json`: the figures a bundled model's README states, machine-readable. Unknown keys are refused, so
    that a misspelt key (`fid_flor`) shows as a logged error rather than as a figure silently missing."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    recipe: RecipeName | None = Field(None, description="The recipe it was trained with; null: none.")
    fid: FiniteFloat = Field(ge=0)
    n: int = Field(ge=2, description="Generated images measured, against as many real ones.")
    extractor: str = Field(min_length=1, examples=["mnist-cnn-v1"])
    precision: FiniteFloat = Field(ge=0, le=1)
    recall: FiniteFloat = Field(ge=0, le=1)
    fid_floor: FiniteFloat | None = Field(
        None, ge=0, description="Real vs real FID at the same n and extractor; null: the floors table's, if any."
    )
    train_seconds: FiniteFloat | None = Field(None, ge=0, description="Wall time of its training run.")
    card: str = Field("README.md", min_length=1, description="The model card, relative to the model's folder.")


_reported: set[tuple[str, int, int]] = set()  # bad card files already logged: (path, mtime_ns, size)


def read_bundled_card(model_dir: Path) -> BundledCard | None:
    """`model_dir`'s card.json; None when it has none, or a bad one (logged once per version of the file)."""
    path = model_dir / CARD_FILE
    try:
        return BundledCard.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValidationError as e:  # not JSON, or not a card: each field's problem
        _report(path, "; ".join(f"{'.'.join(map(str, err['loc'])) or 'file'}: {err['msg']}" for err in e.errors()))
    except OSError as e:
        _report(path, e.strerror or str(e))
    return None


def _report(path: Path, problem: str) -> None:
    try:
        st = path.stat()
        signature = (str(path), st.st_mtime_ns, st.st_size)
    except OSError:
        signature = (str(path), -1, -1)
    if signature not in _reported:  # GET /models reads it on every call: its log says it once
        _reported.add(signature)
        log.error("%s is not a valid model card, so its figures are not shown: %s", path, problem)


def _card_source(model_dir: Path, name: str, card: BundledCard) -> str | None:
    """The README's path, relative to the project (`service/bundled/<name>/README.md`) or else to the bundled
    models' folder; None (logged) when it is not a file inside the model's folder."""
    folder = model_dir.resolve()
    path = (model_dir / card.card).resolve()
    if not path.is_relative_to(folder) or not path.is_file():
        log.warning("%s names the model card %r, which is not a file in %s", model_dir / CARD_FILE, card.card, folder)
        return None
    if path.is_relative_to(PROJECT_ROOT):
        return path.relative_to(PROJECT_ROOT).as_posix()
    return f"{name}/{path.relative_to(folder).as_posix()}"


def _newest_evaluation(evaluations: EvaluationStore | None, summary: dict[str, Any]) -> dict[str, Any] | None:
    version, sha256 = summary.get("latest_version"), summary.get("weights_sha256")
    if evaluations is None or version is None:
        return None
    try:
        results = evaluations.results(summary["name"], version, sha256)
    except (DatabaseUnavailable, OperationalError) as e:
        log.warning("model %s: its evaluations cannot be read (%s); its card shows no figures", summary["name"], e)
        return None
    return results[0] if results else None


def model_card(summary: dict[str, Any], bundled_dir: Path, evaluations: EvaluationStore | None) -> ModelCard:
    """The card of one model, from its registry summary (service/serving/registry.py `_summary`)."""
    name = summary["name"]
    training = summary.get("training") or {}
    recipe, dataset = training.get("recipe"), training.get("dataset")
    bundled = read_bundled_card(bundled_dir / name) if summary.get("source") == "bundled" else None
    if bundled is not None:
        floor = bundled.fid_floor
        if floor is None:
            floor = fid_floor(dataset, bundled.extractor, bundled.n)
        return ModelCard(
            recipe=recipe or bundled.recipe,
            fid=bundled.fid,
            n=bundled.n,
            extractor=bundled.extractor,
            precision=bundled.precision,
            recall=bundled.recall,
            fid_floor=floor,
            source=_card_source(bundled_dir / name, name, bundled),
        )
    result = _newest_evaluation(evaluations, summary)
    if result is None:
        return ModelCard(recipe=recipe)
    # `n_fake`: the images measured (the request's `n` unless the data had fewer).
    n = result.get("n_fake", result.get("n"))
    n = n if isinstance(n, int) else None
    extractor = result.get("extractor")
    return ModelCard(
        recipe=recipe,
        fid=_number(result.get("fid")),
        n=n,
        extractor=extractor if isinstance(extractor, str) else None,
        precision=_number(result.get("precision")),
        recall=_number(result.get("recall")),
        fid_floor=fid_floor(dataset, extractor if isinstance(extractor, str) else None, n),
        source="evaluation",
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
