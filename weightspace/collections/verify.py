"""Checking a collection's checkpoints: every problem found names its run, step and file."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import torch

from ..errors import CollectionError, CorruptCheckpoint, StateDictMismatch

if TYPE_CHECKING:
    from .collection import CheckpointCollection

KINDS = ("metadata", "missing", "truncated", "corrupt", "architecture", "mismatch", "nonfinite")
"""What can be wrong: an unparsable metadata shard, a row whose weights file is missing, a file of the
wrong size, a file that is not safetensors or holds another checkpoint, a missing architecture file,
tensors that do not fit the architecture, and NaN/Inf values."""


@dataclass(frozen=True)
class Problem:
    """One damaged checkpoint (``step`` is None when the whole run's metadata is unreadable)."""

    run_id: str
    step: int | None
    file: str
    kind: str
    message: str

    def __str__(self) -> str:
        where = f"run {self.run_id!r}" + (f" step {self.step}" if self.step is not None else "")
        return f"{where}: {self.kind}: {self.message}"


def verify(coll: "CheckpointCollection", runs: Iterable[str] | None = None, *, deep: bool = True,
           allow_nonfinite: bool = False) -> list[Problem]:
    """The problems of ``runs`` (default: all) of ``coll``, in run and step order; empty when healthy.

    Every row's file must exist with the recorded size and hold the recorded run and step. With
    ``deep`` the tensors are read too: they must fit the run's architecture and (unless
    ``allow_nonfinite``) be finite. Without it only sizes and headers are read, which is cheap.
    """
    problems: list[Problem] = []
    known = coll.runs()
    if runs is not None:
        runs = list(runs)
        missing = [r for r in runs if r not in known]
        if missing:
            raise CollectionError(f"no run {missing[0]!r} in collection {coll.source}"
                                  + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    for run_id in (known if runs is None else runs):
        try:
            rows = coll.select(run_id=run_id)
        except CollectionError as e:
            problems.append(Problem(run_id, None, f"metadata/{run_id}.jsonl", "metadata", str(e)))
            continue
        for row in rows:
            problems.extend(_check_row(coll, row, deep=deep, allow_nonfinite=allow_nonfinite))
    return problems


def _check_row(coll: "CheckpointCollection", row: dict, *, deep: bool, allow_nonfinite: bool) -> list[Problem]:
    run_id, step, file = row["run_id"], row["step"], row["file"]
    path = coll.root / file

    def problem(kind: str, message: str) -> list[Problem]:
        return [Problem(run_id, step, file, kind, message)]

    if not path.is_file():
        return problem("missing", f"the metadata names {path}, which does not exist")
    size, expected = path.stat().st_size, row.get("num_bytes")
    if expected is not None and size != expected:
        return problem("truncated", f"{path} has {size} bytes, expected {expected}")
    if not deep:
        return _check_header(coll, row, problem)
    try:
        sd = coll._read(row)
    except CorruptCheckpoint as e:
        return problem("corrupt", str(e))
    try:
        space = coll.space(row["arch_id"])
    except CollectionError as e:
        return problem("architecture", str(e))
    try:
        space.check(sd, allow_nonfinite=True, source=f"run {run_id!r} step {step} ({path})")
    except StateDictMismatch as e:
        return problem("mismatch", str(e))
    if not allow_nonfinite:
        bad = {k: int((~torch.isfinite(t)).sum()) for k, t in sd.items()
               if t.is_floating_point() and not bool(torch.isfinite(t).all())}
        if bad:
            return problem("nonfinite", f"{path}: NaN/Inf values in " + ", ".join(f"'{k}' ({n})" for k, n in bad.items()))
    return []


def _check_header(coll: "CheckpointCollection", row: dict, problem) -> list[Problem]:
    """Size and header only: the file opens as safetensors and says it holds this run (and step)."""
    import json

    from safetensors import SafetensorError, safe_open

    path = coll.root / row["file"]
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        return problem("corrupt", f"{path} is corrupt or not safetensors: {e}")
    if header.get("weightspace.run_id", row["run_id"]) != row["run_id"]:
        return problem("corrupt", f"{path} holds run {header.get('weightspace.run_id')!r}")
    slot = row.get("slot")
    if slot is not None:
        try:
            steps = json.loads(header.get("weightspace.steps", "[]"))
        except ValueError:
            steps = []
        if not 0 <= slot < len(steps) or steps[slot] != row["step"]:
            return problem("corrupt", f"{path} has no step {row['step']} at slot {slot}")
    return []
