"""Architectures. A model is rebuilt from its checkpoint's JSON alone: `build_generator(meta["generator"])`.

Every generator is called as `G(z, labels=None, generator=None)` and returns one sample per latent
(N×C×H×W images or N×D points); every discriminator as `D(x, labels=None)` and returns logits of shape
(N,), or (N, k+1) for MAD-GAN (index k means "real"). Each module has `.spec`, a JSON-able dict with an
`"arch"` key, from which `build_generator` / `build_discriminator` rebuild it.

Families (chosen in `build_models` from a `TrainConfig`):

* `mlp` — on images the seeds' networks, unchanged (so published checkpoints keep loading with the same
  state-dict keys and outputs); on toy points small MLPs without BatchNorm: G z → 128 → 128 → 128 → D
  (ReLU), D D → 128 → 128 → 128 → 1 (LeakyReLU 0.2). Three layers of 128 fit the 8-mode ring and the
  25-mode grid of the unrolled-GAN / VEEGAN experiments comfortably and train in seconds on a CPU.
* `dcgan` — Radford et al. 2016: G projects z to 4×4 (7×7 for 28 px) maps, then stride-2 transposed
  convolutions with BatchNorm + ReLU, tanh/linear head; D stride-2 convolutions with LeakyReLU(0.2) and
  *no* BatchNorm, because WGAN-GP, R1 and R2 penalise per-sample input gradients, which BatchNorm in D
  would couple across the batch (Gulrajani et al. 2017 §4 make the same choice).
* `conditional` — D is a projection discriminator (Miyato & Koyama 2018): logit = ψ(φ(x)) +
  ⟨embed(y), φ(x)⟩. The mlp G takes z alone and every BatchNorm is class-conditional, γ_y ⊙ BN(h) + β_y
  (`ConditionalBatchNorm`; de Vries et al. 2017, Dumoulin et al. 2017), the G Miyato & Koyama pair with that
  D (`conditioning="batchnorm"`; why not concatenation: docs/training.md). The dcgan G concatenates a label
  embedding to z before its projection (`"concat"`; older mlp checkpoints written so still load).
* `adagan` — Tolstikhin et al. 2017: a mixture of MLP generators trained one per round by
  training/adagan.py (`AdaGANMixture`); each round trains the plain `mlp` pair below.
* `mad-gan` — Ghosh et al. 2018: k independent generators sharing nothing (the paper shares all but the
  last layer for images; independent ones are simpler and let each mode-holder differ fully), and the
  MLP discriminator with a (k+1)-way head.
"""

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from training.latents import seed_components

if TYPE_CHECKING:
    from core.train_config import TrainConfig

Output = Literal["tanh", "linear"]
Activation = Literal["leaky_relu", "relu"]
# How a conditional G sees the label: "batchnorm" (class-conditional BatchNorm, z is the only input) or
# "concat" (the label embedding concatenated to z: only for checkpoints written before "batchnorm" existed).
Conditioning = Literal["batchnorm", "concat"]

SEED_G_HIDDEN = (128, 256, 512, 1024)
SEED_D_HIDDEN = (256, 128)
TOY_G_HIDDEN = (128, 128, 128)
TOY_D_HIDDEN = (128, 128, 128)
DEFAULT_EMBED_DIM = 32  # label embedding concatenated to z (legacy "concat" conditioning only)
CBN_INIT_STD = 0.02  # spread of the per-class gains around 1 and biases around 0 at init (DCGAN's init std)
DCGAN_WIDTH = 64  # channels of the last hidden feature map of G / first of D (Radford et al.'s 64×64 "ngf")


# --- shared pieces ---------------------------------------------------------------------------------------


def _activation(name: Activation) -> nn.Module:
    return nn.LeakyReLU(0.2) if name == "leaky_relu" else nn.ReLU()


def _head(output: Output) -> list[nn.Module]:
    return [nn.Tanh()] if output == "tanh" else []


class LabelEmbedding(nn.Module):
    """Concatenates an embedding of the class label to z: the generator input of legacy `"concat"`
    conditioning, kept so that checkpoints written with it still load."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(num_classes, dim)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise ValueError("this generator is class-conditional: pass `labels`")
        return torch.cat([z, self.embed(labels)], dim=1)


class ConditionalBatchNorm(nn.Module):
    """Categorical conditional BatchNorm: γ_y ⊙ BN(h) + β_y, with BatchNorm's own affine replaced by a gain
    and a bias per class (de Vries et al. 2017, "Modulating early visual processing by language";
    Dumoulin et al. 2017, "A learned representation for artistic style"). Miyato & Koyama 2018 ("cGANs
    with projection discriminator", §5) condition their generator this way.

    Why not concatenate the label to z: each BatchNorm divides a unit by its batch standard deviation, and
    over a batch of mixed classes that standard deviation is the label's and z's together, so whatever
    the label adds shrinks z's part — and a class-conditional D rewards exactly the label's part, so G
    grows it until z no longer matters (measured in the module docstring). Here z is G's only input, the
    statistics are those of z-driven features, and the label only rescales and shifts them after
    normalisation: with γ_y ≠ 0 the within-class variation that z produces passes through every layer.

    Gains start at 1 and biases at 0 (BatchNorm's own affine), each spread by CBN_INIT_STD so the classes
    differ — slightly — from the first step, as every other weight does."""

    def __init__(self, num_features: int, num_classes: int, dims: Literal[1, 2] = 1):
        super().__init__()
        self.norm = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(num_features, affine=False)
        self.gamma = nn.Embedding(num_classes, num_features)
        self.beta = nn.Embedding(num_classes, num_features)
        nn.init.normal_(self.gamma.weight, 1.0, CBN_INIT_STD)
        nn.init.normal_(self.beta.weight, 0.0, CBN_INIT_STD)

    def forward(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        shape = (h.shape[0], h.shape[1]) + (1,) * (h.dim() - 2)  # per-sample, per-channel
        return self.norm(h) * self.gamma(labels).view(shape) + self.beta(labels).view(shape)


def _run(net: nn.Sequential, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """`net(h)`, handing the labels to the conditional BatchNorms in it."""
    for layer in net:
        h = layer(h, labels) if isinstance(layer, ConditionalBatchNorm) else layer(h)
    return h


def _batchnorm(num_features: int, classes: int | None, conditioning: Conditioning, dims: Literal[1, 2]) -> nn.Module:
    """BatchNorm, class-conditional where G is conditioned through its BatchNorms."""
    if classes is not None and conditioning == "batchnorm":
        return ConditionalBatchNorm(num_features, classes, dims)
    return nn.BatchNorm1d(num_features) if dims == 1 else nn.BatchNorm2d(num_features)


def _check_unconditional(labels: torch.Tensor | None, generator: torch.Tensor | None = None) -> None:
    # Silently ignoring labels would make a caller believe it controls the class when it does not.
    if labels is not None:
        raise ValueError("this model is not class-conditional: `labels` must be None")
    if generator is not None:
        raise ValueError("`generator` selects a MAD-GAN generator; this model has one")


def _condition(
    conditional: bool,
    label: nn.Module | None,
    z: torch.Tensor,
    labels: torch.Tensor | None,
    generator: torch.Tensor | None,
) -> torch.Tensor:
    """G's input after checking that the labels are there exactly when G is conditional and that nothing
    asks for a MAD-GAN generator this G does not have: z with the label's embedding attached (legacy
    "concat" conditioning), or z itself."""
    if not conditional:
        _check_unconditional(labels, generator)
        return z
    if generator is not None:
        raise ValueError("`generator` selects a MAD-GAN generator; this model has one")
    if labels is None:
        raise ValueError("this generator is class-conditional: pass `labels`")
    return label(z, labels) if label is not None else z


def _projection(
    phi: torch.Tensor, psi: nn.Linear, embed: nn.Embedding | None, labels: torch.Tensor | None
) -> torch.Tensor:
    """ψ(φ(x)) (+ ⟨embed(y), φ(x)⟩ for a projection discriminator), squeezed to (N,) for one output."""
    out = psi(phi)
    if embed is not None:
        if labels is None:
            raise ValueError("this discriminator is class-conditional: pass `labels`")
        out = out + (embed(labels) * phi).sum(dim=1, keepdim=True)
    elif labels is not None:
        raise ValueError("this discriminator is not class-conditional: `labels` must be None")
    return out.squeeze(1) if out.shape[1] == 1 else out


def _to_json(value: Any) -> Any:
    """Tuples → lists, so a spec equals its own JSON round trip."""
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    return value


# --- MLP (the seeds' networks, and the toy ones) -----------------------------------------------------------


@dataclass(frozen=True)
class MLPGeneratorConfig:
    """The seeds' generator: z → 128 → 256 → 512 → 1024 → C·H·W, hidden layers Linear → LeakyReLU(0.2) →
    BatchNorm1d. `output="tanh"` bounds images to [-1, 1]; `"linear"` is the reference's unbounded head.

    `image_shape` is the shape of one sample — C×H×W, or (D,) for toy points; the name is kept because
    published specs use it. `num_classes` makes it conditional: through `ConditionalBatchNorm` in place of
    each BatchNorm (`conditioning="batchnorm"`, which needs `batchnorm`), or — legacy checkpoints only —
    with a label embedding of `embed_dim` concatenated to z (`"concat"`)."""

    latent_dim: int = 100
    hidden: tuple[int, ...] = SEED_G_HIDDEN
    image_shape: tuple[int, ...] = (1, 28, 28)
    output: Output = "tanh"
    activation: Activation = "leaky_relu"
    batchnorm: bool = True
    num_classes: int | None = None
    embed_dim: int = DEFAULT_EMBED_DIM
    conditioning: Conditioning = "batchnorm"
    arch: str = field(default="mlp", init=False)


@dataclass(frozen=True)
class MLPDiscriminatorConfig:
    """The seeds' discriminator: C·H·W → 256 → 128 → 1 logit, LeakyReLU(0.2). It returns a logit, not a
    probability, so that every loss can be computed with log-sum-exp stable functions.

    `num_classes` makes it a projection discriminator; `outputs` > 1 gives MAD-GAN's (k+1)-way head."""

    image_shape: tuple[int, ...] = (1, 28, 28)
    hidden: tuple[int, ...] = SEED_D_HIDDEN
    num_classes: int | None = None
    outputs: int = 1
    arch: str = field(default="mlp", init=False)


class MLPGenerator(nn.Module):
    def __init__(self, cfg: MLPGeneratorConfig):
        super().__init__()
        self.cfg = cfg
        self.latent_dim = cfg.latent_dim
        if cfg.num_classes is not None and cfg.conditioning == "batchnorm" and not cfg.batchnorm:
            raise ValueError('conditioning="batchnorm" conditions G through its BatchNorms: it needs batchnorm')
        # Outside `net`, so that the seeds' state-dict keys (`net.0.weight` …) stay as they were.
        self.label: LabelEmbedding | None = None
        width = cfg.latent_dim
        if cfg.num_classes is not None and cfg.conditioning == "concat":
            self.label = LabelEmbedding(cfg.num_classes, cfg.embed_dim)
            width += cfg.embed_dim
        layers: list[nn.Module] = []
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), _activation(cfg.activation)]
            if cfg.batchnorm:
                layers.append(_batchnorm(h, cfg.num_classes, cfg.conditioning, 1))
            width = h
        layers.append(nn.Linear(width, math.prod(cfg.image_shape)))
        layers += _head(cfg.output)
        self.net = nn.Sequential(*layers)

    @property
    def spec(self) -> dict[str, Any]:
        return config_to_json(self.cfg)

    def forward(
        self, z: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Tensor | None = None
    ) -> torch.Tensor:
        z = _condition(self.cfg.num_classes is not None, self.label, z, labels, generator)
        return _run(self.net, z, labels).view(z.shape[0], *self.cfg.image_shape)


class MLPDiscriminator(nn.Module):
    def __init__(self, cfg: MLPDiscriminatorConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        width = math.prod(cfg.image_shape)
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
            width = h
        # ψ is the last module of `net` (the seeds' `net.4`); φ is everything before it.
        layers.append(nn.Linear(width, cfg.outputs))
        self.net = nn.Sequential(*layers)
        # nn.Embedding's N(0, 1) init makes the projection term ~30× ψ(φ(x)) at init (the paper initialises
        # it like a Linear and spectral-normalises it). Xavier init was tried for the MNIST collapse (one run
        # each): it did not stop it with the concatenating G, and with conditional BatchNorm in G it lowered
        # class accuracy (0.98 → 0.91 by a small classifier), so the init stays as it was.
        self.embed = nn.Embedding(cfg.num_classes, width) if cfg.num_classes is not None else None

    @property
    def spec(self) -> dict[str, Any]:
        return config_to_json(self.cfg)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        phi = self.net[:-1](x.flatten(1))
        psi = self.net[-1]
        assert isinstance(psi, nn.Linear)
        return _projection(phi, psi, self.embed, labels)


# --- DCGAN ---------------------------------------------------------------------------------------------------


def _dcgan_plan(image_shape: tuple[int, ...], width: int) -> tuple[int, list[int]]:
    """(start size, channels per resolution from the smallest up): 28 → 7,14; 32 → 4,8,16; 64 → 4,8,16,32.
    Channels halve as the resolution doubles, ending at `width` on the last hidden map."""
    if len(image_shape) != 3 or image_shape[1] != image_shape[2] or image_shape[1] not in (28, 32, 64):
        raise ValueError(f"dcgan makes square images of 28, 32 or 64 pixels, not {tuple(image_shape)}")
    size = image_shape[1]
    start = 7 if size == 28 else 4
    steps = int(math.log2(size // start))  # stride-2 layers from `start` to `size`
    return start, [width * 2 ** (steps - 1 - i) for i in range(steps)]


@dataclass(frozen=True)
class DCGANGeneratorConfig:
    latent_dim: int = 100
    image_shape: tuple[int, int, int] = (3, 32, 32)
    width: int = DCGAN_WIDTH
    output: Output = "tanh"
    num_classes: int | None = None
    embed_dim: int = DEFAULT_EMBED_DIM
    conditioning: Conditioning = "concat"  # see the module docstring: "batchnorm" did not train here (yet)
    arch: str = field(default="dcgan", init=False)


@dataclass(frozen=True)
class DCGANDiscriminatorConfig:
    image_shape: tuple[int, int, int] = (3, 32, 32)
    width: int = DCGAN_WIDTH
    num_classes: int | None = None
    outputs: int = 1
    arch: str = field(default="dcgan", init=False)


class DCGANGenerator(nn.Module):
    def __init__(self, cfg: DCGANGeneratorConfig):
        super().__init__()
        self.cfg = cfg
        self.latent_dim = cfg.latent_dim
        start, channels = _dcgan_plan(cfg.image_shape, cfg.width)
        classes, concat = cfg.num_classes, cfg.num_classes is not None and cfg.conditioning == "concat"
        self.label = LabelEmbedding(cfg.num_classes, cfg.embed_dim) if concat and classes is not None else None
        z_width = cfg.latent_dim + (cfg.embed_dim if concat else 0)
        # A Linear projection equals the paper's 1×1 → 4×4 transposed convolution and also covers 7×7.
        self.project = nn.Sequential(
            nn.Linear(z_width, channels[0] * start * start),
            nn.Unflatten(1, (channels[0], start, start)),
            _batchnorm(channels[0], classes, cfg.conditioning, 2),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(channels):
            bn = _batchnorm(c_out, classes, cfg.conditioning, 2)
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), bn, nn.ReLU()]
        layers.append(nn.ConvTranspose2d(channels[-1], cfg.image_shape[0], 4, 2, 1))
        layers += _head(cfg.output)
        self.net = nn.Sequential(*layers)

    @property
    def spec(self) -> dict[str, Any]:
        return config_to_json(self.cfg)

    def forward(
        self, z: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Tensor | None = None
    ) -> torch.Tensor:
        z = _condition(self.cfg.num_classes is not None, self.label, z, labels, generator)
        return _run(self.net, _run(self.project, z, labels), labels)


class DCGANDiscriminator(nn.Module):
    def __init__(self, cfg: DCGANDiscriminatorConfig):
        super().__init__()
        self.cfg = cfg
        start, channels = _dcgan_plan(cfg.image_shape, cfg.width)
        down = channels[::-1]  # D mirrors G: widest at the smallest resolution
        layers: list[nn.Module] = []
        c_in = cfg.image_shape[0]
        for c_out in down:
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2)]
            c_in = c_out
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        feature_dim = c_in * start * start
        self.psi = nn.Linear(feature_dim, cfg.outputs)
        self.embed = nn.Embedding(cfg.num_classes, feature_dim) if cfg.num_classes is not None else None

    @property
    def spec(self) -> dict[str, Any]:
        return config_to_json(self.cfg)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return _projection(self.features(x), self.psi, self.embed, labels)


# --- MAD-GAN -------------------------------------------------------------------------------------------------


class MADGANGenerator(nn.Module):
    """k generators built from one spec (`base`), sharing nothing; `generator[i]` picks sample i's."""

    def __init__(self, base: dict[str, Any], num_generators: int):
        super().__init__()
        if num_generators < 2:
            raise ValueError(f"mad-gan needs at least 2 generators, got {num_generators}")
        self.base = _to_json(dict(base))
        self.num_generators = num_generators
        self.generators = nn.ModuleList(build_generator(base) for _ in range(num_generators))
        self.latent_dim = int(base["latent_dim"])

    @property
    def spec(self) -> dict[str, Any]:
        return {"arch": "mad-gan", "generators": self.num_generators, "base": self.base}

    def forward(
        self, z: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Tensor | None = None
    ) -> torch.Tensor:
        _check_unconditional(labels)
        n = z.shape[0]
        if generator is None:  # round robin: a plain sample call still shows every generator
            generator = torch.arange(n, device=z.device) % self.num_generators
        if generator.shape != (n,) or int(generator.min()) < 0 or int(generator.max()) >= self.num_generators:
            raise ValueError(f"`generator` must be N indices in 0…{self.num_generators - 1}")
        # Every generator sees the whole batch and each sample keeps its own generator's output: costs k×,
        # but never gives a BatchNorm a sub-batch of one, and every BatchNorm sees the same z statistics.
        out = torch.stack([g(z) for g in self.generators])
        return out[generator, torch.arange(n, device=z.device)]


# --- AdaGAN --------------------------------------------------------------------------------------------------


class AdaGANMixture(nn.Module):
    """An AdaGAN mixture (Tolstikhin et al. 2017; training/adagan.py): T generators built from one spec
    (`base`), trained one after another, and their mixture weights. Sample i comes from component
    `generator[i]`; without indices, row i takes seed i's component (`training.latents.seed_components`), so a
    plain call on the latents of seeds 0…n−1 samples the mixture as /generate does."""

    def __init__(self, base: dict[str, Any], weights: list[float]):
        super().__init__()
        if len(weights) < 1 or any(not w >= 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"an adagan mixture needs non-negative weights with a positive sum, got {weights}")
        self.base = _to_json(dict(base))
        self.mixture_weights = [float(w) for w in weights]
        self.num_generators = len(weights)
        self.generators = nn.ModuleList(build_generator(base) for _ in weights)
        self.latent_dim = int(base["latent_dim"])

    @property
    def spec(self) -> dict[str, Any]:
        return {"arch": "adagan", "generators": self.num_generators, "weights": self.mixture_weights, "base": self.base}

    def forward(
        self, z: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Tensor | None = None
    ) -> torch.Tensor:
        _check_unconditional(labels)
        n = z.shape[0]
        if generator is None:
            generator = torch.tensor(seed_components(range(n), self.mixture_weights), device=z.device)
        if generator.shape != (n,) or int(generator.min()) < 0 or int(generator.max()) >= self.num_generators:
            raise ValueError(f"`generator` must be N indices in 0…{self.num_generators - 1}")
        # As MAD-GAN's: every component sees the whole batch (no BatchNorm ever gets a sub-batch of one).
        out = torch.stack([g(z) for g in self.generators])
        return out[generator, torch.arange(n, device=z.device)]


# --- specs ---------------------------------------------------------------------------------------------------

AnyConfig = MLPGeneratorConfig | MLPDiscriminatorConfig | DCGANGeneratorConfig | DCGANDiscriminatorConfig


def config_to_json(cfg: AnyConfig) -> dict[str, Any]:
    return _to_json(asdict(cfg))


def _fields(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec's keys as dataclass arguments: sequences back to tuples, `arch` dropped (it is not init).
    An unknown key raises TypeError in the dataclass, which checkpoint loading reports."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k != "arch"}


def _legacy_conditioning(spec: dict[str, Any]) -> dict[str, Any]:
    """A conditional spec written before `conditioning` existed is a concatenated-embedding G (whatever the
    dataclass default now is)."""
    if spec.get("num_classes") is not None and "conditioning" not in spec:
        return {**spec, "conditioning": "concat"}
    return spec


def build_generator(spec: dict[str, Any]) -> nn.Module:
    arch = spec.get("arch", "mlp")
    spec = _legacy_conditioning(spec)
    if arch == "mlp":
        return MLPGenerator(MLPGeneratorConfig(**_fields(spec)))
    if arch == "dcgan":
        return DCGANGenerator(DCGANGeneratorConfig(**_fields(spec)))
    if arch == "mad-gan":
        return MADGANGenerator(spec["base"], int(spec["generators"]))
    if arch == "adagan":
        weights = [float(w) for w in spec["weights"]]
        if len(weights) != int(spec["generators"]):
            raise ValueError(f"adagan spec: {spec['generators']} generators but {len(weights)} weights")
        return AdaGANMixture(spec["base"], weights)
    raise ValueError(f"unknown generator architecture {arch!r}; known: 'mlp', 'dcgan', 'mad-gan', 'adagan'")


def build_discriminator(spec: dict[str, Any]) -> nn.Module:
    arch = spec.get("arch", "mlp")
    if arch == "mlp":
        return MLPDiscriminator(MLPDiscriminatorConfig(**_fields(spec)))
    if arch == "dcgan":
        return DCGANDiscriminator(DCGANDiscriminatorConfig(**_fields(spec)))
    raise ValueError(f"unknown discriminator architecture {arch!r}; known: 'mlp', 'dcgan'")


# --- from a training config -----------------------------------------------------------------------------------


def build_models(
    config: "TrainConfig", sample_shape: tuple[int, ...], num_classes: int | None
) -> tuple[nn.Module, nn.Module]:
    """G and D for `config`, making samples of `sample_shape` (C×H×W images or (D,) points).
    `num_classes` is used only when `config.conditional` (it must then be given)."""
    classes = _classes(config, num_classes)
    shape = tuple(int(s) for s in sample_shape)
    output: Output = config.output or ("linear" if len(shape) == 1 else "tanh")
    if config.architecture == "dcgan":
        g, d = _dcgan(config, shape, output, classes)
    else:
        g_spec = _mlp_g_spec(config, shape, output, classes)
        d_spec = _mlp_d_spec(config, shape, classes)
        if config.architecture == "mad-gan":
            k = config.generators
            g, d = MADGANGenerator(g_spec, k), build_discriminator({**d_spec, "outputs": k + 1})
        else:
            g, d = build_generator(g_spec), build_discriminator(d_spec)
    if config.weight_init == "dcgan":
        g.apply(dcgan_init)
        d.apply(dcgan_init)
    return g, d


def dcgan_init(module: nn.Module) -> None:
    """Radford et al. (2016)'s initialisation, for `Module.apply`: convolution and linear weights from N(0, 0.02),
    zero biases, BatchNorm gains from N(1, 0.02) and zero shifts. Class-conditional BatchNorm and embeddings keep
    their own (already N(1, 0.02) / N(0, 0.02) for the gains and shifts)."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
        nn.init.normal_(module.weight, 0.0, CBN_INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d) and module.affine:
        nn.init.normal_(module.weight, 1.0, CBN_INIT_STD)
        nn.init.zeros_(module.bias)


def _classes(config: "TrainConfig", num_classes: int | None) -> int | None:
    if not config.conditional:
        return None
    if num_classes is None or num_classes < 2:
        raise ValueError(
            f"`conditional: true` needs a labelled dataset, and {config.dataset} has "
            f"{'no labels here' if num_classes is None else f'{num_classes} class'} (MNIST: the t10k/train "
            "`*-labels-idx1-ubyte[.gz]` file beside the images; an uploaded dataset: classes as folders). Add them, or "
            'train unconditionally: `"conditional": false` (MNIST\'s default recipe is then `mnist-dcgan`)'
        )
    return num_classes


def _mlp_g_spec(config: "TrainConfig", shape: tuple[int, ...], output: Output, classes: int | None) -> dict[str, Any]:
    points = len(shape) == 1
    cfg = MLPGeneratorConfig(
        latent_dim=config.latent_dim,
        hidden=tuple(config.g_hidden or (TOY_G_HIDDEN if points else SEED_G_HIDDEN)),
        image_shape=shape,
        output=output,
        # Toy G: plain ReLU MLP — BatchNorm on 2-D mixtures only adds batch coupling it does not need.
        activation="relu" if points else "leaky_relu",
        batchnorm=not points,
        num_classes=classes,
    )
    return config_to_json(cfg)


def _mlp_d_spec(config: "TrainConfig", shape: tuple[int, ...], classes: int | None) -> dict[str, Any]:
    points = len(shape) == 1
    hidden = tuple(config.d_hidden or (TOY_D_HIDDEN if points else SEED_D_HIDDEN))
    return config_to_json(MLPDiscriminatorConfig(image_shape=shape, hidden=hidden, num_classes=classes))


def _dcgan(
    config: "TrainConfig", shape: tuple[int, ...], output: Output, classes: int | None
) -> tuple[nn.Module, nn.Module]:
    if len(shape) != 3:
        raise ValueError(f"dcgan generates images; samples of shape {shape} are not C×H×W")
    image_shape = (shape[0], shape[1], shape[2])
    g = DCGANGenerator(
        DCGANGeneratorConfig(latent_dim=config.latent_dim, image_shape=image_shape, output=output, num_classes=classes)
    )
    d = DCGANDiscriminator(DCGANDiscriminatorConfig(image_shape=image_shape, num_classes=classes))
    return g, d
