"""Architectures: shapes, conditioning, MAD-GAN's generator choice, spec round trips, and the seeds' MLP
(the bundled model must keep loading with the same weights and outputs)."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from core.train_config import TrainConfig
from training.architectures import (
    ConditionalBatchNorm,
    DCGANDiscriminator,
    DCGANDiscriminatorConfig,
    DCGANGenerator,
    DCGANGeneratorConfig,
    MADGANGenerator,
    MLPDiscriminator,
    MLPDiscriminatorConfig,
    MLPGenerator,
    MLPGeneratorConfig,
    build_discriminator,
    build_generator,
    build_models,
    config_to_json,
)
from training.checkpoint import load, load_generator, unprefixed
from training.latents import latents_from_seeds

BUNDLED = Path(__file__).resolve().parents[2] / "service" / "bundled" / "mnist-mlp" / "1" / "model"
N = 3
CLASSES = 10


def config(**kwargs: object) -> TrainConfig:
    return TrainConfig.model_validate({"model_name": "m", "latent_dim": 16, **kwargs})


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def labels(n: int = N) -> torch.Tensor:
    return torch.arange(n) % CLASSES


CASES = [
    # (config fields, sample shape)
    ({"dataset": "mnist"}, (1, 28, 28)),
    ({"dataset": "cifar10"}, (3, 32, 32)),
    ({"dataset": "image-folder", "image_folder": "faces", "image_size": 64}, (3, 64, 64)),
    ({"dataset": "mnist", "architecture": "dcgan"}, (1, 28, 28)),
    ({"dataset": "cifar10", "architecture": "dcgan"}, (3, 32, 32)),
    ({"dataset": "image-folder", "image_folder": "faces", "architecture": "dcgan", "image_size": 64}, (3, 64, 64)),
    ({"dataset": "mnist", "architecture": "mad-gan", "generators": 3}, (1, 28, 28)),
    ({"dataset": "gaussian-1d"}, (1,)),
    ({"dataset": "ring-2d"}, (2,)),
    ({"dataset": "grid-2d", "architecture": "mad-gan", "generators": 5}, (2,)),
]


@pytest.mark.parametrize(("fields", "shape"), CASES)
def test_shapes_of_every_architecture(fields: dict, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    cfg = config(**fields)
    g, d = build_models(cfg, shape, None)
    x = g(torch.randn(N, cfg.latent_dim))
    assert x.shape == (N, *shape)
    logits = d(x)
    if cfg.architecture == "mad-gan":
        assert g.num_generators == cfg.generators  # type: ignore[attr-defined]
        assert logits.shape == (N, cfg.generators + 1)
    else:
        assert logits.shape == (N,)
    if len(shape) == 3:  # images: tanh by default, so samples are in [-1, 1]
        assert x.abs().max() <= 1


@pytest.mark.parametrize(("fields", "shape"), CASES)
def test_spec_round_trip_rebuilds_the_same_networks(fields: dict, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    g, d = build_models(config(**fields), shape, None)
    g_spec, d_spec = json.loads(json.dumps(g.spec)), json.loads(json.dumps(d.spec))
    assert g_spec == g.spec and d_spec == d.spec and "arch" in g_spec and "arch" in d_spec
    g2, d2 = build_generator(g_spec), build_discriminator(d_spec)
    g2.load_state_dict(g.state_dict())  # strict: same keys and shapes
    d2.load_state_dict(d.state_dict())
    g.eval(), g2.eval()
    z = torch.randn(N, 16)
    x = g(z)
    assert torch.equal(g2(z), x)
    assert torch.equal(d2(x), d(x))


def test_toy_defaults_are_small_mlps_without_batchnorm() -> None:
    g, d = build_models(config(dataset="ring-2d"), (2,), None)
    assert [m.out_features for m in g.modules() if isinstance(m, nn.Linear)] == [128, 128, 128, 2]
    assert [m.out_features for m in d.modules() if isinstance(m, nn.Linear)] == [128, 128, 128, 1]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in [*g.modules(), *d.modules()])
    assert not any(isinstance(m, nn.Tanh) for m in g.modules())  # toy points are unbounded


def test_hidden_widths_override_the_defaults() -> None:
    g, d = build_models(config(dataset="ring-2d", g_hidden=[7, 9], d_hidden=[5]), (2,), None)
    assert [m.out_features for m in g.modules() if isinstance(m, nn.Linear)] == [7, 9, 2]
    assert [m.out_features for m in d.modules() if isinstance(m, nn.Linear)] == [5, 1]


def test_dcgan_discriminator_has_no_batchnorm() -> None:
    _, d = build_models(config(dataset="cifar10", architecture="dcgan"), (3, 32, 32), None)
    assert not any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in d.modules())


@pytest.mark.parametrize("kind", ["dcgan", "mlp", "mad-gan"])
def test_dcgan_weight_init_draws_weights_from_n_0_002(kind: str) -> None:
    torch.manual_seed(0)
    g, d = build_models(config(dataset="mnist", architecture=kind, weight_init="dcgan"), (1, 28, 28), None)
    layers = [m for net in (g, d) for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear)]
    weights = torch.cat([m.weight.flatten() for m in layers])
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)
    assert all(m.bias is None or not m.bias.any() for m in layers)
    gains = [m.weight for m in g.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    assert gains and all(0.8 < w.mean().item() < 1.2 and w.std().item() > 0 for w in gains)
    torch.manual_seed(0)
    g0, _ = build_models(config(dataset="mnist", architecture=kind), (1, 28, 28), None)
    default = next(m for m in g0.modules() if isinstance(m, nn.Linear)).weight
    assert abs(default.std().item() - 0.02) > 0.01  # PyTorch's own init (±1/√fan_in) is another spread


def test_dcgan_rejects_other_sizes() -> None:
    with pytest.raises(ValueError, match="28, 32 or 64"):
        DCGANGenerator(DCGANGeneratorConfig(image_shape=(3, 48, 48)))


@pytest.mark.parametrize(
    ("fields", "shape"),
    [({"dataset": "mnist"}, (1, 28, 28)), ({"dataset": "cifar10", "architecture": "dcgan"}, (3, 32, 32))],
)
def test_conditional_g_and_projection_d_use_the_label(fields: dict, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    g, d = build_models(config(conditional=True, **fields), shape, CLASSES)
    g.eval()
    z = torch.randn(N, 16)
    x = g(z, labels=labels())
    assert x.shape == (N, *shape)
    assert not torch.equal(g(z, labels=labels() + 1), x)
    # Projection D: ψ(φ(x)) + ⟨embed(y), φ(x)⟩ — another label, another logit for the same x.
    logits = d(x, labels=labels())
    assert logits.shape == (N,)
    assert not torch.allclose(d(x, labels=labels() + 1), logits)
    with pytest.raises(ValueError, match="labels"):
        g(z)
    with pytest.raises(ValueError, match="labels"):
        d(x)


COND_CASES = [
    ({"dataset": "mnist"}, (1, 28, 28)),
    ({"dataset": "mnist", "architecture": "dcgan"}, (1, 28, 28)),
    ({"dataset": "cifar10", "architecture": "dcgan"}, (3, 32, 32)),
]


def cbn_generator(kind: str) -> nn.Module:
    """A G conditioned through its BatchNorms: the mlp one `build_models` makes, or a dcgan one asked for."""
    if kind == "mlp":
        return build_models(config(conditional=True), (1, 28, 28), CLASSES)[0]
    return DCGANGenerator(
        DCGANGeneratorConfig(latent_dim=16, image_shape=(1, 28, 28), num_classes=CLASSES, conditioning="batchnorm")
    )


def z_share(g: nn.Module, per_label: int = 64) -> float:
    """How much of G's output variance over a (CLASSES labels × `per_label` latents) grid the latent explains:
    the mean variance over z within a label, over that plus the variance of the labels' mean images.
    1 when the label barely matters, 0 when each label gives one image whatever z is."""
    z = torch.randn(per_label, 16).repeat(CLASSES, 1)
    y = torch.arange(CLASSES).repeat_interleave(per_label)
    with torch.no_grad():
        x = g(z, labels=y).flatten(1).view(CLASSES, per_label, -1)
    within, between = x.var(1).mean(), x.mean(1).var(0).mean()
    return float(within / (within + between))


@pytest.mark.parametrize("kind", ["mlp", "dcgan"])
def test_conditional_g_varies_with_z_within_a_class_and_with_the_label(kind: str) -> None:
    """The regression this guards: a conditional G that draws one image per class whatever the seed. With
    the label embedding concatenated to z before G's BatchNorms, z explained only 0.48–0.59 of the output
    variance here at init (0.80–0.88 with the default 100-dim z), and the label's share grew in training
    until each class collapsed (z: 0.006 on MNIST); with conditional BatchNorm the label starts as a small
    per-class gain and bias and z explains > 0.99."""
    torch.manual_seed(0)
    g = cbn_generator(kind)
    g.train()  # batch statistics, as in training
    assert z_share(g) > 0.95
    # …and one latent drawn as every class gives CLASSES different images.
    g.eval()
    x = g(torch.randn(1, 16).expand(CLASSES, 16), labels=torch.arange(CLASSES)).flatten(1)
    distances = torch.cdist(x, x) + torch.eye(CLASSES)
    assert distances.min() > 1e-3


@pytest.mark.parametrize("kind", ["mlp", "dcgan"])
def test_conditional_g_sees_the_label_through_its_batchnorms_only(kind: str) -> None:
    g = cbn_generator(kind)
    assert g.spec["conditioning"] == "batchnorm" and g.label is None
    first = next(m for m in g.modules() if isinstance(m, nn.Linear))
    assert first.in_features == 16  # z alone
    norms = [m for m in g.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    cbns = [m for m in g.modules() if isinstance(m, ConditionalBatchNorm)]
    assert len(cbns) >= 2 and len(norms) == len(cbns) and not any(m.affine for m in norms)


def test_conditional_families_conditioning() -> None:
    """mlp: conditional BatchNorm; dcgan: still the concatenated embedding (training/architectures.py says why)."""
    mlp, _ = build_models(config(conditional=True), (1, 28, 28), CLASSES)
    dcgan, _ = build_models(config(conditional=True, architecture="dcgan"), (1, 28, 28), CLASSES)
    assert mlp.spec["conditioning"] == "batchnorm" and dcgan.spec["conditioning"] == "concat"


@pytest.mark.parametrize(("fields", "shape"), COND_CASES)
def test_conditional_spec_round_trip_rebuilds_the_same_networks(fields: dict, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    g, d = build_models(config(conditional=True, **fields), shape, CLASSES)
    g_spec, d_spec = json.loads(json.dumps(g.spec)), json.loads(json.dumps(d.spec))
    assert g_spec == g.spec and d_spec == d.spec
    g2, d2 = build_generator(g_spec), build_discriminator(d_spec)
    g2.load_state_dict(g.state_dict())  # strict: same keys and shapes
    d2.load_state_dict(d.state_dict())
    g.eval(), g2.eval()
    z = torch.randn(N, 16)
    x = g(z, labels=labels())
    assert torch.equal(g2(z, labels=labels()), x)
    assert torch.equal(d2(x, labels=labels()), d(x, labels=labels()))


@pytest.mark.parametrize(
    ("cls", "cfg_cls", "shape"),
    [(MLPGenerator, MLPGeneratorConfig, (1, 28, 28)), (DCGANGenerator, DCGANGeneratorConfig, (1, 28, 28))],
)
def test_concat_conditional_checkpoints_still_load(cls: type, cfg_cls: type, shape: tuple[int, ...]) -> None:
    """Specs written before `conditioning` existed concatenated the label embedding to z: rebuilt as such."""
    old = cls(cfg_cls(latent_dim=16, image_shape=shape, num_classes=CLASSES, conditioning="concat"))
    legacy = {k: v for k, v in old.spec.items() if k != "conditioning"}
    g = build_generator(legacy)
    assert g.spec["conditioning"] == "concat"
    g.load_state_dict(old.state_dict())  # strict
    assert g.state_dict()["label.embed.weight"].shape == (CLASSES, 32)
    g.eval()
    z = torch.randn(N, 16)
    assert g(z, labels=labels()).shape == (N, *shape)
    with pytest.raises(ValueError, match="labels"):
        g(z)


def test_batchnorm_conditioning_needs_batchnorm() -> None:
    with pytest.raises(ValueError, match="needs batchnorm"):
        MLPGenerator(MLPGeneratorConfig(image_shape=(2,), hidden=(8,), batchnorm=False, num_classes=3))
    g = MLPGenerator(
        MLPGeneratorConfig(image_shape=(2,), hidden=(8,), batchnorm=False, num_classes=3, conditioning="concat")
    )
    assert g(torch.randn(2, 100), labels=torch.tensor([0, 2])).shape == (2, 2)


def test_projection_term_is_the_inner_product() -> None:
    torch.manual_seed(0)
    d = MLPDiscriminator(MLPDiscriminatorConfig(image_shape=(2,), hidden=(4,), num_classes=3))
    x, y = torch.randn(5, 2), torch.tensor([0, 1, 2, 0, 1])
    phi = d.net[:-1](x)
    expected = d.net[-1](phi).squeeze(1) + (d.embed(y) * phi).sum(1)  # type: ignore[misc]
    assert torch.allclose(d(x, labels=y), expected)


def test_conditional_needs_the_number_of_classes() -> None:
    # the message says what is missing and both ways out: the labels, or an unconditional job
    missing = r"needs a labelled dataset, and mnist has no labels here.*conditional\": false"
    with pytest.raises(ValueError, match=missing):
        build_models(config(conditional=True), (1, 28, 28), None)
    with pytest.raises(ValueError, match="has 1 class"):
        build_models(config(conditional=True), (1, 28, 28), 1)


def test_unconditional_models_refuse_labels() -> None:
    g, d = build_models(config(), (1, 28, 28), None)
    with pytest.raises(ValueError, match="not class-conditional"):
        g(torch.randn(2, 16), labels=labels(2))
    with pytest.raises(ValueError, match="not class-conditional"):
        d(torch.randn(2, 1, 28, 28), labels=labels(2))


@pytest.mark.parametrize(("dataset", "shape"), [("ring-2d", (2,)), ("mnist", (1, 28, 28))])
def test_madgan_picks_generators_per_sample(dataset: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    k = 3
    g, d = build_models(config(dataset=dataset, architecture="mad-gan", generators=k), shape, None)
    assert isinstance(g, MADGANGenerator)
    g.eval()
    z = torch.randn(1, 16).expand(k, 16)  # the same z for every generator
    x = g(z, generator=torch.arange(k))
    assert all(not torch.equal(x[i], x[j]) for i in range(k) for j in range(i + 1, k))
    # Sample i is generator i's own output, whatever the rest of the batch is.
    for i in range(k):
        assert torch.allclose(x[i : i + 1], g.generators[i](z[:1]), atol=1e-6)  # batch-size rounding
    assert torch.allclose(g(z[:2], generator=torch.tensor([2, 2])), g.generators[2](z[:2]), atol=1e-6)
    assert d(x).shape == (k, k + 1)
    with pytest.raises(ValueError, match="0…2"):
        g(z, generator=torch.tensor([0, 1, 3]))


def test_madgan_trains_with_batchnorm_on_any_split() -> None:
    """In train mode a generator given one sample of the batch must not break BatchNorm."""
    g, _ = build_models(config(architecture="mad-gan", generators=3), (1, 28, 28), None)
    x = g.train()(torch.randn(4, 16), generator=torch.tensor([0, 0, 0, 1]))
    x.sum().backward()
    assert x.shape == (4, 1, 28, 28)


def test_seed_mlp_parameter_counts() -> None:
    # G: (100·128+128) + (128·256+256) + (256·512+512) + (512·1024+1024) + (1024·784+784) linear
    #    + 2·(128+256+512+1024) BatchNorm affine = 1,506,448 + 3,840.
    g = MLPGenerator(MLPGeneratorConfig())
    assert n_params(g) == 1_510_288
    # D: (784·256+256) + (256·128+128) + (128+1).
    assert n_params(MLPDiscriminator(MLPDiscriminatorConfig())) == 233_985
    g_built, d_built = build_models(TrainConfig(model_name="m"), (1, 28, 28), None)
    assert n_params(g_built) == 1_510_288 and n_params(d_built) == 233_985


def test_seed_mlp_spec_and_state_dict_keys_are_unchanged() -> None:
    g = MLPGenerator(MLPGeneratorConfig())
    spec = config_to_json(g.cfg)
    assert {k: spec[k] for k in ("arch", "latent_dim", "hidden", "image_shape", "output")} == {
        "arch": "mlp",
        "latent_dim": 100,
        "hidden": [128, 256, 512, 1024],
        "image_shape": [1, 28, 28],
        "output": "tanh",
    }
    keys = list(g.state_dict())
    assert keys[:3] == ["net.0.weight", "net.0.bias", "net.2.weight"] and keys[-2:] == ["net.12.weight", "net.12.bias"]
    assert list(MLPDiscriminator(MLPDiscriminatorConfig()).state_dict()) == [
        f"net.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")
    ]


def _seed_reference(image_shape: tuple[int, int, int]) -> nn.Sequential:
    """The seeds' generator written out by hand, as it was before the other architectures existed."""
    layers: list[nn.Module] = []
    width = 100
    for h in (128, 256, 512, 1024):
        layers += [nn.Linear(width, h), nn.LeakyReLU(0.2), nn.BatchNorm1d(h)]
        width = h
    layers += [nn.Linear(width, math.prod(image_shape)), nn.Tanh()]
    return nn.Sequential(*layers)


def test_bundled_model_loads_with_identical_outputs() -> None:
    generator, meta = load_generator(BUNDLED)
    assert meta["generator"]["arch"] == "mlp"
    tensors, _ = load(BUNDLED)
    reference = _seed_reference((1, 28, 28))
    reference.load_state_dict(unprefixed(unprefixed(tensors, "generator"), "net"))
    reference.eval()
    z = latents_from_seeds(list(range(8)), 100)
    with torch.inference_mode():
        ours = torch.cat([generator(v.unsqueeze(0)) for v in z])
        theirs = torch.cat([reference(v.unsqueeze(0)).view(1, 1, 28, 28) for v in z])
    assert torch.equal(ours, theirs)
    # Its spec round-trips through today's builder as well.
    assert build_generator(generator.spec).state_dict().keys() == generator.state_dict().keys()


def test_unknown_architecture_and_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown generator"):
        build_generator({"arch": "stylegan"})
    with pytest.raises(ValueError, match="unknown discriminator"):
        build_discriminator({"arch": "mad-gan"})
    with pytest.raises(TypeError):
        build_generator({"arch": "mlp", "colour": "red"})


def test_dcgan_width_is_a_spec_parameter() -> None:
    small = DCGANDiscriminator(DCGANDiscriminatorConfig(image_shape=(3, 64, 64), width=8))
    assert build_discriminator(small.spec).state_dict()["features.0.weight"].shape == (8, 3, 4, 4)
    g = DCGANGenerator(DCGANGeneratorConfig(latent_dim=4, image_shape=(1, 28, 28), width=8))
    assert n_params(g) < n_params(DCGANGenerator(DCGANGeneratorConfig(latent_dim=4, image_shape=(1, 28, 28))))
