"""Records the tracer produces and a :class:`~weightspace.space.WeightSpace` persists.

They hold plain data (node indices, state_dict keys, axis descriptors), so a space can be
saved as JSON and rebuilt without the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .axes import Desc, Solver


@dataclass
class Site:
    """A set of graph nodes: the units along one axis (``desc``) at a layer boundary."""

    kind: str
    desc: Desc
    offset: int
    count: int


@dataclass
class EdgePlacement:
    """A weight tensor placed as edges: its ``out_axis`` indexes ``out_nodes``, its ``in_axis`` ``in_nodes``."""

    key: str
    kind: str
    out_axis: int
    in_axis: int
    out_nodes: list[int]
    in_nodes: list[int]
    primary: bool = True


@dataclass
class NodePlacement:
    """A per-unit tensor (bias, norm parameter, running statistic) placed as node features."""

    key: str
    nodes: list[int]


@dataclass
class Link:
    """Identity edges between nodes (residual sums, norms, attention wiring)."""

    kind: str
    src: list[int]
    dst: list[int]


@dataclass(frozen=True)
class ActivationSite:
    """A tensor computed in the forward pass whose axis ``dim`` carries the units of ``desc``.

    It is the (first tensor) output of the ``call``-th torch-function call of the forward, as
    counted by :meth:`WeightSpace.capture_activations`. Along ``dim`` the output is a
    weight-scaled term plus ``bias``: ``out' = s * out + t`` per unit is realised by scaling
    ``weight`` along ``weight_axis`` by ``s`` and setting ``bias = s * bias + t``.
    """

    call: int
    op: str
    module: str
    dim: int
    desc: Desc
    weight: str | None = None
    weight_axis: int | None = None
    bias: str | None = None


@dataclass
class TraceResult:
    solver: Solver
    keys: list[str]
    aliases: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]
    param_axes: dict[str, list[Desc]]
    sites: list[Site]
    edges: list[EdgePlacement]
    nodes: list[NodePlacement]
    links: list[Link]
    output_nodes: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tensor_leaves: list[frozenset[int]] = field(default_factory=list)
    activation_sites: list[ActivationSite] = field(default_factory=list)
    nonlinearities: dict[int, str] = field(default_factory=dict)
