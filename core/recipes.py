"""Recipes: named, documented sets of training defaults. A job says `"recipe": "<name>"` and gets the recipe's
fields wherever it leaves them out (its own fields win); a job submitted with neither a recipe nor an architecture
gets its dataset's default recipe (`default_recipe`). `TrainConfig` applies them when it validates
(core/train_config.py), so the stored config holds the resolved fields and the recipe's name. GET /recipes lists
them (service/api/routes/recipes.py); docs/training.md, "Recipes", says the same in prose.

Data only. Each recipe's `quality` is a figure measured in this repository, with where it is written down, or
null ("not measured yet"): never an estimate. A recipe sets how a model is trained (architecture, objective,
optimiser, batch, EMA), not how long (epochs, steps, seed, sample cadence): those stay the job's, because a
default recipe applies to jobs that did not ask for one, and its quality says at which length it was measured.
"""

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

RecipeName = Literal[
    "seed-reference", "mnist-mlp", "mnist-dcgan", "mnist-dcgan-conditional", "image-folder-32", "image-folder-64"
]
RECIPE_NAMES: tuple[str, ...] = get_args(RecipeName)

# Validation contexts that mark a job as submitted (the body of POST /train, the file of `ganserve train`): only
# such a job gets its dataset's default recipe. A config read back (a job's record, a checkpoint's metadata, a
# partial config built internally) never does, so what was stored is never reinterpreted.
SUBMITTED = "submitted"


class RecipeQuality(BaseModel):
    """What a recipe reached here: sample-quality metrics of one run, and where they are written down."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    metrics: dict[str, float] = Field(
        description="`fid` (lower is better), `inception_score`, `precision`, `recall` (higher is better).",
        examples=[{"fid": 47.9, "precision": 0.834, "recall": 0.531}],
    )
    samples: int = Field(description="Generated images measured (seeds 0..N−1), against as many real ones.")
    feature_space: str = Field(description="The extractor the metrics were computed in.", examples=["mnist-cnn-v1"])
    run: str = Field(description="The run measured: data, length, seed, hardware.")
    source: str = Field(description="Where the figures and the command that made them are, in the repository.")


class Recipe(BaseModel):
    """A named set of TrainConfig fields, with what it suits and what it reached."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: RecipeName
    description: str
    datasets: list[str] = Field(
        description="The datasets it is made for: built-in names, and `uploaded` for datasets uploaded with "
        "POST /datasets."
    )
    sets: dict[str, Any] = Field(description="The TrainConfig fields it sets; a job's own fields override them.")
    quality: RecipeQuality | None = Field(description="The figures it reached here; null: not measured yet.")
    quality_note: str = Field(description="`not measured yet`, or what the figures mean and what else was seen.")


# What every recipe here shares: z of 100, Adam 2e-4, Algorithm 1 with k = 1 and the non-saturating loss; each
# adds its architecture, batch, head and betas.
_GAN = {"latent_dim": 100, "loss": "non-saturating", "optimizer": "adam", "lr": 2e-4, "d_steps": 1}

# Radford et al. (2016): Adam 2e-4 with β₁ 0.5, weights from N(0, 0.02), tanh head; batch 64 rather than their 128,
# which at the same images/s gives twice the G steps per second. What TrainConfig cannot set (and the `dcgan`
# architecture fixes): BatchNorm in G, no BatchNorm in D (gradient penalties need per-sample gradients,
# training/architectures.py). The EMA's warm-up (training/nets.py) makes it useful from the first epochs.
_DCGAN = _GAN | {
    "architecture": "dcgan",
    "weight_init": "dcgan",
    "batch_size": 64,
    "betas": [0.5, 0.999],
    "output": "tanh",
    "ema": 0.999,
}
_TTQ = "benchmarks/README.md#time-to-quality-benchmarkstime_to_qualitypy"
_TTQ_RUN = "10 minutes of training on the MNIST t10k split (10,000 images), seed 0, this project's 2-core CPU"

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="seed-reference",
            description="The seeds' MLP GAN exactly as published: MLP G (z 100 → 128 → 256 → 512 → 1024 → 784, "
            "LeakyReLU 0.2 + BatchNorm) and D (784 → 256 → 128 → 1), an unbounded (linear) head, batch 128, "
            "Adam 2e-4 with PyTorch's default betas (0.9, 0.999), the non-saturating loss. For reproducing the "
            "reference; TrainConfig's own defaults depart from it with a tanh head and β₁ 0.5.",
            datasets=["mnist"],
            sets=_GAN | {"architecture": "mlp", "batch_size": 128, "betas": [0.9, 0.999], "output": "linear"},
            quality=RecipeQuality(
                metrics={"fid": 1606.1, "precision": 0.995, "recall": 0.0},
                samples=2000,
                feature_space="mnist-cnn-v1",
                run=f"{_TTQ_RUN} (33,930 G steps of batch 128); real held-out digits score FID 9.5 at this n",
                source=_TTQ,
            ),
            quality_note="Never left noise in 10 minutes (FID 1,527–1,707 at every 30 s): the classifier reads its "
            "samples as 8s (70 %) and 3s (29 %), one blob, hence precision near 1 and recall 0. The brief names Adam "
            "2e-4 and no betas, so this recipe keeps PyTorch's (0.9, 0.999); the bundled mnist-mlp card's "
            "side-by-side of the linear and tanh heads used β₁ 0.5 and says so.",
        ),
        Recipe(
            name="mnist-mlp",
            description="The bundled `mnist-mlp` model's settings (service/bundled/mnist-mlp/train.json): the seeds' "
            "MLP with a tanh head on data in [-1, 1], batch 64, Adam 2e-4 with β₁ 0.5, the non-saturating loss. "
            "The bundled model trained it for 160 epochs of the 10,000-image split (`epochs: 160`).",
            datasets=["mnist", "fashion-mnist"],
            sets=_GAN | {"architecture": "mlp", "batch_size": 64, "betas": [0.5, 0.999], "output": "tanh"},
            quality=RecipeQuality(
                metrics={"fid": 47.9, "inception_score": 8.67, "precision": 0.834, "recall": 0.531},
                samples=10_000,
                feature_space="mnist-cnn-v1",
                run="the bundled model: 160 epochs of the MNIST t10k split (10,000 images, 24,960 G steps), seed 0, "
                "2 CPU cores; real held-out digits score FID 9.5, recall 0.836 (n = 2,000)",
                source="service/bundled/mnist-mlp/README.md#evaluation",
            ),
            quality_note="MNIST's default until issue 19; the conditional DCGAN recipe now reaches FID 15.3 at "
            "n = 2,000 in 40 epochs where this one took 160 epochs to reach 46.0.",
        ),
        Recipe(
            name="mnist-dcgan",
            description="DCGAN (Radford et al. 2016) for 28×28 digits: transposed-convolution G with BatchNorm, "
            "strided-convolution D, weights from N(0, 0.02), tanh head, batch 64, Adam 2e-4 with β₁ 0.5, and an "
            "EMA of G (decay 0.999), which is what is served.",
            datasets=["mnist", "fashion-mnist"],
            sets=_DCGAN | {"image_size": 28},
            quality=RecipeQuality(
                metrics={"fid": 129.8, "precision": 0.527, "recall": 0.821},
                samples=2000,
                feature_space="mnist-cnn-v1",
                run=f"{_TTQ_RUN} (8,268 G steps); real held-out digits score FID 9.5 at this n",
                source=_TTQ,
            ),
            quality_note="Still improving at 10 minutes (FID 475 at 35 s, 183 at 253 s, 130 at 600 s) but far from "
            "the conditional recipe, which passes FID 19.1 (2× the floor) after 157 s: without labels the classes "
            "come slowly and unevenly (1s 5.6 %, 9s 16.4 % of the samples at 600 s).",
        ),
        Recipe(
            name="mnist-dcgan-conditional",
            description="`mnist-dcgan`, class-conditional: a label embedding concatenated to z in G and a projection "
            "D (Miyato & Koyama 2018); /generate then takes `label`.",
            datasets=["mnist", "fashion-mnist"],
            sets=_DCGAN | {"image_size": 28, "conditional": True},
            quality=RecipeQuality(
                metrics={
                    "fid": 15.3,
                    "inception_score": 9.55,
                    "precision": 0.856,
                    "recall": 0.816,
                    "label_agreement": 0.9915,
                },
                samples=2000,
                feature_space="mnist-cnn-v1",
                run="the default model `mnist-dcgan-conditional`: 40 epochs of the MNIST t10k split (6,240 G steps of "
                "batch 64), seed 0, one CPU thread, 1,041 s; real held-out digits score FID 9.5, recall 0.836 "
                "(n = 2,000)",
                source="service/bundled/mnist-dcgan-conditional/README.md#evaluation",
            ),
            quality_note="MNIST's default: the best measured here. Within 2× the real-data floor after 157 s of "
            "training on 2 cores (benchmarks/README.md, time to quality); on 10,000 samples 99.05 % are the digit "
            "asked for, and per-class recall is 0.71–0.81.",
        ),
        Recipe(
            name="image-folder-32",
            description="DCGAN for a folder of images (or an uploaded image dataset) at 32×32 colour: the images' "
            "shorter side resized and centre-cropped to 32, otherwise `mnist-dcgan`'s settings.",
            datasets=["image-folder", "uploaded", "cifar10"],
            sets=_DCGAN | {"image_size": 32},
            quality=None,
            quality_note="not measured yet: no colour image dataset is on this machine (only MNIST; datasets cannot be "
            "downloaded here) and no Inception weights, the feature space FID needs for images that are not digits.",
        ),
        Recipe(
            name="image-folder-64",
            description="DCGAN for a folder of images (or an uploaded image dataset) at 64×64 colour, the paper's "
            "size: the images' shorter side resized and centre-cropped to 64, otherwise `mnist-dcgan`'s settings.",
            datasets=["image-folder", "uploaded"],
            sets=_DCGAN | {"image_size": 64},
            quality=None,
            quality_note="not measured yet: no colour image dataset is on this machine (only MNIST; datasets cannot be "
            "downloaded here) and no Inception weights, the feature space FID needs for images that are not digits.",
        ),
    )
}

# The recipe a submitted job gets when it names neither a recipe nor an architecture: the best one measured for
# its dataset. A dataset with no measured recipe keeps TrainConfig's own defaults (no recipe), rather than a
# recipe nobody has shown to be better.
DEFAULT_RECIPES: dict[str, str] = {"mnist": "mnist-dcgan-conditional"}
# A job that turns conditioning off gets the best unconditional recipe instead of a conditional one with
# `conditional: false` written over it (which would store a recipe name that says the opposite of what ran).
UNCONDITIONAL_DEFAULTS: dict[str, str] = {"mnist-dcgan-conditional": "mnist-dcgan"}
# Fields that belong to one architecture family: a job that sets one has chosen that family, as if it had named
# the architecture, and gets no default recipe (whose architecture would refuse them).
FAMILY_FIELDS = ("g_hidden", "d_hidden", "generators", "rounds", "adagan_beta")


def default_recipe(data: dict[str, Any]) -> str | None:
    """The default recipe of a submitted job's fields, or None (it chose an architecture, or its dataset has none)."""
    if "recipe" in data or "architecture" in data or any(data.get(f) is not None for f in FAMILY_FIELDS):
        return None
    dataset = data.get("dataset", "mnist")
    name = DEFAULT_RECIPES.get(dataset) if isinstance(dataset, str) else None
    if name is not None and data.get("conditional") is False:
        name = UNCONDITIONAL_DEFAULTS.get(name, name)
    return name


def resolve(data: Any, *, submitted: bool) -> Any:
    """`data` (a job's fields, as given) with its recipe's fields filled in where it leaves them out, and, for a
    submitted job that names neither a recipe nor an architecture, its dataset's default recipe named. Anything
    that is not a dict of fields, and an unknown recipe name, is returned as it is, for validation to refuse.
    Idempotent: a config validated once holds every field, so resolving it again changes nothing."""
    if not isinstance(data, dict):
        return data
    name = data.get("recipe")
    if name is None and submitted:
        name = default_recipe(data)
        if name is None:
            return data
        data = {**data, "recipe": name}
    if not isinstance(name, str) or name not in RECIPES:
        return data
    return RECIPES[name].sets | data  # the job's own fields win, an explicit null too (`"ema": null`: no EMA)
