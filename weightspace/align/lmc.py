"""Linear mode connectivity: interpolation, loss and accuracy barriers, BatchNorm reset, REPAIR, plots.

Barriers follow Frankle et al. 2020 and Entezari et al. 2022 (loss above the straight line between
the endpoint losses), with Git Re-Basin's variant (Ainsworth et al. 2023: max loss minus the mean
endpoint loss). REPAIR is Jordan et al. 2023.
"""
from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import update_bn

from ..errors import StateDictMismatch, WeightSpaceError
from ..space import ActivationSite, WeightSpace
from ..utils import atomic_write
from .matching import _batch_input, _flat_features, _need_sites, _site_name, _validate_pair

StateDict = Mapping[str, Tensor]
_log = logging.getLogger(__name__)


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


def _correctable(space: WeightSpace) -> list[ActivationSite]:
    """Activation sites whose per-unit output can be set to ``s * out + t`` by folding the map into their own
    weight and bias, in forward order.

    A site without bias cannot be shifted, and one whose weight or bias also serves another site
    (tied or shared) cannot be changed alone: both are left out, and logged.
    """
    sites = _need_sites(space, "REPAIR")
    uses = Counter(k for s in sites for k in (s.weight, s.bias) if k)
    tied = set(space.aliases) | set(space.aliases.values())
    out, skipped = [], []
    for s in sorted(sites, key=lambda s: s.call):
        if s.weight is None or s.bias is None or s.weight_axis is None:
            skipped.append(f"{_site_name(s)} (no bias)")
        elif uses[s.weight] > 1 or uses[s.bias] > 1 or s.weight in tied or s.bias in tied:
            skipped.append(f"{_site_name(s)} (shared weight)")
        else:
            out.append(s)
    if skipped:
        _log.info("REPAIR leaves %d activation site(s) uncorrected: %s", len(skipped), "; ".join(skipped))
    if not out:
        raise WeightSpaceError(f"REPAIR has nothing to correct in {space.name or 'this weight space'}: no activation "
                               f"site has its own weight and bias ({'; '.join(skipped[:4])})")
    return out


@torch.no_grad()
def _unit_stats(space: WeightSpace, model: nn.Module, sites: Sequence[ActivationSite], batches: list
                ) -> dict[int, tuple[Tensor, Tensor]]:
    """Per-unit mean and standard deviation at each site over ``batches`` (model in eval mode), keyed by call."""
    sums: dict[int, list] = {s.call: [0, 0.0, 0.0] for s in sites}
    for batch in batches:
        acts = space.capture_activations(model, _batch_input(batch), sites)
        for s in sites:
            y = _flat_features(acts[s.call], s.dim, _site_name(s)).double()
            acc = sums[s.call]
            acc[0] += y.shape[0]
            acc[1] = acc[1] + y.sum(0)
            acc[2] = acc[2] + (y * y).sum(0)
    out = {}
    for call, (n, s1, s2) in sums.items():
        mean = s1 / n
        out[call] = (mean, (s2 / n - mean * mean).clamp_min(0).sqrt())
    return out


@torch.no_grad()
def repair(model: nn.Module, sd_a: StateDict, sd_b: StateDict, sd_merged: StateDict, batches: Iterable, *,
           alpha: float = 0.5, space: WeightSpace | None = None, eps: float = 1e-5) -> dict[str, Tensor]:
    """REPAIR (Jordan et al. 2023, "REPAIR: REnormalizing Permuted Activations for Interpolation Repair").

    Interpolating two aligned networks shrinks the variance of hidden units. REPAIR maps the merged
    model's per-unit mean and standard deviation (measured on ``batches``) at every activation site
    of the space to the interpolation of the endpoints', ``(1 - alpha) * A + alpha * B``, by folding
    ``out' = s * (out - mean) + target mean`` into the site's own weight (scaled along its unit axis)
    and bias. Sites are corrected in forward order, each measured after the earlier ones were
    corrected, so the merged model's statistics match the targets at every corrected site.
    Returns the corrected state_dict; ``model`` is only used to run the forward (a copy is loaded).
    """
    batches = list(batches)
    if not batches:
        raise WeightSpaceError("REPAIR needs at least one batch of inputs")
    net = copy.deepcopy(model)
    space = space or WeightSpace.from_module(net, _batch_input(batches[0]))
    sites = _correctable(space)
    net.load_state_dict(sd_a)
    st_a = _unit_stats(space, net, sites, batches)
    net.load_state_dict(sd_b)
    st_b = _unit_stats(space, net, sites, batches)
    sd = {k: v.detach().clone() for k, v in sd_merged.items()}
    for s in sites:
        net.load_state_dict(sd)
        mu_m, sd_m = _unit_stats(space, net, [s], batches)[s.call]
        mu_t = (1 - alpha) * st_a[s.call][0] + alpha * st_b[s.call][0]
        sd_t = (1 - alpha) * st_a[s.call][1] + alpha * st_b[s.call][1]
        scale = sd_t / (sd_m + eps)
        w, b = sd[s.weight], sd[s.bias]
        shape = [1] * w.dim()
        shape[s.weight_axis] = -1
        sd[s.weight] = (w.double() * scale.view(shape)).to(w.dtype)
        sd[s.bias] = ((b.double().reshape(-1) - mu_m) * scale + mu_t).reshape(b.shape).to(b.dtype)
    return sd


def _has_running_stats(model: nn.Module) -> bool:
    """Whether :func:`torch.optim.swa_utils.update_bn` has statistics to re-estimate in ``model``."""
    return any(isinstance(m, _BatchNorm) and m.track_running_stats for m in model.modules())


Evaluate = Callable[[nn.Module], "tuple[float, float] | float"]


@torch.no_grad()
def interpolation_curve(model: nn.Module, sd_a: StateDict, sd_b: StateDict, evaluate: Evaluate, *,
                        lambdas: int | Sequence[float] = 11, space: WeightSpace | None = None,
                        bn: str = "reset", data: Iterable | None = None, progress: bool = False) -> Curve:
    """Evaluate ``(1 - l) A + l B`` on a grid of ``l``; ``evaluate(model)`` returns a loss or ``(loss, accuracy)``.

    ``bn``: ``"none"`` keeps interpolated BatchNorm statistics, ``"reset"`` re-estimates them on
    ``data`` (only where the model has BatchNorm), ``"repair"`` re-estimates them and then applies
    REPAIR on ``data``, so that the evaluated model has the REPAIRed statistics.
    """
    if bn not in ("none", "reset", "repair"):
        raise ValueError(f"bn must be 'none', 'reset' or 'repair', got {bn!r}")
    grid = [i / (lambdas - 1) for i in range(lambdas)] if isinstance(lambdas, int) else [float(t) for t in lambdas]
    data = list(data) if data is not None else None
    net = copy.deepcopy(model)
    if not data and (bn == "repair" or (bn == "reset" and _has_running_stats(net))):
        raise WeightSpaceError(f"bn={bn!r} needs data: pass data=batches of inputs")
    losses, accs = [], []
    it = grid
    if progress:
        from ..utils import progress_bar
        it = progress_bar(grid, desc="interpolation", unit="point")
    for t in it:
        net.load_state_dict(interpolate(space, sd_a, sd_b, t))
        if bn != "none" and 0 < t < 1:
            reset_bn_stats(net, data)
            if bn == "repair":
                net.load_state_dict(repair(net, sd_a, sd_b, net.state_dict(), data, alpha=t, space=space))
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
