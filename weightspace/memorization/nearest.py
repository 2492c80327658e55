"""Nearest training model of each generated model, modulo the permutation symmetry.

Zeng et al. 2025 ("Generative Modeling of Weights: Generalization or Memorization?") measure
novelty by the L2 distance from a generated model to its nearest training model, in raw weight
space (aligned only for G.pt). A generated model that is a training model with its hidden units
permuted computes the same function, so here distances are taken after Git Re-Basin weight
matching (Ainsworth et al. 2023) by default: a permuted copy lies at distance ~0 from its source.

To scale to thousands of training checkpoints the search has three stages:

1. *canonicalise*: weight-match every model (training and generated) once to one reference (the
   first training model), so that models are roughly in a common basin;
2. *candidates*: chunked ``torch.cdist`` between the canonical flat vectors (on GPU when there is
   one) gives the ``k`` nearest training models of each query;
3. *refine*: each candidate is weight-matched directly to the query and the exact L2 distance
   after that alignment (float64) is kept; the nearest is the candidate with the smallest one.

With ``k`` at least the number of training models the result equals brute-force pairwise
weight matching. With fewer, it is exact whenever the true nearest model is among the ``k``
candidates, and otherwise an upper bound: on independently trained models, a single reference
ranks candidates only roughly, so raise ``k`` where the spread between such models matters. With ``aligned=False`` stage 1 is skipped and stage 3 computes raw L2 distances.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Hashable, Mapping, Sequence

import torch
from torch import Tensor

from ..align import weight_matching
from ..space import WeightSpace
from ..utils import progress_bar, resolve_device
from .flat import MemorizationError, ModelSet, StateDict, float_keys


@dataclass
class NearestResult:
    """Per query model: L2 distance to its nearest training model and that model's index.

    Queries excluded for NaN/Inf weights have distance NaN and index -1, and are listed in ``excluded``.
    """

    distances: Tensor
    indices: Tensor
    aligned: bool
    excluded: dict[int, str] = field(default_factory=dict)
    training_excluded: dict[int, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def valid(self) -> Tensor:
        return self.indices >= 0

    def median(self) -> float:
        d = self.distances[self.valid]
        return float(d.median()) if len(d) else float("nan")


def _vec(space: WeightSpace, sd: StateDict, dtype: torch.dtype) -> Tensor:
    return torch.cat([sd[k].detach().reshape(-1).to("cpu", dtype) for k in float_keys(space)])


def aligned_distance(space: WeightSpace, sd_a: StateDict, sd_b: StateDict) -> float:
    """L2 distance (float64, floating-point tensors) between ``sd_a`` and ``sd_b`` weight-matched to it."""
    perm = weight_matching(space, sd_a, sd_b)
    b = space.permute(sd_b, perm)
    return float(torch.linalg.vector_norm(_vec(space, sd_a, torch.float64) - _vec(space, b, torch.float64)))


class NearestIndex:
    """The training set prepared once (canonicalised when ``aligned``), queried by :meth:`query` and :meth:`spread`."""

    def __init__(self, training: ModelSet, *, aligned: bool = True, k: int = 5, device: str | torch.device = "auto",
                 chunk_size: int = 1024, progress: bool = False) -> None:
        if len(training.valid) < 2:
            raise MemorizationError(
                f"the training set has {len(training.valid)} usable model(s) ({len(training)} given, "
                f"{len(training.excluded)} excluded for NaN/Inf); measuring memorization needs at least 2")
        if k < 1:
            raise MemorizationError(f"k (candidates refined per query) must be >= 1, got {k}")
        self.training = training
        self.space = training.space
        self.aligned = aligned
        self.k = k
        self.device = resolve_device(device)
        self.chunk_size = chunk_size
        self.progress = progress
        self.reference = training.state_dict(training.valid[0])
        self.seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        self.base = self.canonical(training, "canonicalise training")
        self.seconds["canonicalise_training"] = time.perf_counter() - t0

    def canonical(self, models: ModelSet, desc: str = "canonicalise") -> Tensor:
        """Rows of ``models`` weight-matched to the reference (raw rows when not aligned), on the device."""
        if not self.aligned:
            return models.flat.to(self.device)
        out = models.flat.clone()
        for i in progress_bar(models.valid, desc=desc, unit="model", disable=not self.progress):
            sd = models.state_dict(i)
            perm = weight_matching(self.space, self.reference, sd)
            out[i] = _vec(self.space, self.space.permute(sd, perm), out.dtype)
        return out.to(self.device)

    def _candidates(self, q: Tensor, rows: Sequence[int], mask_fn) -> Tensor:
        """Indices ``[len(rows), k]`` of the nearest base rows of each query row (inf-masked ones last)."""
        k = min(self.k, len(self.training.valid))
        bad = torch.zeros(len(self.training), dtype=torch.bool, device=self.device)
        bad[list(self.training.excluded)] = True
        out = []
        for s in range(0, len(rows), self.chunk_size):
            idx = list(rows[s:s + self.chunk_size])
            d = torch.cdist(q[idx].float(), self.base.float())
            d = d.masked_fill(bad, float("inf"))
            if mask_fn is not None:
                d = d.masked_fill(mask_fn(idx).to(self.device), float("inf"))
            out.append(d.topk(k, dim=1, largest=False).indices.cpu())
        return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)

    def _refine(self, queries: ModelSet, rows: Sequence[int], cand: Tensor, mask_fn, desc: str
                ) -> tuple[Tensor, Tensor]:
        dist = torch.full((len(queries),), float("nan"), dtype=torch.float64)
        index = torch.full((len(queries),), -1, dtype=torch.long)
        allowed = None
        for r, i in enumerate(progress_bar(rows, desc=desc, unit="model", disable=not self.progress)):
            if mask_fn is not None:
                allowed = ~mask_fn([i])[0]
            q_sd = queries.state_dict(i) if self.aligned else None
            best, arg = float("inf"), -1
            for j in cand[r].tolist():
                if j in self.training.excluded or (allowed is not None and not bool(allowed[j])):
                    continue
                if self.aligned:
                    d = aligned_distance(self.space, q_sd, self.training.state_dict(j))
                else:
                    d = float(torch.linalg.vector_norm(queries.flat[i].double() - self.training.flat[j].double()))
                if d < best:
                    best, arg = d, j
            if arg >= 0:
                dist[i], index[i] = best, arg
        return dist, index

    def query(self, queries: ModelSet, desc: str = "generated") -> NearestResult:
        """Nearest training model of every (finite) row of ``queries``."""
        t0 = time.perf_counter()
        q = self.canonical(queries, f"canonicalise {desc}")
        t1 = time.perf_counter()
        rows = queries.valid
        cand = self._candidates(q, rows, None)
        t2 = time.perf_counter()
        dist, index = self._refine(queries, rows, cand, None, f"refine {desc}")
        t3 = time.perf_counter()
        return NearestResult(dist, index, self.aligned, dict(queries.excluded), dict(self.training.excluded),
                             {"canonicalise": t1 - t0, "candidates": t2 - t1, "refine": t3 - t2})

    def spread(self, groups: Sequence[Hashable] | None = None, exclude_same_group: bool = False) -> NearestResult:
        """For each training model, its nearest *other* training model (not of its group with ``exclude_same_group``)."""
        n = len(self.training)
        if exclude_same_group:
            if groups is None:
                raise MemorizationError("exclude_same_group needs groups (run ids) for the training models")
            if len(groups) != n:
                raise MemorizationError(f"groups has {len(groups)} entries for {n} training models")
        codes = None
        if groups is not None and exclude_same_group:
            ids: dict[Hashable, int] = {}
            codes = torch.tensor([ids.setdefault(g, len(ids)) for g in groups])
        def mask_fn(idx: list[int]) -> Tensor:
            m = torch.zeros(len(idx), n, dtype=torch.bool)
            m[torch.arange(len(idx)), torch.tensor(idx)] = True
            if codes is not None:
                m |= codes[idx].unsqueeze(1) == codes.unsqueeze(0)
            return m

        t0 = time.perf_counter()
        rows = self.training.valid
        cand = self._candidates(self.base, rows, mask_fn)
        t1 = time.perf_counter()
        dist, index = self._refine(self.training, rows, cand, mask_fn, "refine training spread")
        if not bool((index[rows] >= 0).any()):
            raise MemorizationError("no training model has another training model to compare with "
                                    "(are all checkpoints from the same run, with exclude_same_run?)")
        return NearestResult(dist, index, self.aligned, dict(self.training.excluded), dict(self.training.excluded),
                             {"candidates": t1 - t0, "refine": time.perf_counter() - t1})


def _as_set(space: WeightSpace, models, what: str) -> ModelSet:
    return models if isinstance(models, ModelSet) else ModelSet.build(space, models, what)


def nearest(space: WeightSpace | None, generated: Sequence[StateDict], training, *, aligned: bool = True, k: int = 5,
            device: str | torch.device = "auto", chunk_size: int = 1024, progress: bool = False) -> NearestResult:
    """Distance from each generated model to its nearest training model (after weight matching by default).

    ``training`` is a list of state_dicts or a :class:`~weightspace.collections.CheckpointCollection`
    (the last checkpoint of every run of the architecture, see :func:`load_training`). ``space`` may be
    ``None`` with a collection of one architecture. ``k`` candidates per query are refined by direct
    weight matching. Models with NaN/Inf weights are excluded and listed in ``excluded``.
    """
    from .training import load_training
    train = load_training(training, space)
    gen = _as_set(train.space, generated, "generated model")
    index = NearestIndex(train.models, aligned=aligned, k=k, device=device, chunk_size=chunk_size, progress=progress)
    res = index.query(gen)
    res.seconds["canonicalise_training"] = index.seconds["canonicalise_training"]
    return res


def spread(space: WeightSpace | None, training, *, aligned: bool = True, exclude_same_run: bool = False,
           groups: Sequence[Hashable] | None = None, k: int = 5, device: str | torch.device = "auto",
           chunk_size: int = 1024, progress: bool = False) -> NearestResult:
    """The training set's own spread: each training model's distance to its nearest other training model.

    With ``exclude_same_run`` a checkpoint of the same run never counts as the nearest; run ids come
    from the collection's metadata, or from ``groups`` (one label per training model).
    """
    from .training import load_training
    train = load_training(training, space, groups=groups)
    index = NearestIndex(train.models, aligned=aligned, k=k, device=device, chunk_size=chunk_size, progress=progress)
    return index.spread(train.groups, exclude_same_run)


def as_mapping(res: NearestResult) -> Mapping[str, object]:
    """A JSON-ready view of a result."""
    return {"aligned": res.aligned, "distances": [None if d != d else float(d) for d in res.distances.tolist()],
            "indices": res.indices.tolist(), "excluded": {str(k): v for k, v in res.excluded.items()},
            "seconds": res.seconds}
