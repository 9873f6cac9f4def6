"""Recipes: named, documented sets of training defaults. A job says `"recipe": "<name>"` and gets the recipe's
fields wherever it leaves them out (its own fields win); a job submitted with neither a recipe nor an architecture
gets its dataset's default recipe (`DEFAULT_RECIPES`). `TrainConfig` applies them when it validates
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


# Radford et al. (2016): Adam 2e-4 with β₁ 0.5, weights from N(0, 0.02), tanh head; batch 64 rather than their 128,
# which at the same images/s gives twice the G steps per second. What TrainConfig cannot set (and the `dcgan`
# architecture fixes): BatchNorm in G, no BatchNorm in D (gradient penalties need per-sample gradients,
# training/architectures.py). The EMA's warm-up (training/nets.py) makes it useful from the first epochs.
_DCGAN = {
    "architecture": "dcgan",
    "weight_init": "dcgan",
    "batch_size": 64,
    "latent_dim": 100,
    "loss": "non-saturating",
    "optimizer": "adam",
    "lr": 2e-4,
    "betas": [0.5, 0.999],
    "d_steps": 1,
    "output": "tanh",
    "ema": 0.999,
}
_DCGAN_NOTE = (
    "not measured yet. The closest figure: experiments/results/mnist_grids.md's `architecture: dcgan` run "
    "(defaults: no EMA; 12 epochs of the t10k split) was judged by eye only — cleaner backgrounds than the MLP, "
    "fewer recognisable digits, too short for DCGAN."
)

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
            sets={
                "architecture": "mlp",
                "batch_size": 128,
                "latent_dim": 100,
                "loss": "non-saturating",
                "optimizer": "adam",
                "lr": 2e-4,
                "betas": [0.9, 0.999],
                "d_steps": 1,
                "output": "linear",
            },
            quality=None,
            quality_note="not measured yet (no FID). Seen by eye: the bundled model card's side-by-side "
            "(service/bundled/mnist-mlp/README.md, 'Why tanh'; 60 epochs of the t10k split, with β₁ 0.5) shows the "
            "linear head still drawing speckled noise where a tanh head draws digits.",
        ),
        Recipe(
            name="mnist-mlp",
            description="The bundled `mnist-mlp` model's settings (service/bundled/mnist-mlp/train.json): the seeds' "
            "MLP with a tanh head on data in [-1, 1], batch 64, Adam 2e-4 with β₁ 0.5, the non-saturating loss. "
            "The bundled model trained it for 160 epochs of the 10,000-image split (`epochs: 160`).",
            datasets=["mnist", "fashion-mnist"],
            sets={
                "architecture": "mlp",
                "batch_size": 64,
                "latent_dim": 100,
                "loss": "non-saturating",
                "optimizer": "adam",
                "lr": 2e-4,
                "betas": [0.5, 0.999],
                "d_steps": 1,
                "output": "tanh",
            },
            quality=RecipeQuality(
                metrics={"fid": 47.9, "inception_score": 8.67, "precision": 0.834, "recall": 0.531},
                samples=10_000,
                feature_space="mnist-cnn-v1",
                run="the bundled model: 160 epochs of the MNIST t10k split (10,000 images, 24,960 G steps), seed 0, "
                "2 CPU cores; real held-out digits score FID 9.5, recall 0.836 (n = 2,000)",
                source="service/bundled/mnist-mlp/README.md#evaluation",
            ),
            quality_note="The only recipe measured by FID here, hence MNIST's default.",
        ),
        Recipe(
            name="mnist-dcgan",
            description="DCGAN (Radford et al. 2016) for 28×28 digits: transposed-convolution G with BatchNorm, "
            "strided-convolution D, weights from N(0, 0.02), tanh head, batch 64, Adam 2e-4 with β₁ 0.5, and an "
            "EMA of G (decay 0.999), which is what is served.",
            datasets=["mnist", "fashion-mnist"],
            sets=_DCGAN | {"image_size": 28},
            quality=None,
            quality_note=_DCGAN_NOTE,
        ),
        Recipe(
            name="mnist-dcgan-conditional",
            description="`mnist-dcgan`, class-conditional: a label embedding concatenated to z in G and a projection "
            "D (Miyato & Koyama 2018); /generate then takes `label`.",
            datasets=["mnist", "fashion-mnist"],
            sets=_DCGAN | {"image_size": 28, "conditional": True},
            quality=None,
            quality_note="not measured yet. docs/training.md ('Conditional models') reports a 390-step check only: "
            "the classes kept about half the real within-class spread.",
        ),
        Recipe(
            name="image-folder-32",
            description="DCGAN for a folder of images (or an uploaded image dataset) at 32×32 colour: the images' "
            "shorter side resized and centre-cropped to 32, otherwise `mnist-dcgan`'s settings.",
            datasets=["image-folder", "uploaded", "cifar10"],
            sets=_DCGAN | {"image_size": 32},
            quality=None,
            quality_note="not measured yet.",
        ),
        Recipe(
            name="image-folder-64",
            description="DCGAN for a folder of images (or an uploaded image dataset) at 64×64 colour, the paper's "
            "size: the images' shorter side resized and centre-cropped to 64, otherwise `mnist-dcgan`'s settings.",
            datasets=["image-folder", "uploaded"],
            sets=_DCGAN | {"image_size": 64},
            quality=None,
            quality_note="not measured yet.",
        ),
    )
}

# The recipe a submitted job gets when it names neither a recipe nor an architecture: the best one measured for
# its dataset. A dataset with no measured recipe keeps TrainConfig's own defaults (no recipe), rather than a
# recipe nobody has shown to be better.
DEFAULT_RECIPES: dict[str, str] = {"mnist": "mnist-mlp"}


def resolve(data: Any, *, submitted: bool) -> Any:
    """`data` (a job's fields, as given) with its recipe's fields filled in where it leaves them out, and, for a
    submitted job that names neither a recipe nor an architecture, its dataset's default recipe named. Anything
    that is not a dict of fields, and an unknown recipe name, is returned as it is, for validation to refuse.
    Idempotent: a config validated once holds every field, so resolving it again changes nothing."""
    if not isinstance(data, dict):
        return data
    name = data.get("recipe")
    if name is None and submitted and "recipe" not in data and "architecture" not in data:
        dataset = data.get("dataset", "mnist")
        name = DEFAULT_RECIPES.get(dataset) if isinstance(dataset, str) else None
        if name is None:
            return data
        data = {**data, "recipe": name}
    if not isinstance(name, str) or name not in RECIPES:
        return data
    return RECIPES[name].sets | data  # the job's own fields win, an explicit null too (`"ema": null`: no EMA)
