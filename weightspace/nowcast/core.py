"""Flat parameter vectors of a live model, per-tensor scaling, and the interface every nowcaster shares."""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import NonFiniteWeights, WeightSpaceError
from ..utils import cat_flat

if TYPE_CHECKING:
    from ..space import WeightSpace

STD_FLOOR = 1e-6
LOOP_NUMEL = 512
NINO_HORIZONS = (40, 33, 26, 21, 16, 11, 8, 5, 3, 1)
"""NiNo's decaying horizon schedule (Knyazev et al. 2025), in units of the context spacing."""


class NowcastError(WeightSpaceError):
    """A nowcaster cannot be used as asked (wrong context, unknown parameter types, bad schedule)."""


def horizon_schedule(max_horizon: int, jumps: int = len(NINO_HORIZONS)) -> list[int]:
    """NiNo's decaying schedule ``[40 33 26 ... 1]`` rescaled so that its first horizon is ``max_horizon``."""
    if max_horizon < 1:
        raise NowcastError(f"max_horizon must be >= 1, got {max_horizon}")
    base = list(NINO_HORIZONS)
    if jumps != len(base):
        idx = torch.linspace(0, len(base) - 1, jumps).round().long().tolist()
        base = [base[i] for i in idx]
    return [max(1, round(k * max_horizon / NINO_HORIZONS[0])) for k in base]


class ParamLayout:
    """Tensor boundaries of a flat parameter vector, and the way between it and a live model.

    Built from a :class:`WeightSpace` (its graph layout's canonical order, buffers included, so
    graph nowcasters can use it) or from a module's parameters alone (baselines need no trace).
    Only trainable parameters are ever written back into the model.
    """

    def __init__(self, keys: Sequence[str], numels: Sequence[int], space: "WeightSpace | None" = None) -> None:
        self.keys, self.numels, self.space = list(keys), [int(n) for n in numels], space
        self.num_values = sum(self.numels)
        self.segment = torch.repeat_interleave(torch.arange(len(self.numels)), torch.tensor(self.numels, dtype=torch.long)) \
            if self.numels else torch.zeros(0, dtype=torch.long)
        self._counts = torch.tensor(self.numels, dtype=torch.float64).clamp_min(1)
        self._param_slices: list[tuple[str, int, int]] | None = None
        self._device_cache: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def on(self, device: torch.device | str) -> tuple[Tensor, Tensor]:
        """``segment`` and per-tensor value counts on ``device``, copied there once (not on every call)."""
        device = torch.device(device)
        if device not in self._device_cache:
            self._device_cache[device] = (self.segment.to(device), self._counts.to(device))
        return self._device_cache[device]

    @classmethod
    def from_space(cls, space: "WeightSpace") -> "ParamLayout":
        lay = space.layout
        return cls(lay.keys, lay.numels, space)

    @classmethod
    def from_module(cls, model: nn.Module) -> "ParamLayout":
        named = list(model.named_parameters())
        return cls([n for n, _ in named], [p.numel() for _, p in named])

    def bind(self, model: nn.Module) -> list[tuple[nn.Parameter, int, int]]:
        """``(parameter, start, end)`` of each trainable parameter in the flat vector (tied ones once)."""
        params = dict(model.named_parameters())
        sd_aliases = self.space.aliases if self.space is not None else {}
        starts = torch.tensor([0] + self.numels).cumsum(0).tolist()
        where = {k: (starts[i], starts[i + 1]) for i, k in enumerate(self.keys)}
        out, seen = [], set()
        for name, p in params.items():
            key = name if name in where else sd_aliases.get(name)
            if key not in where:
                raise NowcastError(f"parameter {name!r} of the model is not in its flat layout; was the WeightSpace "
                                   f"traced from another architecture?")
            if id(p) in seen:
                continue
            seen.add(id(p))
            out.append((p, *where[key]))
        return out

    def flatten(self, model: nn.Module, out: Tensor | None = None) -> Tensor:
        """The model's current values as one ``[P]`` vector (float32 unless the model is float64)."""
        sd = model.state_dict(keep_vars=False)
        parts = [sd[k] for k in self.keys]
        dtype = torch.float64 if any(t.dtype == torch.float64 for t in parts) else torch.float32
        if out is None:
            out = torch.empty(self.num_values, dtype=dtype, device=parts[0].device if parts else "cpu")
        return cat_flat(parts, out)

    def check_finite(self, flat: Tensor, what: str) -> None:
        bad = ~torch.isfinite(flat)
        if bool(bad.any()):
            first = int(self.segment[bad.nonzero()[0, 0]].item())
            raise NonFiniteWeights(f"{what}: {int(bad.sum())} non-finite values (first in {self.keys[first]!r}); "
                                   f"training diverged before the nowcast, lower the learning rate")

    def stats(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Per-tensor mean and std over all context states (NiNo's scaling), expanded to ``[P]``; sums in float64.

        On CPU, tensors of ``LOOP_NUMEL`` values or more on average are reduced one by one, in passes over each
        tensor's own block (a few times faster there than whole-vector passes in float64, the same values)."""
        seg, counts = self.on(context.device)
        c = context.shape[0]
        counts = counts * c
        if context.device.type == "cpu" and self.num_values >= LOOP_NUMEL * len(self.numels):
            blocks = context.split(self.numels, 1)
            mean = torch.stack([b.sum(dtype=torch.float64) for b in blocks]) / counts
            sq = torch.stack([(b - m).square_().sum(dtype=torch.float64)
                              for b, m in zip(blocks, mean.to(context.dtype))]) / counts
        else:
            n = len(self.numels)
            x = context.double()
            mean = torch.zeros(n, dtype=torch.float64, device=context.device).index_add_(0, seg, x.sum(0)) / counts
            sq = torch.zeros(n, dtype=torch.float64, device=context.device).index_add_(
                0, seg, ((x - mean[seg]) ** 2).sum(0)) / counts
        std = sq.sqrt().clamp_min(STD_FLOOR)
        return mean.to(context.dtype)[seg], std.to(context.dtype)[seg]

    def segment_mean(self, values: Tensor) -> Tensor:
        """Mean of ``values [..., P]`` over each tensor, expanded back to ``[..., P]``."""
        seg, counts = self.on(values.device)
        n = len(self.numels)
        flat = values.reshape(-1, values.shape[-1])
        sums = torch.zeros(flat.shape[0], n, dtype=values.dtype, device=values.device).index_add_(1, seg, flat)
        return (sums / counts.to(values.dtype))[:, seg].view(values.shape)


def _scale(values: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Standardise values ``[..., P]`` with per-tensor statistics."""
    return (values - mean) / std


def _unscale(values: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return values * std + mean


@runtime_checkable
class Nowcaster(Protocol):
    """What :class:`NowcastOptimizer` needs: ``context`` states in, a jump ``k`` spacings ahead out.

    ``nowcast(context [c, P], k, layout)`` returns the predicted ``[P]`` flat parameters.
    ``needs_space`` says whether the layout must come from a traced :class:`WeightSpace`;
    ``max_horizon`` is the largest ``k`` it was trained for (``None``: any). A nowcaster may also
    offer ``nowcast_horizons(context, ks, layout) -> [len(ks), P]`` when several horizons cost
    less together than apart (:func:`nowcast_horizons` falls back to one ``nowcast`` per ``k``).
    """

    context: int
    needs_space: bool
    max_horizon: int | None

    def nowcast(self, context: Tensor, k: int, layout: ParamLayout) -> Tensor: ...


def nowcast_horizons(nowcaster: Nowcaster, context: Tensor, ks: Sequence[int], layout: ParamLayout) -> Tensor:
    """``[len(ks), P]`` predictions: the nowcaster's own ``nowcast_horizons`` if it has one, else a loop."""
    many = getattr(nowcaster, "nowcast_horizons", None)
    if many is not None:
        return many(context, ks, layout)
    return torch.stack([nowcaster.nowcast(context, int(k), layout) for k in ks])
