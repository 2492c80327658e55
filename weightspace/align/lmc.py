"""Linear mode connectivity: interpolation, loss and accuracy barriers, BatchNorm reset, REPAIR, plots.

Barriers follow Frankle et al. 2020 and Entezari et al. 2022 (loss above the straight line between
the endpoint losses), with Git Re-Basin's variant (Ainsworth et al. 2023: max loss minus the mean
endpoint loss). REPAIR is Jordan et al. 2023.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
from torch import Tensor
from torch.optim.swa_utils import update_bn

from ..errors import StateDictMismatch, WeightSpaceError
from ..space import WeightSpace
from ..utils import atomic_write
from .matching import _batch_input, _feature_sites, _validate_pair

StateDict = Mapping[str, Tensor]
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def interpolate(space: WeightSpace | None, sd_a: StateDict, sd_b: StateDict, alpha: float) -> dict[str, Tensor]:
    """``(1 - alpha) * sd_a + alpha * sd_b`` for floating-point tensors; integer buffers come from A."""
    if space is not None:
        _validate_pair(space, sd_a, sd_b)
    elif set(sd_a) != set(sd_b):
        raise StateDictMismatch(f"state_dicts have different keys: {sorted(set(sd_a) ^ set(sd_b))[:8]}")
    out = {}
    for k, a in sd_a.items():
        b = sd_b[k]
        if a.shape != b.shape:
            raise StateDictMismatch(f"'{k}' has shape {tuple(a.shape)} in A but {tuple(b.shape)} in B")
        out[k] = torch.lerp(a, b.to(a.dtype), float(alpha)) if a.is_floating_point() else a.clone()
    return out


def loss_barrier(lambdas: Sequence[float], losses: Sequence[float]) -> float:
    """``max_l [L(l) - ((1 - l) L(0) + l L(1))]`` (Frankle et al. 2020; Entezari et al. 2022)."""
    l0, l1 = losses[0], losses[-1]
    return max(v - ((1 - t) * l0 + t * l1) for t, v in zip(lambdas, losses))


def rebasin_barrier(losses: Sequence[float]) -> float:
    """Git Re-Basin's barrier: ``max_l L(l) - (L(0) + L(1)) / 2``."""
    return max(losses) - 0.5 * (losses[0] + losses[-1])


def accuracy_barrier(lambdas: Sequence[float], accs: Sequence[float]) -> float:
    """``max_l [((1 - l) acc(0) + l acc(1)) - acc(l)]``: the accuracy lost below the straight line."""
    a0, a1 = accs[0], accs[-1]
    return max(((1 - t) * a0 + t * a1) - v for t, v in zip(lambdas, accs))


@dataclass
class Curve:
    """Loss (and accuracy) along the straight line between two models."""

    lambdas: list[float]
    losses: list[float]
    accs: list[float] = field(default_factory=list)

    @property
    def barrier(self) -> float:
        return loss_barrier(self.lambdas, self.losses)

    @property
    def rebasin_barrier(self) -> float:
        return rebasin_barrier(self.losses)

    @property
    def acc_barrier(self) -> float:
        return accuracy_barrier(self.lambdas, self.accs) if self.accs else float("nan")

    def summary(self) -> dict[str, float]:
        return {"loss_barrier": self.barrier, "rebasin_barrier": self.rebasin_barrier, "acc_barrier": self.acc_barrier}


@torch.no_grad()
def reset_bn_stats(model: nn.Module, batches: Iterable) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``batches`` (cumulative average), in place.

    Interpolated weights no longer match the endpoints' statistics; this is the "reset" of
    Jordan et al. 2023 and Git Re-Basin. ``batches`` yields inputs or ``(input, target)`` pairs;
    the work is :func:`torch.optim.swa_utils.update_bn`'s.
    """
    update_bn(batches, model)
    return model


def _correctable(space: WeightSpace, model: nn.Module) -> list[tuple[str, nn.Module, int]]:
    """Modules whose per-channel output can be rescaled by folding an affine map into their own weights."""
    sites = _feature_sites(space, model)
    out = []
    for name, mod in model.named_modules():
        if name not in sites:
            continue
        d, dim = sites[name]
        leaves: list[int] = []
        stack = [d]
        while stack:
            x = stack.pop()
            if isinstance(x, int):
                leaves.append(x)
            else:
                stack.extend(x.parts)
        if not any(space.groups[g].permutable for g in leaves):
            continue
        if isinstance(mod, _BN) and mod.affine or \
                isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and mod.bias is not None:
            out.append((name, mod, dim))
    return out


@torch.no_grad()
def _channel_stats(model: nn.Module, mods: list[tuple[str, nn.Module, int]], batches: list) -> dict[str, tuple[Tensor, Tensor]]:
    sums: dict[str, list] = {}
    handles = []
    for name, mod, dim in mods:
        def hook(m, i, o, name=name, dim=dim):
            y = o.detach().movedim(dim, -1).reshape(-1, o.shape[dim]).double()
            s = sums.setdefault(name, [0, 0.0, 0.0])
            s[0] += y.shape[0]
            s[1] = s[1] + y.sum(0)
            s[2] = s[2] + (y * y).sum(0)
        handles.append(mod.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        for batch in batches:
            model(_batch_input(batch))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    out = {}
    for name, (n, s1, s2) in sums.items():
        mean = s1 / n
        out[name] = (mean, (s2 / n - mean * mean).clamp_min(0).sqrt())
    return out


@torch.no_grad()
def repair(model: nn.Module, sd_a: StateDict, sd_b: StateDict, sd_merged: StateDict, batches: Iterable, *,
           alpha: float = 0.5, space: WeightSpace | None = None, eps: float = 1e-5) -> dict[str, Tensor]:
    """REPAIR (Jordan et al. 2023): restore each hidden channel's output statistics after interpolation.

    For every Linear/Conv (with bias) or affine BatchNorm whose output axis is a permutable group,
    the merged model's per-channel mean and standard deviation (measured on ``batches``) are mapped
    to the interpolation of the endpoints' ones, ``(1 - alpha) * A + alpha * B``, by folding an affine
    correction into that module's weight and bias. Layers are corrected in forward order, each
    measured after the earlier ones were corrected. Returns the corrected state_dict; ``model`` is
    only used as an architecture (a copy is loaded).
    """
    batches = list(batches)
    if not batches:
        raise WeightSpaceError("REPAIR needs at least one batch of inputs")
    net = copy.deepcopy(model)
    space = space or WeightSpace.from_module(net, _batch_input(batches[0]))
    mods = _correctable(space, net)
    net.load_state_dict(sd_a)
    st_a = _channel_stats(net, mods, batches)
    net.load_state_dict(sd_b)
    st_b = _channel_stats(net, mods, batches)
    net.load_state_dict(sd_merged)
    for entry in mods:
        name, mod, _ = entry
        if name not in st_a:
            continue
        mu_m, sd_m = _channel_stats(net, [entry], batches)[name]
        mu_t = (1 - alpha) * st_a[name][0] + alpha * st_b[name][0]
        sd_t = (1 - alpha) * st_a[name][1] + alpha * st_b[name][1]
        scale = sd_t / (sd_m + eps)
        w, b = mod.weight, mod.bias
        shape = (-1,) + (1,) * (w.dim() - 1)
        w.mul_(scale.to(w.dtype).view(shape))
        b.copy_(((b.double() - mu_m) * scale + mu_t).to(b.dtype))
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


Evaluate = Callable[[nn.Module], "tuple[float, float] | float"]


@torch.no_grad()
def interpolation_curve(model: nn.Module, sd_a: StateDict, sd_b: StateDict, evaluate: Evaluate, *,
                        lambdas: int | Sequence[float] = 11, space: WeightSpace | None = None,
                        bn: str = "reset", data: Iterable | None = None, progress: bool = False) -> Curve:
    """Evaluate ``(1 - l) A + l B`` on a grid of ``l``; ``evaluate(model)`` returns a loss or ``(loss, accuracy)``.

    ``bn``: ``"none"`` keeps interpolated BatchNorm statistics, ``"reset"`` re-estimates them on
    ``data`` (only where the model has BatchNorm), ``"repair"`` applies REPAIR on ``data``.
    """
    if bn not in ("none", "reset", "repair"):
        raise ValueError(f"bn must be 'none', 'reset' or 'repair', got {bn!r}")
    grid = [i / (lambdas - 1) for i in range(lambdas)] if isinstance(lambdas, int) else [float(t) for t in lambdas]
    data = list(data) if data is not None else None
    net = copy.deepcopy(model)
    has_bn = any(isinstance(m, _BN) for m in net.modules())
    if bn != "none" and (bn == "repair" or has_bn) and not data:
        raise WeightSpaceError(f"bn={bn!r} needs data: pass data=batches of inputs")
    losses, accs = [], []
    it = grid
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(grid, desc="interpolation", unit="point")
    for t in it:
        sd = interpolate(space, sd_a, sd_b, t)
        if bn == "repair" and 0 < t < 1:
            sd = repair(net, sd_a, sd_b, sd, data, alpha=t, space=space)
        net.load_state_dict(sd)
        if (bn == "reset" or bn == "repair") and has_bn and 0 < t < 1:
            reset_bn_stats(net, data)
        net.eval()
        r = evaluate(net)
        if isinstance(r, tuple):
            losses.append(float(r[0]))
            accs.append(float(r[1]))
        else:
            losses.append(float(r))
    return Curve(grid, losses, accs)


def plot_interpolation(curves: Mapping[str, Curve], path: str | Path, title: str = "") -> Path:
    """PNG of loss (and accuracy) along interpolation paths, e.g. ``{"naive": c0, "aligned": c1}``."""
    from matplotlib.figure import Figure

    with_acc = any(c.accs for c in curves.values())
    fig = Figure(figsize=(10 if with_acc else 5, 3.8))
    axes = fig.subplots(1, 2 if with_acc else 1, squeeze=False)
    for label, c in curves.items():
        axes[0, 0].plot(c.lambdas, c.losses, marker="o", ms=3, label=f"{label} (barrier {c.barrier:.3f})")
        if with_acc and c.accs:
            axes[0, 1].plot(c.lambdas, c.accs, marker="o", ms=3, label=f"{label} (barrier {c.acc_barrier:.3f})")
    axes[0, 0].set(xlabel="λ (0 = A, 1 = B)", ylabel="loss")
    if with_acc:
        axes[0, 1].set(xlabel="λ (0 = A, 1 = B)", ylabel="accuracy")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    return path
