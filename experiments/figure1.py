"""Goodfellow et al. (2014), Figure 1, on `gaussian-1d` (N(4, 0.5²), training/toy.py).

    .venv/bin/python -m experiments.figure1 [--steps 2000] [--loss non-saturating] [--seed 0]

Trains G and D with the project's loop, then checks the paper's equilibrium claims on the final pair:
D(x) within 0.5 ± 0.05 over the data's support μ ± 2σ, and V(D, G) = E log D(x) + E log(1 − D(G(z)))
within 0.05 of −log 4. Plots p_data (density), p_g (histogram of generated samples) and D(x) as in the
figure; writes experiments/results/figure1.{md,png} and the README's block.
"""

import argparse
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.train_config import TrainConfig
from experiments import common
from training import toy

DATASET = "gaussian-1d"
N_EVAL = 100_000  # samples for the expectations in V(D, G): standard error ≈ 0.003
D_TOLERANCE = 0.05
V_TOLERANCE = 0.05


@dataclass(frozen=True)
class Equilibrium:
    d_min: float  # min / max of D(x) over μ ± 2σ
    d_max: float
    value: float  # V(D, G)

    @property
    def d_ok(self) -> bool:
        return abs(self.d_min - 0.5) <= D_TOLERANCE and abs(self.d_max - 0.5) <= D_TOLERANCE

    @property
    def v_ok(self) -> bool:
        return abs(self.value + math.log(4)) <= V_TOLERANCE


@torch.no_grad()
def d_prob(trained: common.Trained, x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(trained.d(x).reshape(-1))


@torch.no_grad()
def measure(trained: common.Trained, fake: torch.Tensor, support: torch.Tensor) -> Equilibrium:
    real = toy.sample(DATASET, N_EVAL, seed=12345)  # a fresh draw, not the training points
    # log D = −softplus(−logit), log(1 − D) = −softplus(logit): exact even where D saturates
    real_logits, fake_logits = trained.d(real).reshape(-1), trained.d(fake).reshape(-1)
    value = float(-F.softplus(-real_logits).mean() - F.softplus(fake_logits).mean())
    d = d_prob(trained, support)
    return Equilibrium(float(d.min()), float(d.max()), value)


def plot(trained: common.Trained, fake: torch.Tensor, eq: Equilibrium, title: str) -> None:
    dist = toy.TOY[DATASET]
    mu, sigma = float(dist.means[0, 0]), dist.sigma
    xs = torch.linspace(mu - 5 * sigma, mu + 5 * sigma, 400).unsqueeze(1)
    with common.figure(common.RESULTS / "figure1.png", figsize=(6, 3.5)) as fig:
        ax = fig.add_subplot()
        ax.plot(xs[:, 0], toy.density(DATASET, xs), "k:", label="p_data")
        ax.hist(
            fake[:, 0].numpy(),
            bins=120,
            range=(xs.min().item(), xs.max().item()),
            density=True,
            histtype="step",
            color="tab:green",
            label="p_g (samples)",
        )
        ax.set_ylabel("density")
        ax2 = ax.twinx()
        ax2.plot(xs[:, 0], d_prob(trained, xs), "b--", label="D(x)")
        ax2.axhline(0.5, color="grey", lw=0.5)
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("D(x)")
        ax.set_xlabel("x")
        ax.set_title(f"{title}: D ∈ [{eq.d_min:.3f}, {eq.d_max:.3f}] on μ±2σ, V = {eq.value:.3f}")
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def write_report(eq: Equilibrium, args: argparse.Namespace, seconds: float) -> None:
    body = (
        f"`python -m experiments.figure1 --steps {args.steps} --loss {args.loss} --seed {args.seed}` "
        f"({seconds:.0f} s). After training on N(4, 0.5²):\n\n"
        f"| check | measured | target | holds |\n|---|---|---|---|\n"
        f"| D(x) over μ ± 2σ | [{eq.d_min:.3f}, {eq.d_max:.3f}] | 0.5 ± {D_TOLERANCE} | {verdict(eq.d_ok)} |\n"
        f"| V(D, G) | {eq.value:.4f} | −log 4 = {-math.log(4):.4f} ± {V_TOLERANCE} | {verdict(eq.v_ok)} |\n"
    )
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    (common.RESULTS / "figure1.md").write_text(f"# Figure 1 on a 1-D Gaussian\n\n{body}\n![figure 1](figure1.png)\n")
    common.update_readme("figure1", f"{body}\n![figure 1](results/figure1.png)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--loss", default="non-saturating", choices=["non-saturating", "minimax"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    common.single_thread()
    start = time.monotonic()
    config = TrainConfig(model_name="figure1", dataset=DATASET, loss=args.loss, steps=args.steps, seed=args.seed)
    trained = common.train_and_load(config)
    fake = common.generate(trained, list(range(N_EVAL)))
    dist = toy.TOY[DATASET]
    mu = float(dist.means[0, 0])
    support = torch.linspace(mu - 2 * dist.sigma, mu + 2 * dist.sigma, 201).unsqueeze(1)
    eq = measure(trained, fake, support)
    plot(trained, fake, eq, f"{args.loss}, {args.steps} steps")
    write_report(eq, args, time.monotonic() - start)
    print(f"D over μ±2σ: [{eq.d_min:.3f}, {eq.d_max:.3f}] (ok={eq.d_ok}); V = {eq.value:.4f} (ok={eq.v_ok})")


if __name__ == "__main__":
    main()
