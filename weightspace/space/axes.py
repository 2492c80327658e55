"""Axis descriptors and the unification solver behind tracing.

Every tensor axis met while tracing is described by a *descriptor*: a variable
(an index space of some size), a ``Prod`` of descriptors (a reshape that merged
axes, row-major) or a ``Cat`` of descriptors (a concatenation, e.g. a fused qkv
projection). Operations impose equalities between descriptors; the solver keeps
them in a union-find whose roots may be *expanded* into structure when a later
view splits an axis. At the end, each parameter axis resolves to a tree whose
leaves are root variables: the neuron groups of the weight space.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Union

import torch

from ..errors import UnsupportedOperation


@dataclass(frozen=True)
class Prod:
    parts: tuple["Desc", ...]


@dataclass(frozen=True)
class Cat:
    parts: tuple["Desc", ...]


Desc = Union[int, Prod, Cat]


class Solver:
    """Union-find over axis variables with structural expansion and fixed flags."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: list[bool] = []
        self.expansion: dict[int, Desc] = {}
        self.notes: list[str] = []

    def var(self, size: int, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.fixed.append(fixed or size == 1)
        return len(self.parent) - 1

    def find(self, v: int) -> int:
        root = v
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[v] != root:
            self.parent[v], v = root, self.parent[v]
        return root

    def size_of(self, d: Desc) -> int:
        if isinstance(d, int):
            return self.size[self.find(d)]
        sizes = [self.size_of(p) for p in d.parts]
        return prod(sizes) if isinstance(d, Prod) else sum(sizes)

    def head(self, d: Desc) -> Desc:
        """Follow roots and expansions until a root variable without structure or a Prod/Cat."""
        while isinstance(d, int):
            r = self.find(d)
            if r not in self.expansion:
                return r
            d = self.expansion[r]
        return d

    def resolve(self, d: Desc) -> Desc:
        """Fully expanded normal form: nested Prods/Cats flattened, size-1 factors dropped."""
        d = self.head(d)
        if isinstance(d, int):
            return d
        parts = [self.resolve(p) for p in d.parts]
        kind = type(d)
        flat: list[Desc] = []
        for p in parts:
            if isinstance(p, kind):
                flat.extend(p.parts)
            elif kind is Prod and self.size_of(p) == 1:
                continue
            else:
                flat.append(p)
        if kind is Prod and not flat:
            return parts[0] if parts else self.var(1)
        return flat[0] if len(flat) == 1 else kind(tuple(flat))

    def leaves(self, d: Desc) -> list[int]:
        d = self.resolve(d)
        if isinstance(d, int):
            return [d]
        return [leaf for p in d.parts for leaf in self.leaves(p)]

    def fix(self, d: Desc) -> None:
        for leaf in self.leaves(d):
            self.fixed[leaf] = True

    def is_fixed(self, d: Desc) -> bool:
        return all(self.fixed[leaf] for leaf in self.leaves(d))

    def _occurs(self, v: int, d: Desc) -> bool:
        return v in self.leaves(d)

    def unify(self, a: Desc, b: Desc, where: str = "") -> None:
        """Declare that two axis descriptors index the same units in the same order."""
        a, b = self.head(a), self.head(b)
        if a == b:
            return
        sa, sb = self.size_of(a), self.size_of(b)
        if sa != sb:
            raise UnsupportedOperation(f"{where}: axis sizes {sa} and {sb} were expected to match")
        if isinstance(a, int) and isinstance(b, int):
            self.parent[b] = a
            self.fixed[a] = self.fixed[a] or self.fixed[b]
            return
        if isinstance(b, int):
            a, b = b, a
        if isinstance(a, int):
            if self._occurs(a, b):
                self.fix(b)
                self.fixed[a] = True
                self.notes.append(f"{where}: cyclic axis structure; axes fixed")
                return
            self.expansion[a] = b
            if self.fixed[a]:
                self.fix(b)
            return
        ra, rb = self.resolve(a), self.resolve(b)
        if isinstance(ra, int) or isinstance(rb, int):
            self.unify(ra, rb, where)
            return
        if type(ra) is type(rb):
            if isinstance(ra, Cat):
                if [self.size_of(p) for p in ra.parts] == [self.size_of(p) for p in rb.parts]:
                    for p, q in zip(ra.parts, rb.parts):
                        self.unify(p, q, where)
                    return
            elif self._unify_prods(list(ra.parts), list(rb.parts), where):
                return
        elif isinstance(ra, Prod) and isinstance(rb, Cat) or isinstance(ra, Cat) and isinstance(rb, Prod):
            p, c = (ra, rb) if isinstance(ra, Prod) else (rb, ra)
            if self.size_of(p.parts[0]) == len(c.parts):
                rest = Prod(p.parts[1:])
                if all(self.size_of(q) == self.size_of(rest) for q in c.parts):
                    self.fix(p.parts[0])
                    for q in c.parts:
                        self.unify(rest, q, where)
                    self.notes.append(f"{where}: a stacked axis was indexed per slice; its slices share one group")
                    return
        self.fix(ra)
        self.fix(rb)
        self.notes.append(f"{where}: incompatible axis structures; their units are treated as fixed")

    def _unify_prods(self, pa: list[Desc], pb: list[Desc], where: str) -> bool:
        while pa and pb:
            x, y = self.head(pa[0]), self.head(pb[0])
            sx, sy = self.size_of(x), self.size_of(y)
            if sx == sy:
                self.unify(x, y, where)
                pa.pop(0)
                pb.pop(0)
                continue
            if sx < sy:
                x, y, sx, sy, pa, pb = y, x, sy, sx, pb, pa
            if isinstance(x, Prod):
                pa[0:1] = list(x.parts)
                continue
            if not isinstance(x, int) or sx % sy:
                return False
            split = Prod((self.var(sy, self.fixed[x]), self.var(sx // sy, self.fixed[x])))
            self.expansion[x] = split
            pa[0:1] = list(split.parts)
        return not pa and not pb

    def split(self, d: Desc, sizes: list[int], where: str) -> list[Desc]:
        """Refine ``d`` into a row-major product of fresh variables of the given sizes."""
        parts = tuple(self.var(s, self.is_fixed(d)) for s in sizes)
        self.unify(d, Prod(parts), where)
        return list(parts)


def axis_index(size_of, d: Desc, perms: dict[int, torch.Tensor], parent: dict[int, int] | None = None
               ) -> torch.Tensor:
    """Gather index of one axis: ``new[j] = old[index[j]]`` under group permutations ``perms``.

    ``d`` must be resolved; groups missing from ``perms`` stay in place. A *nested* group
    (``parent[g] = h``) has a permutation per unit of its parent, shaped ``[size(h), size(g)]``,
    indexed by the parent's new position; it must follow its parent inside a ``Prod``.
    """
    parent = parent or {}
    if isinstance(d, int):
        if d in parent:
            raise ValueError(f"nested group {d} appears outside a product with its parent group {parent[d]}")
        p = perms.get(d)
        return p if p is not None else torch.arange(size_of(d))
    if isinstance(d, Cat):
        out, offset = [], 0
        for part in d.parts:
            s = axis_index(size_of, part, perms, parent)
            out.append(s + offset)
            offset += len(s)
        return torch.cat(out)
    subs = [None if isinstance(p, int) and p in parent else axis_index(size_of, p, perms, parent) for p in d.parts]
    sizes = [len(s) if s is not None else size_of(p) for s, p in zip(subs, d.parts)]
    grids = torch.meshgrid(*[torch.arange(n) for n in sizes], indexing="ij")
    old = []
    for k, (part, sub) in enumerate(zip(d.parts, subs)):
        if sub is not None:
            old.append(sub[grids[k]])
            continue
        pos = next((a for a in range(k) if d.parts[a] == parent[part]), None)
        if pos is None:
            raise ValueError(f"nested group {part} must follow its parent group {parent[part]} in a product")
        sigma = perms.get(part)
        old.append(grids[k] if sigma is None else sigma[grids[pos], grids[k]])
    idx = torch.zeros(sizes, dtype=torch.long)
    for k, o in enumerate(old):
        idx = idx * sizes[k] + o
    return idx.reshape(-1)
