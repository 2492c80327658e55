"""Nowcasting training trajectories: NiNo (Knyazev et al. 2025) and baselines, and an optimizer wrapper.

- :class:`TrajectoryWindows`: context/future windows read lazily from checkpoint collections.
- Nowcasters, all with ``nowcast(context [c, P], k, layout) -> [P]``: :class:`NiNo` (graph
  metanetwork), :class:`NodeNiNo` (NiNo with states on the units only, about WNN's cost),
  :class:`WNN` (per-parameter MLP, Jang et al. 2023), :class:`LineFit` (per-parameter linear
  extrapolation), :class:`LAWA` (latest weight averaging, Kaddour 2022).
- :class:`NowcastOptimizer`: wraps any optimizer and jumps ahead every ``period`` steps, with an
  optional guard that rolls back harmful jumps.
"""
from .baselines import LAWA, LineFit
from .core import NINO_HORIZONS, Nowcaster, NowcastError, ParamLayout, horizon_schedule
from .model import LEARNED_NOWCASTERS, WNN, NiNo, NodeNiNo, load_nowcaster, value_features
from .optimizer import Jump, NowcastOptimizer
from .windows import TrajectoryWindows, Window, split_runs

__all__ = ["NiNo", "NodeNiNo", "WNN", "LineFit", "LAWA", "Nowcaster", "NowcastOptimizer", "Jump",
           "TrajectoryWindows", "Window", "ParamLayout", "NowcastError", "horizon_schedule", "NINO_HORIZONS",
           "split_runs", "value_features", "load_nowcaster", "LEARNED_NOWCASTERS"]
