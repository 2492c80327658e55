"""A node-state metanetwork: neurons exchange messages through their weights, edges keep no state.

:class:`~weightspace.nn.GraphMetanetwork` updates a state on every edge in every layer, so its cost
grows with the number of weights times its width squared. Here each edge only modulates the
messages between the two units it joins, with a FiLM scale and shift (Perez et al. 2018) that are
linear in its features ``a_uv`` (its values over the context), and each layer updates the nodes:

    h_v <- h_v + MLP([LN(h_v), mean_{u->v} ((1 + G a_uv + g_t) * A h_u + S a_uv + s_t),
                               mean_{v->w} ((1 + G' a_vw + g'_t) * B h_w + S' a_vw + s'_t)])

with ``t`` the edge's type. Because the scale is linear in ``a``, a dense grid of edges (a weight
matrix, :func:`~weightspace.nn.routes.dense_blocks`) needs no per-edge tensor at all: its messages
are matrix products of the grid's feature matrices with the node states, ``sum_u a_uv[f] x_u``, one
per feature ``f`` and direction, and grids of one shape run as one batched product. Other edges are
aggregated per edge (:class:`ScaledSum`). The
shift's mean does not depend on the layer and is reduced once. Node relabellings permute the
output rows the same way (every reduction is a mean over a node's neighbours).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter

from ..graph import EDGE_TYPES, NODE_TYPES
from .layers import mlp
from .model import pad_last
from .routes import MIN_BLOCK_EDGES, Block, dense_blocks


class ScaledSum(MessagePassing):
    """``sum_{u in N(v)} scale_uv * x_u`` with a per-edge, per-channel scale (PyG message passing).

    ``flow="source_to_target"`` sums over a node's senders, ``"target_to_source"`` over its receivers.
    """

    def __init__(self, flow: str = "source_to_target") -> None:
        super().__init__(aggr="sum", flow=flow)

    def forward(self, x: Tensor, scale: Tensor, edge_index: Tensor) -> Tensor:
        return self.propagate(edge_index, x=x, scale=scale, size=(x.shape[0], x.shape[0]))

    def message(self, x_j: Tensor, scale: Tensor) -> Tensor:
        return x_j * scale


@dataclass
class GridGroup:
    """Grids of one shape, stacked: ``feats [G, T*F, rows, cols]`` (feature ``f`` of edge ``start + r * cols + c``
    of grid ``g``) and the same transposed, ``feats_t [G, T*F, cols, rows]`` (both contiguous, so that each
    direction's messages are one plain batched product), their units ``row_nodes [G, rows]`` and
    ``col_nodes [G, cols]``, and edge types ``types [G]``."""

    feats: Tensor
    feats_t: Tensor
    row_nodes: Tensor
    col_nodes: Tensor
    types: Tensor


@dataclass
class EdgeTerms:
    """What every layer reads of the edges, computed once per forward.

    ``groups``: the dense grids of one edge type each, grouped by shape; ``rest_index``/``rest_scale``: the other
    edges' index pairs and scales ``[E', 2H]`` (both directions); ``shift_in``/``shift_out`` ``[N, H]``: mean
    shifts; ``inv_in``/``inv_out`` ``[N, 1]``: one over the number of senders / receivers (0 for none).
    """

    groups: list[GridGroup]
    rest_index: Tensor
    rest_scale: Tensor
    shift_in: Tensor
    shift_out: Tensor
    inv_in: Tensor
    inv_out: Tensor


class NeuronLayer(nn.Module):
    """One node update from the FiLM-modulated means of both neighbourhoods (see the module docstring)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.lin_in, self.lin_out = nn.Linear(hidden, hidden, bias=False), nn.Linear(hidden, hidden, bias=False)
        self.fwd, self.bwd = ScaledSum("source_to_target"), ScaledSum("target_to_source")
        self.update = mlp([3 * hidden, hidden, hidden])

    def forward(self, h: Tensor, terms: EdgeTerms, scale_weight: Tensor, scale_bias: Tensor) -> Tensor:
        """``scale_weight [2, H, T*F]`` and ``scale_bias [2, types, H]``: the scales' linear maps per direction."""
        hn = self.norm(h)
        H = h.shape[1]
        x_in, x_out = self.lin_in(hn), self.lin_out(hn)
        m_in = self.fwd(x_in, terms.rest_scale[:, :H], terms.rest_index)
        m_out = self.bwd(x_out, terms.rest_scale[:, H:], terms.rest_index)
        for grp in terms.groups:
            G, TF, R, C = grp.feats.shape
            senders, receivers = x_in[grp.col_nodes], x_out[grp.row_nodes]
            along = torch.bmm(grp.feats.view(G, TF * R, C), senders).view(G, TF, R, H)
            along = (along * scale_weight[0, :, :TF].t()[:, None]).sum(1)
            along = along + (1 + scale_bias[0, grp.types])[:, None] * senders.sum(1, keepdim=True)
            against = torch.bmm(grp.feats_t.view(G, TF * C, R), receivers).view(G, TF, C, H)
            against = (against * scale_weight[1, :, :TF].t()[:, None]).sum(1)
            against = against + (1 + scale_bias[1, grp.types])[:, None] * receivers.sum(1, keepdim=True)
            m_in = m_in.index_add(0, grp.row_nodes.flatten(), along.reshape(-1, H))
            m_out = m_out.index_add(0, grp.col_nodes.flatten(), against.reshape(-1, H))
        m_in = m_in * terms.inv_in + terms.shift_in
        m_out = m_out * terms.inv_out + terms.shift_out
        return h + self.update(torch.cat([hn, m_in, m_out], -1))


class NeuronNetwork(nn.Module):
    """Node embeddings ``[N, hidden]`` of a neural graph (``edge_attr [E, T, F]``, ``x [N, T, Fn]``, types,
    ``pos_id``) from :class:`NeuronLayer` s; graphs narrower than ``edge_features``/``node_features`` are
    zero padded, as in :class:`~weightspace.nn.GraphMetanetwork`. Grids of at least ``min_block_edges``
    edges take the matrix-product path (``None``: every edge takes the per-edge path; the same function)."""

    def __init__(self, hidden: int = 16, layers: int = 2, states: int = 1, edge_features: int = 9,
                 node_features: int = 4, max_positions: int = 128,
                 min_block_edges: int | None = MIN_BLOCK_EDGES) -> None:
        super().__init__()
        if min_block_edges is not None and (not isinstance(min_block_edges, int) or min_block_edges < 1):
            raise ValueError(f"min_block_edges must be a positive int or None, got {min_block_edges!r}")
        self.hidden, self.states, self.min_block_edges = hidden, states, min_block_edges
        self.edge_features, self.node_features, self.max_positions = edge_features, node_features, max_positions
        self.edge_film = nn.Linear(states * edge_features, 4 * hidden)
        self.edge_type_emb = nn.Embedding(len(EDGE_TYPES), 4 * hidden)
        self.node_in = nn.Linear(states * node_features, hidden)
        self.node_type_emb = nn.Embedding(len(NODE_TYPES), hidden)
        self.pos_emb = nn.Embedding(max_positions + 1, hidden)
        nn.init.normal_(self.pos_emb.weight, std=0.1)
        self.layers = nn.ModuleList(NeuronLayer(hidden) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)

    def _film_maps(self, T: int, F: int) -> tuple[Tensor, Tensor]:
        """The FiLM map's weight restricted to a graph's own ``T * F`` feature columns ``[4H, T*F]`` (no product
        with padding), and its per-type bias ``[types, 4H]``."""
        w = self.edge_film.weight.view(-1, self.states, self.edge_features)[:, :T, :F].reshape(-1, T * F)
        return w, self.edge_type_emb.weight + self.edge_film.bias

    def edge_terms(self, data: Any, grids: tuple[list[Block], Tensor] | None = None) -> EdgeTerms:
        """The :class:`EdgeTerms` of ``data``; ``grids`` (from :func:`dense_blocks`) may be kept per architecture.

        A grid takes the matrix-product path when it has one edge type and more rows and columns than features
        per edge (else its products would outgrow its per-edge messages, e.g. 3x3 kernels between few channels).
        """
        ei, etype = data.edge_index, data.edge_type
        N, H = data.x.shape[0], self.hidden
        E, T, F = data.edge_attr.shape
        # [T, E, F]: a view of the graph's storage when it comes from ``graph_from_flat`` (one row per state)
        per_state = data.edge_attr.to(self.edge_film.weight.dtype).permute(1, 0, 2)
        w, bias = self._film_maps(T, F)
        if grids is None:
            grids = dense_blocks(ei, self.min_block_edges, None) if self.min_block_edges else ([], None)
        blocks, rest = grids
        shapes: dict[tuple[int, int], list[tuple[Block, int]]] = {}
        for blk in blocks:
            t = etype[blk.start:blk.stop]
            if min(blk.rows, blk.cols) > T * F and bool((t == t[0]).all()):
                shapes.setdefault((blk.rows, blk.cols), []).append((blk, int(t[0])))
        kept = [b for grp in shapes.values() for b, _ in grp]
        if rest is None or len(kept) < len(blocks):
            mask = torch.ones(E, dtype=torch.bool, device=ei.device)
            for blk in kept:
                mask[blk.start:blk.stop] = False
            rest = mask.nonzero().squeeze(1)
        groups = []
        for grp in shapes.values():
            views = [per_state[:, b.start:b.stop].reshape(T, b.rows, b.cols, F).permute(0, 3, 1, 2)
                     .reshape(T * F, b.rows, b.cols) for b, _ in grp]
            feats = views[0][None] if len(views) == 1 else torch.stack(views)
            groups.append(GridGroup(feats.contiguous(), feats.transpose(2, 3).contiguous(),
                                    torch.stack([b.row_nodes for b, _ in grp]),
                                    torch.stack([b.col_nodes for b, _ in grp]),
                                    torch.tensor([t for _, t in grp], device=ei.device)))
        rest_index = ei[:, rest]
        film = torch.addmm(bias[etype[rest]], per_state[:, rest].transpose(0, 1).reshape(len(rest), T * F), w.t())
        rest_scale = 1 + torch.cat([film[:, :H], film[:, 2 * H:3 * H]], 1)
        shift_in = scatter(film[:, H:2 * H], rest_index[1], 0, N, reduce="sum")
        shift_out = scatter(film[:, 3 * H:], rest_index[0], 0, N, reduce="sum")
        for grp in groups:
            G, _, R, C = grp.feats.shape
            into = grp.feats.sum(3).transpose(1, 2) @ w[H:2 * H].t() + C * bias[grp.types, H:2 * H][:, None]
            out_of = grp.feats_t.sum(3).transpose(1, 2) @ w[3 * H:].t() + R * bias[grp.types, 3 * H:][:, None]
            shift_in = shift_in.index_add(0, grp.row_nodes.flatten(), into.reshape(-1, H))
            shift_out = shift_out.index_add(0, grp.col_nodes.flatten(), out_of.reshape(-1, H))
        deg_in = torch.bincount(ei[1], minlength=N).to(per_state.dtype)[:, None]
        deg_out = torch.bincount(ei[0], minlength=N).to(per_state.dtype)[:, None]
        inv_in = torch.where(deg_in > 0, 1 / deg_in.clamp(min=1), 0.0)
        inv_out = torch.where(deg_out > 0, 1 / deg_out.clamp(min=1), 0.0)
        return EdgeTerms(groups, rest_index, rest_scale, shift_in * inv_in, shift_out * inv_out, inv_in, inv_out)

    def forward(self, data: Any, grids: tuple[list[Block], Tensor] | None = None) -> Tensor:
        terms = self.edge_terms(data, grids)
        T, F = data.edge_attr.shape[1:]
        w, bias = self._film_maps(T, F)
        H = self.hidden
        scale_weight = torch.stack([w[:H], w[2 * H:3 * H]])
        scale_bias = torch.stack([bias[:, :H], bias[:, 2 * H:3 * H]])
        N = data.x.shape[0]
        dtype = self.node_in.weight.dtype
        x = pad_last(data.x.to(dtype), self.node_features).reshape(N, -1)
        h = self.node_in(x) + self.node_type_emb(data.node_type) + self.pos_emb(data.pos_id + 1)
        for layer in self.layers:
            h = layer(h, terms, scale_weight, scale_bias)
        return self.norm(h)
