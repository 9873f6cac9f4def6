"""Property tests (hypothesis) of /generate's request model: any JSON object validates into a request that
can be served, or is refused with a ValidationError (a 422), never another exception (a 500)."""

import math

import pydantic
from hypothesis import given, settings
from hypothesis import strategies as st

from service.api.schemas import MAX_LATENT_DIM, GenerateRequest
from training.latents import MAX_SEED

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
)
values = st.one_of(
    scalars, st.lists(st.one_of(st.floats(allow_nan=True), st.integers(), st.text(max_size=3)), max_size=20)
)
keys = st.sampled_from(["seed", "latent", "model", "version", "count", "label", "extra", "Seed"])


@settings(max_examples=400)
@given(body=st.dictionaries(keys, values, max_size=6))
def test_any_body_validates_or_is_a_validation_error(body: dict) -> None:
    try:
        req = GenerateRequest.model_validate(body)
    except pydantic.ValidationError:
        return
    assert req.seed is None or 0 <= req.seed <= MAX_SEED
    assert req.count >= 1 and (req.version is None or req.version >= 1) and (req.label is None or req.label >= 0)
    if req.latent is not None:
        assert req.seed is None and req.count == 1 and 1 <= len(req.latent) <= MAX_LATENT_DIM
        assert all(math.isfinite(v) for v in req.latent)


@given(seed=st.integers(min_value=0, max_value=MAX_SEED), count=st.integers(min_value=1, max_value=64))
def test_every_seed_and_count_in_range_is_accepted(seed: int, count: int) -> None:
    assert GenerateRequest.model_validate({"seed": seed, "count": count}).seed == seed
