"""Exceptions raised by weightspace. Each names the file, key or module at fault."""
from __future__ import annotations


class WeightSpaceError(ValueError):
    """Base class of every weightspace error."""


class UnsupportedOperation(WeightSpaceError):
    """Tracing met a module or operation whose effect on weight symmetries is unknown."""


class StateDictMismatch(WeightSpaceError):
    """A state_dict does not match a WeightSpace: missing or extra keys, or wrong shapes."""


class NonFiniteWeights(WeightSpaceError):
    """A tensor holds NaN or Inf values and non-finite values were not allowed."""


class CorruptCheckpoint(WeightSpaceError):
    """A weight file cannot be read: truncated, corrupt or not safetensors."""


class CollectionError(WeightSpaceError):
    """A checkpoint collection is malformed or an operation on it is invalid."""


class HubRepositoryNotFound(CollectionError):
    """A Hugging Face Hub repository (or revision) could not be found or is not cached."""


class MergeError(WeightSpaceError):
    """A merge is ill-posed: unknown method or parameter, bad value, missing base model or files."""


class ConfigError(WeightSpaceError):
    """A configuration (a dict, JSON file or set of options) has an unknown key or a bad value."""


class InvalidPermutation(WeightSpaceError):
    """A permutation names an unknown or fixed group, or is not a permutation of the group's units."""


class HubUnavailable(CollectionError):
    """The Hugging Face Hub cannot be reached (offline mode, network error) or refused the request."""
