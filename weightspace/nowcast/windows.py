"""Trajectory windows for meta-training nowcasters, read lazily from checkpoint collections.

A window is ``context`` past states of one run, ``stride`` saved checkpoints apart, and the
states ``1..horizons`` spacings after the last one (future states past the run's end are
masked). Values are kept raw; :meth:`ParamLayout.stats` standardises each tensor with the
mean/std of its context states (Knyazev et al. 2025, NiNo), and targets are residuals on the last
context state in those scaled units.

Windows are drawn from every collection with equal total weight by default (a 12-run GPT zoo is
not drowned by a 64-run MLP zoo), uniformly within a collection. Checkpoints are loaded on demand
from the collections' memory-mapped safetensors; only a small LRU cache of recently used runs is
held in memory.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from .core import NowcastError, ParamLayout

if TYPE_CHECKING:
    from ..collections import CheckpointCollection

WEIGHTINGS = ("collection", "window", "sqrt")


@dataclass
class Window:
    """One training example: raw ``context [c, P]``, raw ``future [K, P]`` (zeros where masked), ``mask [K]``."""

    context: Tensor
    future: Tensor
    mask: Tensor
    layout: ParamLayout
    run_id: str = ""
    step: int = 0

    def to(self, device: torch.device | str) -> "Window":
        return Window(self.context.to(device), self.future.to(device), self.mask.to(device), self.layout,
                      self.run_id, self.step)

    def targets(self) -> tuple[Tensor, Tensor, Tensor]:
        """Scaled residual targets ``[K, P]`` and the per-tensor ``mean``/``std`` ``[P]`` used to scale them."""
        mean, std = self.layout.stats(self.context)
        return (self.future - self.context[-1]) / std, mean, std


@dataclass(frozen=True)
class _Run:
    coll: int
    run_id: str
    steps: tuple[int, ...]
    arch_id: str


class TrajectoryWindows:
    """Windows over the runs of one or more :class:`CheckpointCollection` (no copy of the data).

    ``runs`` picks run ids per collection (e.g. a train/held-out split); by default every run with
    at least ``context + 1`` checkpoints is used. ``len()`` and :meth:`batch` make it a batch source
    for :class:`weightspace.training.Trainer`: index ``i`` draws a window with a generator seeded
    by ``i``, so a batch is a fixed function of its indices and resuming needs no RNG state.
    """

    def __init__(self, collections: Sequence["CheckpointCollection"], context: int = 5, horizons: int = 16,
                 stride: int = 1, weighting: str = "collection", runs: Sequence[Sequence[str]] | None = None,
                 cache_runs: int = 48, allow_nonfinite: bool = False) -> None:
        if context < 2:
            raise NowcastError(f"context must be >= 2 states, got {context}")
        if horizons < 1 or stride < 1:
            raise NowcastError(f"horizons and stride must be >= 1, got {horizons} and {stride}")
        if weighting not in WEIGHTINGS:
            raise NowcastError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.collections = list(collections)
        self.context, self.horizons, self.stride, self.weighting = context, horizons, stride, weighting
        self.allow_nonfinite = allow_nonfinite
        self._layouts: dict[str, ParamLayout] = {}
        self._cache: OrderedDict[tuple[int, str], Tensor] = OrderedDict()
        self.cache_runs = cache_runs
        self.runs: list[_Run] = []
        self.starts: list[Tensor] = []
        need = (context - 1) * stride + stride + 1
        for ci, coll in enumerate(self.collections):
            chosen = coll.runs() if runs is None else list(runs[ci])
            for run_id in chosen:
                steps = tuple(coll.steps(run_id))
                if len(steps) < need:
                    continue
                self.runs.append(_Run(ci, run_id, steps, coll.row(run_id, steps[0])["arch_id"]))
        if not self.runs:
            raise NowcastError(f"no run has the {need} checkpoints a window of {context} context states and one "
                               f"future state {stride} checkpoint(s) apart needs")
        self.num_windows = torch.tensor([len(r.steps) - need + 1 for r in self.runs])
        self._offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.num_windows.cumsum(0)])
        self.run_weights = self._run_weights()

    def _run_weights(self) -> Tensor:
        coll_of = torch.tensor([r.coll for r in self.runs])
        w = self.num_windows.double()
        if self.weighting == "window":
            return w / w.sum()
        per_coll = torch.zeros(len(self.collections), dtype=torch.float64).index_add_(0, coll_of, w)
        share = torch.ones(len(self.collections), dtype=torch.float64)
        if self.weighting == "sqrt":
            share = per_coll.sqrt()
        share = share * (per_coll > 0)
        return w / per_coll[coll_of] * share[coll_of] / share.sum()

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def layout(self, run: _Run) -> ParamLayout:
        lay = self._layouts.get(run.arch_id)
        if lay is None:
            lay = ParamLayout.from_space(self.collections[run.coll].space(run.arch_id))
            self._layouts[run.arch_id] = lay
        return lay

    def _flat(self, run: _Run) -> Tensor:
        key = (run.coll, run.run_id)
        flat = self._cache.get(key)
        if flat is not None:
            self._cache.move_to_end(key)
            return flat
        coll = self.collections[run.coll]
        space = coll.space(run.arch_id)
        sds = [coll.load(run.run_id, s, allow_nonfinite=self.allow_nonfinite) for s in run.steps]
        flat = space.layout.flatten(sds)[:, :space.layout.num_values].float()
        self._cache[key] = flat
        if len(self._cache) > self.cache_runs:
            self._cache.popitem(last=False)
        return flat

    def window(self, index: int) -> Window:
        """Window number ``index`` in (run, start) order."""
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        r = int(torch.searchsorted(self._offsets, torch.tensor(index), right=True)) - 1
        return self._make(r, index - int(self._offsets[r]))

    def _make(self, r: int, start: int) -> Window:
        run = self.runs[r]
        flat = self._flat(run)
        c, s, K = self.context, self.stride, self.horizons
        ctx_idx = start + s * torch.arange(c)
        last = int(ctx_idx[-1])
        fut_idx = last + s * torch.arange(1, K + 1)
        mask = fut_idx < flat.shape[0]
        future = torch.zeros(K, flat.shape[1], dtype=flat.dtype)
        future[mask] = flat[fut_idx[mask]]
        return Window(flat[ctx_idx], future, mask, self.layout(run), run.run_id, run.steps[last])

    def sample(self, seed: int) -> Window:
        """A window drawn with the collection weighting, by a generator seeded with ``seed``."""
        g = torch.Generator().manual_seed(int(seed))
        r = int(torch.multinomial(self.run_weights, 1, generator=g))
        start = int(torch.randint(int(self.num_windows[r]), (1,), generator=g))
        return self._make(r, start)

    def batch(self, indices: Tensor, device: torch.device | str = "cpu") -> tuple[list[Window], Tensor]:
        """Windows for :class:`weightspace.training.Trainer` (the targets live in each window)."""
        wins = [self.sample(int(i)).to(device) for i in indices]
        return wins, torch.zeros(len(wins), device=device)

    def summary(self) -> dict[str, Any]:
        """Runs and windows per collection (same-named collections, e.g. two recipe seeds, numbered apart)."""
        names = [getattr(c, "name", None) or str(i) for i, c in enumerate(self.collections)]
        keys = [n if names.count(n) == 1 else f"{n} #{i}" for i, n in enumerate(names)]
        per: dict[str, dict[str, int]] = {}
        for r, n in zip(self.runs, self.num_windows.tolist()):
            d = per.setdefault(keys[r.coll], {"runs": 0, "windows": 0})
            d["runs"] += 1
            d["windows"] += n
        return {"collections": per, "context": self.context, "horizons": self.horizons, "stride": self.stride,
                "weighting": self.weighting}


def split_runs(collections: Sequence["CheckpointCollection"], held_out: float = 0.1,
               seed: int = 0) -> tuple[list[list[str]], list[list[str]]]:
    """Split each collection's runs into train and held-out lists (at least one held out when there are 2+)."""
    train, test = [], []
    for coll in collections:
        ids = coll.runs()
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(ids), generator=g).tolist()
        n = max(1, math.floor(held_out * len(ids))) if len(ids) > 1 and held_out > 0 else 0
        test.append(sorted(ids[i] for i in perm[:n]))
        train.append(sorted(ids[i] for i in perm[n:]))
    return train, test
