"""Message routes of a batch of neural graphs, computed once per forward and shared by every layer.

Messages flow both along each edge (from its input unit to its output unit) and against it.
For each direction a :class:`Route` holds the edges sorted by their receiving node, in CSR form,
with each node's degree: aggregations then run as contiguous segment reductions rather than
scatters, and the degree statistics are not recomputed layer after layer.

A neural graph's edges come mostly in dense grids: a weight matrix ``[out, in]`` is a run of
``out * in`` consecutive edges from every one of ``in`` units to every one of ``out`` units.
:func:`dense_blocks` finds these grids from ``edge_index`` alone. Over a grid, messages are
formed by broadcasting the two ends' node terms (no per-edge gather) and reduced along one axis
of the grid (no segment reduction over all edges); the per-grid partial aggregates then meet at
their receivers in a second, small segment reduction (:attr:`Route.parts`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

MIN_BLOCK_EDGES = 1024
"""Grids with fewer edges are left to the per-edge path: per grid, Python and small-kernel overheads outweigh the
saving below about this size (a digits CNN of 8-16 channels trained 0.7-0.85x as fast with grids of 128-256 edges)."""
MAX_BLOCK_EDGES = 16384
"""Larger grids are cut into bands of whole rows of about this many edges, so that one band's messages stay in cache."""


@dataclass
class Block:
    """A dense grid of consecutive edges: edge ``start + r * cols + c`` runs from ``col_nodes[c]`` to
    ``row_nodes[r]``."""

    start: int
    rows: int
    cols: int
    row_nodes: Tensor
    col_nodes: Tensor

    @property
    def stop(self) -> int:
        return self.start + self.rows * self.cols


def dense_blocks(edge_index: Tensor, min_edges: int = MIN_BLOCK_EDGES,
                 max_edges: int | None = MAX_BLOCK_EDGES) -> tuple[list[Block], Tensor]:
    """The dense grids of at least ``min_edges`` consecutive edges in ``edge_index``, and the ids of the other edges.

    A grid is a chain of runs of edges into one receiver each, every run with the same senders in
    the same order. Found with whole-tensor operations; only the grids kept are visited in Python.
    Grids of more than ``max_edges`` edges come as bands of ``max(1, max_edges // cols)`` rows.
    """
    src, dst = edge_index[0], edge_index[1]
    E, dev = src.numel(), src.device
    if E == 0:
        return [], torch.zeros(0, dtype=torch.long, device=dev)
    new = torch.ones(E, dtype=torch.bool, device=dev)
    new[1:] = dst[1:] != dst[:-1]
    starts = new.nonzero().squeeze(1)
    lens = torch.diff(starts, append=starts.new_tensor([E]))
    run = new.cumsum(0) - 1
    same_len = torch.zeros_like(new[: starts.numel()])
    same_len[1:] = lens[1:] == lens[:-1]
    prev = (torch.arange(E, device=dev) - lens[run]).clamp(min=0)
    matches = torch.bincount(run, weights=(same_len[run] & (src == src[prev])).to(torch.float64),
                             minlength=starts.numel())
    cont = same_len & (matches == lens.to(torch.float64))
    first = (~cont).nonzero().squeeze(1)
    nruns = torch.diff(first, append=first.new_tensor([starts.numel()]))
    sizes = nruns * lens[first]
    keep = sizes >= min_edges
    blocks = []
    for r0, O in zip(first[keep].tolist(), nruns[keep].tolist()):
        s, U = int(starts[r0]), int(lens[r0])
        band = O if max_edges is None else max(1, max_edges // U)
        for r in range(0, O, band):
            n = min(band, O - r)
            blocks.append(Block(s + r * U, n, U, dst[starts[r0 + r:r0 + r + n]], src[s:s + U]))
    covered = keep.repeat_interleave(nruns).repeat_interleave(lens)
    return blocks, (~covered).nonzero().squeeze(1)


@dataclass
class Route:
    """Edges of one message direction, grouped by receiver.

    ``order`` permutes edge-indexed tensors into receiver order (``None`` when the edges already
    are in that order); ``edge_index`` [2, E] holds sender and receiver in that order; ``ptr``
    [N+1] are the CSR offsets, ``degree`` [N, 1] the number of messages each node receives and
    ``log_degree`` is ``log(1 + degree)``.

    With ``blocks``, messages are aggregated per dense grid instead: a grid's receivers are its
    rows (``along_rows``, messages along the edges) or its columns (against them); the edges in no
    grid (``rest``, sent by ``rest_sender`` to ``rest_receiver``) each make their own partial
    aggregate; ``parts`` routes the partial aggregates (grids' in ``blocks`` order, then ``rest``'s)
    to their receivers. ``pieces`` cuts the edge axis into grids and the stretches of ``rest`` between
    them, in edge order (``is_grid`` tells which), for :meth:`split_edges` and :meth:`join_edges`.
    """

    order: Tensor | None
    edge_index: Tensor
    ptr: Tensor
    degree: Tensor
    log_degree: Tensor
    blocks: list[Block] = field(default_factory=list)
    along_rows: bool = True
    rest: Tensor | None = None
    rest_sender: Tensor | None = None
    rest_receiver: Tensor | None = None
    parts: "Route | None" = None
    pieces: list[int] = field(default_factory=list)
    is_grid: list[bool] = field(default_factory=list)

    @classmethod
    def build(cls, sender: Tensor, receiver: Tensor, num_nodes: int, dtype: torch.dtype = torch.float32) -> "Route":
        """The route of messages from ``sender[k]`` to ``receiver[k]`` for every edge ``k``."""
        order: Tensor | None = None
        if receiver.numel() > 1 and not bool((receiver[1:] >= receiver[:-1]).all()):
            order = torch.argsort(receiver, stable=True)
            receiver, sender = receiver[order], sender[order]
        counts = torch.bincount(receiver, minlength=num_nodes)
        ptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=receiver.device)
        torch.cumsum(counts, 0, out=ptr[1:])
        degree = counts.to(dtype).unsqueeze(-1)
        return cls(order, torch.stack([sender, receiver]), ptr, degree, torch.log1p(degree))

    def with_blocks(self, blocks: list[Block], rest: Tensor, sender: Tensor, receiver: Tensor,
                    along_rows: bool) -> "Route":
        """This route, aggregating per grid of ``blocks``; ``sender``/``receiver`` are this direction's, per edge."""
        ends = [b.row_nodes if along_rows else b.col_nodes for b in blocks]
        rest_sender, rest_receiver = sender[rest], receiver[rest]
        part_receiver = torch.cat(ends + [rest_receiver])
        parts = Route.build(torch.arange(part_receiver.numel(), device=rest.device), part_receiver,
                            self.ptr.numel() - 1, self.degree.dtype)
        pieces, is_grid, pos = [], [], 0
        for b in blocks:
            if b.start > pos:
                pieces.append(b.start - pos)
                is_grid.append(False)
            pieces.append(b.stop - b.start)
            is_grid.append(True)
            pos = b.stop
        if pos < receiver.numel():
            pieces.append(receiver.numel() - pos)
            is_grid.append(False)
        return Route(self.order, self.edge_index, self.ptr, self.degree, self.log_degree, blocks, along_rows,
                     rest, rest_sender, rest_receiver, parts, pieces, is_grid)

    def split_edges(self, t: Tensor) -> tuple[list[Tensor], Tensor]:
        """Edge-indexed ``t`` as each grid's rows and the rows of ``rest``; one ``split``, so its gradient is one
        concatenation rather than a full-size copy per grid (as slicing would cost)."""
        cut = t.split(self.pieces)
        rest = [c for c, g in zip(cut, self.is_grid) if not g]
        return [c for c, g in zip(cut, self.is_grid) if g], torch.cat(rest) if rest else t[:0]

    def join_edges(self, grids: list[Tensor], rest: Tensor) -> Tensor:
        """The inverse of :meth:`split_edges`: one edge-indexed tensor from each grid's rows and ``rest``'s rows."""
        stretches = iter(rest.split([n for n, g in zip(self.pieces, self.is_grid) if not g]))
        grid_rows = iter(grids)
        return torch.cat([next(grid_rows) if g else next(stretches) for g in self.is_grid])

    def sort(self, t: Tensor) -> Tensor:
        """Edge-indexed ``t`` in receiver order."""
        return t if self.order is None else t.index_select(0, self.order)


@dataclass
class Routes:
    """Both message directions of a batch: ``forward`` (input unit to output unit) and ``backward``."""

    forward: Route
    backward: Route

    @classmethod
    def build(cls, edge_index: Tensor, num_nodes: int, dtype: torch.dtype = torch.float32,
              min_block_edges: int | None = MIN_BLOCK_EDGES, max_block_edges: int | None = MAX_BLOCK_EDGES) -> "Routes":
        """Both routes, aggregating per dense grid of at least ``min_block_edges`` edges when the graph has any
        (:func:`dense_blocks`, grids cut into bands of about ``max_block_edges``; ``None``: per edge only)."""
        src, dst = edge_index[0], edge_index[1]
        fwd, bwd = Route.build(src, dst, num_nodes, dtype), Route.build(dst, src, num_nodes, dtype)
        if min_block_edges is not None:
            grids, rest = dense_blocks(edge_index, min_block_edges, max_block_edges)
            if grids:
                fwd = fwd.with_blocks(grids, rest, src, dst, along_rows=True)
                bwd = bwd.with_blocks(grids, rest, dst, src, along_rows=False)
        return cls(fwd, bwd)
