"""Neural-graph layout of a WeightSpace, computed once as index tensors.

Nodes are the units of each layer boundary the tracer found (inputs, layer outputs,
norm outputs, residual sums, attention contexts, embedding tables' rows). Edges are
weights (one per connected pair of units; extra values such as conv kernels become
the feature axis F) plus identity edges (residual, norm, attention wiring) whose
features are 1 in slot 0. Biases and norm parameters are node features.

Converting checkpoints is one gather from the flat parameter vector; converting back
is one gather from the graph's buffers. Both are exact to the bit.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch_geometric.data import Data

from ..errors import StateDictMismatch
from ..space.vocabulary import EDGE_TYPES, NODE_TYPES, NodeKind
from ..utils import cat_flat

if TYPE_CHECKING:
    from ..space.weightspace import WeightSpace


def _float_dtype(space: "WeightSpace") -> torch.dtype:
    return torch.float64 if any(p.dtype == torch.float64 for p in space.params.values()) else torch.float32


class GraphLayout:
    """Index tensors that map a flat parameter vector to graph features and back."""

    def __init__(self, space: "WeightSpace") -> None:
        self.space = space
        self.keys = space.canonical_keys
        self.dtype = _float_dtype(space)
        numels = [torch.Size(space.params[k].shape).numel() for k in self.keys]
        self.numels = numels
        offsets = torch.tensor([0] + numels).cumsum(0)
        self.offset = {k: int(offsets[i]) for i, k in enumerate(self.keys)}
        P = int(offsets[-1])
        self.num_values = P
        zero, one = P, P + 1

        src_nodes, dst_nodes, etypes = [], [], []
        entries: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (edge, slot, source column)
        primary: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        n_edges = 0
        for e in space.edges:
            spec = space.params[e.key]
            shape = spec.shape
            rest = [a for a in range(len(shape)) if a not in (e.out_axis, e.in_axis)]
            O, I = shape[e.out_axis], shape[e.in_axis]
            K = torch.Size([shape[a] for a in rest]).numel()
            flat_idx = torch.arange(torch.Size(shape).numel()).view(shape).permute(e.out_axis, e.in_axis, *rest)
            flat_idx = flat_idx.reshape(O, I, K)
            in_nodes = torch.tensor(e.in_nodes, dtype=torch.long)
            uniq, inv = torch.unique(in_nodes, return_inverse=True)
            U = len(uniq)
            counts = torch.bincount(inv, minlength=U)
            starts = counts.cumsum(0) - counts
            order = torch.argsort(inv, stable=True)
            rank = torch.empty(I, dtype=torch.long)
            rank[order] = torch.arange(I) - starts[inv[order]]
            local = (torch.arange(O)[:, None, None] * U + inv[None, :, None]).expand(O, I, K)
            slot = (rank[None, :, None] * K + torch.arange(K)[None, None, :]).expand(O, I, K)
            edge = n_edges + local
            src_nodes.append(uniq.repeat(O))
            dst_nodes.append(torch.tensor(e.out_nodes, dtype=torch.long).repeat_interleave(U))
            etypes.append(torch.full((O * U,), EDGE_TYPES.index(e.kind), dtype=torch.long))
            cols = self.offset[e.key] + flat_idx
            entries.append((edge.reshape(-1), slot.reshape(-1), cols.reshape(-1)))
            if e.primary:
                primary[e.key] = (edge.reshape(-1), slot.reshape(-1), flat_idx.reshape(-1))
            n_edges += O * U
        for link in space.links:
            n = len(link.src)
            src_nodes.append(torch.tensor(link.src, dtype=torch.long))
            dst_nodes.append(torch.tensor(link.dst, dtype=torch.long))
            etypes.append(torch.full((n,), EDGE_TYPES.index(link.kind), dtype=torch.long))
            entries.append((torch.arange(n_edges, n_edges + n), torch.zeros(n, dtype=torch.long),
                            torch.full((n,), one, dtype=torch.long)))
            n_edges += n
        self.num_edges = n_edges
        self.edge_features = max([int(s.max()) + 1 for _, s, _ in entries if len(s)] + [1])
        F = self.edge_features
        empty = torch.zeros(0, dtype=torch.long)
        self.edge_index = torch.stack([torch.cat(src_nodes or [empty]), torch.cat(dst_nodes or [empty])])
        self.edge_type = torch.cat(etypes or [empty])
        self.edge_gather = torch.full((n_edges * F,), zero, dtype=torch.long)
        for edge, slot, cols in entries:
            self.edge_gather[edge * F + slot] = cols

        N = space.num_nodes
        self.num_nodes = N
        col_count = torch.zeros(N, dtype=torch.long)
        node_entries = []
        node_primary: dict[str, tuple[torch.Tensor, int]] = {}
        for npl in space.node_params:
            nodes = torch.tensor(npl.nodes, dtype=torch.long)
            col = int(col_count[nodes].max()) if len(nodes) else 0
            col_count[nodes] = col + 1
            node_entries.append((nodes, col, self.offset[npl.key] + torch.arange(len(nodes))))
            node_primary[npl.key] = (nodes, col)
        self.node_features = max(int(col_count.max()) if N else 0, 1)
        Fn = self.node_features
        self.node_gather = torch.full((N * Fn,), zero, dtype=torch.long)
        for nodes, col, cols in node_entries:
            self.node_gather[nodes * Fn + col] = cols

        placed = set(primary) | set(node_primary)
        self.aux_keys = [k for k in self.keys if k not in placed]
        aux_cols = [self.offset[k] + torch.arange(torch.Size(space.params[k].shape).numel()) for k in self.aux_keys]
        self.aux_gather = torch.cat(aux_cols) if aux_cols else empty
        A = len(self.aux_gather)

        # Where each flat value lives in the concatenated buffer [edge_attr | x | aux].
        inverse = torch.full((P,), -1, dtype=torch.long)
        for k, (edge, slot, flat_idx) in primary.items():
            inverse[self.offset[k] + flat_idx] = edge * F + slot
        base = n_edges * F
        for k, (nodes, col) in node_primary.items():
            inverse[self.offset[k] + torch.arange(len(nodes))] = base + nodes * Fn + col
        base += N * Fn
        inverse[self.aux_gather] = base + torch.arange(A)
        assert bool((inverse >= 0).all()), "every parameter value must have a place in the graph"
        self.inverse = inverse

        kinds = torch.empty(N, dtype=torch.long)
        pos = torch.full((N,), -1, dtype=torch.long)
        for s in space.sites:
            kinds[s.offset:s.offset + s.count] = NODE_TYPES.index(s.kind)
            if not any(space.groups[g].permutable for g in _leaves(s.desc)):
                pos[s.offset:s.offset + s.count] = torch.arange(s.count)
        if space.output_nodes:
            kinds[torch.tensor(space.output_nodes)] = NODE_TYPES.index(NodeKind.OUTPUT)
        self.node_type = kinds
        self.pos_id = pos
        self._device_cache: dict[tuple[int, torch.device], tuple[torch.Tensor, ...]] = {}

    def _indices(self, T: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gather indices for a stack of T checkpoints: ``[T, P+2] -> edge_attr, x`` and graph buffers -> ``[T, P]``."""
        key = (T, device)
        if key not in self._device_cache:
            P, E, F, N, Fn = self.num_values, self.num_edges, self.edge_features, self.num_nodes, self.node_features
            A = len(self.aux_gather)
            big = (P + 2) * T >= 2**31 or (E * F + N * Fn + A) * T >= 2**31
            itype = torch.long if big else torch.int32
            t = torch.arange(T)
            edge = (self.edge_gather.view(E, 1, F) + (t * (P + 2)).view(1, T, 1)).reshape(-1)
            node = (self.node_gather.view(N, 1, Fn) + (t * (P + 2)).view(1, T, 1)).reshape(-1)
            inv = self.inverse
            in_edges = inv < E * F
            in_nodes = ~in_edges & (inv < E * F + N * Fn)
            e, f = inv // F, inv % F
            rel = inv - E * F
            n, c = rel // Fn, rel % Fn
            a = inv - E * F - N * Fn
            back = torch.where(in_edges.view(1, P), (e * T * F + f).view(1, P) + (t * F).view(T, 1),
                               torch.where(in_nodes.view(1, P), (E * T * F + n * T * Fn + c).view(1, P)
                                           + (t * Fn).view(T, 1),
                                           (E * T * F + N * T * Fn + a).view(1, P) + (t * A).view(T, 1)))
            self._device_cache[key] = tuple(x.to(device=device, dtype=itype) for x in (edge, node, back.reshape(-1)))
        return self._device_cache[key]

    # ------------------------------------------------------------------ conversion
    def flatten(self, state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
        """Stack checkpoints into a ``[T, P + 2]`` matrix: values in canonical key order, then a 0 and a 1."""
        T, P = len(state_dicts), self.num_values
        device = next(iter(state_dicts[0].values())).device if self.keys else torch.device("cpu")
        buf = torch.empty(T, P + 2, dtype=self.dtype, device=device)
        for t, sd in enumerate(state_dicts):
            cat_flat([sd[k] for k in self.keys], buf[t, :P])
        buf[:, P] = 0
        buf[:, P + 1] = 1
        return buf

    def to_graph(self, state_dicts, *, check: bool = True, allow_nonfinite: bool = False) -> Data:
        if isinstance(state_dicts, Mapping):
            state_dicts = [state_dicts]
        if not state_dicts:
            raise StateDictMismatch("to_graph needs at least one state_dict")
        if check:
            for i, sd in enumerate(state_dicts):
                self.space.check(sd, allow_nonfinite=allow_nonfinite,
                                 source=f"checkpoint {i}" if len(state_dicts) > 1 else None)
        return self.graph_from_flat(self.flatten(state_dicts))

    def graph_from_flat(self, flat: torch.Tensor) -> Data:
        """Graph of a ``[T, P]`` (or ``[T, P + 2]`` from :meth:`flatten`) stack of flat parameter vectors."""
        T, P = flat.shape[0], self.num_values
        if flat.shape[1] == P:
            flat = torch.cat([flat, flat.new_zeros(T, 1), flat.new_ones(T, 1)], 1)
        edge_idx, node_idx, _ = self._indices(T, flat.device)
        src = flat.reshape(-1)
        edge_attr = src.index_select(0, edge_idx).view(self.num_edges, T, self.edge_features)
        x = src.index_select(0, node_idx).view(self.num_nodes, T, self.node_features)
        aux = flat[:, self.aux_gather.to(flat.device)].unsqueeze(0)
        dev = flat.device
        return Data(x=x, edge_index=self.edge_index.to(dev), edge_attr=edge_attr, edge_type=self.edge_type.to(dev),
                    node_type=self.node_type.to(dev), pos_id=self.pos_id.to(dev), aux=aux,
                    num_nodes=self.num_nodes, space_id=self.space.fingerprint)

    def flat_from_graph(self, data: Data) -> torch.Tensor:
        """The ``[T, P]`` flat parameter vectors stored in a graph (one gather)."""
        ea, x = data.edge_attr, data.x
        if ea.dim() != 3 or ea.shape[0] != self.num_edges or ea.shape[2] != self.edge_features \
                or x.shape[0] != self.num_nodes or x.shape[2] != self.node_features:
            raise StateDictMismatch(
                f"graph (edges {tuple(ea.shape)}, nodes {tuple(x.shape)}) does not match {self.space.name}'s layout "
                f"(edges [{self.num_edges}, T, {self.edge_features}], nodes [{self.num_nodes}, T, "
                f"{self.node_features}])")
        T = ea.shape[1]
        aux = data.aux if getattr(data, "aux", None) is not None else ea.new_zeros(1, T, 0)
        buf = torch.cat([ea.reshape(-1), x.reshape(-1), aux.reshape(-1)])
        return buf.index_select(0, self._indices(T, buf.device)[2]).view(T, self.num_values)

    def unflatten(self, flat: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Split ``[T, P]`` flat vectors back into state_dicts with the original dtypes."""
        out = []
        for row in flat:
            parts = torch.split(row, self.numels) if self.keys else []
            sd = {}
            for k, p in zip(self.keys, parts):
                spec = self.space.params[k]
                sd[k] = p.view(spec.shape) if p.dtype == spec.dtype else p.view(spec.shape).to(spec.dtype)
            out.append({k: sd[k] if k in sd else sd[self.space.aliases[k]].clone() for k in self.space.keys})
        return out

    def from_graph(self, data: Data, *, as_list: bool | None = None):
        sds = self.unflatten(self.flat_from_graph(data))
        if as_list is None:
            as_list = len(sds) > 1
        return sds if as_list else sds[0]


def _leaves(d) -> list[int]:
    if isinstance(d, int):
        return [d]
    return [leaf for p in d.parts for leaf in _leaves(p)]
