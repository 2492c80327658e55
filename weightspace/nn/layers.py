"""Building blocks of graph metanetworks over neural graphs.

The message-passing layer follows the edge-updating graph networks of NG-GNN (Kofinas et al.,
"Graph Neural Networks for Learning Equivariant Representations of Neural Networks", ICLR 2024)
and NiNo (Knyazev et al., "Accelerating Training with Neuron Interaction and Nowcasting
Networks", ICLR 2025): edge features modulate messages by FiLM, messages flow both along and
against each edge, and edges are updated from their endpoints. Messages are combined with the
multiple aggregators and degree scalers of PNA (Corso et al., "Principal Neighbourhood
Aggregation for Graph Nets", NeurIPS 2020).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor
from torch_geometric.nn import MessagePassing, TransformerConv
from torch_geometric.utils import scatter

CONVS = ("pna", "transformer")
AGGREGATORS = ("mean", "max", "min", "std")
SCALERS = ("identity", "amplification", "attenuation")
DEFAULT_SCALERS = ("identity", "amplification")


def mlp(sizes: Sequence[int], act: type[nn.Module] = nn.SiLU, last_act: bool = False) -> nn.Sequential:
    """A plain MLP with activations between layers."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_act:
            layers.append(act())
    return nn.Sequential(*layers)


class PNAAggregation(nn.Module):
    """PNA multi-aggregation (Corso et al. 2020): mean/max/min/std, each scaled by functions of log-degree.

    Every aggregator is invariant to the order of the messages a node receives, so the layer is
    permutation equivariant. Nodes with no messages get zeros.
    """

    def __init__(self, dim: int, aggregators: Sequence[str] = AGGREGATORS, scalers: Sequence[str] = SCALERS,
                 avg_log_degree: float = 2.0) -> None:
        super().__init__()
        bad = [a for a in aggregators if a not in AGGREGATORS] + [s for s in scalers if s not in SCALERS]
        if bad:
            raise ValueError(f"unknown aggregators/scalers {bad}; choose from {AGGREGATORS} and {SCALERS}")
        self.aggregators, self.scalers = tuple(aggregators), tuple(scalers)
        self.avg_log_degree = avg_log_degree
        self.out = nn.Linear(dim * len(self.aggregators) * len(self.scalers), dim)

    def forward(self, msg: Tensor, index: Tensor, dim_size: int) -> Tensor:
        outs = []
        mean = scatter(msg, index, 0, dim_size, reduce="mean")
        for a in self.aggregators:
            if a == "mean":
                outs.append(mean)
            elif a == "std":
                sq = scatter(msg * msg, index, 0, dim_size, reduce="mean")
                outs.append(torch.sqrt(torch.relu(sq - mean * mean) + 1e-6) - 1e-3)
            else:
                outs.append(scatter(msg, index, 0, dim_size, reduce=a))
        agg = torch.cat(outs, -1)
        deg = scatter(torch.ones_like(index, dtype=msg.dtype), index, 0, dim_size, reduce="sum")
        logd = torch.log1p(deg).unsqueeze(-1)
        scaled = []
        for s in self.scalers:
            if s == "identity":
                scaled.append(agg)
            elif s == "amplification":
                scaled.append(agg * (logd / self.avg_log_degree))
            else:
                scaled.append(agg * (self.avg_log_degree / logd.clamp(min=math.log(2.0))))
        return self.out(torch.cat(scaled, -1))


class FiLMMessages(MessagePassing):
    """Messages ``m_ij = act(A h_i + B h_j) * (1 + gamma(e_ij)) + beta(e_ij)``, aggregated by PNA at ``i``.

    ``A h`` and ``B h`` are computed once per node and gathered per edge, which is the same as a
    linear map of ``[h_i, h_j]`` but costs O(N) rather than O(E) matrix products.
    """

    def __init__(self, dim: int, aggregators: Sequence[str] = AGGREGATORS, scalers: Sequence[str] = SCALERS) -> None:
        super().__init__(aggr=None, node_dim=0)
        self.lin = nn.Linear(dim, 2 * dim)
        self.film = nn.Linear(dim, 2 * dim)
        self.act = nn.SiLU()
        self.pna = PNAAggregation(dim, aggregators, scalers)

    def forward(self, h: Tensor, e: Tensor, edge_index: Tensor) -> Tensor:
        a, b = self.lin(h).chunk(2, -1)
        gamma, beta = self.film(e).chunk(2, -1)
        return self.propagate(edge_index, a=a, b=b, gamma=gamma, beta=beta, size=(h.shape[0], h.shape[0]))

    def message(self, a_i: Tensor, b_j: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
        return self.act(a_i + b_j) * (1 + gamma) + beta

    def aggregate(self, inputs: Tensor, index: Tensor, ptr: Tensor | None = None,
                  dim_size: int | None = None) -> Tensor:
        return self.pna(inputs, index, int(dim_size if dim_size is not None else index.max() + 1))


class NeuralGraphLayer(nn.Module):
    """One edge-updating message-passing layer (NG-GNN / NiNo style, PNA aggregation).

    Nodes receive messages from their inputs (forward edges) and from their outputs (backward
    edges) separately; then each edge is updated from its two endpoints and itself. Pre-norm
    residual updates keep deep stacks stable. ``conv="transformer"`` is the graph-transformer
    variant: messages are combined by multi-head attention over each node's neighbours, with the
    edge embedding in keys and values (PyG's ``TransformerConv``, Shi et al. 2021), instead of
    FiLM messages with PNA aggregation.
    """

    def __init__(self, dim: int, aggregators: Sequence[str] = AGGREGATORS, scalers: Sequence[str] = SCALERS,
                 update_edges: bool = True, conv: str = "pna", heads: int = 4) -> None:
        super().__init__()
        if conv not in CONVS:
            raise ValueError(f"unknown conv {conv!r}; choose from {CONVS}")
        self.norm_h, self.norm_e = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.conv = conv
        if conv == "pna":
            self.fwd = FiLMMessages(dim, aggregators, scalers)
            self.bwd = FiLMMessages(dim, aggregators, scalers)
        else:
            if dim % heads:
                raise ValueError(f"hidden size {dim} is not divisible by {heads} attention heads")
            self.fwd = TransformerConv(dim, dim // heads, heads=heads, edge_dim=dim)
            self.bwd = TransformerConv(dim, dim // heads, heads=heads, edge_dim=dim)
        self.node_update = mlp([3 * dim, 2 * dim, dim])
        self.update_edges = update_edges
        if update_edges:
            self.edge_nodes = nn.Linear(dim, 4 * dim)
            self.edge_self = nn.Linear(dim, 2 * dim, bias=False)
            self.edge_out = nn.Sequential(nn.SiLU(), nn.Linear(2 * dim, dim))

    def forward(self, h: Tensor, e: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        hn, en = self.norm_h(h), self.norm_e(e)
        if self.conv == "pna":
            m_in = self.fwd(hn, en, edge_index)
            m_out = self.bwd(hn, en, edge_index.flip(0))
        else:
            m_in = self.fwd(hn, edge_index, en)
            m_out = self.bwd(hn, edge_index.flip(0), en)
        h = h + self.node_update(torch.cat([hn, m_in, m_out], -1))
        if self.update_edges:
            src, dst = self.edge_nodes(self.norm_h(h)).chunk(2, -1)
            e = e + self.edge_out(src[edge_index[0]] + dst[edge_index[1]] + self.edge_self(en))
        return h, e
