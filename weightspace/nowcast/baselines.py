"""Nowcasters that need no training: per-parameter linear extrapolation and weight averaging."""
from __future__ import annotations

from torch import Tensor

from .core import NowcastError, ParamLayout


class LineFit:
    """Per-parameter least-squares line through the ``context`` states, extrapolated ``k`` spacings ahead.

    The classic "linefit" baseline of nowcasting papers (e.g. Jang et al. 2023; Knyazev et al. 2025).
    A trajectory that is exactly linear is extrapolated exactly.
    """

    needs_space = False
    max_horizon = None

    def __init__(self, context: int = 5) -> None:
        if context < 2:
            raise NowcastError(f"linefit needs at least 2 context states, got {context}")
        self.context = context

    def nowcast(self, context: Tensor, k: int, layout: ParamLayout | None = None) -> Tensor:
        c = context.shape[0]
        t = context.new_tensor(range(c), dtype=context.dtype) - (c - 1) / 2
        mean = context.mean(0)
        slope = (t[:, None] * (context - mean)).sum(0) / (t * t).sum()
        return mean + slope * ((c - 1) / 2 + k)

    def __repr__(self) -> str:
        return f"LineFit(context={self.context})"


class LAWA:
    """Latest weight averaging: the mean of the last ``context`` states (Kaddour 2022, "Stop wasting my time!").

    It ignores the horizon: averaging smooths the trajectory rather than extrapolating it.
    """

    needs_space = False
    max_horizon = None

    def __init__(self, context: int = 5) -> None:
        if context < 1:
            raise NowcastError(f"LAWA needs at least 1 state, got {context}")
        self.context = context

    def nowcast(self, context: Tensor, k: int, layout: ParamLayout | None = None) -> Tensor:
        return context.mean(0)

    def __repr__(self) -> str:
        return f"LAWA(context={self.context})"
