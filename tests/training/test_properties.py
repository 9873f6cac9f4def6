"""Property tests (hypothesis): the seed → latent mapping and the training config, over inputs nobody wrote."""

import math

import numpy as np
import pydantic
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.train_config import TrainConfig
from training.latents import MAX_SEED, latent_from_seed, latents_from_seeds, seed_generators, seed_labels

seeds = st.integers(min_value=0, max_value=MAX_SEED)
dims = st.integers(min_value=1, max_value=512)


@given(seed=seeds, dim=dims)
def test_a_seed_is_the_documented_numpy_draw(seed: int, dim: int) -> None:
    z = latent_from_seed(seed, dim)
    assert z.dtype == torch.float32 and z.shape == (dim,)
    expected = np.random.RandomState(seed).randn(dim).astype(np.float32)
    assert np.array_equal(z.numpy(), expected)  # bit for bit: the mapping is the documented one, on any machine
    assert torch.isfinite(z).all()


@given(seed=seeds, dim=dims, longer=st.integers(min_value=1, max_value=64))
def test_a_longer_latent_extends_a_shorter_one(seed: int, dim: int, longer: int) -> None:
    """z of a seed for latent_dim d is the first d entries of z for any larger latent_dim (one stream)."""
    assert torch.equal(latent_from_seed(seed, dim + longer)[:dim], latent_from_seed(seed, dim))


@given(batch=st.lists(seeds, min_size=1, max_size=8), dim=st.integers(min_value=1, max_value=64))
def test_a_batch_is_its_seeds_one_by_one(batch: list[int], dim: int) -> None:
    together = latents_from_seeds(batch, dim)
    assert all(torch.equal(together[i], latent_from_seed(s, dim)) for i, s in enumerate(batch))


@given(seed=st.one_of(st.integers(max_value=-1), st.integers(min_value=MAX_SEED + 1)))
def test_seeds_outside_the_range_are_refused(seed: int) -> None:
    try:
        latent_from_seed(seed, 4)
    except ValueError as e:
        assert "seed must be in" in str(e)
    else:
        raise AssertionError(f"seed {seed} was accepted")


@given(batch=st.lists(seeds, min_size=1, max_size=20), k=st.integers(min_value=1, max_value=16))
def test_labels_and_generators_cycle_with_the_seed(batch: list[int], k: int) -> None:
    assert seed_labels(batch, k) == [s % k for s in batch]
    assert seed_generators(batch, k) == [s % k for s in batch]


# --- TrainConfig: any JSON object either validates or is refused with a ValidationError, never anything else ---

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=8)
FIELDS = list(TrainConfig.model_fields)
plausible = {
    "model_name": st.sampled_from(["ok", "my-digits", "../x", "A", ""]),
    "dataset": st.sampled_from(["mnist", "ring-2d", "grid-2d", "gaussian-1d", "cifar10", "image-folder", "nope"]),
    "loss": st.sampled_from(["minimax", "non-saturating", "wasserstein", "wgan-gp", "hinge", "least-squares", "x"]),
    "architecture": st.sampled_from(["mlp", "dcgan", "mad-gan", "resnet"]),
    "regularizers": st.lists(
        st.fixed_dictionaries(
            {
                "name": st.sampled_from(
                    ["r1", "r2", "roth", "instance-noise", "spectral-norm", "weight-decay", "dropout"]
                )
            },
            optional={
                "gamma": json_scalars,
                "sigma": json_scalars,
                "coefficient": json_scalars,
                "anneal": json_scalars,
            },
        ),
        max_size=3,
    ),
}
bodies = st.dictionaries(
    st.sampled_from(FIELDS),
    st.one_of(json_values, *[s for s in plausible.values()]),
    max_size=8,
).map(lambda d: {"model_name": "ok", **d})


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies)
def test_any_body_validates_or_is_a_validation_error(body: dict) -> None:
    try:
        config = TrainConfig.model_validate(body)
    except pydantic.ValidationError:
        return  # a 422 with the reasons; anything else would be a 500
    # A valid config is complete and stable: validating what it dumps gives it back.
    again = TrainConfig.model_validate(config.model_dump(mode="json"))
    assert again == config
    assert config.lr is not None and config.d_steps is not None and config.output is not None
    assert all(math.isfinite(v) for v in (config.lr, config.lr_g, config.lr_d))
