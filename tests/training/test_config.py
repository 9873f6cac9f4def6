"""The job config: the objective's paper defaults are filled in once, and impossible combinations are refused."""

import pytest
from pydantic import ValidationError

from core.train_config import OBJECTIVE_DEFAULTS, TrainConfig


def test_the_defaults_are_the_reference_recipe() -> None:
    c = TrainConfig(model_name="x")
    assert (c.architecture, c.loss, c.batch_size, c.latent_dim) == ("mlp", "non-saturating", 128, 100)
    assert (c.optimizer, c.lr_g, c.lr_d, c.betas_g, c.betas_d, c.d_steps) == (
        "adam",
        2e-4,
        2e-4,
        (0.5, 0.999),
        (0.5, 0.999),
        1,
    )
    assert c.output == "tanh"


@pytest.mark.parametrize("loss", sorted(OBJECTIVE_DEFAULTS))
def test_each_objective_brings_its_papers_settings_and_round_trips(loss: str) -> None:
    c = TrainConfig(model_name="x", loss=loss)
    d = OBJECTIVE_DEFAULTS[loss]
    assert (c.optimizer, c.lr_g, c.d_steps) == (d.optimizer, d.lr, d.d_steps)
    # What is stored in a job record must validate again to the very same config.
    assert TrainConfig.model_validate_json(c.model_dump_json()) == c


def test_wgan_is_rmsprop_with_clipping_and_five_critic_steps() -> None:
    c = TrainConfig(model_name="x", loss="wasserstein")
    assert (c.optimizer, c.lr_d, c.d_steps, c.clip_value, c.betas) == ("rmsprop", 5e-5, 5, 0.01, None)


def test_explicit_values_win_over_the_objectives_defaults() -> None:
    c = TrainConfig(model_name="x", loss="wgan-gp", lr_g=1e-3, d_steps=2, gp_lambda=1.0)
    assert (c.lr_g, c.lr_d, c.d_steps, c.gp_lambda, c.betas_d) == (1e-3, 1e-4, 2, 1.0, (0.0, 0.9))


def test_toys_default_to_an_unbounded_output() -> None:
    assert TrainConfig(model_name="x", dataset="ring-2d").output == "linear"


@pytest.mark.parametrize(
    ("fields", "advice"),
    [
        ({"dataset": "ring-2d", "architecture": "dcgan"}, "use `mlp` or `mad-gan`"),
        ({"dataset": "ring-2d", "conditional": True}, "`conditional` needs labels"),
        ({"clip_value": 0.1}, "`clip_value` applies to `loss: wasserstein` only"),
        ({"dataset": "image-folder"}, "`image_folder` names the folder"),
        ({"architecture": "dcgan", "image_size": 48}, "not 48"),
        ({"regularizers": [{"name": "r1"}, {"name": "r1"}]}, "each regularizer may appear once"),
        ({"optimizer": "rmsprop", "betas": [0.5, 0.9]}, "betas are Adam's"),
    ],
)
def test_impossible_combinations_are_refused_with_advice(fields: dict, advice: str) -> None:
    with pytest.raises(ValidationError, match=advice.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(model_name="x", **fields)


def test_unknown_regularizer_and_field_are_refused() -> None:
    with pytest.raises(ValidationError):
        TrainConfig(model_name="x", regularizers=[{"name": "dropout"}])
    with pytest.raises(ValidationError):
        TrainConfig(model_name="x", learning_rate=0.1)


def test_the_openapi_examples_are_valid_jobs() -> None:
    for example in TrainConfig.model_config["json_schema_extra"]["examples"]:  # type: ignore[index]
        TrainConfig.model_validate(example)
