"""Neural-graph layout of a WeightSpace, computed once as index tensors.

Nodes are the units of each layer boundary the tracer found (inputs, layer outputs,
norm outputs, residual sums, attention contexts, embedding tables' rows). Edges are
weights (one per connected pair of units; extra values such as conv kernels become
the feature axis F) plus identity edges (residual, norm, attention wiring) whose
features are 1 in slot 0. Biases and norm parameters are node features.

Converting checkpoints is one gather from the flat parameter vector; converting back
is one gather from the graph's buffers. Both are exact to the bit, dtypes included:
the graph holds float64 features when a state_dict holds any float64 tensor, float32
otherwise (float16, bfloat16 and integer values are exact in it), and records each
tensor's dtype so that :meth:`GraphLayout.from_graph` casts it back.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch_geometric.data import Data

from einops import rearrange

from ..errors import StateDictMismatch
from ..space.vocabulary import EDGE_TYPES, NODE_TYPES, NodeKind
from ..utils import cat_flat

if TYPE_CHECKING:
    from ..space.weightspace import WeightSpace


_INDEX_TENSORS = ("edge_gather", "node_gather", "aux_gather", "inverse", "edge_index", "edge_type", "node_type",
                  "pos_id")


def feature_dtype(dtypes: Sequence[torch.dtype]) -> torch.dtype:
    """The dtype of graph features for tensors of ``dtypes``: float64 if any is float64, else float32.

    Every float16, bfloat16 and float32 value is exact in float32, and every float value in float64.
    """
    return torch.float64 if torch.float64 in dtypes else torch.float32


class GraphLayout:
    """Index tensors that map a flat parameter vector to graph features and back."""

    def __init__(self, space: "WeightSpace") -> None:
        self.space = space
        self.keys = space.canonical_keys
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
            names = [f"d{a}" for a in range(len(shape))]
            names[e.out_axis], names[e.in_axis] = "o", "i"
            flat_idx = rearrange(torch.arange(torch.Size(shape).numel()).view(shape),
                                 f"{' '.join(names)} -> o i ({' '.join(names[a] for a in rest)})")
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
        self._device_cache: dict[torch.device, dict[str, torch.Tensor]] = {}

    def _on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The index tensors on ``device``, copied there once.

        They index one checkpoint, and a stack of any number of checkpoints reuses them, so the
        cache holds one entry per device.
        """
        device = torch.device(device)
        if device not in self._device_cache:
            self._device_cache[device] = {name: getattr(self, name).to(device) for name in _INDEX_TENSORS}
        return self._device_cache[device]

    # ------------------------------------------------------------------ dtypes
    def dtypes_of(self, state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> tuple[torch.dtype, ...]:
        """The dtype of each canonical key's tensor; every checkpoint of a stack must agree on them."""
        dtypes = tuple(state_dicts[0][k].dtype for k in self.keys)
        for i, sd in enumerate(state_dicts[1:], 1):
            for k, d in zip(self.keys, dtypes):
                if sd[k].dtype != d:
                    raise StateDictMismatch(f"'{k}' is {d} in checkpoint 0 but {sd[k].dtype} in checkpoint {i}; "
                                            f"stacked checkpoints must agree on dtypes")
        return dtypes

    def _feature_dtype(self, state_dicts: Sequence[Mapping[str, torch.Tensor]],
                       dtypes: Sequence[torch.dtype]) -> torch.dtype:
        """:func:`feature_dtype`, widened to float64 when integers lie beyond float32's exact range."""
        dtype = feature_dtype(dtypes)
        for k, d in zip(self.keys, dtypes):
            if d.is_complex:
                raise StateDictMismatch(f"'{k}' is {d}: complex tensors have no place in a neural graph")
            if d.is_floating_point or d == torch.bool or state_dicts[0][k].numel() == 0:
                continue
            lo, hi = torch.stack([sd[k].reshape(-1) for sd in state_dicts]).aminmax()
            for dt in (dtype, torch.float64):
                limit = int(2 / torch.finfo(dt).eps)
                if -limit <= int(lo) and int(hi) <= limit:
                    dtype = dt
                    break
            else:
                raise StateDictMismatch(f"'{k}' holds integers in [{int(lo)}, {int(hi)}], beyond +-2^53 where "
                                        f"float64 graph features would round them")
        return dtype

    # ------------------------------------------------------------------ conversion
    def _flatten(self, state_dicts: Sequence[Mapping[str, torch.Tensor]]
                 ) -> tuple[torch.Tensor, tuple[torch.dtype, ...]]:
        T, P = len(state_dicts), self.num_values
        dtypes = self.dtypes_of(state_dicts)
        device = next(iter(state_dicts[0].values())).device if self.keys else torch.device("cpu")
        buf = torch.empty(T, P + 2, dtype=self._feature_dtype(state_dicts, dtypes), device=device)
        for t, sd in enumerate(state_dicts):
            cat_flat([sd[k] for k in self.keys], buf[t, :P])
        buf[:, P] = 0
        buf[:, P + 1] = 1
        return buf, dtypes

    def flatten(self, state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
        """Stack checkpoints into a ``[T, P + 2]`` matrix: values in canonical key order, then a 0 and a 1.

        It is float64 if any tensor is float64 (or holds integers beyond 2^24), else float32; every
        value is exact in it.
        """
        return self._flatten(state_dicts)[0]

    def to_graph(self, state_dicts: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]], *,
                 check: bool = True, allow_nonfinite: bool = False) -> Data:
        """Neural graph of one checkpoint or a stack of T; ``param_dtypes`` records each tensor's dtype."""
        if isinstance(state_dicts, Mapping):
            state_dicts = [state_dicts]
        if not state_dicts:
            raise StateDictMismatch("to_graph needs at least one state_dict")
        if check:
            for i, sd in enumerate(state_dicts):
                self.space.check(sd, allow_nonfinite=allow_nonfinite,
                                 source=f"checkpoint {i}" if len(state_dicts) > 1 else None)
        flat, dtypes = self._flatten(state_dicts)
        data = self.graph_from_flat(flat)
        data.param_dtypes = dtypes
        return data

    def graph_from_flat(self, flat: torch.Tensor) -> Data:
        """Graph of a ``[T, P]`` (or ``[T, P + 2]`` from :meth:`flatten`) stack of flat parameter vectors.

        ``edge_attr [E, T, F]`` and ``x [N, T, Fn]`` are views of one gather per checkpoint row
        (contiguous when T is 1); the gather indices are those of a single checkpoint.
        """
        T, P = flat.shape[0], self.num_values
        if flat.dim() != 2 or flat.shape[1] not in (P, P + 2):
            raise StateDictMismatch(f"flat parameters of shape {tuple(flat.shape)} do not match "
                                    f"{self.space.name or 'the weight space'} ([T, {P}] or [T, {P + 2}])")
        if flat.shape[1] == P:
            flat = torch.cat([flat, flat.new_zeros(T, 1), flat.new_ones(T, 1)], 1)
        idx = self._on(flat.device)

        def gather(name: str) -> torch.Tensor:
            return flat[0].index_select(0, idx[name]).unsqueeze(0) if T == 1 else flat.index_select(1, idx[name])

        edge_attr = rearrange(gather("edge_gather"), "t (e f) -> e t f", f=self.edge_features)
        x = rearrange(gather("node_gather"), "t (n f) -> n t f", f=self.node_features)
        aux = rearrange(gather("aux_gather"), "t a -> 1 t a")
        return Data(x=x, edge_index=idx["edge_index"], edge_attr=edge_attr,
                    edge_type=idx["edge_type"], node_type=idx["node_type"], pos_id=idx["pos_id"], aux=aux,
                    num_nodes=self.num_nodes, space_id=self.space.fingerprint)

    def flat_from_graph(self, data: Data) -> torch.Tensor:
        """The ``[T, P]`` flat parameter vectors stored in a graph (one gather)."""
        ea, x = data.edge_attr, data.x
        aux = getattr(data, "aux", None)
        T = ea.shape[1] if ea.dim() == 3 else -1
        A = len(self.aux_gather)
        if aux is None and A == 0:
            aux = ea.new_zeros(1, max(T, 0), 0)
        if ea.dim() != 3 or ea.shape[0] != self.num_edges or ea.shape[2] != self.edge_features \
                or x.dim() != 3 or x.shape[0] != self.num_nodes or x.shape[1] != T or x.shape[2] != self.node_features \
                or aux is None or tuple(aux.shape) != (1, T, A):
            raise StateDictMismatch(
                f"graph (edges {tuple(ea.shape)}, nodes {tuple(x.shape)}, aux "
                f"{None if aux is None else tuple(aux.shape)}) does not match {self.space.name}'s layout "
                f"(edges [{self.num_edges}, T, {self.edge_features}], nodes [{self.num_nodes}, T, "
                f"{self.node_features}], aux [1, T, {A}])")
        EF, NF = self.num_edges * self.edge_features, self.num_nodes * self.node_features
        buf = ea.new_empty(T, EF + NF + A, dtype=torch.promote_types(torch.promote_types(ea.dtype, x.dtype), aux.dtype))
        rearrange(buf[:, :EF], "t (e f) -> e t f", f=self.edge_features).copy_(ea)
        rearrange(buf[:, EF:EF + NF], "t (n f) -> n t f", f=self.node_features).copy_(x)
        buf[:, EF + NF:].copy_(aux[0])
        inverse = self._on(buf.device)["inverse"]
        return buf[0].index_select(0, inverse).unsqueeze(0) if T == 1 else buf.index_select(1, inverse)

    def unflatten(self, flat: torch.Tensor, dtypes: Sequence[torch.dtype] | None = None
                  ) -> list[dict[str, torch.Tensor]]:
        """Split ``[T, P]`` flat vectors back into state_dicts, each tensor cast to its dtype.

        ``dtypes`` gives one dtype per canonical key (as :meth:`dtypes_of` returns); without it,
        each tensor gets the dtype the space was traced with.
        """
        if dtypes is None:
            dtypes = [self.space.params[k].dtype for k in self.keys]
        elif len(dtypes) != len(self.keys):
            raise StateDictMismatch(f"{len(dtypes)} dtypes given for the {len(self.keys)} tensors of "
                                    f"{self.space.name or 'the weight space'}")
        out = []
        for row in flat:
            parts = torch.split(row, self.numels) if self.keys else []
            sd = {}
            for k, p, dtype in zip(self.keys, parts, dtypes):
                shape = self.space.params[k].shape
                sd[k] = p.view(shape) if p.dtype == dtype else p.view(shape).to(dtype)
            out.append({k: sd[k] if k in sd else sd[self.space.aliases[k]].clone() for k in self.space.keys})
        return out

    def from_graph(self, data: Data, *, as_list: bool | None = None):
        """The state_dict(s) a graph holds (a list when it stacks several, unless ``as_list`` says otherwise).

        Each tensor comes back in the dtype :meth:`to_graph` recorded in ``data.param_dtypes``, so
        float64, float16, bfloat16, integer and mixed-dtype checkpoints round-trip bit for bit. A graph
        without that record (one a metanetwork wrote) gives the dtypes the space was traced with.
        """
        sds = self.unflatten(self.flat_from_graph(data), getattr(data, "param_dtypes", None))
        if as_list is None:
            as_list = len(sds) > 1
        return sds if as_list else sds[0]


def _leaves(d) -> list[int]:
    if isinstance(d, int):
        return [d]
    return [leaf for p in d.parts for leaf in _leaves(p)]
