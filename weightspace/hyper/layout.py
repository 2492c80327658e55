"""What a graph hypernetwork reads of an architecture: its neural-graph layout without weights.

For each node and edge of :attr:`WeightSpace.layout` it derives features that depend on the
architecture only (fan-in, depth, kernel size), and for each parameter value the fan-in that
output scaling uses. Fan-in comes from the graph: a unit's fan-in is the number of weight values
on its incoming edges (a conv edge carries ``k*k`` of them), so no module type is consulted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor
from torch_geometric.data import Data

from ..space import WeightSpace
from ..space.vocabulary import NODE_TYPES

EDGE_INPUTS = 6
"""Layout features per edge: encodings of the output unit's fan-in, its depth, and the edge's kernel size."""
NODE_INPUTS = 4
"""Layout features per node (before the unit features): encodings of its fan-in and depth."""

KIND_EDGE, KIND_NODE, KIND_AUX = 0, 1, 2


def encode(z: Tensor, constant_norm: bool) -> Tensor:
    """Encode scalars ``z`` in [0, 1] as two features.

    With ``constant_norm`` this is MIP's encoding ``[cos(pi z / 2), sin(pi z / 2)]`` (Ortiz et al.,
    "Magnitude Invariant Parametrizations Improve Hypernetwork Learning", ICLR 2024), whose norm is
    1 whatever ``z``; otherwise the plain ``[z, 1 - z]``.
    """
    z = z.clamp(0.0, 1.0)
    if constant_norm:
        return torch.stack([torch.cos(math.pi * z / 2), torch.sin(math.pi * z / 2)], -1)
    return torch.stack([z, 1 - z], -1)


def position_code(u: Tensor, features: int) -> Tensor:
    """Fourier features ``[cos(pi k u), sin(pi k u)]``, ``k = 1 .. features / 2``, of relative positions ``u`` in (0, 1)
    (``[N] -> [N, features]``; an odd ``features`` gets one more cosine)."""
    k = torch.arange(1, features // 2 + features % 2 + 1, dtype=torch.float32)
    angle = math.pi * u.float()[:, None] * k
    return torch.cat([torch.cos(angle), torch.sin(angle)], -1)[:, :features]


def graph_node_types(space: WeightSpace) -> Tensor:
    """Node types as the hypernetwork reads them: the graph's, except that a parameter-free ``hidden`` unit with no
    incoming edge counts as an ``input``. Such a unit is the model's input seen through a reshape (a CNN that views
    a flat 64-vector as a 1x8x8 image), so it plays the input's role in the graph."""
    lay = space.layout
    types = lay.node_type.clone()
    fed = torch.zeros(lay.num_nodes, dtype=torch.bool)
    fed[lay.edge_index[1]] = True
    types[(types == NODE_TYPES.index("hidden")) & ~fed] = NODE_TYPES.index("input")
    return types


@dataclass
class HyperLayout:
    """Index tensors and weight-free features of one architecture, computed once and cached."""

    space: WeightSpace
    edge_index: Tensor
    edge_type: Tensor
    node_type: Tensor
    pos_id: Tensor
    fan_in_node: Tensor
    depth_node: Tensor
    slots_edge: Tensor
    value_kind: Tensor
    value_fan_in: Tensor
    value_key: list[str]
    node_site: Tensor
    node_local: Tensor
    unit_position: Tensor
    """Each node's relative position ``(i + 0.5) / width`` among the units of its layer (node site), in (0, 1)."""
    fan_in_edge: Tensor
    """The fan-in of each edge's output unit (``fan_in_node`` at the edge's destination)."""

    @classmethod
    def from_space(cls, space: WeightSpace) -> "HyperLayout":
        lay = space.layout
        P, E, F, N, Fn = lay.num_values, lay.num_edges, lay.edge_features, lay.num_nodes, lay.node_features
        gather = lay.edge_gather.view(E, F)
        slots = (gather < P).sum(1)
        dst = lay.edge_index[1]
        fan_in = torch.zeros(N, dtype=torch.long).index_add_(0, dst, slots)
        depth = torch.zeros(N)
        site = torch.zeros(N, dtype=torch.long)
        local = torch.arange(N)
        denom = max(1, len(space.sites) - 1)
        for i, s in enumerate(space.sites):
            depth[s.offset:s.offset + s.count] = i / denom
            site[s.offset:s.offset + s.count] = i
            local[s.offset:s.offset + s.count] -= s.offset
        inv = lay.inverse
        kind = torch.full((P,), KIND_AUX, dtype=torch.long)
        kind[inv < E * F] = KIND_EDGE
        kind[(inv >= E * F) & (inv < E * F + N * Fn)] = KIND_NODE
        vfan = torch.ones(P, dtype=torch.long)
        on_edge = kind == KIND_EDGE
        vfan[on_edge] = fan_in[dst[inv[on_edge] // F]]
        on_node = kind == KIND_NODE
        vfan[on_node] = fan_in[(inv[on_node] - E * F) // Fn]
        keys = [k for k, n in zip(lay.keys, lay.numels) for _ in range(n)]
        width = torch.bincount(site, minlength=len(space.sites))[site]
        position = (local.float() + 0.5) / width.clamp(min=1).float()
        return cls(space, lay.edge_index, lay.edge_type, graph_node_types(space), lay.pos_id, fan_in, depth, slots, kind,
                   vfan.clamp(min=1), keys, site, local, position, fan_in[dst].clamp(min=1))

    @property
    def num_nodes(self) -> int:
        return self.space.layout.num_nodes

    @property
    def num_edges(self) -> int:
        return self.space.layout.num_edges

    @property
    def num_sites(self) -> int:
        """Number of layer boundaries (node sites): the units of one layer output form a site."""
        return len(self.space.sites)

    @property
    def num_values(self) -> int:
        return self.space.layout.num_values

    @property
    def permutable_nodes(self) -> Tensor:
        """Nodes of permutable units (hidden units, channels): those without a fixed position."""
        return self.pos_id < 0

    def graph(self, unit_features: Tensor, values: Tensor, *, max_fan_in: int, max_kernel: int, max_node_features: int,
              constant_norm: bool) -> Data:
        """The input graph: layout features on every node and edge, then ``values`` ``[P]`` placed on the graph
        (a conv edge's ``k*k`` slots, a unit's per-unit tensors; identity edges hold 1), then ``unit_features``
        on the nodes."""
        zf = torch.log1p(self.fan_in_node.float()) / math.log1p(max_fan_in)
        node = torch.cat([encode(zf, constant_norm), encode(self.depth_node, constant_norm)], -1)
        dst = self.edge_index[1]
        edge = torch.cat([encode(zf[dst], constant_norm), encode(self.depth_node[dst], constant_norm),
                          encode(self.slots_edge.float() / max_kernel, constant_norm)], -1)
        dev, dt = unit_features.device, unit_features.dtype
        placed = self.space.layout.graph_from_flat(values.to(dev, dt)[None])
        pad = torch.nn.functional.pad
        ev = pad(placed.edge_attr[:, 0], (0, max_kernel - placed.edge_attr.shape[-1]))
        nv = pad(placed.x[:, 0], (0, max_node_features - placed.x.shape[-1]))
        x = torch.cat([node.to(dev, dt), nv, unit_features], -1)
        return Data(x=x.unsqueeze(1), edge_attr=torch.cat([edge.to(dev, dt), ev], -1).unsqueeze(1),
                    edge_index=self.edge_index.to(dev), edge_type=self.edge_type.to(dev),
                    node_type=self.node_type.to(dev), pos_id=self.pos_id.to(dev), num_nodes=self.num_nodes)


def model_constants(layout: HyperLayout, state_dict: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Per-value ``(constant, own)`` of a model as built: ``constant`` holds the value of per-unit tensors that
    are constant across units (norm scales 1, shifts 0; NaN elsewhere), ``own`` the model's own values.

    Output scaling keeps such tensors around their constant (GHN-2's ``2 sigmoid`` scale around 1, MIP's
    ``theta0``), and tensors the graph does not place (BatchNorm's ``num_batches_tracked``) keep ``own``.
    """
    lay = layout.space.layout
    own = lay.flatten([{k: state_dict[k] for k in lay.keys}])[0, :lay.num_values].float()
    const = torch.full_like(own, math.nan)
    for npl in layout.space.node_params:
        t = state_dict[npl.key]
        if t.is_floating_point() and t.numel() > 1 and bool((t == t.reshape(-1)[0]).all()):
            o = lay.offset[npl.key]
            const[o:o + t.numel()] = float(t.reshape(-1)[0])
    return const, own
