"""Message routes of a batch of neural graphs, computed once per forward and shared by every layer.

Messages flow both along each edge (from its input unit to its output unit) and against it.
For each direction a :class:`Route` holds the edges sorted by their receiving node, in CSR form,
with each node's degree: aggregations then run as contiguous segment reductions rather than
scatters, and the degree statistics are not recomputed layer after layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Route:
    """Edges of one message direction, grouped by receiver.

    ``order`` permutes edge-indexed tensors into receiver order (``None`` when the edges already
    are in that order); ``edge_index`` [2, E] holds sender and receiver in that order; ``ptr``
    [N+1] are the CSR offsets, ``degree`` [N, 1] the number of messages each node receives and
    ``log_degree`` is ``log(1 + degree)``.
    """

    order: Tensor | None
    edge_index: Tensor
    ptr: Tensor
    degree: Tensor
    log_degree: Tensor

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

    def sort(self, t: Tensor) -> Tensor:
        """Edge-indexed ``t`` in receiver order."""
        return t if self.order is None else t.index_select(0, self.order)


@dataclass
class Routes:
    """Both message directions of a batch: ``forward`` (input unit to output unit) and ``backward``."""

    forward: Route
    backward: Route

    @classmethod
    def build(cls, edge_index: Tensor, num_nodes: int, dtype: torch.dtype = torch.float32) -> "Routes":
        src, dst = edge_index[0], edge_index[1]
        return cls(Route.build(src, dst, num_nodes, dtype), Route.build(dst, src, num_nodes, dtype))
