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
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import MessagePassing, TransformerConv
from torch_geometric.utils import scatter

from .routes import Block, Route, Routes

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
    permutation equivariant. Nodes with no messages get zeros. The degree scalers divide by
    ``avg_log_degree``, a buffer that :meth:`GraphMetanetwork.fit_degrees` sets to the training
    graphs' mean ``log(1 + degree)`` (2.0 until then).

    Messages arrive sorted by receiver with a :class:`~weightspace.nn.routes.Route`, so every
    aggregator is a segment reduction: the sum and the sum of squares share one, and max and min
    take one each. ``forward_scatter`` is the former scatter-based path, kept as a reference.
    """

    def __init__(self, dim: int, aggregators: Sequence[str] = AGGREGATORS, scalers: Sequence[str] = SCALERS,
                 avg_log_degree: float = 2.0, out_dim: int | None = None) -> None:
        super().__init__()
        bad = [a for a in aggregators if a not in AGGREGATORS] + [s for s in scalers if s not in SCALERS]
        if bad:
            raise ValueError(f"unknown aggregators/scalers {bad}; choose from {AGGREGATORS} and {SCALERS}")
        self.aggregators, self.scalers = tuple(aggregators), tuple(scalers)
        self.register_buffer("avg_log_degree", torch.tensor(float(avg_log_degree)))
        self.out = nn.Linear(dim * len(self.aggregators) * len(self.scalers), out_dim or dim)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        state_dict.setdefault(prefix + "avg_log_degree", torch.tensor(2.0))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, msg: Tensor, route: Route) -> Tensor:
        """Aggregate ``msg`` [E, H], given in ``route``'s receiver order."""
        return self.combine({s: msg * msg if s == "sq" else msg for s in self.statistics}, route.ptr, route)

    @property
    def statistics(self) -> tuple[str, ...]:
        """The per-receiver reductions the aggregators need: ``sum``, ``sq`` (sum of squares), ``max``, ``min``."""
        need = set()
        if {"mean", "std"} & set(self.aggregators):
            need.add("sum")
        if "std" in self.aggregators:
            need.add("sq")
        need.update(a for a in ("max", "min") if a in self.aggregators)
        return tuple(s for s in ("sum", "sq", "max", "min") if s in need)

    def combine(self, stats: dict[str, Tensor], ptr: Tensor, route: Route) -> Tensor:
        """Aggregate rows of per-message or partial ``stats`` (keyed as :attr:`statistics`), sorted by receiver
        with CSR offsets ``ptr``; the degrees are ``route``'s (messages, not rows)."""
        has = route.degree > 0
        found: dict[str, Tensor] = {}
        if "sum" in stats:
            inv = 1.0 / route.degree.clamp(min=1)
            mean = torch.segment_reduce(stats["sum"], "sum", offsets=ptr, unsafe=True) * inv
            found["mean"] = mean
            if "sq" in stats:
                sq = torch.segment_reduce(stats["sq"], "sum", offsets=ptr, unsafe=True) * inv
                found["std"] = torch.sqrt(torch.relu(sq - mean * mean) + 1e-6) - 1e-3
        for a in ("max", "min"):
            if a in stats:
                found[a] = torch.where(has, torch.segment_reduce(stats[a], a, offsets=ptr, unsafe=True), 0.0)
        return self._scale(torch.cat([found[a] for a in self.aggregators], -1), route.log_degree)

    def forward_scatter(self, msg: Tensor, index: Tensor, dim_size: int) -> Tensor:
        """The same aggregation by scatters over unsorted ``index``, with degrees recomputed per call."""
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
        deg = scatter(torch.ones_like(index, dtype=msg.dtype), index, 0, dim_size, reduce="sum")
        return self._scale(torch.cat(outs, -1), torch.log1p(deg).unsqueeze(-1))

    def _scale(self, agg: Tensor, logd: Tensor) -> Tensor:
        avg = self.avg_log_degree.to(agg.dtype)
        scaled = []
        for s in self.scalers:
            if s == "identity":
                scaled.append(agg)
            elif s == "amplification":
                scaled.append(agg * (logd / avg))
            else:
                scaled.append(agg * (avg / logd.clamp(min=math.log(2.0))))
        return self.out(torch.cat(scaled, -1))


class FiLMMessages(MessagePassing):
    """Messages ``m_ij = act(A h_i + B h_j) * (1 + gamma(e_ij)) + beta(e_ij)``, aggregated by PNA at ``i``.

    ``A h`` and ``B h`` are computed once per node and gathered per edge, which is the same as a
    linear map of ``[h_i, h_j]`` but costs O(N) rather than O(E) matrix products. Messages have
    the edges' width ``edge_dim`` (the node width ``dim`` by default) and the aggregate is mapped
    back to ``dim``, so every per-edge tensor is ``edge_dim`` wide. Given a
    :class:`Route`, messages are formed in receiver order and aggregated by segment reductions;
    without one, by scatters over ``edge_index`` (the reference path).
    """

    def __init__(self, dim: int, aggregators: Sequence[str] = AGGREGATORS, scalers: Sequence[str] = SCALERS,
                 edge_dim: int | None = None) -> None:
        super().__init__(aggr=None, node_dim=0)
        de = edge_dim or dim
        self.lin = nn.Linear(dim, 2 * de)
        self.film = nn.Linear(de, 2 * de)
        self.act = nn.SiLU()
        self.pna = PNAAggregation(de, aggregators, scalers, out_dim=dim)

    def forward(self, h: Tensor, e: Tensor | None = None, edge_index: Tensor | None = None,
                route: Route | None = None, film: Tensor | None = None) -> Tensor:
        """Messages into every node of ``h``; ``film`` is ``self.film(e)`` when the caller computed it already."""
        a, b = self.lin(h).chunk(2, -1)
        film = self.film(e) if film is None else film
        if route is not None:
            film, edge_index = route.sort(film), route.edge_index
        elif edge_index is None:
            raise ValueError("FiLMMessages needs an edge_index or a Route")
        gamma, beta = film.chunk(2, -1)
        return self.propagate(edge_index, a=a, b=b, gamma=gamma, beta=beta, route=route,
                              size=(h.shape[0], h.shape[0]))

    def new_parts(self) -> dict[str, list[Tensor]]:
        """Empty lists of partial aggregates, one per statistic PNA needs, for aggregating per dense grid of a
        :class:`Route` with ``blocks``: :meth:`grid_stats` for each grid (messages from broadcasting its receivers'
        ``a`` against its senders' ``b``, reduced along the grid's sender axis), then :meth:`finish_grids`."""
        return {s: [] for s in self.pna.statistics}

    def grid_stats(self, a: Tensor, b: Tensor, film: Tensor, blk: Block, along_rows: bool,
                   parts: dict[str, list[Tensor]]) -> None:
        """Append one grid's partial aggregates (its ``film`` rows, in edge order) to ``parts``."""
        rows, cols = (a, b) if along_rows else (b, a)
        gamma, beta = film.view(blk.rows, blk.cols, -1).chunk(2, -1)
        m = self.message(rows[blk.row_nodes].unsqueeze(1), cols[blk.col_nodes].unsqueeze(0), gamma, beta)
        axis = 1 if along_rows else 0
        for s in parts:
            parts[s].append(m.sum(axis) if s == "sum" else (m * m).sum(axis) if s == "sq"
                            else m.amax(axis) if s == "max" else m.amin(axis))

    def finish_grids(self, a: Tensor, b: Tensor, rest_film: Tensor, route: Route,
                     parts: dict[str, list[Tensor]]) -> Tensor:
        """Add the messages of the edges outside grids (``rest_film``: their FiLM rows) and aggregate all parts."""
        gamma, beta = rest_film.chunk(2, -1)
        m = self.message(a.index_select(0, route.rest_receiver), b.index_select(0, route.rest_sender), gamma, beta)
        stats = {s: route.parts.sort(torch.cat(parts[s] + [m * m if s == "sq" else m])) for s in parts}
        return self.pna.combine(stats, route.parts.ptr, route)

    def message(self, a_i: Tensor, b_j: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
        return self.act(a_i + b_j) * (1 + gamma) + beta

    def aggregate(self, inputs: Tensor, index: Tensor, ptr: Tensor | None = None, dim_size: int | None = None,
                  route: Route | None = None) -> Tensor:
        if route is not None:
            return self.pna(inputs, route)
        return self.pna.forward_scatter(inputs, index, int(dim_size if dim_size is not None else index.max() + 1))


class NeuralGraphLayer(nn.Module):
    """One edge-updating message-passing layer (NG-GNN / NiNo style, PNA aggregation).

    Nodes receive messages from their inputs (forward edges) and from their outputs (backward
    edges) separately; then each edge is updated from its two endpoints and itself. Pre-norm
    residual updates keep deep stacks stable. Edges and messages may be narrower than nodes
    (``edge_dim``): a neural graph has far more edges than nodes, so the per-edge width sets the
    cost. ``conv="transformer"`` is the graph-transformer
    variant: messages are combined by multi-head attention over each node's neighbours, with the
    edge embedding in keys and values (PyG's ``TransformerConv``, Shi et al. 2021), instead of
    FiLM messages with PNA aggregation.
    """

    def __init__(self, dim: int, aggregators: Sequence[str] = AGGREGATORS, scalers: Sequence[str] = SCALERS,
                 update_edges: bool = True, conv: str = "pna", heads: int = 4, edge_dim: int | None = None) -> None:
        super().__init__()
        if conv not in CONVS:
            raise ValueError(f"unknown conv {conv!r}; choose from {CONVS}")
        de = edge_dim or dim
        self.norm_h, self.norm_e = nn.LayerNorm(dim), nn.LayerNorm(de)
        self.conv = conv
        if conv == "pna":
            self.fwd = FiLMMessages(dim, aggregators, scalers, de)
            self.bwd = FiLMMessages(dim, aggregators, scalers, de)
        else:
            if dim % heads:
                raise ValueError(f"hidden size {dim} is not divisible by {heads} attention heads")
            self.fwd = TransformerConv(dim, dim // heads, heads=heads, edge_dim=de)
            self.bwd = TransformerConv(dim, dim // heads, heads=heads, edge_dim=de)
        self.node_update = mlp([3 * dim, 2 * dim, dim])
        self.update_edges = update_edges
        if update_edges:
            self.edge_nodes = nn.Linear(dim, 4 * de)
            self.edge_self = nn.Linear(de, 2 * de, bias=False)
            self.edge_out = nn.Sequential(nn.SiLU(), nn.Linear(2 * de, de))

    def forward(self, h: Tensor, e: Tensor, edge_index: Tensor, routes: Routes | None = None) -> tuple[Tensor, Tensor]:
        """One layer; ``routes`` (built once per batch) selects the segment-reduction path of PNA."""
        hn, en = self.norm_h(h), self.norm_e(e)
        edge_self = None
        if self.conv == "pna" and routes is not None and routes.forward.parts is not None:
            m_in, m_out, edge_self = self._grid_messages(hn, en, routes)
        elif self.conv == "pna" and routes is not None:
            film_in, film_out, edge_self = self._edge_maps(en)
            m_in = self.fwd(hn, route=routes.forward, film=film_in)
            m_out = self.bwd(hn, route=routes.backward, film=film_out)
        elif self.conv == "pna":
            m_in = self.fwd(hn, en, edge_index)
            m_out = self.bwd(hn, en, edge_index.flip(0))
        else:
            m_in = self.fwd(hn, edge_index, en)
            m_out = self.bwd(hn, edge_index.flip(0), en)
        h = h + self.node_update(torch.cat([hn, m_in, m_out], -1))
        if self.update_edges:
            edge_self = self.edge_self(en) if edge_self is None else edge_self
            e = e + self._edge_update(h, edge_self, edge_index, routes)
        return h, e

    def _grid_messages(self, hn: Tensor, en: Tensor, routes: Routes
                       ) -> tuple[Tensor, Tensor, tuple[list[Tensor], Tensor] | None]:
        """Both directions' messages over a grid route, one grid band at a time: the band's FiLM and edge
        self-maps are computed and used while they are in cache, never for all edges at once. Returns the two
        aggregates and the edge self-map as (per band, rest) pieces."""
        fwd, bwd = routes.forward, routes.backward
        W, bias, sizes = self._map_weights()
        af, bf = self.fwd.lin(hn).chunk(2, -1)
        ab, bb = self.bwd.lin(hn).chunk(2, -1)
        pf, pb, selfs = self.fwd.new_parts(), self.bwd.new_parts(), []
        grids, rest = fwd.split_edges(en)
        for blk, grid in zip(fwd.blocks, grids):
            maps = F.linear(grid, W, bias).split(sizes, -1)
            self.fwd.grid_stats(af, bf, maps[0], blk, True, pf)
            self.bwd.grid_stats(ab, bb, maps[1], blk, False, pb)
            selfs.append(maps[2] if self.update_edges else None)
        maps = F.linear(rest, W, bias).split(sizes, -1)
        m_in = self.fwd.finish_grids(af, bf, maps[0], fwd, pf)
        m_out = self.bwd.finish_grids(ab, bb, maps[1], bwd, pb)
        return m_in, m_out, (selfs, maps[2]) if self.update_edges else None

    def _edge_update(self, h: Tensor, edge_self: Tensor | tuple[list[Tensor], Tensor], edge_index: Tensor,
                     routes: Routes | None) -> Tensor:
        """``edge_out(src_term[sender] + dst_term[receiver] + edge_self)`` per edge; over the dense grids of a
        blocked route (``edge_self`` then comes cut, as per-grid and rest pieces, from :meth:`_grid_messages`) the
        node terms are broadcast along the grid instead of gathered per edge."""
        src, dst = self.edge_nodes(self.norm_h(h)).chunk(2, -1)
        if not isinstance(edge_self, tuple):
            return self.edge_out(src.index_select(0, edge_index[0]) + dst.index_select(0, edge_index[1]) + edge_self)
        route = routes.forward
        grids, rest = edge_self
        outs = [self.edge_out(dst[blk.row_nodes].unsqueeze(1) + src[blk.col_nodes].unsqueeze(0)
                              + grid.view(blk.rows, blk.cols, -1)).flatten(0, 1)
                for blk, grid in zip(route.blocks, grids)]
        rest = self.edge_out(src.index_select(0, route.rest_sender) + dst.index_select(0, route.rest_receiver) + rest)
        return route.join_edges(outs, rest)

    def _map_weights(self) -> tuple[Tensor, Tensor, list[int]]:
        """Both directions' FiLM maps and the edge self-map stacked as one linear map: weight, bias, output sizes."""
        maps = [self.fwd.film, self.bwd.film] + ([self.edge_self] if self.update_edges else [])
        bias = [m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in maps]
        return torch.cat([m.weight for m in maps]), torch.cat(bias), [m.out_features for m in maps]

    def _edge_maps(self, en: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Both directions' FiLM maps and the edge self-map of ``en`` as one matrix product (one pass over edges)."""
        W, bias, sizes = self._map_weights()
        return tuple(F.linear(en, W, bias).split(sizes, -1)) + ((None,) if not self.update_edges else ())
