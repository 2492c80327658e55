"""Learned nowcasters: NiNo (graph metanetwork, Knyazev et al. 2025) and WNN (per-parameter MLP, Jang et al. 2023).

Both read the same per-value features of ``c`` context states and predict scaled residuals on
the last state for horizons ``1..K``:

- values are standardised per tensor with the context's mean/std (NiNo's scaling);
- each tensor's recent motion ``tau`` (mean absolute change per spacing, in scaled units) makes the
  features ``(s_i - s_last) / tau`` and the outputs ``delta / tau`` free of the learning rate's scale,
  so a model trained on one set of optimiser settings transfers to others.

WNN (Jang et al., "Learning to Boost Training by Periodic Nowcasting Near Future Weights", ICML
2023) maps these features to the K residuals with an MLP shared by every parameter. NiNo ("Accelerating
Training with Neuron Interaction and Nowcasting Networks", ICLR 2025) first runs the features through
a permutation-equivariant graph metanetwork over the model's neural graph; each weight's output
then also sees the embedding of its edge (weights) or node (biases, norm parameters), i.e. what the
neurons it connects are doing. NodeNiNo (ours) keeps graph states on the neurons only, so a jump costs
about what WNN's does.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor

from ..graph.layout import EDGE_TYPES, NODE_TYPES
from ..nn import GraphMetanetwork, IncompatibleGraph, MetanetConfig, NeuronNetwork
from ..nn.batch import collate
from ..nn.layers import mlp
from ..nn.routes import MIN_BLOCK_EDGES, Block, Routes, dense_blocks
from .core import NowcastError, ParamLayout

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
TAU_FLOOR = 1e-6
FEATURE_CLIP = 50.0
DECODE_ROWS = 4096


def value_features(context: Tensor, layout: ParamLayout) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-value features ``[c + 1, P]`` and the ``mean``, ``std``, ``tau`` ``[P]`` that undo them.

    Features: ``(s_i - s_last) / tau`` for the ``c - 1`` earlier states, the scaled last state
    ``s_last``, and ``log tau`` of the value's tensor. Written in place into one tensor (on a large
    model, every temporary of this size costs about as much as the arithmetic).
    """
    mean, std = layout.stats(context)
    c = context.shape[0]
    feats = context.new_empty(c + 1, context.shape[1])
    rel = torch.sub(context[:-1], context[-1], out=feats[:c - 1]).div_(std)
    tau = layout.segment_mean(rel[0].abs().div_(max(c - 1, 1))).clamp_min(TAU_FLOOR)
    rel.div_(tau).clamp_(-FEATURE_CLIP, FEATURE_CLIP)
    torch.sub(context[-1], mean, out=feats[c - 1]).div_(std).clamp_(-FEATURE_CLIP, FEATURE_CLIP)
    torch.log(tau, out=feats[c])
    return feats, mean, std, tau


Rows = Callable[[slice], Tensor]


class _ValueNowcaster(nn.Module):
    """Shared parts of the learned nowcasters: features, the per-value decoder, ``nowcast``."""

    needs_space = False

    def _init_common(self, context: int, horizons: int, hidden: int) -> None:
        if context < 2:
            raise NowcastError(f"a learned nowcaster needs at least 2 context states, got {context}")
        self.context, self.max_horizon, self.hidden = context, horizons, hidden

    def decoder_rows(self, feats: Sequence[Tensor], layouts: Sequence[ParamLayout]) -> Rows:
        """The rows of the decoder's input ``[sum P, *]`` for a slice of the values (all windows' values in order):
        each value's features, and what the nowcaster's graph adds. Built per slice, so that inference runs the
        decoder over blocks of values and never holds a hidden-width tensor over every value."""
        inp = feats[0].t() if len(feats) == 1 else torch.cat([f.t() for f in feats])
        return inp.__getitem__

    def forward(self, windows: Sequence[Any], horizons: Sequence[int] | None = None) -> list[Tensor]:
        """Scaled residual predictions ``[K, P]`` for each window (anything with ``context`` and ``layout``);
        with ``horizons`` (values of k), only those ``[len(horizons), P]`` (the decoder's last layer computes
        only those outputs, not K).

        All windows go through the network together: one (batched) graph pass and one decoder pass. Without
        gradients the decoder runs over blocks of ``DECODE_ROWS`` values, its activations in place: its
        intermediates then stay small and in cache, where one pass over a large model allocates (and
        page-faults) several tensors of its size.
        """
        return self._predict(windows, horizons)[0]

    def _predict(self, windows: Sequence[Any], horizons: Sequence[int] | None) -> tuple[list[Tensor], list[Tensor]]:
        """:meth:`forward`'s residuals, and each window's per-value std that unscales them."""
        dtype = next(self.parameters()).dtype
        feats, taus, stds = [], [], []
        for w in windows:
            f, _, std, tau = value_features(w.context, w.layout)
            feats.append(f.to(dtype))
            taus.append(tau)
            stds.append(std)
        rows = self.decoder_rows(feats, [w.layout for w in windows])
        head, last = self.decoder[:-1], self.decoder[-1]
        weight, bias = last.weight, last.bias
        if horizons is not None:
            pick = torch.as_tensor(list(horizons), device=weight.device) - 1
            weight, bias = weight[pick], bias[pick]
        total = sum(f.shape[1] for f in feats)
        if torch.is_grad_enabled():
            out = F.linear(head(rows(slice(None))), weight, bias).float()
        else:
            out = feats[0].new_empty(total, weight.shape[0])
            for s in range(0, total, DECODE_ROWS):
                x = rows(slice(s, s + DECODE_ROWS))
                for layer in head:
                    x = F.silu(x, inplace=True) if isinstance(layer, nn.SiLU) else layer(x)
                out[s:s + DECODE_ROWS] = F.linear(x, weight, bias)
            out = out.float()
        return [o.t() * tau for o, tau in zip(out.split([f.shape[1] for f in feats]), taus)], stds

    def nowcast(self, context: Tensor, k: int, layout: ParamLayout) -> Tensor:
        """Predicted ``[P]`` parameters ``k`` context spacings after the last state, for ``1 <= k <= K``
        (``K = max_horizon``, the horizons it was trained for; any other ``k`` raises :class:`NowcastError`)."""
        return self.nowcast_horizons(context, [k], layout)[0]

    @torch.no_grad()
    def nowcast_horizons(self, context: Tensor, ks: Sequence[int], layout: ParamLayout) -> Tensor:
        """Predicted parameters ``[len(ks), P]`` for several horizons from one pass of the network."""
        if context.shape[0] != self.context:
            raise NowcastError(f"{type(self).__name__} takes {self.context} context states, got {context.shape[0]}")
        bad = [int(k) for k in ks if not 1 <= int(k) <= self.max_horizon]
        if bad or not ks:
            raise NowcastError(f"{type(self).__name__} predicts horizons 1..{self.max_horizon} (its max_horizon), "
                               f"got k={bad[0] if bad else list(ks)}")
        was = self.training
        self.eval()
        try:
            from types import SimpleNamespace

            device = next(self.parameters()).device
            ctx = context.to(device=device, dtype=torch.float32)
            (pred,), (std,) = self._predict([SimpleNamespace(context=ctx, layout=layout)], [int(k) for k in ks])
            return (ctx[-1] + pred * std).to(context.device, context.dtype)
        finally:
            self.train(was)

    @classmethod
    def pretrained_location(cls, pretrained_model_name_or_path: str | Path | None = None) -> str | Path:
        """Where :meth:`from_pretrained` reads from: the packaged checkpoint for ``None``, a packaged variant's folder
        for its name under ``weightspace/nowcast/pretrained`` (e.g. ``"nino_cnn_k40"``), else the folder or Hub id."""
        path = pretrained_model_name_or_path
        if isinstance(path, str) and not Path(path).exists() and (PRETRAINED_DIR / path / "config.json").is_file():
            return PRETRAINED_DIR / path
        if path is None:
            path = PRETRAINED_DIR / cls.pretrained_name
            if not (path / "config.json").is_file():
                raise NowcastError(f"no packaged {cls.__name__} checkpoint at {path}; train one with "
                                   f"`weightspace nowcast train` and pass its folder")
        return path

    @classmethod
    def pretrained_config(cls, pretrained_model_name_or_path: str | Path | None = None) -> dict[str, Any]:
        """The ``config.json`` of a local or packaged checkpoint (resolved as by :meth:`from_pretrained`)."""
        path = Path(cls.pretrained_location(pretrained_model_name_or_path)) / "config.json"
        if not path.is_file():
            packaged = sorted(p.parent.name for p in PRETRAINED_DIR.glob("*/config.json"))
            raise NowcastError(f"no checkpoint there ({path} not found): pass a folder written by save_pretrained or "
                               f"a packaged name ({', '.join(packaged)})")
        return json.loads(path.read_text())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path | None = None, **kwargs: Any):
        """Load weights saved by ``save_pretrained``: the packaged checkpoint by default, a packaged variant by its
        folder name under ``weightspace/nowcast/pretrained`` (e.g. ``"nino_cnn_k40"``), else a folder or Hub id."""
        path = cls.pretrained_location(pretrained_model_name_or_path)
        return super().from_pretrained(str(path), **kwargs)


class WNN(_ValueNowcaster, PyTorchModelHubMixin, library_name="weightspace",
          tags=["weightspace", "nowcasting", "wnn"]):
    """Per-parameter MLP nowcaster with no graph (Jang et al. 2023, Weight Nowcaster Network)."""

    pretrained_name = "wnn"

    @property
    def sizes(self) -> str:
        return f"hidden {self.hidden}"

    def __init__(self, context: int = 5, horizons: int = 16, hidden: int = 64, layers: int = 3) -> None:
        super().__init__()
        self._init_common(context, horizons, hidden)
        self.decoder = mlp([context + 1] + [hidden] * (layers - 1) + [horizons])


class _GraphNowcaster(_ValueNowcaster):
    """Shared parts of the nowcasters that read the model's neural graph: the parameter types they accept,
    each value's host in the graph, and the graphs of a batch of windows."""

    needs_space = True

    def _init_graph(self, edge_types: Sequence[str], node_types: Sequence[str], edge_features: int,
                    node_features: int, max_positions: int) -> None:
        self.edge_types, self.node_types = list(edge_types), list(node_types)
        self.max_edge_features, self.max_node_features = edge_features, node_features
        self.max_positions = max_positions
        self._hosts: dict[tuple[str, torch.device], Tensor] = {}
        self._checked: set[str] = set()

    def _host_index(self, layout: ParamLayout, device: torch.device) -> Tensor:
        """Per value: the row of its host in ``[edges; nodes; no host]`` (computed once per architecture and device)."""
        space = layout.space
        key = (space.fingerprint, device)
        if key not in self._hosts:
            lay = space.layout
            inv = lay.inverse
            E, N = lay.num_edges, lay.num_nodes
            EF, NF = E * lay.edge_features, N * lay.node_features
            self._hosts[key] = torch.where(inv < EF, inv // lay.edge_features,
                                           torch.where(inv < EF + NF, E + (inv - EF) // lay.node_features,
                                                       E + N)).to(device)
        return self._hosts[key]

    def check_space(self, layout: ParamLayout) -> None:
        """Refuse architectures with parameter types meta-training never saw."""
        name = type(self).__name__
        space = layout.space
        if space is None:
            raise NowcastError(f"{name} needs the model's WeightSpace: pass example_input (or space=) to "
                               f"NowcastOptimizer")
        if space.fingerprint in self._checked:
            return
        lay = space.layout
        used_e = {EDGE_TYPES[t] for t in lay.edge_type.unique().tolist()}
        used_n = {NODE_TYPES[t] for t in lay.node_type.unique().tolist()}
        new = sorted(used_e - set(self.edge_types)) + sorted(used_n - set(self.node_types))
        if new:
            raise NowcastError(f"{space.name} has parameter types this {name} was not meta-trained on: {new} "
                               f"(trained on edges {self.edge_types}, nodes {self.node_types}); meta-train on a "
                               f"zoo with such layers or use a baseline nowcaster")
        if lay.edge_features > self.max_edge_features or lay.node_features > self.max_node_features:
            raise NowcastError(f"{space.name} has {lay.edge_features} values per edge and {lay.node_features} per "
                               f"node (e.g. a kernel larger than 3x3); this {name} takes at most "
                               f"{self.max_edge_features} and {self.max_node_features}")
        self._checked.add(space.fingerprint)

    def graphs(self, feats: Sequence[Tensor], layouts: Sequence[ParamLayout]) -> tuple[list[Any], Any]:
        """Each window's graph of per-value features (checked first), and all of them as one graph or PyG batch."""
        graphs = []
        for f, layout in zip(feats, layouts):
            self.check_space(layout)
            g = layout.space.layout.graph_from_flat(f)
            g.pos_id = g.pos_id.clamp(max=self.max_positions - 1)
            graphs.append(g)
        return graphs, graphs[0] if len(graphs) == 1 else collate(graphs)


class NiNo(_GraphNowcaster, PyTorchModelHubMixin, library_name="weightspace",
           tags=["weightspace", "nowcasting", "nino", "graph-neural-network"]):
    """Neuron Interaction and Nowcasting network (Knyazev et al. 2025) on weightspace's neural graphs.

    A :class:`~weightspace.nn.GraphMetanetwork` embeds every edge (weight, or conv kernel of F
    weights) and node (unit, with its bias and norm parameters) from the context's per-value
    features; each value's K residuals come from its own features plus its host's embedding
    (values outside the graph get a learned "no host" embedding). ``edge_types``/``node_types``
    record what meta-training saw; other parameter types are refused with a clear message.
    """

    pretrained_name = "nino"

    def __init__(self, context: int = 5, horizons: int = 16, hidden: int = 32, layers: int = 3,
                 decoder_hidden: int = 64, edge_features: int = 9, node_features: int = 4,
                 max_positions: int = 128, edge_types: Sequence[str] = EDGE_TYPES,
                 node_types: Sequence[str] = NODE_TYPES) -> None:
        super().__init__()
        self._init_common(context, horizons, decoder_hidden)
        self._init_graph(edge_types, node_types, edge_features, node_features, max_positions)
        self.metanet = GraphMetanetwork(MetanetConfig(hidden=hidden, layers=layers, states=context + 1,
                                                      edge_features=edge_features, node_features=node_features,
                                                      max_positions=max_positions))
        self.no_host = nn.Parameter(torch.zeros(hidden))
        self.edge_proj = nn.Linear(hidden, hidden)
        self.node_proj = nn.Linear(hidden, hidden)
        self.decoder = mlp([context + 1 + hidden, decoder_hidden, decoder_hidden, horizons])
        self._route_cache: dict[tuple[str, torch.device, torch.dtype], Routes] = {}

    @property
    def sizes(self) -> str:
        return f"hidden {self.metanet.config.hidden}, {self.metanet.config.layers} layers, decoder {self.hidden}"

    def _routes(self, layout: ParamLayout, graph: Any) -> Routes:
        """The metanetwork's message routes of one architecture's graph, built once per architecture and device."""
        dtype = self.metanet.edge_in.weight.dtype
        key = (layout.space.fingerprint, graph.edge_index.device, dtype)
        if key not in self._route_cache:
            self._route_cache[key] = Routes.build(graph.edge_index, int(graph.num_nodes), dtype,
                                                  self.metanet.config.min_block_edges)
        return self._route_cache[key]

    def decoder_rows(self, feats: Sequence[Tensor], layouts: Sequence[ParamLayout]) -> Rows:
        """Each value's features beside its host's embedding; the graphs of all windows run as one PyG batch."""
        graphs, data = self.graphs(feats, layouts)
        routes = None
        if len(graphs) == 1 and not torch.is_autocast_enabled(data.edge_index.device.type):
            routes = self._routes(layouts[0], data)
        try:
            enc = self.metanet(data, routes)
        except IncompatibleGraph as e:
            names = sorted({lay.space.name for lay in layouts})
            raise NowcastError(f"{', '.join(names)} does not fit this NiNo: {e}") from e
        edge = self.edge_proj(enc.edge)
        node = self.node_proj(enc.node)
        # one gather from a table of one dtype: under autocast the projections may be bf16 while no_host is fp32
        table = torch.cat([edge, node.to(edge.dtype), self.no_host[None].to(edge.dtype)])
        E_all, N_all = edge.shape[0], node.shape[0]
        hosts, e0, n0 = [], 0, 0
        for f, layout, g in zip(feats, layouts, graphs):
            rows = self._host_index(layout, f.device)
            E, N = g.edge_index.shape[1], g.num_nodes
            if len(graphs) > 1:
                rows = torch.where(rows < E, rows + e0, torch.where(rows < E + N, rows - E + E_all + n0, E_all + N_all))
            hosts.append(rows)
            e0, n0 = e0 + E, n0 + N
        inp, host = torch.cat([f.t() for f in feats]), torch.cat(hosts)

        return lambda sl: torch.cat([inp[sl], table.index_select(0, host[sl]).to(inp.dtype)], 1)


class NodeNiNo(_GraphNowcaster, PyTorchModelHubMixin, library_name="weightspace",
               tags=["weightspace", "nowcasting", "nino", "graph-neural-network"]):
    """NiNo whose graph network keeps states on the neurons only, so a jump costs about as little as WNN's.

    A :class:`~weightspace.nn.NeuronNetwork` embeds the nodes (units) of the model's neural graph:
    each edge enters once, as FiLM scales and shifts of the messages between the units it joins,
    and no edge state is updated (NiNo's :class:`~weightspace.nn.GraphMetanetwork` updates one per
    weight in every layer, which dominates its cost on linear layers). Each value's K residuals come
    from a per-value decoder whose first layer adds, to the value's own features, projections of its
    host's units: sender and receiver for a weight, the unit for a bias or norm parameter, a learned
    "no host" vector otherwise. Equivariant: relabelling the units relabels the node states, and
    each value reads the units it belongs to. Grids of at least ``min_block_edges`` weights (weight
    matrices) run as matrix products and broadcasts (``None``: per weight; the same function).
    """

    pretrained_name = "node_nino"

    def __init__(self, context: int = 5, horizons: int = 40, node_hidden: int = 16, layers: int = 2,
                 decoder_hidden: int = 32, edge_features: int = 9, node_features: int = 4,
                 max_positions: int = 128, edge_types: Sequence[str] = EDGE_TYPES,
                 node_types: Sequence[str] = NODE_TYPES, min_block_edges: int | None = MIN_BLOCK_EDGES) -> None:
        super().__init__()
        self._init_common(context, horizons, decoder_hidden)
        self._init_graph(edge_types, node_types, edge_features, node_features, max_positions)
        self.network = NeuronNetwork(node_hidden, layers, context + 1, edge_features, node_features, max_positions,
                                     min_block_edges)
        self.value_in = nn.Linear(context + 1, decoder_hidden)
        self.sender_out = nn.Linear(node_hidden, decoder_hidden, bias=False)
        self.receiver_out = nn.Linear(node_hidden, decoder_hidden, bias=False)
        self.node_out = nn.Linear(node_hidden, decoder_hidden, bias=False)
        self.no_host = nn.Parameter(torch.zeros(decoder_hidden))
        self.decoder = nn.Sequential(nn.SiLU(), *mlp([decoder_hidden, decoder_hidden, horizons]))
        self._units: dict[tuple[str, torch.device], tuple[Tensor, Tensor, Tensor]] = {}
        self._grids: dict[tuple[str, torch.device], tuple[tuple[list[Block], Tensor], Tensor, Tensor]] = {}

    @property
    def sizes(self) -> str:
        return f"nodes {self.network.hidden}, {len(self.network.layers)} layers, decoder {self.hidden}"

    @classmethod
    def from_wnn(cls, wnn: WNN, **kwargs: Any) -> "NodeNiNo":
        """A NodeNiNo that predicts exactly what ``wnn`` does: its decoder takes the WNN's three layers and the
        units' projections start at zero, so meta-training learns only what the graph adds. ``kwargs`` are the
        other sizes (``node_hidden``, ``layers``, types); the WNN fixes context, horizons and decoder width."""
        lin = [m for m in wnn.decoder if isinstance(m, nn.Linear)]
        if len(lin) != 3:
            raise NowcastError(f"NodeNiNo.from_wnn takes a WNN of 3 layers, got {len(lin)}")
        node = cls(context=wnn.context, horizons=wnn.max_horizon, decoder_hidden=wnn.hidden, **kwargs)
        with torch.no_grad():
            for mine, theirs in zip((node.value_in, node.decoder[1], node.decoder[3]), lin):
                mine.load_state_dict(theirs.state_dict())
            for proj in (node.sender_out, node.receiver_out, node.node_out):
                proj.weight.zero_()
            node.no_host.zero_()
        return node

    def _value_units(self, layout: ParamLayout, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """Per value: its host's kind (0 weight, 1 unit, 2 none) and the units it reads (sender and receiver of a
        weight; the unit twice for a unit's value), computed once per architecture and device."""
        key = (layout.space.fingerprint, device)
        if key not in self._units:
            lay = layout.space.layout
            host = self._host_index(layout, device)
            E, N = lay.num_edges, lay.num_nodes
            kind = (host >= E).long() + (host >= E + N).long()
            ei = lay.edge_index.to(device)
            edge = host.clamp(max=max(E - 1, 0))
            node = (host - E).clamp(0, max(N - 1, 0))
            u = torch.where(kind == 0, ei[0, edge] if E else node, node)
            v = torch.where(kind == 0, ei[1, edge] if E else node, node)
            self._units[key] = (kind, u, v)
        return self._units[key]

    @staticmethod
    def _rows(kind: Tensor, u: Tensor, v: Tensor, N_all: int, n0: int) -> tuple[Tensor, Tensor]:
        """Each value's two rows of the table ``[sender terms; receiver terms; unit terms; no host; zeros]`` of
        ``N_all`` units a part, for a graph whose units start at ``n0``."""
        first = torch.where(kind == 0, u + n0, torch.where(kind == 1, 2 * N_all + u + n0, 3 * N_all))
        return first, torch.where(kind == 0, N_all + v + n0, 3 * N_all + 1)

    def _plan(self, layout: ParamLayout, device: torch.device) -> tuple[tuple[list[Block], Tensor], Tensor, Tensor]:
        """For a window alone: the graph's edge grids and each value's table rows; once per architecture and device."""
        key = (layout.space.fingerprint, device)
        if key not in self._grids:
            first, second = self._rows(*self._value_units(layout, device), layout.space.layout.num_nodes, 0)
            edge_grids = dense_blocks(layout.space.layout.edge_index.to(device), self.network.min_block_edges, None)
            self._grids[key] = (edge_grids, first, second)
        return self._grids[key]

    def decoder_rows(self, feats: Sequence[Tensor], layouts: Sequence[ParamLayout]) -> Rows:
        """The decoder's first layer: ``value_in(features)`` plus the projections of each value's units, gathered
        from a table of ``[sender terms; receiver terms; unit terms; no host; zeros]`` over all units."""
        graphs, data = self.graphs(feats, layouts)
        if len(graphs) == 1 and self.network.min_block_edges:
            grids, first, second = self._plan(layouts[0], data.edge_index.device)
            h = self.network(data, grids)
        else:
            h = self.network(data, None)
            N_all, n0, first, second = h.shape[0], 0, [], []
            for f, layout, g in zip(feats, layouts, graphs):
                a, b = self._rows(*self._value_units(layout, f.device), N_all, n0)
                first.append(a)
                second.append(b)
                n0 += g.num_nodes
            first, second = torch.cat(first), torch.cat(second)
        inp = feats[0].t() if len(feats) == 1 else torch.cat([f.t() for f in feats])
        parts = [self.sender_out(h), self.receiver_out(h), self.node_out(h), self.no_host[None]]
        # one dtype for the table: under autocast the projections may be bf16, no_host fp32
        table = torch.cat([t.to(parts[0].dtype) for t in parts] + [parts[0].new_zeros(1, parts[0].shape[1])])
        return lambda sl: self.value_in(inp[sl]) + table.index_select(0, first[sl]) + table.index_select(0, second[sl])


LEARNED_NOWCASTERS = (NiNo, NodeNiNo, WNN)


def load_nowcaster(name_or_path: str | Path) -> NiNo | NodeNiNo | WNN:
    """The learned nowcaster in a folder written by ``save_pretrained`` (or a packaged name such as ``"nino_k40"``),
    of the class its ``config.json`` describes."""
    cfg = NiNo.pretrained_config(name_or_path)
    cls = NodeNiNo if "node_hidden" in cfg else NiNo if "edge_types" in cfg else WNN
    return cls.from_pretrained(name_or_path)
