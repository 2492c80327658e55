"""Plots of a memorization report: accuracy against maximum similarity, and histograms of nearest distances."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..utils import atomic_write

if TYPE_CHECKING:
    from .report import MemorizationReport

_STYLE = {"training": dict(color="black", marker="o"), "generated": dict(marker="*"), "baseline": dict(marker=".")}


def _save(fig, path: Path) -> Path:
    return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120, bbox_inches="tight"))


def plot_scatter(rep: "MemorizationReport", path: str | Path) -> Path:
    """Accuracy (x) against maximum similarity (y) of every model: generated, training and each baseline variant."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot()
    for g in rep.groups:
        if not g.behaviour:
            continue
        acc, sim = g.behaviour["accuracy"], g.behaviour["max_similarity"]
        ok = ~(torch.isnan(acc) | torch.isnan(sim))
        size = 90 if g.kind == "generated" else 25
        ax.scatter(acc[ok].numpy(), sim[ok].numpy(), s=size, alpha=0.75, label=g.name, **_STYLE[g.kind])
    ax.set_xlabel("test accuracy")
    ax.set_ylabel("maximum similarity to a training model (IoU of errors)")
    ax.set_title("accuracy vs. maximum similarity")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, Path(path))


def plot_distances(rep: "MemorizationReport", path: str | Path) -> Path:
    """Histograms of nearest-training-model distances, aligned (left) and raw (right), per model set."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, which in zip(axes, ("aligned", "raw")):
        values = {g.name: getattr(g, which).distances for g in rep.groups}
        finite = torch.cat([v[~torch.isnan(v)] for v in values.values()])
        if len(finite) == 0:
            continue
        hi = float(finite.max()) or 1.0
        bins = torch.linspace(0, hi * 1.02, 31).numpy()
        for g in rep.groups:
            v = values[g.name]
            v = v[~torch.isnan(v)].numpy()
            label = "training (nearest other)" if g.kind == "training" else g.name
            lw = 2.0 if g.kind != "baseline" else 1.0
            ax.hist(v, bins=bins, histtype="step", linewidth=lw, label=label,
                    color="black" if g.kind == "training" else None)
        ax.set_xlabel(f"L2 distance to nearest training model ({which})")
        ax.set_ylabel("models")
        ax.set_title(which)
    axes[0].axvline(rep.config["copy_fraction"] * rep.spread_aligned, color="red", linestyle="--",
                    label="copy threshold")
    axes[0].legend(fontsize=7)
    return _save(fig, Path(path))
