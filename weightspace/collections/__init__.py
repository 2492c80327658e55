"""Checkpoint collections: safetensors checkpoints + per-run metadata, in a folder that is a HF dataset repo."""
from .collection import CheckpointCollection, RunWriter

__all__ = ["CheckpointCollection", "RunWriter"]
