"""Checkpoint collections: safetensors checkpoints + per-run metadata, in a folder that is a HF dataset repo."""
from typing import Any

from .collection import CheckpointCollection, RunWriter
from .verify import Problem

__all__ = ["CheckpointCollection", "RunWriter", "GraphDataset", "Problem", "merge_collections"]


def __getattr__(name: str) -> Any:
    if name == "GraphDataset":  # imports torch_geometric's dataset machinery on first use only
        from .dataset import GraphDataset
        return GraphDataset
    if name == "merge_collections":
        from .join import merge_collections
        return merge_collections
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
