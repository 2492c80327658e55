"""Batching neural graphs of several architectures into one PyG ``Batch``."""
from __future__ import annotations

from typing import Sequence

import torch
from torch_geometric.data import Batch, Data

from .model import pad_last

GRAPH_KEYS = ("x", "edge_index", "edge_attr", "edge_type", "node_type", "pos_id")


def collate(graphs: Sequence[Data], *, keep: Sequence[str] = ()) -> Batch:
    """One ``Batch`` of graphs whose per-edge and per-node widths (F, Fn) may differ: narrower ones are zero padded.

    Only the graph tensors (and attributes named in ``keep``, e.g. targets ``y``) are kept; ``aux``
    differs in width between architectures and is dropped.
    """
    F = max(int(g.edge_attr.shape[-1]) for g in graphs)
    Fn = max(int(g.x.shape[-1]) for g in graphs)
    out = []
    for g in graphs:
        d = Data(x=pad_last(g.x, Fn), edge_attr=pad_last(g.edge_attr, F), edge_index=g.edge_index,
                 edge_type=g.edge_type, node_type=g.node_type, pos_id=g.pos_id, num_nodes=g.num_nodes)
        for k in keep:
            d[k] = g[k]
        out.append(d)
    return Batch.from_data_list(out)
