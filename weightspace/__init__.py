"""weightspace: learning on neural-network weights.

Every capability is a view of one :class:`WeightSpace`, traced once from a model. Subpackages
(``ws.align``, ``ws.merge``, ``ws.nowcast``, ...) are imported on first use, so ``import weightspace``
stays as fast as importing the tracer.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import (CollectionError, ConfigError, CorruptCheckpoint, HubRepositoryNotFound, InvalidPermutation,
                     MergeError, NonFiniteWeights, StateDictMismatch, UnsupportedOperation, WeightSpaceError)
from .space import WeightSpace

__version__ = "0.1.0"

SUBPACKAGES = ("align", "collections", "generate", "graph", "hyper", "memorization", "merge", "nn", "nowcast", "predict", "space",
               "tasks", "training")
"""Subpackages reachable as attributes (``ws.align``), imported lazily on first access; add new ones here."""

_LAZY_NAMES = {"CheckpointCollection": "collections"}
"""Public names re-exported from a subpackage, imported with it on first access."""

__all__ = ["WeightSpace", "CheckpointCollection", "WeightSpaceError", "UnsupportedOperation", "StateDictMismatch",
           "NonFiniteWeights", "CorruptCheckpoint", "CollectionError", "HubRepositoryNotFound", "MergeError",
           "ConfigError", "InvalidPermutation", "__version__", *SUBPACKAGES]


def __getattr__(name: str) -> Any:
    if name in SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
