"""Permutation-equivariant graph metanetwork over neural graphs of one or several architectures."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn
from torch import Tensor
from torch_geometric.utils import scatter

from ..errors import WeightSpaceError
from ..graph import EDGE_TYPES, NODE_TYPES
from .layers import AGGREGATORS, DEFAULT_SCALERS, NeuralGraphLayer, mlp
from .routes import MIN_BLOCK_EDGES, Routes


ROUTINGS = ("segment", "scatter")


class IncompatibleGraph(WeightSpaceError):
    """A graph does not fit the metanetwork: wider features, more states or positions than it was built for."""


@dataclass
class MetanetConfig:
    """Size of a :class:`GraphMetanetwork` and the widest graphs it accepts.

    ``edge_features``/``node_features`` are the largest per-architecture F and Fn it takes
    (smaller ones are zero padded); ``max_positions`` bounds ``pos_id`` of fixed units.
    ``positional`` gives learned position embeddings to fixed units only; ``"all"`` also gives
    hidden units their index, which breaks permutation symmetry (kept to test that it does).
    ``conv`` picks the message passing: ``"pna"`` (FiLM messages, PNA aggregation) or
    ``"transformer"`` (multi-head attention over neighbours with ``heads`` heads). ``routing``
    picks how PNA aggregates: ``"segment"`` sorts each direction's edges by receiver once per
    batch and reduces contiguous segments; ``"scatter"`` is the former per-layer scatter path,
    the same function, kept to measure against. ``edge_hidden`` is the width of edge states and
    messages (``hidden`` when ``None``); edges outnumber nodes by far, so it sets the cost.
    Node values (biases, norm scales, running means and variances) span orders of magnitude; with
    ``log_node_features`` each also enters as ``sign(x) * log(1 + |x|)``, so a linear embedding sees
    both its value and its magnitude on a log scale. On the segment path, runs of at least
    ``min_block_edges`` edges that form a dense grid (a weight matrix) form and reduce their messages
    per grid (:func:`~weightspace.nn.routes.dense_blocks`; the same function, faster); ``None``: per edge.
    """

    hidden: int = 64
    layers: int = 4
    states: int = 1
    edge_features: int = 9
    node_features: int = 4
    max_positions: int = 128
    positional: str = "fixed"
    aggregators: Sequence[str] = field(default_factory=lambda: list(AGGREGATORS))
    scalers: Sequence[str] = field(default_factory=lambda: list(DEFAULT_SCALERS))
    update_edges: bool = True
    conv: str = "pna"
    heads: int = 4
    routing: str = "segment"
    edge_hidden: int | None = None
    log_node_features: bool = False
    min_block_edges: int | None = MIN_BLOCK_EDGES

    def __post_init__(self) -> None:
        if self.positional not in ("fixed", "none", "all"):
            raise ValueError(f"positional must be 'fixed', 'none' or 'all', got {self.positional!r}")
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {self.routing!r}")
        if self.min_block_edges is not None and (not isinstance(self.min_block_edges, int) or self.min_block_edges < 1):
            raise ValueError(f"min_block_edges must be a positive int or None, got {self.min_block_edges!r}")
        self.aggregators, self.scalers = list(self.aggregators), list(self.scalers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GraphEncoding:
    """Per-node ``[N, H]`` and per-edge ``[E, De]`` embeddings with each one's graph index (``De`` = edge_hidden)."""

    node: Tensor
    edge: Tensor
    node_batch: Tensor
    edge_batch: Tensor
    num_graphs: int


def num_graphs_of(data: Any) -> int:
    ptr = getattr(data, "ptr", None)
    if ptr is not None:
        return int(ptr.numel() - 1)
    batch = getattr(data, "batch", None)
    return int(batch.max()) + 1 if batch is not None and batch.numel() else 1


def pad_last(t: Tensor, width: int) -> Tensor:
    """Zero-pad the last axis of ``t`` to ``width``."""
    if t.shape[-1] == width:
        return t
    return torch.nn.functional.pad(t, (0, width - t.shape[-1]))


class GraphMetanetwork(nn.Module):
    """Equivariant graph metanetwork: input encoders, a stack of :class:`NeuralGraphLayer`, and embeddings.

    Input: a graph or PyG ``Batch`` from :meth:`WeightSpace.to_graph` (``edge_attr [E, T, F]``,
    ``x [N, T, Fn]``, ``edge_type``, ``node_type``, ``pos_id``), of one or several architectures.
    Relabelling the nodes of a graph by a weight-space permutation relabels the node and edge
    embeddings the same way; pooled readouts are invariant.
    """

    def __init__(self, config: MetanetConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = config or MetanetConfig(**kwargs)
        self.config = cfg
        H, De = cfg.hidden, cfg.edge_hidden or cfg.hidden
        self.edge_in = nn.Linear(cfg.states * cfg.edge_features, De)
        self.node_in = nn.Linear(cfg.states * cfg.node_features * (2 if cfg.log_node_features else 1), H)
        self.edge_type_emb = nn.Embedding(len(EDGE_TYPES), De)
        self.node_type_emb = nn.Embedding(len(NODE_TYPES), H)
        self.pos_emb = nn.Embedding(cfg.max_positions + 1, H)
        nn.init.normal_(self.pos_emb.weight, std=0.1)
        self.layers = nn.ModuleList(NeuralGraphLayer(H, cfg.aggregators, cfg.scalers, cfg.update_edges, cfg.conv,
                                                     cfg.heads, De) for _ in range(cfg.layers))
        self.norm_h, self.norm_e = nn.LayerNorm(H), nn.LayerNorm(De)

    def check(self, data: Any) -> None:
        """Raise :class:`IncompatibleGraph` if ``data`` has wider features, other T or positions beyond range."""
        cfg = self.config
        ea, x = data.edge_attr, data.x
        if ea.dim() != 3 or x.dim() != 3:
            raise IncompatibleGraph(f"expected edge_attr [E, T, F] and x [N, T, Fn], got {tuple(ea.shape)} and "
                                    f"{tuple(x.shape)}")
        if ea.shape[1] != cfg.states or x.shape[1] != cfg.states:
            raise IncompatibleGraph(f"graph has {ea.shape[1]} stacked states, the metanetwork was built for "
                                    f"{cfg.states}")
        if ea.shape[2] > cfg.edge_features:
            raise IncompatibleGraph(f"graph has {ea.shape[2]} values per edge (e.g. a larger conv kernel); the "
                                    f"metanetwork was built for at most {cfg.edge_features}")
        if x.shape[2] > cfg.node_features:
            raise IncompatibleGraph(f"graph has {x.shape[2]} values per node; the metanetwork was built for at "
                                    f"most {cfg.node_features}")
        pos = data.pos_id
        if pos.numel() and int(pos.max()) >= cfg.max_positions:
            raise IncompatibleGraph(f"graph has a fixed unit at position {int(pos.max())} (inputs, outputs or "
                                    f"vocabulary); the metanetwork was built for at most {cfg.max_positions}")

    @torch.no_grad()
    def fit_degrees(self, graphs: Iterable[Any]) -> tuple[float, float]:
        """Set the PNA degree scalers' normaliser to the mean ``log(1 + degree)`` of ``graphs``.

        PNA (Corso et al. 2020) divides its amplification/attenuation scalers by the average
        log-degree of the training graphs; messages run along and against each edge, so each
        direction gets its own average. Returns the (forward, backward) averages.
        """
        sums, count = [0.0, 0.0], [0, 0]
        for g in graphs:
            routes = Routes.build(g.edge_index, int(g.num_nodes), min_block_edges=None)
            for k, route in enumerate((routes.forward, routes.backward)):
                has = route.degree.squeeze(-1) > 0
                sums[k] += float(route.log_degree.squeeze(-1)[has].sum())
                count[k] += int(has.sum())
        if not all(count):
            raise IncompatibleGraph("fit_degrees needs at least one graph with edges")
        avg = (sums[0] / count[0], sums[1] / count[1])
        for layer in self.layers:
            if layer.conv == "pna":
                layer.fwd.pna.avg_log_degree.fill_(avg[0])
                layer.bwd.pna.avg_log_degree.fill_(avg[1])
        return avg

    def positions(self, data: Any) -> Tensor:
        pos = data.pos_id
        if self.config.positional == "all":
            ptr = getattr(data, "ptr", None)
            local = torch.arange(pos.numel(), device=pos.device)
            if ptr is not None:
                local = local - ptr[data.batch]
            pos = torch.where(pos >= 0, pos, local.clamp(max=self.config.max_positions - 1))
        return pos

    def forward(self, data: Any, routes: Routes | None = None) -> GraphEncoding:
        """Embed ``data``; ``routes`` may be passed in when the caller keeps them per architecture."""
        self.check(data)
        cfg = self.config
        edge_index = data.edge_index
        N, E = data.x.shape[0], edge_index.shape[1]
        dtype = self.edge_in.weight.dtype
        ea = pad_last(data.edge_attr.to(dtype), cfg.edge_features).reshape(E, -1)
        x = pad_last(data.x.to(dtype), cfg.node_features)
        if cfg.log_node_features:
            x = torch.cat([x, x.sign() * x.abs().log1p()], -1)
        x = x.reshape(N, -1)
        e = self.edge_in(ea) + self.edge_type_emb(data.edge_type)
        h = self.node_in(x) + self.node_type_emb(data.node_type)
        if cfg.positional != "none":
            pos = self.positions(data)
            h = h + self.pos_emb(pos + 1)
        if cfg.conv != "pna" or cfg.routing != "segment":
            routes = None
        elif routes is None:
            routes = Routes.build(edge_index, N, h.dtype, cfg.min_block_edges)
        for layer in self.layers:
            h, e = layer(h, e, edge_index, routes)
        node_batch = getattr(data, "batch", None)
        if node_batch is None:
            node_batch = torch.zeros(N, dtype=torch.long, device=h.device)
        return GraphEncoding(self.norm_h(h), self.norm_e(e), node_batch, node_batch[edge_index[0]],
                             num_graphs_of(data))


class GraphHead(nn.Module):
    """Invariant graph-level readout: mean and max over nodes and mean over edges, then an MLP."""

    def __init__(self, hidden: int, out_features: int, edge_hidden: int | None = None) -> None:
        super().__init__()
        self.mlp = mlp([2 * hidden + (edge_hidden or hidden), hidden, out_features])

    def forward(self, enc: GraphEncoding) -> Tensor:
        B = enc.num_graphs
        pooled = torch.cat([scatter(enc.node, enc.node_batch, 0, B, reduce="mean"),
                            scatter(enc.node, enc.node_batch, 0, B, reduce="max"),
                            scatter(enc.edge, enc.edge_batch, 0, B, reduce="mean")], -1)
        return self.mlp(pooled)


class NodeHead(nn.Module):
    """Equivariant node-level readout ``[N, out]``."""

    def __init__(self, hidden: int, out_features: int) -> None:
        super().__init__()
        self.mlp = mlp([hidden, hidden, out_features])

    def forward(self, enc: GraphEncoding) -> Tensor:
        return self.mlp(enc.node)


class EdgeHead(nn.Module):
    """Equivariant edge-level readout ``[E, states, edge_features]`` (e.g. future weights, predicted weights)."""

    def __init__(self, hidden: int, states: int = 1, edge_features: int = 9) -> None:
        """``hidden`` is the width of the edge embeddings it reads (the metanetwork's ``edge_hidden``)."""
        super().__init__()
        self.states, self.edge_features = states, edge_features
        self.mlp = mlp([hidden, hidden, states * edge_features])

    def forward(self, enc: GraphEncoding) -> Tensor:
        return self.mlp(enc.edge).view(-1, self.states, self.edge_features)
