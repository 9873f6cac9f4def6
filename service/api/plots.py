"""A training job's curves as PNGs, drawn from its history on each request (a few tens of ms).

Matplotlib's object API (a `Figure`, no pyplot): pyplot keeps global state that is not thread-safe, and
FastAPI runs these routes in a thread pool.
"""

import io
import math
from collections.abc import Sequence
from typing import Any

from core.jobs import EpochRecord

# The loop reports two losses and D's mean output on real and generated batches (training/step.py).
LOSSES = {"d_loss": "D loss", "g_loss": "G loss"}
OUTPUTS = {"d_real": "D(x)", "d_fake": "D(G(z))"}


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _axes(fig: Any, title: str, rows: int = 1) -> list[Any]:
    from matplotlib.ticker import MaxNLocator

    axes = [fig.add_subplot(rows, 1, i + 1) for i in range(rows)]
    axes[0].set_title(title)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    axes[-1].set_xlabel("epoch")
    return axes


def _figure(height: float) -> Any:
    from matplotlib.figure import Figure  # late: most API processes never draw a plot

    return Figure(figsize=(6, height))


def _series(ax: Any, history: Sequence[EpochRecord], names: dict[str, str]) -> None:
    xs = [e.epoch for e in history]
    for key, label in names.items():
        ys = [e.losses.get(key) for e in history]
        if any(y is not None for y in ys):  # gaps where a value was not finite
            ax.plot(
                xs, [float("nan") if y is None else y for y in ys], marker="." if len(xs) < 50 else None, label=label
            )


def losses_png(history: Sequence[EpochRecord], title: str, probabilistic: bool, binary: bool) -> bytes:
    """Top: D and G loss per epoch. Bottom: D's mean output on real and generated data. Where D's output is a
    probability, a dashed line marks the equilibrium of Goodfellow et al., D = 1/2 everywhere; where D is
    also a binary (BCE) classifier, its loss there is 2 log 2."""
    fig = _figure(5.5)
    top, bottom = _axes(fig, title, rows=2)
    _series(top, history, LOSSES)
    _series(bottom, history, OUTPUTS)
    top.set_ylabel("mean over the epoch")
    bottom.set_ylabel("P(real)" if probabilistic else "critic value")
    if probabilistic:
        bottom.axhline(0.5, ls="--", lw=0.8, color="grey", label="1/2")
    if probabilistic and binary:
        top.axhline(2 * math.log(2), ls="--", lw=0.8, color="grey", label="2 log 2")
    top.legend(fontsize=8)
    bottom.legend(fontsize=8)
    return _png(fig)


def evaluated(history: Sequence[EpochRecord], key: str) -> list[tuple[int, float]]:
    return [
        (e.epoch, float(e.evaluation[key]))
        for e in history
        if e.evaluation is not None and isinstance(e.evaluation.get(key), int | float)
    ]


def fid_png(history: Sequence[EpochRecord], title: str) -> bytes:
    """FID (left axis) and KID (right axis) against the epoch, with the extractor they were measured in."""
    fig = _figure(3.5)
    (ax,) = _axes(fig, title)
    fid = evaluated(history, "fid")
    extractor = next((e.evaluation.get("extractor") for e in history if e.evaluation), "?")
    ax.plot([x for x, _ in fid], [y for _, y in fid], marker="o", color="tab:blue", label="FID")
    ax.set_ylabel(f"FID ({extractor} features)", color="tab:blue")
    kid = evaluated(history, "kid_mean")
    if kid:
        ax2 = ax.twinx()
        ax2.plot([x for x, _ in kid], [y for _, y in kid], marker="s", color="tab:orange", label="KID")
        ax2.set_ylabel("KID", color="tab:orange")
    return _png(fig)
