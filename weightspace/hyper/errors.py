"""Errors of parameter prediction, each a :class:`~weightspace.errors.WeightSpaceError`."""
from __future__ import annotations

from ..errors import NonFiniteWeights, WeightSpaceError


class BadExampleInput(WeightSpaceError):
    """The example (or calibration) input does not fit the model: its forward pass fails on it."""


class NonFinitePrediction(NonFiniteWeights):
    """The hypernetwork predicted NaN or Inf values (for instance after training diverged)."""


class UnseenArchitecture(WeightSpaceError):
    """The model has edge or node types (layer kinds) the hypernetwork was never trained on."""
