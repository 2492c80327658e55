"""Alignment modulo permutations (Git Re-Basin) and linear mode connectivity."""
from .matching import activation_matching, pieces, ste_matching, weight_matching

__all__ = ["weight_matching", "activation_matching", "ste_matching", "pieces"]
