"""Matching two models modulo hidden-unit permutations (Git Re-Basin, Ainsworth et al. 2023).

Every matcher returns a permutation ``perm`` such that ``space.permute(sd_b, perm)`` lies in the
basin of ``sd_a``. Nothing here is model specific: the groups and the axes each tensor moves with
come from the :class:`~weightspace.space.WeightSpace`.

Tensors are first cut into *pieces* whose every dimension belongs to exactly one group: a
``Prod`` axis (heads x units per head, channels x flattened spatial positions) is reshaped into its
factors and a ``Cat`` axis (a fused qkv projection) is split into its segments. A group's matching
cost is then a sum of plain matrix products over the pieces that contain it.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..errors import StateDictMismatch, WeightSpaceError
from ..space import ActivationSite, Cat, Prod, WeightSpace
from ..space.axes import Desc

_log = logging.getLogger(__name__)

Permutation = dict[str, Tensor]
StateDict = Mapping[str, Tensor]


# ---------------------------------------------------------------------------- pieces
def _expand(t: Tensor, labels: list[int], d: Desc, size_of: Callable[[int], int]) -> list[tuple[Tensor, list[int]]]:
    """Expand the dimension ``len(labels)`` of ``t``, described by ``d``, into leaf-group dimensions."""
    pos = len(labels)
    if isinstance(d, int):
        return [(t, labels + [d])]

    def size(p: Desc) -> int:
        if isinstance(p, int):
            return size_of(p)
        sizes = [size(q) for q in p.parts]
        return int(np.prod(sizes)) if isinstance(p, Prod) else sum(sizes)

    if isinstance(d, Cat):
        out, offset = [], 0
        for part in d.parts:
            n = size(part)
            out += _expand(t.narrow(pos, offset, n), labels, part, size_of)
            offset += n
        return out
    sizes = [size(p) for p in d.parts]
    t = t.reshape(*t.shape[:pos], *sizes, *t.shape[pos + 1:])
    res = [(t, labels)]
    for part in d.parts:
        res = [r for tt, ll in res for r in _expand(tt, ll, part, size_of)]
    return res


def _pieces(space: WeightSpace, key: str, t: Tensor) -> list[tuple[Tensor, tuple[int, ...]]]:
    """Views of ``t`` (the tensor of ``key``) whose every dimension is labelled by one group index."""
    spec = space.params[space.aliases.get(key, key)]
    res: list[tuple[Tensor, list[int]]] = [(t, [])]
    for d in spec.axes:
        res = [r for tt, ll in res for r in _expand(tt, ll, d, lambda g: space.groups[g].size)]
    return [(tt, tuple(ll)) for tt, ll in res]


# ---------------------------------------------------------------------------- helpers
def _validate_pair(space: WeightSpace, sd_a: StateDict, sd_b: StateDict) -> None:
    space.check(sd_a, source="model A")
    space.check(sd_b, source="model B")
    for k in space.canonical_keys:
        a, b = sd_a[k], sd_b[k]
        if a.dtype != b.dtype:
            raise StateDictMismatch(f"'{k}' is {a.dtype} in model A but {b.dtype} in model B; cast both to one dtype")
        if a.device != b.device:
            raise StateDictMismatch(f"'{k}' is on {a.device} in model A but on {b.device} in model B")


@dataclass
class _Blocks:
    """Permutable groups arranged as matching blocks: a group plus the groups nested in it (heads)."""

    space: WeightSpace
    index: dict[str, int] = field(init=False)
    parent: dict[int, int] = field(init=False)
    children: dict[int, list[int]] = field(init=False)
    tops: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {g.name: i for i, g in enumerate(self.space.groups)}
        self.parent = {i: self.index[g.parent] for i, g in enumerate(self.space.groups) if g.parent}
        self.children = {}
        for c, p in self.parent.items():
            self.children.setdefault(p, []).append(c)
        self.tops = [i for i, g in enumerate(self.space.groups) if g.permutable and i not in self.parent]


def _permute_piece(t: Tensor, labels: Sequence[int], perm: Mapping[int, Tensor], parent: Mapping[int, int],
                   skip_dims: frozenset[int] | set[int] = frozenset()) -> Tensor:
    """Gather ``t`` along every dimension whose group has a permutation, except the ``skip_dims``.

    A nested group's dimension follows its parent's; the pair is gathered jointly, since the
    nested permutation depends on the parent's new position.
    """
    n = len(labels)
    for k, g in enumerate(labels):
        if k in skip_dims or g not in perm:
            continue
        if k + 1 < n and parent.get(labels[k + 1]) == g and labels[k + 1] in perm and k + 1 not in skip_dims:
            continue
        p = perm[g]
        if g in parent and k > 0 and labels[k - 1] == parent[g] and k - 1 not in skip_dims:
            ph = perm.get(parent[g])
            ph = torch.arange(p.shape[0]) if ph is None else ph
            idx = (ph.unsqueeze(1) * p.shape[1] + p).reshape(-1)
            shape = t.shape
            flat = t.reshape(*shape[:k - 1], shape[k - 1] * shape[k], *shape[k + 1:])
            t = flat.index_select(k - 1, idx.to(t.device)).reshape(shape)
        elif g in parent:
            raise WeightSpaceError(f"group {g} is nested in group {parent[g]} but does not follow it in a tensor")
        else:
            t = t.index_select(k, p.to(t.device))
    return t


def _lap(cost: np.ndarray) -> tuple[np.ndarray, float]:
    cost = np.ascontiguousarray(cost, dtype=np.float64)  # scipy copies anything else
    rows, cols = linear_sum_assignment(cost, maximize=True)
    return cols, float(cost[rows, cols].sum())


def _solve_block(g: int, n: int, direct: Tensor, inner: Mapping[int, Tensor], perm: Mapping[int, Tensor]
                 ) -> tuple[dict[int, Tensor], float, float]:
    """Maximise a block's similarity: ``direct[i, j]`` between units (or heads) ``i`` of A and ``j`` of B,
    plus, per nested group ``c``, ``inner[c][i, j, a, b]`` between unit ``a`` of head ``i`` and ``b`` of ``j``.

    The value of pairing heads ``(i, j)`` is the optimal inner assignment's; an outer assignment
    over heads then picks the pairs. Returns the new permutations, their score and the current score.
    """
    ar = torch.arange(n)
    cur = perm.get(g, ar)
    cur_score = float(direct[ar, cur].sum())
    if not inner:
        cols, score = _lap(direct.numpy())
        return {g: torch.as_tensor(cols, dtype=torch.long)}, score, cur_score
    total = direct.numpy().copy()
    sub: dict[int, np.ndarray] = {}
    for c, val in inner.items():
        d = val.shape[2]
        cur_c = perm.get(c, torch.arange(d).expand(n, d))
        cur_score += float(val[ar.unsqueeze(1), cur.unsqueeze(1), torch.arange(d), cur_c].sum())
        v = val.numpy()
        assign = np.zeros((n, n, d), dtype=np.int64)
        for i in range(n):
            for j in range(n):
                assign[i, j], score = _lap(v[i, j])
                total[i, j] += score
        sub[c] = assign
    cols, score = _lap(total)
    out = {g: torch.as_tensor(cols, dtype=torch.long)}
    for c, assign in sub.items():
        out[c] = torch.as_tensor(assign[np.arange(n), cols], dtype=torch.long)
    return out, score, cur_score


# ---------------------------------------------------------------------------- weight matching
class _WeightMatcher:
    def __init__(self, space: WeightSpace, sd_a: StateDict, sd_b: StateDict) -> None:
        self.space = space
        self.blocks = _Blocks(space)
        self.parent = self.blocks.parent
        self.pa: list[tuple[Tensor, tuple[int, ...]]] = []
        self.pb: list[tuple[Tensor, tuple[int, ...]]] = []
        for k in space.canonical_keys:
            a, b = sd_a[k], sd_b[k]
            if not a.is_floating_point() or a.dim() == 0:
                continue
            for (ta, la), (tb, _) in zip(_pieces(space, k, a.detach()), _pieces(space, k, b.detach())):
                self.pa.append((ta, la))
                self.pb.append((tb, la))
        self._cache: dict[tuple[int, tuple[int, ...]], Tensor] = {}
        self.uses: dict[int, list[int]] = {}
        for i, (_, labels) in enumerate(self.pa):
            for g in set(labels):
                top = self.parent.get(g, g)
                if space.groups[top].permutable:
                    self.uses.setdefault(top, []).append(i)

    def _front_a(self, i: int, dims: list[int]) -> Tensor:
        key = (i, tuple(dims))
        if key not in self._cache:
            self._cache[key] = self._front(self.pa[i][0], dims).contiguous()
        return self._cache[key]

    def _front(self, t: Tensor, dims: list[int]) -> Tensor:
        rest = [d for d in range(t.dim()) if d not in dims]
        t = t.permute(*dims, *rest)
        return t.reshape(*t.shape[:len(dims)], -1)

    def admissible(self, g: int, solved: set[int]) -> list[int]:
        """Pieces of ``g`` whose other permutable groups are all in ``solved``."""
        ok = []
        for i in self.uses.get(g, []):
            tops = {self.parent.get(x, x) for x in self.pa[i][1]}
            if all(t == g or t in solved or not self.space.groups[t].permutable for t in tops):
                ok.append(i)
        return ok

    def step(self, g: int, perm: Mapping[int, Tensor], only: list[int] | None = None
             ) -> tuple[dict[int, Tensor], float, float]:
        """Best permutation of block ``g`` (and its nested groups) with every other group held fixed.

        Returns the block's new permutations, their score and the score of the current ones.
        """
        children = self.blocks.children.get(g, [])
        n = self.space.groups[g].size
        direct = torch.zeros(n, n, dtype=torch.float64)
        inner: dict[int, Tensor] = {}
        for i in (self.uses.get(g, []) if only is None else only):
            ta, labels = self.pa[i]
            if g not in labels:
                continue
            k = labels.index(g)
            nested = k + 1 < len(labels) and labels[k + 1] in children
            dims = [k, k + 1] if nested else [k]
            tb = _permute_piece(self.pb[i][0], labels, perm, self.parent, set(dims))
            a, b = self._front_a(i, dims), self._front(tb, dims)
            if nested:
                val = torch.einsum("iar,jbr->ijab", a, b).double().cpu()
                c = labels[k + 1]
                inner[c] = inner[c] + val if c in inner else val
            else:
                direct += (a @ b.T).double().cpu()
        return _solve_block(g, n, direct, inner, perm)

    def objective(self, perm: Mapping[int, Tensor]) -> float:
        """``<A, permute(B, perm)>`` summed over every floating-point tensor."""
        return float(sum(float((ta * _permute_piece(tb, labels, perm, self.parent)).sum(dtype=torch.float64))
                         for (ta, labels), (tb, _) in zip(self.pa, self.pb)))


def _to_names(space: WeightSpace, perm: dict[int, Tensor]) -> Permutation:
    return {space.groups[g].name: p for g, p in perm.items()}


def _from_names(space: WeightSpace, perm: Mapping[str, Tensor]) -> dict[int, Tensor]:
    index = {g.name: i for i, g in enumerate(space.groups)}
    return {index[k]: torch.as_tensor(v, dtype=torch.long) for k, v in perm.items()}


def weight_matching(space: WeightSpace, sd_a: StateDict, sd_b: StateDict, *, max_iter: int = 100,
                    init: Permutation | None = None, seed: int = 0, fixed: Permutation | None = None, tol: float = 1e-4,
                    progress: bool = False) -> Permutation:
    """Permutation bringing ``sd_b`` into the basin of ``sd_a`` by weight matching (Ainsworth et al. 2023).

    Coordinate descent over the permutable groups in random order: each step solves one linear
    assignment problem (``scipy.optimize.linear_sum_assignment``) maximising
    ``<sd_a, permute(sd_b, perm)>`` over one group with every other group held fixed. Every tensor
    counts, biases, norm parameters and BatchNorm running statistics included. Attention heads are
    matched as blocks: the cost of pairing head ``i`` of A with head ``j`` of B is the value of the
    optimal assignment of the units within the two heads (the nested groups), and an outer
    assignment over heads picks the pairs. A residual stream is a single group. Iterations stop
    when a full sweep changes nothing, or improves the objective by at most ``tol`` times its value
    (``tol=0`` runs to an exact fixed point; on trained digits MLPs the default ``1e-4`` saves a few
    sweeps and leaves the objective and the barrier unchanged to three decimals).
    A group is re-solved only when a group it shares a tensor with has changed since its last solve
    (otherwise its assignment problem, and so its solution, is unchanged).

    Without ``init``, the descent starts from a propagation pass: groups are solved one at a time,
    each from the tensors whose other groups are fixed (inputs, outputs, vocabulary) or already
    solved, starting with the best-determined. A planted permutation is then recovered exactly
    in the first pass; random coordinate descent refines from there.

    ``fixed`` groups are held at the given permutation and never optimised. Returns a permutation
    for :meth:`WeightSpace.permute` applied to ``sd_b``.
    """
    _validate_pair(space, sd_a, sd_b)
    m = _WeightMatcher(space, sd_a, sd_b)
    perm = _from_names(space, space.identity_permutation())
    if init is not None:
        perm.update(_from_names(space, init))
    frozen: set[int] = set()
    if fixed is not None:
        fx = _from_names(space, fixed)
        perm.update(fx)
        frozen = {m.parent.get(g, g) for g in fx}
    order = [g for g in m.blocks.tops if g not in frozen and g in m.uses]
    rng = random.Random(seed)
    bar = None
    if progress:
        from ..utils import progress_bar
        bar = progress_bar(total=max_iter, desc="weight matching", unit="sweep")
    if init is None:
        solved = set(frozen)
        todo = list(order)
        while todo:
            evidence = {g: m.admissible(g, solved) for g in todo}
            energy = {g: sum(float(m.pa[i][0].float().pow(2).sum()) for i in evidence[g]) for g in todo}
            g = max(todo, key=lambda x: energy[x])
            new, _, _ = m.step(g, perm, only=evidence[g] if energy[g] > 0 else None)
            perm.update(new)
            solved.add(g)
            todo.remove(g)
    neighbours = {g: {m.parent.get(x, x) for i in m.uses[g] for x in m.pa[i][1]} - {g} for g in order}
    dirty = set(order)
    objective = m.objective(perm)
    for _ in range(max_iter):
        rng.shuffle(order)
        gain = 0.0
        for g in order:
            if g not in dirty:
                continue
            dirty.discard(g)
            new, score, cur_score = m.step(g, perm)
            if score > cur_score + 1e-9 * max(1.0, abs(cur_score)) and \
                    any(not torch.equal(v, perm[k]) for k, v in new.items()):
                perm.update(new)
                gain += score - cur_score
                dirty |= neighbours[g]
        objective += gain
        if bar is not None:
            bar.update(1)
            bar.set_postfix(objective=f"{objective:.6g}", gain=f"{gain:.3g}", refresh=False)
        if not dirty or gain <= tol * abs(objective):
            break
    if bar is not None:
        bar.close()
    return _to_names(space, perm)



# ---------------------------------------------------------------------------- activation matching
def _diag_costs(space: WeightSpace, c: Tensor, d: Desc, direct: dict[int, Tensor], inner: dict[tuple[int, int], Tensor],
                parent: Mapping[int, int]) -> None:
    """Split a unit-by-unit similarity ``c`` over an axis ``d`` into per-group costs (matching segments only)."""
    size = lambda x: space.groups[x].size if isinstance(x, int) else \
        (int(np.prod([size(p) for p in x.parts])) if isinstance(x, Prod) else sum(size(p) for p in x.parts))
    if isinstance(d, int):
        if space.groups[d].permutable:
            direct[d] = direct[d] + c if d in direct else c
        return
    if isinstance(d, Cat):
        off = 0
        for part in d.parts:
            n = size(part)
            _diag_costs(space, c[off:off + n, off:off + n], part, direct, inner, parent)
            off += n
        return
    parts = list(d.parts)
    sizes = [size(p) for p in parts]
    k = len(parts)
    t = c.reshape(*sizes, *sizes)
    for i, p in enumerate(parts):
        if not isinstance(p, int) or not space.groups[p].permutable or p in parent:
            continue
        child = parts[i + 1] if i + 1 < k and isinstance(parts[i + 1], int) and parent.get(parts[i + 1]) == p else None
        own = [i, i + 1] if child is not None else [i]
        rest = [j for j in range(k) if j not in own]
        r = int(np.prod([sizes[j] for j in rest])) if rest else 1
        m = t.permute(*own, *rest, *[k + j for j in own], *[k + j for j in rest])
        m = m.reshape(*[sizes[j] for j in own], r, *[sizes[j] for j in own], r)
        m = m.diagonal(dim1=len(own), dim2=2 * len(own) + 1).sum(-1)
        if child is None:
            direct[p] = direct[p] + m if p in direct else m
        else:
            m = m.permute(0, 2, 1, 3)
            inner[(p, child)] = inner[(p, child)] + m if (p, child) in inner else m


class _Stats:
    """Running sums for the cross-correlation of two models' features at one site."""

    def __init__(self) -> None:
        self.n = 0
        self.sa = self.sb = self.saa = self.sbb = self.sab = None

    def add(self, a: Tensor, b: Tensor) -> None:
        a, b = a.double(), b.double()
        if self.sab is None:
            self.sa, self.sb = a.sum(0), b.sum(0)
            self.saa, self.sbb, self.sab = (a * a).sum(0), (b * b).sum(0), a.T @ b
        else:
            self.sa += a.sum(0)
            self.sb += b.sum(0)
            self.saa += (a * a).sum(0)
            self.sbb += (b * b).sum(0)
            self.sab += a.T @ b
        self.n += a.shape[0]

    def matrix(self, method: str) -> Tensor:
        n = self.n
        ma, mb = self.sa / n, self.sb / n
        cov = self.sab / n - torch.outer(ma, mb)
        if method == "covariance":
            return cov
        sa = (self.saa / n - ma * ma).clamp_min(0).sqrt()
        sb = (self.sbb / n - mb * mb).clamp_min(0).sqrt()
        return cov / (torch.outer(sa, sb) + 1e-8)


def _flat_features(y: Tensor, dim: int, where: str) -> Tensor:
    if not y.is_floating_point():
        raise WeightSpaceError(f"activation site {where} holds {y.dtype} values, not features")
    y = y.detach().movedim(dim, -1)
    return y.reshape(-1, y.shape[-1])


def _batch_input(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _site_name(site: ActivationSite) -> str:
    return f"'{site.op}' output of module '{site.module or '<root>'}'"


def _need_sites(space: WeightSpace, what: str) -> list[ActivationSite]:
    if not space.activation_sites:
        raise WeightSpaceError(
            f"{what} needs activation sites, and {space.name or 'this weight space'} records none: no parameterised "
            f"op's output carries permutable units, or the space was saved by an older weightspace (trace it again "
            f"with WeightSpace.from_module)")
    return space.activation_sites


FALLBACKS = ("error", "weight")


@torch.no_grad()
def activation_matching(model_a: nn.Module, model_b: nn.Module, batches: Iterable, *,
                        space: WeightSpace | None = None, method: str = "correlation", fallback: str = "error",
                        progress: bool = False) -> Permutation:
    """Permutation bringing ``model_b`` into the basin of ``model_a`` by matching activations (Ainsworth et al. 2023).

    The outputs at the space's activation sites (every parameterised op whose output units belong
    to a permutable group: linear, conv, norm, embedding, attention out-projection, also when written
    with raw parameters) are recorded on the same inputs for both models; each group's cost is the
    sum over its sites of the cross-correlation (``method="correlation"``) or cross-covariance
    (``"covariance"``) of units. Attention heads are matched as blocks, the cost of a head pair
    being the optimal assignment of their units.

    A group that no site carries (e.g. the units within the heads of ``nn.MultiheadAttention``,
    whose projections happen inside one op) cannot be matched on activations: with
    ``fallback="error"`` (default) this raises :class:`WeightSpaceError` naming the groups; with
    ``fallback="weight"`` they are weight-matched with the others held fixed, and the fact is
    logged. ``batches`` yields inputs or ``(input, target)`` pairs.
    """
    if method not in ("correlation", "covariance"):
        raise ValueError(f"method must be 'correlation' or 'covariance', got {method!r}")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    batches = list(batches)
    if not batches:
        raise WeightSpaceError("activation matching needs at least one batch of inputs")
    space = space or WeightSpace.from_module(model_a, _batch_input(batches[0]))
    sd_a, sd_b = model_a.state_dict(), model_b.state_dict()
    _validate_pair(space, sd_a, sd_b)
    sites = _need_sites(space, "activation matching")
    stats = {s.call: _Stats() for s in sites}
    it = batches
    if progress:
        from ..utils import progress_bar
        it = progress_bar(batches, desc="activation statistics", unit="batch")
    for batch in it:
        x = _batch_input(batch)
        fa, fb = space.capture_activations(model_a, x), space.capture_activations(model_b, x)
        for s in sites:
            a, b = _flat_features(fa[s.call], s.dim, _site_name(s)), _flat_features(fb[s.call], s.dim, _site_name(s))
            if a.shape != b.shape:
                raise StateDictMismatch(f"{_site_name(s)} has {tuple(a.shape)} features in model A but "
                                        f"{tuple(b.shape)} in model B")
            stats[s.call].add(a, b)
    blocks = _Blocks(space)
    direct: dict[int, Tensor] = {}
    inner: dict[tuple[int, int], Tensor] = {}
    for s in sites:
        _diag_costs(space, stats[s.call].matrix(method).cpu(), s.desc, direct, inner, blocks.parent)
    seen = set(direct) | {c for _, c in inner}
    perm = _from_names(space, space.identity_permutation())
    solved, unseen = set(), []
    for g in blocks.tops:
        inn = {c: v for (h, c), v in inner.items() if h == g}
        if g not in direct and not inn:
            unseen += [g, *blocks.children.get(g, [])]
            continue
        missing = [c for c in blocks.children.get(g, []) if c not in seen]
        if missing:
            unseen += missing
            continue
        n = space.groups[g].size
        new, _, _ = _solve_block(g, n, direct.get(g, torch.zeros(n, n, dtype=torch.float64)), inn, perm)
        perm.update(new)
        solved.add(g)
    if unseen:
        names = [space.groups[g].name for g in unseen]
        if fallback == "error":
            raise WeightSpaceError(
                f"activation matching: no activation site carries the units of group(s) {names[:8]}"
                f"{' ...' if len(names) > 8 else ''}; pass fallback='weight' to weight-match them with the others held "
                f"fixed")
        _log.info("activation matching: group(s) %s are carried by no activation site; weight-matching them "
                  "with the %d activation-matched group(s) held fixed (fallback='weight')", names, len(solved))
        fixed = {space.groups[g].name: p for g, p in perm.items() if blocks.parent.get(g, g) in solved}
        return weight_matching(space, sd_a, sd_b, init=_to_names(space, perm), fixed=fixed)
    return _to_names(space, perm)


# ---------------------------------------------------------------------------- straight-through estimator
def ste_matching(model: nn.Module, sd_a: StateDict, sd_b: StateDict, batches: Iterable, *,
                 loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None, space: WeightSpace | None = None,
                 steps: int = 100, lr: float = 1e-3, seed: int = 0, progress: bool = False) -> Permutation:
    """Permutation of ``sd_b`` learned with the straight-through estimator (Ainsworth et al. 2023, Alg. 3).

    A free copy ``theta`` of the weights (initialised from A) is trained so that the midpoint
    ``(A + P(B)) / 2`` has low loss, where ``P = weight_matching(theta, B)``: the forward pass uses
    the projection ``P(B)``, the gradient flows to ``theta`` as if the projection were the identity.
    ``model`` is any module of the architecture (its weights are not used); ``batches`` yields
    ``(input, target)`` pairs, cycled for ``steps`` steps; ``loss_fn`` defaults to cross-entropy.
    Returns, of the distinct permutations met on the way (weight matching's first), the one whose
    midpoint has the lowest loss summed over all ``batches``: never worse there than weight matching.
    """
    from torch.func import functional_call

    batches = list(batches)
    if not batches:
        raise WeightSpaceError("STE matching needs at least one (input, target) batch")
    space = space or WeightSpace.from_module(model, _batch_input(batches[0]))
    _validate_pair(space, sd_a, sd_b)
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    floats = [k for k in space.canonical_keys if sd_a[k].is_floating_point()]
    theta = {k: sd_a[k].detach().clone().requires_grad_(True) for k in floats}
    opt = torch.optim.Adam(theta.values(), lr=lr)
    perm = weight_matching(space, sd_a, sd_b, seed=seed)
    candidates = [perm]

    def midpoint(pb: Mapping[str, Tensor], proj: Callable[[str], Tensor]) -> dict[str, Tensor]:
        return {k: 0.5 * (sd_a[k] + proj(k)) if k in theta else sd_a[k].clone() for k in space.canonical_keys}

    it = range(steps)
    if progress:
        from ..utils import progress_bar
        it = progress_bar(it, desc="STE matching", unit="step")
    was = model.training
    model.train()
    try:
        for step in it:
            x, y = batches[step % len(batches)]
            detached = {k: (theta[k].detach() if k in theta else v) for k, v in sd_a.items() if k in space.params}
            perm = weight_matching(space, detached, sd_b, init=perm, seed=seed + step)
            if any(not torch.equal(v, candidates[-1][k]) for k, v in perm.items()):
                candidates.append(perm)
            pb = space.permute(sd_b, perm)
            mid = midpoint(pb, lambda k: theta[k] + (pb[k] - theta[k]).detach())
            loss = loss_fn(functional_call(model, mid, (x,)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            def total(p: Permutation) -> float:
                pb = space.permute(sd_b, p)
                mid = midpoint(pb, lambda k: pb[k])
                return sum(float(loss_fn(functional_call(model, mid, (x,)), y)) for x, y in batches)
            losses = [total(p) for p in candidates]
    finally:
        model.train(was)
    return candidates[min(range(len(candidates)), key=losses.__getitem__)]
