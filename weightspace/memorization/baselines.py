"""Baselines made from the training set itself, one small seeded function per baseline in a registry.

Zeng et al. 2025 found that simple perturbations of the training checkpoints (Gaussian noise,
averages of a few of them) match current weight generators on the accuracy–novelty plane. Every
baseline has the signature ``fn(pool, n, *, seed, **params) -> list[state_dict]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from .flat import MemorizationError, ModelSet, StateDict, unflatten


@dataclass
class Pool:
    """The training models a baseline draws from: raw rows and rows canonicalised to one reference."""

    models: ModelSet
    canonical: Tensor

    def rows(self, aligned: bool) -> Tensor:
        valid = self.models.valid
        return (self.canonical.cpu() if aligned else self.models.flat)[valid]

    def to_state_dicts(self, vecs: Tensor) -> list[StateDict]:
        return [unflatten(self.models.space, v, self.models.template) for v in vecs]


BaselineFn = Callable[..., list]
BASELINES: dict[str, BaselineFn] = {}


def register(name: str) -> Callable[[BaselineFn], BaselineFn]:
    """Decorator adding a baseline function to :data:`BASELINES` under ``name``."""
    def deco(fn: BaselineFn) -> BaselineFn:
        BASELINES[name] = fn
        return fn
    return deco


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@register("noise")
def noise(pool: Pool, n: int, *, seed: int = 0, sigma: float = 0.01) -> list[StateDict]:
    """``n`` random training models plus i.i.d. Gaussian noise of standard deviation ``sigma`` on every value."""
    if sigma < 0:
        raise MemorizationError(f"noise sigma must be >= 0, got {sigma}")
    g = _gen(seed)
    rows = pool.rows(aligned=False)
    pick = torch.randint(len(rows), (n,), generator=g)
    return pool.to_state_dicts(rows[pick] + sigma * torch.randn(n, rows.shape[1], generator=g, dtype=rows.dtype))


@register("average")
def average(pool: Pool, n: int, *, seed: int = 0, k: int = 2, aligned: bool = False) -> list[StateDict]:
    """``n`` averages of ``k`` distinct random training models; ``aligned`` averages them after weight
    matching each to a common reference (the canonicalised models), otherwise in raw weight space."""
    rows = pool.rows(aligned)
    if not 2 <= k <= len(rows):
        raise MemorizationError(f"average needs 2 <= k <= {len(rows)} (training models), got k={k}")
    g = _gen(seed)
    picks = torch.stack([torch.randperm(len(rows), generator=g)[:k] for _ in range(n)])
    return pool.to_state_dicts(rows[picks].mean(1))


@register("gaussian")
def gaussian(pool: Pool, n: int, *, seed: int = 0, aligned: bool = True) -> list[StateDict]:
    """``n`` draws from a per-parameter Gaussian fitted to the training models (each value's mean and standard
    deviation across them; after alignment to a common reference by default)."""
    rows = pool.rows(aligned).double()
    mean, std = rows.mean(0), rows.std(0)
    g = _gen(seed)
    return pool.to_state_dicts((mean + std * torch.randn(n, rows.shape[1], generator=g, dtype=torch.float64)).float())


def make_baseline(name: str, pool: Pool, n: int, *, seed: int = 0, **params: Any) -> list[StateDict]:
    """Samples of the baseline ``name`` with ``params``; an unknown name or parameter is refused."""
    import inspect
    if name not in BASELINES:
        raise MemorizationError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    fn = BASELINES[name]
    accepted = [p for p in inspect.signature(fn).parameters if p not in ("pool", "n", "seed")]
    bad = [p for p in params if p not in accepted]
    if bad:
        raise MemorizationError(f"baseline {name!r} has no parameter {bad[0]!r} (it takes {', '.join(accepted)})")
    return fn(pool, n, seed=seed, **params)
