"""A training job's curves as PNGs, drawn from its history on each request (a few tens of ms).

Matplotlib's object API (a `Figure`, no pyplot): pyplot keeps global state that is not thread-safe, and
FastAPI runs these routes in a thread pool.
"""

import io
from collections.abc import Sequence
from typing import Any

from service.jobs import EpochRecord

# Loss keys the loop reports, with the label a reader expects; others are drawn under their own name.
LOSS_LABELS = {"d_loss": "D loss", "g_loss": "G loss"}


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _figure(title: str) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # late: most API processes never draw a plot

    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    return fig, ax


def losses_png(history: Sequence[EpochRecord], title: str) -> bytes:
    """Every loss series of the history against the epoch (gaps where a value was not finite)."""
    fig, ax = _figure(title)
    keys = list(dict.fromkeys(k for e in history for k in e.losses))
    for key in keys:
        xs = [e.epoch for e in history]
        ys = [e.losses.get(key) for e in history]
        ax.plot(
            xs,
            [float("nan") if y is None else y for y in ys],
            marker="." if len(xs) < 50 else None,
            label=LOSS_LABELS.get(key, key),
        )
    ax.set_ylabel("mean over the epoch")
    ax.legend(fontsize=8)
    return _png(fig)


def evaluated(history: Sequence[EpochRecord], key: str) -> list[tuple[int, float]]:
    return [
        (e.epoch, float(e.evaluation[key]))
        for e in history
        if e.evaluation is not None and isinstance(e.evaluation.get(key), int | float)
    ]


def fid_png(history: Sequence[EpochRecord], title: str) -> bytes:
    """FID (left axis) and KID (right axis) against the epoch, with the extractor they were measured in."""
    fig, ax = _figure(title)
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
