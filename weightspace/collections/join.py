"""Joining slices of one collection (built by several workers, ``zoo build --shard K/N``) into one, atomically."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import CollectionError
from ..utils import fsync_dir

if TYPE_CHECKING:
    from .collection import CheckpointCollection


def merge_collections(slices: Sequence["CheckpointCollection | str | Path"], out: str | Path, *,
                      name: str | None = None, allow_unfinished: bool = False) -> "CheckpointCollection":
    """Copy the runs of ``slices`` into a new collection at ``out`` and return it.

    The slices must be disjoint (no run id in two of them), share a name (or pass ``name``) and
    agree on every architecture they share; each run must be finished unless ``allow_unfinished``.
    The result is assembled in a hidden folder beside ``out`` and renamed into place only when it
    is complete, so ``out`` either does not exist or holds the whole merge; the slices are only read.
    """
    from .collection import ARCH_DIR, CheckpointCollection

    colls = [s if isinstance(s, CheckpointCollection) else CheckpointCollection.open(s) for s in slices]
    if not colls:
        raise CollectionError("merge needs at least one collection slice")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CollectionError(f"cannot merge into {out}: it exists and is not an empty folder")
    names = {c.name for c in colls}
    if name is None and len(names) > 1:
        raise CollectionError(f"the slices have different names {sorted(names)}: are they slices of one "
                              f"collection? Pass name= (--name) to merge them anyway")
    owner: dict[str, CheckpointCollection] = {}
    for c in colls:
        for run in c.runs():
            if run in owner:
                raise CollectionError(f"run {run!r} is in two slices, {owner[run].source} and {c.source}; "
                                      f"slices must be disjoint")
            owner[run] = c
            if not allow_unfinished and not c.is_finished(run):
                raise CollectionError(f"run {run!r} of slice {c.source} is not finished; finish building that "
                                      f"slice (re-run its build) or pass allow_unfinished=True")
    first = colls[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        staged = CheckpointCollection.create(tmp / "c", name=name or first.name, description=first.description,
                                             license=first.license, pack_runs=first.pack_runs)
        for c in colls:
            for arch in c.architectures():
                src, dst = c.root / ARCH_DIR / f"{arch}.json", staged.root / ARCH_DIR / f"{arch}.json"
                if dst.exists():
                    if dst.read_bytes() != src.read_bytes():
                        raise CollectionError(f"architecture {arch} differs between the slices ({src}); "
                                              f"were they built by different weightspace versions?")
                else:
                    shutil.copyfile(src, dst)
            for run in c.runs():
                rows = c.select(run_id=run)
                for f in sorted({r["file"] for r in rows}):
                    dst = staged.root / f
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(c.root / f, dst)
                shard = c._shard_path(run)
                shutil.copyfile(shard, staged._shard_path(run))
        if any(c.version > 1 for c in colls):
            staged._bump_version()
        staged.update_card()
        problems = staged.verify(deep=False)
        if problems:
            raise CollectionError(f"the merged collection has {len(problems)} damaged checkpoint(s), e.g. "
                                  f"{problems[0]}; run `weightspace collection verify` on the slices")
        if out.exists():
            out.rmdir()
        os.replace(tmp / "c", out)
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return CheckpointCollection.open(out)
