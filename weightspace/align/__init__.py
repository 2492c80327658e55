"""Alignment modulo permutations (Git Re-Basin) and linear mode connectivity."""
from .lmc import (Curve, accuracy_barrier, interpolate, interpolation_curve, loss_barrier, plot_interpolation,
                  repair, reset_bn_stats)
from .matching import activation_matching, ste_matching, weight_matching

__all__ = ["weight_matching", "activation_matching", "ste_matching", "interpolate", "loss_barrier",
           "accuracy_barrier", "Curve", "interpolation_curve", "reset_bn_stats", "repair", "plot_interpolation"]
