"""weightspace: learning on neural-network weights.

Every capability is a view of one :class:`WeightSpace`, traced once from a model.
"""
from .errors import (CollectionError, CorruptCheckpoint, HubRepositoryNotFound, NonFiniteWeights,
                     StateDictMismatch, UnsupportedOperation, WeightSpaceError)
from .space import WeightSpace

__version__ = "0.1.0"

__all__ = ["WeightSpace", "WeightSpaceError", "UnsupportedOperation", "StateDictMismatch", "NonFiniteWeights",
           "CorruptCheckpoint", "CollectionError", "HubRepositoryNotFound", "__version__"]


def __getattr__(name: str):
    if name == "CheckpointCollection":
        from .collections import CheckpointCollection
        return CheckpointCollection
    raise AttributeError(f"module 'weightspace' has no attribute {name!r}")
