"""GraphDataset: a checkpoint collection as a lazy PyTorch Geometric dataset."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch_geometric.data import Data, Dataset

from ..errors import CollectionError

if TYPE_CHECKING:
    from .collection import CheckpointCollection

GRAPH_KEYS = ("x", "edge_index", "edge_attr", "edge_type", "node_type", "pos_id")


class GraphDataset(Dataset):
    """Neural graphs of a collection's checkpoints, read on access, batched by ``torch_geometric.loader.DataLoader``.

    Each item is the graph of one checkpoint (or of a window of ``trajectory_length`` consecutive
    checkpoints of a run, ``edge_attr [E, T, F]``), read through safetensors' memory-mapped lazy
    loading when it is accessed: building the dataset reads metadata only. ``where(row)`` filters
    the metadata rows.

    **Feature widths are padded to the collection's maximum.** Architectures differ in values per
    edge (a linear weight has 1, a 3x3 conv kernel 9) and per node (BatchNorm adds running
    statistics), so every item's ``edge_attr`` is zero-padded to :attr:`edge_features` and ``x`` to
    :attr:`node_features`, the maxima over the selected rows' architectures. That is what lets a
    DataLoader batch MLPs, CNNs with and without BatchNorm and transformers together. Items carry
    the graph tensors (``x``, ``edge_index``, ``edge_attr``, ``edge_type``, ``node_type``, ``pos_id``),
    ``y`` (``[1, len(targets)]``, float), ``run_id``, ``arch_id`` and ``step`` (first step); the
    unpadded graph with every metric is ``collection.graph(item.run_id, steps)``.

    Rows where a target is missing are left out; a target absent from every row raises
    :class:`~weightspace.errors.CollectionError` naming the available metrics. A checkpoint with
    NaN/Inf raises :class:`~weightspace.errors.NonFiniteWeights` naming its run and step unless
    ``allow_nonfinite``. ``skip_bad=True`` verifies every selected checkpoint once (reading it) and
    leaves damaged ones out; ``skip_bad="fast"`` checks only file sizes and headers. ``cache=True``
    keeps each built graph in memory after its first access.
    """

    def __init__(self, collection: "CheckpointCollection | str | Path", targets: Sequence[str] = (),
                 trajectory_length: int = 1, where: Callable[[dict[str, Any]], bool] | None = None, *,
                 cache: bool = False, allow_nonfinite: bool = False, skip_bad: bool | str = False,
                 transform: Callable[[Data], Data] | None = None) -> None:
        from .collection import CheckpointCollection

        coll = collection if isinstance(collection, CheckpointCollection) else CheckpointCollection.open(collection)
        if isinstance(targets, str):
            targets = [targets]
        if skip_bad not in (False, True, "fast"):
            raise CollectionError(f"skip_bad must be False, True or 'fast', got {skip_bad!r}")
        self.collection = coll
        self.targets = list(targets)
        self.trajectory_length = trajectory_length
        self.allow_nonfinite = allow_nonfinite
        rows = coll.select(where)
        self._check_targets(rows)
        rows = [r for r in rows if all(_number(r.get(t)) is not None for t in self.targets)]
        self.problems: list = []
        if skip_bad:
            self.problems = coll.verify(sorted({r["run_id"] for r in rows}), deep=skip_bad is True,
                                        allow_nonfinite=allow_nonfinite)
        bad = {(p.run_id, p.step) for p in self.problems}
        bad_runs = {p.run_id for p in self.problems if p.step is None}
        rows = [r for r in rows if r["run_id"] not in bad_runs]
        self.windows = [(r, w) for r, w in coll.windows(rows, trajectory_length)
                        if not any((r["run_id"], s) in bad for s in w)]
        archs = sorted({r["arch_id"] for r, _ in self.windows})
        layouts = [coll.space(a).layout for a in archs]
        self.edge_features = max((lay.edge_features for lay in layouts), default=0)
        self.node_features = max((lay.node_features for lay in layouts), default=0)
        self._cache: dict[int, Data] | None = {} if cache else None
        super().__init__(None, transform=transform, log=False)

    def _check_targets(self, rows: list[dict[str, Any]]) -> None:
        for t in self.targets:
            if not any(_number(r.get(t)) is not None for r in rows):
                from .card import HP_PREFIX, RESERVED_COLUMNS

                have = sorted({k for r in rows for k in r if k not in RESERVED_COLUMNS and not k.startswith(HP_PREFIX)})
                raise CollectionError(f"target {t!r} has no value in the selected rows of {self.collection.source}; "
                                      f"available metrics: {have or 'none'}")

    def len(self) -> int:
        return len(self.windows)

    def get(self, idx: int) -> Data:
        if self._cache is not None and idx in self._cache:
            return self._cache[idx]
        row, steps = self.windows[idx]
        g = self.collection.graph(row["run_id"], steps, allow_nonfinite=self.allow_nonfinite)
        pad = torch.nn.functional.pad
        data = Data(x=pad(g.x, (0, self.node_features - g.x.shape[-1])),
                    edge_attr=pad(g.edge_attr, (0, self.edge_features - g.edge_attr.shape[-1])),
                    edge_index=g.edge_index, edge_type=g.edge_type, node_type=g.node_type, pos_id=g.pos_id,
                    num_nodes=g.num_nodes, run_id=row["run_id"], arch_id=row["arch_id"], step=g.step)
        if self.targets:
            last = row if len(steps) == 1 else self.collection.row(row["run_id"], steps[-1])
            data.y = torch.tensor([[_number(last.get(t), math.nan) for t in self.targets]], dtype=torch.float32)
        if self._cache is not None:
            self._cache[idx] = data
        return data

    def __repr__(self) -> str:
        return (f"GraphDataset({len(self)} graphs of {self.collection.name!r}, targets={self.targets}, "
                f"T={self.trajectory_length}, edge_features={self.edge_features}, "
                f"node_features={self.node_features})")


def _number(v: Any, default: Any = None) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return default
    return float(v)
