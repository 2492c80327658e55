"""Errors of the weight generators."""
from __future__ import annotations

from ..errors import WeightSpaceError


class GeneratorError(WeightSpaceError):
    """A generator cannot be fitted or used: too few training models, an unknown key selection, bad options."""
