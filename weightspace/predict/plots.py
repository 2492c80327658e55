"""Plot of predicted against true metric values (a checkpoint per point), as a PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..utils import atomic_write


def plot_predictions(pred: np.ndarray, true: np.ndarray, path: str | Path, title: str = "",
                     metric: str = "test accuracy") -> Path:
    """Scatter of ``pred`` against ``true`` with the identity line, written atomically to ``path``."""
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot()
    ax.scatter(true, pred, s=6, alpha=0.5)
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel(f"true {metric}")
    ax.set_ylabel(f"predicted {metric}")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return path
