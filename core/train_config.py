"""The training job's configuration: one pydantic model for the body of `POST /train`, the job file of
`ganserve train JOB.json` and the worker's task, validated once at the edge.

Fields left out (or null) that depend on the objective are filled in from the objective's paper at
validation time — e.g. `"loss": "wasserstein"` alone means RMSprop 5e-5, 5 critic steps, clipping at
0.01 — so a stored config always says exactly what ran. So are a named recipe's fields (core/recipes.py): `"recipe":
"mnist-dcgan"` fills the fields the job leaves out, and a submitted job naming neither a recipe nor an architecture
gets its dataset's default recipe.
"""

from typing import Annotated, Any, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from core import recipes

# Every name that becomes a path on the volume must match this (no slashes, no dot-dot, no hidden files).
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
ModelName = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        description="Lower-case letters, digits, '.', '_' and '-'; starts with a letter or digit; ≤ 64 chars.",
        examples=["my-digits"],
    ),
]

LossName = Literal["minimax", "non-saturating", "wasserstein", "wgan-gp", "hinge", "least-squares"]
BuiltinDataset = Literal["mnist", "fashion-mnist", "cifar10", "image-folder", "gaussian-1d", "ring-2d", "grid-2d"]
ArchitectureName = Literal["mlp", "dcgan", "mad-gan", "adagan"]
OptimizerName = Literal["adam", "rmsprop"]

BUILTIN_DATASETS = frozenset(get_args(BuiltinDataset))
TOY_DATASETS = frozenset({"gaussian-1d", "ring-2d", "grid-2d"})
LABELLED_DATASETS = frozenset({"mnist", "fashion-mnist", "cifar10"})
DCGAN_SIZES = (28, 32, 64)


class ObjectiveDefaults(BaseModel):
    optimizer: OptimizerName
    lr: float
    betas: tuple[float, float]
    d_steps: int


# The settings each objective's paper trains with (WGAN: Arjovsky et al. 2017, Algorithm 1; WGAN-GP:
# Gulrajani et al. 2017, Algorithm 1); the others use the DCGAN-style Adam of the reference recipe.
OBJECTIVE_DEFAULTS: dict[str, ObjectiveDefaults] = {
    "minimax": ObjectiveDefaults(optimizer="adam", lr=2e-4, betas=(0.5, 0.999), d_steps=1),
    "non-saturating": ObjectiveDefaults(optimizer="adam", lr=2e-4, betas=(0.5, 0.999), d_steps=1),
    "hinge": ObjectiveDefaults(optimizer="adam", lr=2e-4, betas=(0.5, 0.999), d_steps=1),
    "least-squares": ObjectiveDefaults(optimizer="adam", lr=2e-4, betas=(0.5, 0.999), d_steps=1),
    "wasserstein": ObjectiveDefaults(optimizer="rmsprop", lr=5e-5, betas=(0.5, 0.999), d_steps=5),
    "wgan-gp": ObjectiveDefaults(optimizer="adam", lr=1e-4, betas=(0.0, 0.9), d_steps=5),
}
DEFAULT_CLIP_VALUE = 0.01
DEFAULT_GP_LAMBDA = 10.0


class InstanceNoise(BaseModel):
    """Gaussian noise added to every input of D (real and fake), σ falling linearly to 0."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: Literal["instance-noise"]
    sigma: float = Field(0.1, gt=0, le=10, description="σ at the first step, in data units.")
    anneal_steps: int | None = Field(
        None, ge=1, description="Generator steps over which σ falls to 0; the whole run when null."
    )


class R1(BaseModel):
    """(γ/2)·E‖∇ₓD(x)‖² on real data (Mescheder et al. 2018)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: Literal["r1"]
    gamma: float = Field(10.0, gt=0, le=1e5)


class R2(BaseModel):
    """(γ/2)·E‖∇ₓD(x)‖² on generated data (Mescheder et al. 2018)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: Literal["r2"]
    gamma: float = Field(10.0, gt=0, le=1e5)


ROTH_DEFAULT_DECAY = 0.01  # Roth et al.'s code anneals γ₀ to 0.01·γ₀ by default (`--decay_factor`)
# The objectives whose D is a classifier σ(ψ(x)) of a binary logit ψ, which Roth et al.'s penalty is written for.
ROTH_LOSSES = ("minimax", "non-saturating")


class Roth(BaseModel):
    """Roth et al. 2017's penalty (γ/2)·Ω, Ω = E_real[(1 − D(x))²‖∇ₓψ(x)‖²] + E_fake[D(x)²‖∇ₓψ(x)‖²] for
    D(x) = σ(ψ(x)): the gradient of D's logit, weighted by how wrong D is about the sample."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: Literal["roth"]
    gamma: float = Field(
        2.0, gt=0, le=1e5, description="γ₀, the penalty's weight at the first step (the paper's image runs: 2)."
    )
    anneal: bool | Annotated[float, Field(gt=0, lt=1)] = Field(
        False,
        description="`false`: γ stays γ₀. `true`: γ falls exponentially to 0.01·γ₀ over the run's G steps, "
        "γ_t = γ₀·0.01^(t/(T−1)) (the paper's annealing); a number f in (0, 1): falls to f·γ₀ instead.",
    )

    @property
    def final_fraction(self) -> float:
        """γ at the last G step over γ₀: 1 without annealing."""
        if self.anneal is True:
            return ROTH_DEFAULT_DECAY
        if self.anneal is False:
            return 1.0
        return float(self.anneal)


class SpectralNorm(BaseModel):
    """Every linear/conv weight of D divided by its largest singular value (Miyato et al. 2018)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: Literal["spectral-norm"]


class WeightDecay(BaseModel):
    """coefficient·Σ‖w‖² over D's weights, added to D's loss."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: Literal["weight-decay"]
    coefficient: float = Field(1e-4, gt=0, le=1.0)


Regularizer = Annotated[InstanceNoise | R1 | R2 | Roth | SpectralNorm | WeightDecay, Field(discriminator="name")]


class TrainConfig(BaseModel):
    """A GAN training run. Defaults are the seeds' reference recipe (MLP G and D, batch 128, z of 100,
    Adam 2e-4, non-saturating generator loss), plus a tanh output on images scaled to [-1, 1]."""

    # strict: JSON's types as the schema states them (no `true` for 1, no "5" for 5); a float field still takes 1.
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {"model_name": "my-digits", "dataset": "mnist", "epochs": 1, "max_samples": 512},
                {"model_name": "ring-wgan-gp", "dataset": "ring-2d", "loss": "wgan-gp", "steps": 2000},
                {
                    "model_name": "cond-digits",
                    "dataset": "mnist",
                    "architecture": "dcgan",
                    "conditional": True,
                    "epochs": 5,
                    "regularizers": [{"name": "r1", "gamma": 1.0}],
                    "ema": 0.999,
                },
            ]
        },
    )

    model_name: ModelName
    recipe: recipes.RecipeName | None = Field(
        None,
        description="A named set of defaults (GET /recipes lists them): its fields fill those the job leaves out, "
        "the job's own win. Left out, a submitted job that names no `architecture` gets its dataset's default "
        "recipe (`mnist`: `mnist-mlp`); the stored config holds the resolved fields and this name.",
        examples=["mnist-dcgan"],
    )
    # --- data ---
    dataset: Annotated[str, Field(pattern=NAME_PATTERN)] = Field(
        "mnist",
        description="A built-in dataset (`mnist`, `fashion-mnist`, `cifar10`, `image-folder`: images from "
        "`<data_root>/<dataset>/`; `gaussian-1d`, `ring-2d`, `grid-2d`: toy points generated from `seed`), or the "
        "id or name of a dataset uploaded with POST /datasets (GET /datasets lists them).",
        examples=["mnist"],
    )
    image_folder: Annotated[str, Field(pattern=NAME_PATTERN)] | None = Field(
        None, description="With `image-folder`: the folder under the data root holding the images."
    )
    image_size: int | None = Field(
        None, ge=8, le=256, description="Images are resized (and centre-cropped) to this; dcgan: 28, 32 or 64."
    )
    max_samples: int | None = Field(
        None, ge=1, le=10_000_000, description="Use at most this many samples (the first ones, in file order)."
    )
    # --- length ---
    epochs: int = Field(1, ge=1, le=10_000, description="Passes over the (possibly limited) dataset.")
    steps: int | None = Field(None, ge=1, le=10_000_000, description="Generator steps; overrides `epochs`.")
    batch_size: int = Field(128, ge=1, le=8192)
    # --- model ---
    architecture: ArchitectureName = Field(
        "mlp", description="`mlp` (the seeds'), `dcgan`, `mad-gan`, `adagan` (a boosted mixture of `mlp` GANs)."
    )
    generators: int = Field(4, ge=2, le=16, description="`mad-gan` only: the number of generators k.")
    rounds: int = Field(
        5,
        ge=1,
        le=16,
        description="`adagan` only: boosting rounds T, each training one `mlp` GAN of `steps` (or `epochs`) on "
        "the data reweighted towards what the mixture so far misses; the mixture of the T is published.",
    )
    adagan_beta: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="`adagan` only: the weight β of each new component in the mixture, (1 − β)·old + β·new; "
        "default 1/t in round t (every component then weighs 1/T).",
    )
    weight_init: Literal["pytorch", "dcgan"] = Field(
        "pytorch",
        description="`pytorch`: each layer's default initialisation; `dcgan`: every convolution and linear weight "
        "from N(0, 0.02) with zero biases, BatchNorm gains from N(1, 0.02) (Radford et al. 2016).",
    )
    conditional: bool = Field(False, description="Class-conditional G and projection D (labelled datasets).")
    latent_dim: int = Field(100, ge=1, le=4096, description="Size of z.")
    g_hidden: list[Annotated[int, Field(ge=1, le=16384)]] | None = Field(
        None, min_length=1, max_length=16, description="`mlp`/`mad-gan`: G's hidden widths; default by dataset."
    )
    d_hidden: list[Annotated[int, Field(ge=1, le=16384)]] | None = Field(
        None, min_length=1, max_length=16, description="`mlp`/`mad-gan`: D's hidden widths; default by dataset."
    )
    output: Literal["tanh", "linear"] | None = Field(
        None, description="G's last activation; default `tanh` for images (data in [-1, 1]), `linear` for toys."
    )
    # --- objective ---
    loss: LossName = Field(
        "non-saturating",
        description="`non-saturating` (−log D(G(z))), `minimax` (log(1 − D(G(z)))), `wasserstein`, "
        "`wgan-gp`, `hinge`, `least-squares`.",
    )
    d_steps: int | None = Field(None, ge=1, le=100, description="Algorithm 1's k; default 1, or 5 for WGANs.")
    clip_value: float | None = Field(None, gt=0, le=10, description="`wasserstein` only: weight clipping c.")
    gp_lambda: float | None = Field(None, gt=0, le=1e4, description="`wgan-gp` only: penalty weight λ.")
    regularizers: list[Regularizer] = Field(default_factory=list, description="Applied to D, composable.")
    unrolled_steps: int = Field(0, ge=0, le=20, description="Unrolled GAN: G sees D after k steps; 0 = off.")
    ema: float | None = Field(None, gt=0, lt=1, description="Decay of an EMA of G's weights, served if set.")
    # --- optimisers ---
    optimizer: OptimizerName | None = Field(None, description="`adam` or `rmsprop`; default: the objective's.")
    lr: float | None = Field(None, gt=0, le=1.0, description="Learning rate of both networks.")
    # strict=False on the pairs: a JSON array arrives as a list, and strict mode takes only tuples for a tuple.
    betas: tuple[float, float] | None = Field(None, strict=False, description="Adam betas of both networks.")
    lr_g: float | None = Field(None, gt=0, le=1.0, description="Generator's learning rate (overrides `lr`).")
    lr_d: float | None = Field(None, gt=0, le=1.0, description="Discriminator's learning rate (overrides `lr`).")
    betas_g: tuple[float, float] | None = Field(None, strict=False)
    betas_d: tuple[float, float] | None = Field(None, strict=False)
    lr_schedule: Literal["constant", "linear"] = Field(
        "constant",
        description="`linear`: both learning rates fall linearly to 0 over the run's G steps, which lets the "
        "last steps settle instead of orbiting the equilibrium.",
    )
    # --- speed (execution only: none changes the objective; `benchmarks/train_throughput.py` measures them) ---
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = Field(
        "off",
        description="torch.compile G's and D's forward and backward passes (Inductor, CPU or CUDA): "
        "`reduce-overhead` also replays them as CUDA graphs on a GPU. The first steps pay the compilation "
        "(tens of seconds); losses match the eager run's to float rounding.",
    )
    precision: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="`bfloat16`: autocast G's and D's matmuls and convolutions to bfloat16 (weights, losses "
        "and optimiser stay float32); for GPUs with bfloat16 tensor cores, slower on CPUs without them.",
    )
    # --- run ---
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seeds weights, shuffling, noise and toy data.")
    sample_every: int = Field(1, ge=1, description="Write a sample grid (and checkpoint) every N epochs.")
    keep_checkpoints: int | None = Field(
        None,
        ge=1,
        description="How many of its newest epoch checkpoints a job keeps (older ones are deleted as new ones are "
        "written; the one of the best FID and the published model stay too). Default: the server's "
        "GANSERVE_KEEP_CHECKPOINTS, at most its GANSERVE_MAX_KEEP_CHECKPOINTS. `ganserve train` run locally keeps "
        "every one unless this is set.",
    )
    max_runtime_s: int | None = Field(
        None,
        ge=1,
        description="A worker stops the job after it has run this many seconds in one attempt and fails it, "
        "keeping its checkpoints (default and cap: the server's GANSERVE_MAX_RUNTIME_S). `ganserve train` run "
        "locally ignores it.",
    )
    # --- evaluation during training ---
    eval_every: int | None = Field(
        None,
        ge=1,
        description="Measure sample quality every N epochs and after the last. Default (null): the budget "
        "schedule, as often as keeps evaluation within 10 % of the job's wall time, the last epoch normally "
        "included; a short job whose evaluation costs more is not measured, and its record says why.",
    )
    eval_samples: int = Field(
        1000,
        ge=10,
        le=50_000,
        description="Generated images per evaluation (seeds 0..N-1, the same each time), against as many "
        "training images (fewer when the dataset is smaller).",
    )
    eval_extractor: Literal["auto", "mnist-cnn", "inception", "none"] = Field(
        "auto",
        description="Feature space of FID/KID/precision/recall: `auto` picks `mnist-cnn` for MNIST and "
        "`inception` (local weights) for other images, and skips evaluation, saying why, when it cannot load; "
        "a named extractor that cannot load fails the job at its start; `none` turns evaluation off. Toy "
        "datasets are scored with the mode metrics instead.",
    )

    @property
    def is_toy(self) -> bool:
        return self.dataset in TOY_DATASETS

    @property
    def is_uploaded(self) -> bool:
        """The dataset is one uploaded with POST /datasets (its id or name), not a built-in one."""
        return self.dataset not in BUILTIN_DATASETS

    @model_validator(mode="before")
    @classmethod
    def _apply_recipe(cls, data: Any, info: ValidationInfo) -> Any:
        # Before field validation, so that the recipe's fields are validated (and refused) as the job's own are.
        return recipes.resolve(data, submitted=bool(info.context and info.context.get(recipes.SUBMITTED)))

    @model_validator(mode="after")
    def _check_and_fill(self) -> Self:
        problems = _conflicts(self)
        if problems:
            raise ValueError("; ".join(problems))
        d = OBJECTIVE_DEFAULTS[self.loss]
        self.optimizer = self.optimizer or d.optimizer
        self.lr = self.lr or d.lr
        self.lr_g = self.lr_g or self.lr
        self.lr_d = self.lr_d or self.lr
        if self.optimizer == "adam":
            self.betas = self.betas or d.betas
            self.betas_g = self.betas_g or self.betas
            self.betas_d = self.betas_d or self.betas
        self.d_steps = self.d_steps or d.d_steps
        self.output = self.output or ("linear" if self.is_toy else "tanh")
        if self.loss == "wasserstein":
            self.clip_value = self.clip_value or DEFAULT_CLIP_VALUE
        if self.loss == "wgan-gp":
            self.gp_lambda = self.gp_lambda or DEFAULT_GP_LAMBDA
        return self


def _conflicts(c: TrainConfig) -> list[str]:
    """Every combination that cannot run, each as advice."""
    out = []
    if (c.dataset == "image-folder") != (c.image_folder is not None):
        out.append("`image_folder` names the folder for dataset `image-folder`, and only for it")
    if c.is_toy and c.architecture == "dcgan":
        out.append(f"`dcgan` generates images; dataset {c.dataset} is points: use `mlp` or `mad-gan`")
    if c.is_toy and c.image_size is not None:
        out.append(f"`image_size` does not apply to the toy dataset {c.dataset}")
    if c.architecture == "dcgan" and c.image_size is not None and c.image_size not in DCGAN_SIZES:
        out.append(f"`dcgan` makes images of {', '.join(map(str, DCGAN_SIZES))} pixels, not {c.image_size}")
    if c.conditional and not c.is_uploaded and c.dataset not in LABELLED_DATASETS:
        labelled = ", ".join(sorted(LABELLED_DATASETS))
        out.append(f"`conditional` needs labels: datasets {labelled}, or an uploaded dataset with classes")
    if c.conditional and c.architecture == "mad-gan":
        out.append("`mad-gan` cannot be `conditional` (its discriminator's classes are the generators)")
    if c.architecture == "dcgan" and (c.g_hidden or c.d_hidden):
        out.append("`g_hidden`/`d_hidden` are MLP widths; `dcgan` has fixed convolutional stacks")
    if c.compile != "off" and c.unrolled_steps:
        out.append("`unrolled_steps` runs D functionally on unrolled weights, which `compile` cannot: use one")
    if c.unrolled_steps and c.architecture == "mad-gan":
        out.append("`unrolled_steps` is not supported with `mad-gan`")
    if c.conditional and c.architecture == "adagan":
        out.append("`adagan` cannot be `conditional`: its rounds reweight data points, not classes; drop one")
    if c.adagan_beta is not None and c.architecture != "adagan":
        out.append("`adagan_beta` applies to `architecture: adagan` only")
    if c.clip_value is not None and c.loss != "wasserstein":
        out.append("`clip_value` applies to `loss: wasserstein` only")
    if c.gp_lambda is not None and c.loss != "wgan-gp":
        out.append("`gp_lambda` applies to `loss: wgan-gp` only")
    if c.optimizer == "rmsprop" and any(b is not None for b in (c.betas, c.betas_g, c.betas_d)):
        out.append("betas are Adam's: drop them with `optimizer: rmsprop`")
    names = [r.name for r in c.regularizers]
    if len(names) != len(set(names)):
        out.append("each regularizer may appear once")
    if "roth" in names and (c.loss not in ROTH_LOSSES or c.architecture == "mad-gan"):
        # Ω is derived for D = σ(ψ) of the JS (binary cross-entropy) game; a critic's unbounded score has no
        # D(x) to weight by, and MAD-GAN's (k+1)-way softmax is not that game.
        out.append(
            f"regularizer `roth` weights by D(x) = σ(logit) of the binary GAN game: use `loss` "
            f"{' or '.join(ROTH_LOSSES)} with architecture `mlp`, `dcgan` or `adagan` (for critics use `r1`/`r2`), not "
            f"`{c.loss}` with `{c.architecture}`"
        )
    return out
