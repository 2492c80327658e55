"""JSONL writing for collections, on top of the crash-safe writes in :mod:`weightspace.utils`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..utils import TMP_SUFFIX, atomic_write, atomic_write_text, fsync_dir

__all__ = ["TMP_SUFFIX", "atomic_write", "atomic_write_text", "fsync_dir", "dumps_row", "write_jsonl"]

def dumps_row(row: Mapping[str, Any]) -> str:
    """One JSON line; strict JSON (NaN/Inf are not allowed) so the Hub viewer can parse it."""
    return json.dumps(row, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    return atomic_write_text(path, "".join(dumps_row(r) + "\n" for r in rows))
