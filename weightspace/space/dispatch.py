"""The tracing ``TorchFunctionMode``: per-tensor state, bookkeeping, and dispatch to the op registry.

The model runs under :class:`Tracer`, which sees every call at the level users write
(``F.linear``, ``Tensor.view``, ``F.scaled_dot_product_attention``...). For each tensor it
keeps a :class:`TInfo`: an axis descriptor per dimension (whose unification yields the neuron
groups) and a *unit-id* companion tensor of the same shape holding, for each element, the graph
node it belongs to (or -1). Each call is handed to its rule in the op registry
(:mod:`weightspace.space.registry`); an operation without a rule, or with a tensor operand its
rule does not declare, raises :class:`UnsupportedOperation` naming the module and the operation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ..errors import UnsupportedOperation
from .axes import Desc, Prod, Solver
from .forward import op_name
from .records import ActivationSite, EdgePlacement, Link, NodePlacement, Site
from .vocabulary import EdgeKind, NodeKind

if TYPE_CHECKING:
    from .registry import OpRule


@dataclass
class TInfo:
    """What the tracer knows about one tensor."""

    axes: list[Desc]
    uid: torch.Tensor | None = None
    const: bool = False
    param: tuple[str, tuple[int, ...]] | None = None  # (key, tensor axis -> param axis)
    site: int | None = None  # index of the activation site this tensor is the output of


@dataclass
class Call:
    """One torch-function call as a rule sees it."""

    name: str
    func: Callable
    args: tuple
    kwargs: dict
    out: Any
    rule: "OpRule | None" = None

    def arg(self, pos: int | None, name: str, default: Any = None) -> Any:
        """Argument given by keyword ``name`` or at position ``pos``."""
        if name in self.kwargs:
            return self.kwargs[name]
        if pos is not None and pos < len(self.args):
            return self.args[pos]
        return default

    @property
    def outs(self) -> list[torch.Tensor]:
        return [o for o in tree_flatten(self.out)[0] if isinstance(o, torch.Tensor)]


class Tracer(TorchFunctionMode):
    """Runs a model's forward and builds its weight-space structure, one registered rule per call."""

    def __init__(self, model: nn.Module, rules: Mapping[str, "OpRule"]) -> None:
        super().__init__()
        self.rules = rules
        self.s = Solver()
        self.info: dict[int, tuple[torch.Tensor, TInfo]] = {}
        self.stack: list[tuple[str, str]] = [("", type(model).__name__)]
        self.sites: list[Site] = []
        self.n_nodes = 0
        self.edges: list[EdgePlacement] = []
        self.node_params: list[NodePlacement] = []
        self.links: list[Link] = []
        self.placed: set[str] = set()
        self.key_of: dict[int, str] = {}
        self.param_axes: dict[str, list[Desc]] = {}
        self.inputs: set[int] = set()
        self.act_sites: list[ActivationSite] = []
        self.nonlinear: dict[int, str] = {}
        self.calls = 0
        self.call = -1

    # ----------------------------------------------------------------- bookkeeping
    def where(self, op: str) -> str:
        name, typ = self.stack[-1]
        return f"module '{name or '<root>'}' ({typ}), operation '{op}'"

    def fail(self, op: str, why: str) -> UnsupportedOperation:
        return UnsupportedOperation(f"{self.where(op)}: {why}")

    def fresh(self, t: torch.Tensor, fixed: bool = True) -> list[Desc]:
        return [self.s.var(n, fixed) for n in t.shape]

    def get(self, t: torch.Tensor) -> TInfo:
        hit = self.info.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        key = self.key_of.get(id(t))
        if key is not None:
            inf = TInfo(list(self.param_axes[key]), None, False, (key, tuple(range(t.dim()))))
        else:
            inf = TInfo(self.fresh(t), None, True)
        self.set(t, inf)
        return inf

    def set(self, t: torch.Tensor, inf: TInfo) -> None:
        self.info[id(t)] = (t, inf)

    def new_site(self, kind: NodeKind, desc: Desc) -> list[int]:
        count = self.s.size_of(desc)
        self.sites.append(Site(NodeKind(kind).value, desc, self.n_nodes, count))
        nodes = list(range(self.n_nodes, self.n_nodes + count))
        self.n_nodes += count
        return nodes

    def site_on(self, t: torch.Tensor, inf: TInfo, axes: list[int], kind: NodeKind) -> TInfo:
        """Create a fresh node set for the units along ``axes`` of ``t``; return info carrying it."""
        axes = sorted(a % t.dim() for a in axes)
        desc = Prod(tuple(inf.axes[a] for a in axes)) if len(axes) != 1 else inf.axes[axes[0]]
        nodes = torch.tensor(self.new_site(kind, desc), dtype=torch.long)
        shape = [t.shape[a] if a in axes else 1 for a in range(t.dim())]
        uid = nodes.view(shape).expand(t.shape).contiguous()
        return TInfo(inf.axes, uid, False, None)

    def uid(self, t: torch.Tensor, inf: TInfo) -> torch.Tensor:
        return inf.uid if inf.uid is not None else torch.full(t.shape, -1, dtype=torch.long)

    def nodes_along(self, t: torch.Tensor, inf: TInfo, axis: int, op: str) -> list[int]:
        """Node of each index along ``axis``; creates an input (or hidden) node set when ``t`` has none."""
        axis %= t.dim()
        if inf.uid is None or bool((inf.uid < 0).all()):
            kind = NodeKind.INPUT if id(t) in self.inputs else NodeKind.HIDDEN
            new = self.site_on(t, inf, [axis], kind)
            inf.uid = new.uid
        u = inf.uid.movedim(axis, 0).reshape(t.shape[axis], -1)
        if not bool((u == u[:, :1]).all()) or bool((u < 0).any()):
            raise self.fail(op, "the input's units are not laid out along the contracted axis")
        return u[:, 0].tolist()

    def link(self, kind: EdgeKind, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = torch.broadcast_tensors(a, b)
        for d in range(a.dim()):
            first_a, first_b = a.narrow(d, 0, 1), b.narrow(d, 0, 1)
            if a.shape[d] > 1 and torch.equal(a, first_a.expand_as(a)) and torch.equal(b, first_b.expand_as(b)):
                a, b = first_a, first_b
        a, b = a.reshape(-1), b.reshape(-1)
        keep = (a >= 0) & (b >= 0) & (a != b)
        keys = torch.unique(a[keep] * (1 << 31) + b[keep])
        if len(keys):
            self.links.append(Link(EdgeKind(kind).value, (keys >> 31).tolist(), (keys & ((1 << 31) - 1)).tolist()))

    def place_nodes(self, key: str, nodes: torch.Tensor, op: str) -> bool:
        if key in self.placed:
            return True
        flat = nodes.reshape(-1)
        if bool((flat < 0).any()) or len(torch.unique(flat)) != len(flat):
            return False
        self.node_params.append(NodePlacement(key, flat.tolist()))
        self.placed.add(key)
        return True

    def place_edges(self, key: str, kind: EdgeKind, out_axis: int, in_axis: int, out_nodes: list[int],
                    in_nodes: list[int]) -> None:
        primary = key not in self.placed
        self.placed.add(key)
        self.edges.append(EdgePlacement(key, EdgeKind(kind).value, out_axis, in_axis, out_nodes, in_nodes, primary))

    def param_key(self, inf: TInfo, op: str, want_identity: bool = True) -> str | None:
        if inf.param is None:
            return None
        key, dims = inf.param
        if want_identity and dims != tuple(range(len(dims))):
            raise self.fail(op, f"parameter '{key}' is used through a transposed view here")
        return key

    def activation_site(self, res: TInfo, op: str, dim: int, desc: Desc, weight: str | None = None,
                        weight_axis: int | None = None, bias: str | None = None) -> TInfo:
        """Record the current call's output as an activation site along ``dim``; mark ``res`` as its output."""
        res.site = len(self.act_sites)
        self.act_sites.append(ActivationSite(self.call, op, self.stack[-1][0], dim, desc, weight, weight_axis, bias))
        return res

    def record_nonlinearity(self, op: str, uid: torch.Tensor) -> None:
        """Record that nonlinearity ``op`` acts on the units (nodes) in ``uid``; a unit keeps its first one."""
        for u in torch.unique(uid[uid >= 0]).tolist():
            self.nonlinear.setdefault(int(u), op)

    # ------------------------------------------------------------------ dispatch
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.call = self.calls
        self.calls += 1
        out = func(*args, **kwargs)
        name = op_name(func)
        rule = self.rules.get(name)
        if rule is not None and rule.apply is None:
            return out
        touts = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        if not touts:
            return out
        ins = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        infos = [self.get(a) for a in ins]
        if all(i.const for i in infos):
            for o in touts:
                if not (id(o) in self.info and self.info[id(o)][0] is o):
                    self.set(o, TInfo(self.fresh(o), None, True))
            return out
        if rule is None:
            raise self.fail(name, "this operation is not supported by weightspace tracing (its effect on weight "
                                  "symmetries is unknown; weightspace.space.supported_ops() lists the supported ones)")
        unexpected = rule.unexpected_operand(args, kwargs)
        if unexpected is not None:
            raise self.fail(name, f"a tensor was passed as {unexpected}, which weightspace tracing does not "
                                  f"know how to treat for this operation")
        c = Call(name, func, args, kwargs, out, rule)
        for t in rule.tensors(c, "mask"):
            for a in self.get(t).axes:
                self.s.fix(a)
        results = rule.apply(self, c)
        for o, r in zip(touts, results):
            self.set(o, r)
        return out
