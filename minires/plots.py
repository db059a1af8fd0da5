"""Training curves as a PNG: loss and accuracy per epoch, train and test.

Drawn with matplotlib's object API (a ``Figure`` on an Agg canvas) rather than
``pyplot``: no global figure state and no GUI backend, so it works the same
on a headless server, in a test, and inside a program that uses another
backend of its own. matplotlib is imported here only, when a plot is drawn, so
``import minires`` does not need it (``minires train`` notes its absence).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Draw loss (left) and accuracy (right) against epoch; save to `path` (PNG).

    `history` is a list of per-epoch records with keys epoch, train_loss,
    test_loss, train_acc, test_acc (what metrics.jsonl holds). Raises
    ImportError when matplotlib is not installed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .checkpoint import atomic_write

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself to the figure
    ax_loss, ax_acc = fig.subplots(1, 2)
    for split, style in (("train", "-"), ("test", "--")):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], style, marker="o", label=split)
        ax_acc.plot(
            epochs, [100 * r[f"{split}_acc"] for r in history], style, marker="o", label=split
        )
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    # Log scale: a falling loss spans orders of magnitude, and that is the
    # part worth seeing; it needs strictly positive values.
    if all(r[f"{s}_loss"] > 0 for r in history for s in ("train", "test")):
        ax_loss.set_yscale("log")
    if history:
        best = max(history, key=lambda r: r["test_acc"])
        ax_acc.annotate(
            f"best test {100 * best['test_acc']:.2f}%",
            (best["epoch"], 100 * best["test_acc"]),
            textcoords="offset points",
            xytext=(0, -18),
            ha="center",
        )
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    return path
