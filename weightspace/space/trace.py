"""Trace a module's dataflow once to derive its weight-space structure.

The model runs on an example input under the tracing mode of :mod:`weightspace.space.dispatch`,
whose op registry (:mod:`weightspace.space.registry`) says how each operation moves the units of
its operands. Two things are tracked for each tensor:

- an axis descriptor per dimension (see :mod:`weightspace.space.axes`), whose
  unification yields the neuron groups and the axes of every parameter;
- a *unit-id* companion tensor of the same shape holding, for each element, the
  graph node (neuron) it belongs to, or -1. Shape operations are applied to it
  verbatim, so the neural-graph wiring (which nodes a weight connects) is read off
  exactly, whatever reshapes, transposes or splits the model does.

Anything whose effect on these two is unknown raises :class:`UnsupportedOperation`
naming the module and the operation, so a model is never described wrongly in silence.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten

from .axes import Solver
from .dispatch import TInfo, Tracer
from .forward import forward_args, run_forward
from .records import ActivationSite, EdgePlacement, Link, NodePlacement, Site, TraceResult
from .registry import RULES

__all__ = ["trace_module", "TraceResult", "Site", "EdgePlacement", "NodePlacement", "Link", "ActivationSite"]


def trace_module(model: nn.Module, example_input: Any) -> TraceResult:
    """Run ``model`` once on ``example_input`` (eval mode, no grad) and derive its structure."""
    sd = model.state_dict(keep_vars=True)
    keys = list(sd.keys())
    canon: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for k, t in sd.items():
        if id(t) in canon:
            aliases[k] = canon[id(t)]
        else:
            canon[id(t)] = k
    tracer = Tracer(model, RULES)
    for t in sd.values():
        k = canon[id(t)]
        if k not in tracer.param_axes:
            tracer.param_axes[k] = [tracer.s.var(n) for n in t.shape]
            tracer.key_of[id(t)] = k
    hooks = []
    for name, mod in model.named_modules():
        if name:
            hooks.append(mod.register_forward_pre_hook(
                lambda m, a, n=name: tracer.stack.append((n, type(m).__name__))))
            hooks.append(mod.register_forward_hook(lambda m, a, o: tracer.stack.pop() and None))
    inputs = forward_args(example_input)
    try:
        for x in tree_flatten(inputs)[0]:
            if isinstance(x, torch.Tensor):
                tracer.set(x, TInfo(tracer.fresh(x), None, False))
                tracer.inputs.add(id(x))
        out = run_forward(model, example_input, tracer)
    finally:
        for h in hooks:
            h.remove()
    output_nodes: list[int] = []
    for o in tree_flatten(out)[0]:
        if isinstance(o, torch.Tensor):
            inf = tracer.get(o)
            for a in inf.axes:
                tracer.s.fix(a)
            if inf.uid is not None:
                output_nodes.extend(int(u) for u in torch.unique(inf.uid) if u >= 0)
    for x in tree_flatten(inputs)[0]:
        if isinstance(x, torch.Tensor):
            for a in tracer.get(x).axes:
                tracer.s.fix(a)
    _close_fixed(tracer.s)
    leafsets = {frozenset(leaf for a in inf.axes for leaf in tracer.s.leaves(a)) for _, inf in tracer.info.values()}
    return TraceResult(
        solver=tracer.s, keys=keys, aliases=aliases,
        shapes={k: tuple(t.shape) for k, t in sd.items()}, dtypes={k: t.dtype for k, t in sd.items()},
        param_axes=tracer.param_axes, sites=tracer.sites, edges=tracer.edges, nodes=tracer.node_params,
        links=tracer.links, output_nodes=sorted(set(output_nodes)), notes=list(tracer.s.notes),
        tensor_leaves=list(leafsets), activation_sites=tracer.act_sites,
        nonlinearities=dict(tracer.nonlinear))


def _close_fixed(s: Solver) -> None:
    """Propagate fixed flags from expanded variables to the leaves they expand into."""
    changed = True
    while changed:
        changed = False
        for v in range(len(s.parent)):
            r = s.find(v)
            if s.fixed[v] and not s.fixed[r]:
                s.fixed[r] = True
                changed = True
            if s.fixed[r] and r in s.expansion:
                for leaf in s.leaves(s.expansion[r]):
                    if not s.fixed[leaf]:
                        s.fixed[leaf] = True
                        changed = True
