"""Why the generator minimises −log D(G(z)) instead of log(1 − D(G(z))) (Goodfellow et al. 2014, §3;
Arjovsky & Bottou 2017, §2.2), measured on MNIST.

    .venv/bin/python -m experiments.vanishing_gradients [--d-steps 400] [--every 25] [--g-epochs 0,1]

For each early generator — freshly initialised (0 epochs) and after 1 epoch of the project's loop on the
data — a fresh D is trained alone against that fixed G; every `--every` D steps, the norm of the gradient
of each generator loss with respect to G's parameters is measured on a fixed batch of latents. As D grows
confident, the minimax loss's gradient vanishes (σ'(l) → 0 as l → −∞); the non-saturating one's does not.
Writes experiments/results/vanishing_gradients.{md,png} and the README's block.
"""

import argparse
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from core.train_config import TrainConfig
from experiments import common
from training import losses
from training.architectures import build_models
from training.data import load_training_data, to_model_range
from training.latents import latents_from_seeds

BATCH = 128
LOSSES = {
    "minimax log(1 − D(G(z)))": losses.generator_minimax,
    "non-saturating −log D(G(z))": losses.generator_non_saturating,
}


@dataclass
class Trace:
    g_epochs: int
    d_steps: list[int] = field(default_factory=list)
    d_fake: list[float] = field(default_factory=list)  # mean D(G(z)) on the probe batch
    norms: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in LOSSES})


def base_config(g_epochs: int) -> TrainConfig:
    return TrainConfig(model_name="vanishing", dataset="mnist", epochs=max(g_epochs, 1), seed=0)


def early_generator(g_epochs: int) -> nn.Module:
    """G after `g_epochs` epochs of the real loop, or freshly initialised (seeded) for 0."""
    config = base_config(g_epochs)
    if g_epochs == 0:
        torch.manual_seed(config.seed)
        return build_models(config, (1, 28, 28), None)[0].eval()
    return common.train_and_load(config).g


def grad_norm(g: nn.Module, d: nn.Module, z: torch.Tensor, loss_fn: losses.LossFn) -> float:
    g.zero_grad(set_to_none=True)
    loss_fn(d(g(z)).reshape(-1)).backward()
    return float(torch.sqrt(sum(p.grad.pow(2).sum() for p in g.parameters() if p.grad is not None)))


def probe(trace: Trace, step: int, g: nn.Module, d: nn.Module, z: torch.Tensor) -> None:
    d.requires_grad_(False)  # only G's gradient is measured; D's would be discarded anyway
    for name, fn in LOSSES.items():
        trace.norms[name].append(grad_norm(g, d, z, fn))
    with torch.no_grad():
        trace.d_fake.append(float(torch.sigmoid(d(g(z)).reshape(-1)).mean()))
    trace.d_steps.append(step)
    d.requires_grad_(True)


def run(g_epochs: int, real: torch.Tensor, d_steps: int, every: int) -> Trace:
    g = early_generator(g_epochs)  # eval: BatchNorm uses running stats, so G is one fixed function
    torch.manual_seed(1)
    d = build_models(base_config(g_epochs), (1, 28, 28), None)[1]
    opt = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    z_probe = latents_from_seeds(list(range(BATCH)), 100)
    gen = torch.Generator().manual_seed(2)
    trace = Trace(g_epochs)
    for step in range(d_steps + 1):
        if step % every == 0:
            probe(trace, step, g, d, z_probe)
        with torch.no_grad():
            fake = g(torch.randn(BATCH, 100, generator=gen))
        batch = to_model_range(real[torch.randint(len(real), (BATCH,), generator=gen)])
        loss = losses.discriminator_bce(d(batch).reshape(-1), d(fake).reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return trace


def plot(traces: list[Trace]) -> None:
    with common.figure(common.RESULTS / "vanishing_gradients.png", figsize=(5 * len(traces), 3.5)) as fig:
        for i, t in enumerate(traces):
            ax = fig.add_subplot(1, len(traces), i + 1)
            for name, values in t.norms.items():
                ax.semilogy(t.d_steps, values, label=name)
            ax.set_xlabel("D steps against a fixed G")
            ax.set_ylabel("‖∇θG loss‖")
            ax.set_title(f"G after {t.g_epochs} epoch(s)")
            ax.legend(fontsize=8)


def write_report(traces: list[Trace], args: argparse.Namespace, seconds: float) -> None:
    names = list(LOSSES)
    rows = [
        f"| {t.g_epochs} | {s} | {df:.2e} | {t.norms[names[0]][k]:.2e} | {t.norms[names[1]][k]:.2e} |"
        for t in traces
        for k, (s, df) in enumerate(zip(t.d_steps, t.d_fake, strict=True))
        if k in (0, len(t.d_steps) // 2, len(t.d_steps) - 1)
    ]
    body = (
        f"`python -m experiments.vanishing_gradients --d-steps {args.d_steps} --every {args.every} "
        f"--g-epochs {args.g_epochs}` ({seconds:.0f} s, MNIST from the data root).\n\n"
        f"| G epochs | D steps | mean D(G(z)) | ‖∇‖ minimax | ‖∇‖ non-saturating |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    (common.RESULTS / "vanishing_gradients.md").write_text(
        f"# Vanishing gradients\n\n{body}\n![gradient norms](vanishing_gradients.png)\n"
    )
    common.update_readme("vanishing_gradients", f"{body}\n![gradient norms](results/vanishing_gradients.png)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--g-epochs", default="0,1", help="comma-separated epochs of G training before D trains")
    args = parser.parse_args()
    common.single_thread()
    start = time.monotonic()
    real = load_training_data(base_config(0), common.DATA_ROOT).samples
    traces = [run(int(e), real, args.d_steps, args.every) for e in args.g_epochs.split(",")]
    plot(traces)
    write_report(traces, args, time.monotonic() - start)
    for t in traces:
        print(
            t.g_epochs,
            "epochs:",
            {n: f"{v[0]:.2e} → {v[-1]:.2e}" for n, v in t.norms.items()},
            f"D(G(z)) {t.d_fake[0]:.3f} → {t.d_fake[-1]:.3f}",
        )


if __name__ == "__main__":
    main()
