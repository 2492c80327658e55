"""Checkpoints and their metrics, precomputed once into per-architecture tensors for fast batching.

Each architecture is traced once (its :class:`WeightSpace` comes from the collection); every
checkpoint becomes one row of a ``[n, P]`` flat parameter matrix. A batch of graphs is then a
single gather per architecture through the precomputed graph layout, with no per-checkpoint
Python work and no re-tracing.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Batch

from ..errors import CollectionError, CorruptCheckpoint, NonFiniteWeights, StateDictMismatch

if TYPE_CHECKING:
    from ..collections import CheckpointCollection
    from ..space import WeightSpace

DERIVED_TARGETS: dict[str, tuple[tuple[str, ...], Callable[[Mapping[str, Any]], float]]] = {
    "gap": (("train_acc", "test_acc"), lambda r: r["train_acc"] - r["test_acc"]),
}
"""Targets computed from metrics: ``gap`` is the generalisation gap, train minus test accuracy."""


class MissingMetric(CollectionError):
    """A collection has no value of a requested target metric."""


class FewRunsWarning(UserWarning):
    """A predictor is trained on so few runs that its predictions on unseen runs are unreliable."""


class TooFewRuns(CollectionError):
    """Too few training runs are left to fit a predictor (e.g. after the held-out and validation runs)."""


def target_value(row: Mapping[str, Any], name: str) -> float:
    """The value of target ``name`` in a metadata row (NaN when the row lacks it)."""
    needed, fn = DERIVED_TARGETS.get(name, ((name,), lambda r: r[name]))
    vals = [row.get(k) for k in needed]
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) or v is None for v in vals):
        return math.nan
    return float(fn(row))


def available_metrics(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Numeric metric columns present in ``rows`` plus the derived targets they allow."""
    skip = {"step", "num_bytes", "finished"}
    cols: set[str] = set()
    for r in rows:
        cols.update(k for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                    and not k.startswith("hp.") and k not in skip)
    cols.update(t for t, (need, _) in DERIVED_TARGETS.items() if set(need) <= cols)
    return sorted(cols)


@dataclass
class ArchBlock:
    """The checkpoints of one architecture as a ``[n, P]`` flat matrix (graph layout order)."""

    arch_id: str
    space: "WeightSpace"
    flat: Tensor


class PropertyGraphs:
    """Checkpoints of one or several architectures with property targets, batched as PyG graphs by gathers.

    Item ``i`` is row ``row_of[i]`` of ``blocks[block_of[i]]``; ``targets`` is ``[M, K]``; ``run_ids``,
    ``steps`` and ``sources`` (collection) say where each item came from.
    """

    def __init__(self, blocks: list[ArchBlock], block_of: Tensor, row_of: Tensor, targets: Tensor,
                 target_names: list[str], run_ids: list[str], steps: list[int], sources: list[str]) -> None:
        self.blocks = blocks
        self.block_of, self.row_of = block_of, row_of
        self.targets, self.target_names = targets, target_names
        self.run_ids, self.steps, self.sources = run_ids, steps, sources

    def __len__(self) -> int:
        return len(self.run_ids)

    def __repr__(self) -> str:
        archs = ", ".join(f"{b.space.name or 'model'} {b.arch_id} ({int((self.block_of == i).sum())})"
                          for i, b in enumerate(self.blocks))
        return (f"PropertyGraphs({len(self)} checkpoints of {len(set(self.run_ids))} runs; {archs}; "
                f"targets {self.target_names})")

    @property
    def arch_ids(self) -> list[str]:
        return [b.arch_id for b in self.blocks]

    @property
    def edge_features(self) -> int:
        return max(b.space.layout.edge_features for b in self.blocks)

    @property
    def node_features(self) -> int:
        return max(b.space.layout.node_features for b in self.blocks)

    @property
    def max_position(self) -> int:
        return max(int(b.space.layout.pos_id.max()) for b in self.blocks)

    def subset(self, indices: Sequence[int] | Tensor) -> "PropertyGraphs":
        idx = torch.as_tensor(indices, dtype=torch.long)
        il = idx.tolist()
        return PropertyGraphs(self.blocks, self.block_of[idx], self.row_of[idx], self.targets[idx], self.target_names,
                          [self.run_ids[i] for i in il], [self.steps[i] for i in il], [self.sources[i] for i in il])

    def split_by_run(self, test_fraction: float = 0.2, seed: int = 0) -> tuple["PropertyGraphs", "PropertyGraphs"]:
        """Train and test stores with no run in both (runs are shuffled with ``seed``)."""
        runs = sorted(set(zip(self.sources, self.run_ids)))
        random.Random(seed).shuffle(runs)
        n_test = max(1, round(test_fraction * len(runs)))
        test_runs = set(runs[:n_test])
        if n_test >= len(runs):
            raise CollectionError(f"cannot split {len(runs)} runs into train and test")
        keys = list(zip(self.sources, self.run_ids))
        te = [i for i, k in enumerate(keys) if k in test_runs]
        tr = [i for i, k in enumerate(keys) if k not in test_runs]
        return self.subset(tr), self.subset(te)

    def select_runs(self, runs: Iterable[tuple[str, str] | str]) -> "PropertyGraphs":
        """Items whose run is in ``runs`` (run ids or ``(source, run_id)`` pairs)."""
        want = {r if isinstance(r, tuple) else (None, r) for r in runs}
        idx = [i for i, (s, r) in enumerate(zip(self.sources, self.run_ids)) if (s, r) in want or (None, r) in want]
        return self.subset(idx)

    def runs(self) -> list[tuple[str, str]]:
        """The distinct ``(source, run_id)`` pairs of the store, sorted."""
        return sorted(set(zip(self.sources, self.run_ids)))

    def name(self, item: int) -> str:
        """Where item ``item`` came from: ``run 'r' step s of SOURCE`` (or the file it was read from)."""
        run, step, source = self.run_ids[item], self.steps[item], self.sources[item]
        if run == source:
            return f"checkpoint {source}"
        return f"run {run!r} step {step} of {source}"

    def names(self, items: Sequence[int] | Tensor, limit: int = 3) -> str:
        """Where ``items`` came from, in a few words: one checkpoint by :meth:`name`; several by run (the first
        ``limit`` runs with their steps) and collection, with how many more there are."""
        il = torch.as_tensor(items, dtype=torch.long).flatten().tolist()
        if len(il) == 1:
            return self.name(il[0])
        by_run: dict[tuple[str, str], list[int]] = {}
        for i in il:
            by_run.setdefault((self.sources[i], self.run_ids[i]), []).append(self.steps[i])
        sources = {src for src, _ in by_run}
        parts = []
        for (src, run), steps in list(by_run.items())[:limit]:
            if run == src:
                parts.append(f"checkpoint {src}")
                continue
            where = f" of {src}" if len(sources) > 1 else ""
            parts.append(f"run {run!r} step {steps[0]}{where}" if len(steps) == 1 else
                         f"run {run!r} ({len(steps)} steps, {min(steps)}..{max(steps)}){where}")
        more = f" and {len(by_run) - limit} more runs" if len(by_run) > limit else ""
        tail = f" of {next(iter(sources))}" if len(sources) == 1 and not all(r == s for s, r in by_run) else ""
        return f"{len(il)} checkpoints ({'; '.join(parts)}{more}){tail}"

    def check_finite(self, items: Sequence[int] | Tensor | None = None) -> None:
        """Raise :class:`NonFiniteWeights` naming the checkpoints (of ``items``, default all) with NaN/Inf weights."""
        idx = torch.arange(len(self)) if items is None else torch.as_tensor(items, dtype=torch.long).flatten()
        bad = []
        for b in self.block_of[idx].unique().tolist():
            sel = idx[self.block_of[idx] == b]
            finite = torch.isfinite(self.blocks[b].flat[self.row_of[sel]]).all(1)
            bad.append(sel[~finite])
        bad_t = torch.cat(bad) if bad else torch.empty(0, dtype=torch.long)
        if len(bad_t):
            raise NonFiniteWeights(f"{len(bad_t)} checkpoint(s) hold NaN/Inf weights: "
                                   f"{self.names(bad_t.sort().values)}")

    def flat(self, block: int) -> tuple[Tensor, Tensor]:
        """Flat parameter rows of one architecture in this store, with the item indices they belong to."""
        items = torch.nonzero(self.block_of == block).flatten()
        return self.blocks[block].flat[self.row_of[items]], items

    def batch(self, indices: Sequence[int] | Tensor, device: torch.device | str = "cpu") -> tuple[Batch, Tensor]:
        """One PyG ``Batch`` of the given items (grouped by architecture) and their ``[B, K]`` targets in batch order."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        blocks = self.block_of[idx]
        parts: dict[str, list[Tensor]] = {k: [] for k in ("x", "edge_attr", "edge_index", "edge_type", "node_type",
                                                          "pos_id", "batch")}
        order, counts = [], []
        F = max(self.blocks[int(b)].space.layout.edge_features for b in blocks.unique())
        Fn = max(self.blocks[int(b)].space.layout.node_features for b in blocks.unique())
        n_off, g_off = 0, 0
        for b in blocks.unique().tolist():
            sel = idx[blocks == b]
            order.append(sel)
            layout = self.blocks[b].space.layout
            flat = self.blocks[b].flat[self.row_of[sel]].to(device)
            B, N, E = len(sel), layout.num_nodes, layout.num_edges
            g = layout.graph_from_flat(flat)
            ea = g.edge_attr.transpose(0, 1).reshape(B * E, 1, layout.edge_features)
            x = g.x.transpose(0, 1).reshape(B * N, 1, layout.node_features)
            parts["edge_attr"].append(torch.nn.functional.pad(ea, (0, F - ea.shape[-1])))
            parts["x"].append(torch.nn.functional.pad(x, (0, Fn - x.shape[-1])))
            offs = (torch.arange(B, device=device) * N + n_off).repeat_interleave(E)
            parts["edge_index"].append(layout.edge_index.to(device).repeat(1, B) + offs)
            parts["edge_type"].append(layout.edge_type.to(device).repeat(B))
            parts["node_type"].append(layout.node_type.to(device).repeat(B))
            parts["pos_id"].append(layout.pos_id.to(device).repeat(B))
            parts["batch"].append(torch.arange(g_off, g_off + B, device=device).repeat_interleave(N))
            counts.append(torch.full((B,), N, dtype=torch.long))
            n_off += B * N
            g_off += B
        cat = {k: torch.cat(v, 1 if k == "edge_index" else 0) for k, v in parts.items()}
        ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cat(counts).cumsum(0)]).to(device)
        batch = Batch(**cat, ptr=ptr)
        batch._num_graphs = g_off
        order_t = torch.cat(order)
        return batch, self.targets[order_t].to(device)

    # ------------------------------------------------------------------ construction
    @classmethod
    def concat(cls, stores: Sequence["PropertyGraphs"]) -> "PropertyGraphs":
        """One store holding the items of several (e.g. zoos of different architectures)."""
        if len({tuple(s.target_names) for s in stores}) != 1:
            raise CollectionError(f"cannot concatenate stores with targets {[s.target_names for s in stores]}")
        blocks, block_of, offset = [], [], 0
        for s in stores:
            blocks += s.blocks
            block_of.append(s.block_of + offset)
            offset += len(s.blocks)
        return cls(blocks, torch.cat(block_of), torch.cat([s.row_of for s in stores]),
                   torch.cat([s.targets for s in stores]), stores[0].target_names,
                   [r for s in stores for r in s.run_ids], [x for s in stores for x in s.steps],
                   [x for s in stores for x in s.sources])

    @classmethod
    def from_state_dicts(cls, space: "WeightSpace", state_dicts: Sequence[Mapping[str, Tensor]],
                         target_names: Sequence[str], names: Sequence[str], *, steps: Sequence[int] | None = None,
                         sources: Sequence[str] | None = None, allow_nonfinite: bool = False) -> "PropertyGraphs":
        """A store of checkpoints of one architecture given as state_dicts, with unknown (NaN) targets.

        ``names`` says where each came from and is used in errors: the file it was read from, or
        its run id when ``steps`` and ``sources`` (its collection) are given too. Each state_dict is
        checked against ``space`` (:class:`~weightspace.errors.StateDictMismatch`,
        :class:`~weightspace.errors.NonFiniteWeights` unless ``allow_nonfinite``).
        """
        M = len(state_dicts)
        steps = list(steps) if steps is not None else [0] * M
        sources = list(sources) if sources is not None else list(names)
        if not (len(names) == len(steps) == len(sources) == M):
            raise ValueError(f"{M} state_dicts but {len(names)} names, {len(steps)} steps, {len(sources)} sources")
        store = cls([ArchBlock(space.fingerprint, space, torch.empty(0))], torch.zeros(M, dtype=torch.long),
                    torch.arange(M), torch.full((M, len(target_names)), math.nan), list(target_names), list(names),
                    steps, sources)
        for i, sd in enumerate(state_dicts):
            space.check(sd, allow_nonfinite=allow_nonfinite, source=store.name(i))
        store.blocks[0].flat = space.layout.flatten(list(state_dicts))[:, :space.layout.num_values].float()
        return store

    @classmethod
    def from_collections(cls, collections: Sequence["CheckpointCollection"] | "CheckpointCollection",
                         targets: Sequence[str], *, where: Callable[[dict[str, Any]], bool] | None = None,
                         arch_ids: Sequence[str] | None = None, progress: bool = True,
                         allow_nonfinite: bool = False, skip_bad: bool = False) -> "PropertyGraphs":
        """Load every checkpoint (optionally filtered) of one or several collections with its targets.

        Raises :class:`MissingMetric` naming the available metrics when a target is absent from a
        collection; rows where a target is missing are skipped. A checkpoint with NaN/Inf raises
        NonFiniteWeights naming its run and step unless ``allow_nonfinite``; with ``skip_bad`` a
        damaged checkpoint (unreadable, not fitting its architecture, or NaN/Inf when those are not
        allowed) is skipped with a warning instead.
        """
        from ..utils import progress_bar

        from ..collections import CheckpointCollection

        if isinstance(collections, CheckpointCollection):
            collections = [collections]
        targets = list(targets)
        if not targets:
            raise MissingMetric("at least one target metric is needed")
        block_index: dict[str, int] = {}
        rows_per_block: list[list[Tensor]] = []
        blocks: list[ArchBlock] = []
        block_of, row_of, ys, run_ids, steps, sources = [], [], [], [], [], []
        skipped: list[str] = []
        for coll in collections:
            rows = coll.select(where) if where is not None else coll.rows()
            if arch_ids is not None:
                rows = [r for r in rows if r["arch_id"] in arch_ids]
            if not rows:
                raise CollectionError(f"collection {coll.source} has no checkpoints to use"
                                      + (f" with architectures {list(arch_ids)}" if arch_ids is not None else ""))
            source = coll.source if str(coll.source).startswith("hf://") else str(Path(coll.root).resolve())
            vals = [[target_value(r, t) for t in targets] for r in rows]
            for k, t in enumerate(targets):
                if all(math.isnan(v[k]) for v in vals):
                    raise MissingMetric(f"collection {coll.source} has no metric {t!r}; available: "
                                        f"{available_metrics(rows) or 'none'}")
            for r, v in progress_bar(list(zip(rows, vals)), desc=f"loading {coll.name}", unit="ckpt",
                             disable=not progress):
                if any(math.isnan(x) for x in v):
                    continue
                a = r["arch_id"]
                space = blocks[block_index[a]].space if a in block_index else coll.space(a)
                try:
                    sd = coll.load(r["run_id"], r["step"])
                    space.check(sd, allow_nonfinite=allow_nonfinite,
                                source=f"run {r['run_id']!r} step {r['step']} of {coll.source}")
                except (CorruptCheckpoint, NonFiniteWeights, StateDictMismatch) as e:
                    if not skip_bad:
                        raise
                    skipped.append(str(e))
                    continue
                if a not in block_index:
                    block_index[a] = len(blocks)
                    blocks.append(ArchBlock(a, space, torch.empty(0)))
                    rows_per_block.append([])
                b = block_index[a]
                rows_per_block[b].append(space.layout.flatten([sd])[0, :space.layout.num_values].float())
                block_of.append(b)
                row_of.append(len(rows_per_block[b]) - 1)
                ys.append(v)
                run_ids.append(r["run_id"])
                steps.append(int(r["step"]))
                sources.append(source)
        if skipped:
            import warnings
            warnings.warn(f"skipped {len(skipped)} damaged checkpoint(s): " + "; ".join(skipped[:5])
                          + (" ..." if len(skipped) > 5 else ""), stacklevel=2)
        if not blocks:
            raise CollectionError("no healthy checkpoint to load" + (f" ({len(skipped)} skipped)" if skipped else ""))
        for b, rws in zip(blocks, rows_per_block):
            b.flat = torch.stack(rws)
        return cls(blocks, torch.tensor(block_of, dtype=torch.long), torch.tensor(row_of, dtype=torch.long),
                   torch.tensor(ys, dtype=torch.float32), targets, run_ids, steps, sources)
