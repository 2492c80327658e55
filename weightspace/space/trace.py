"""Trace a module's dataflow once to derive its weight-space structure.

The model runs on an example input under a ``TorchFunctionMode`` that sees every
call at the level users write (``F.linear``, ``Tensor.view``, ``F.scaled_dot_product_attention``,
``F.multi_head_attention_forward``...). Two things are tracked for each tensor:

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

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ..errors import UnsupportedOperation
from .axes import Cat, Desc, Prod, Solver
from .forward import forward_args, op_name, run_forward
from .records import ActivationSite, EdgePlacement, Link, NodePlacement, Site, TraceResult


@dataclass
class TInfo:
    axes: list[Desc]
    uid: torch.Tensor | None = None
    const: bool = False
    param: tuple[str, tuple[int, ...]] | None = None  # (key, tensor axis -> param axis)
    site: int | None = None  # index of the activation site this tensor is the output of


UNARY = {
    "relu", "relu6", "gelu", "silu", "tanh", "sigmoid", "elu", "selu", "leaky_relu", "hardtanh", "mish",
    "softplus", "hardswish", "hardsigmoid", "dropout", "dropout1d", "dropout2d", "alpha_dropout", "exp", "log",
    "neg", "abs", "sqrt", "rsqrt", "square", "sin", "cos", "erf", "reciprocal", "clamp", "clip", "pow",
    "float", "half", "double", "bfloat16", "to", "type", "type_as", "contiguous", "clone", "detach", "softmax",
    "log_softmax", "identity", "cpu", "cuda", "nan_to_num", "sign", "logsigmoid",
    "positive", "data", "real",
}
BINARY = {"add", "sub", "mul", "div", "true_divide", "maximum", "minimum", "masked_fill", "where", "rsub", "radd",
          "rmul", "rtruediv", "truediv", "iadd", "isub", "imul", "itruediv", "floordiv"}
REDUCE = {"mean", "sum", "var", "std", "amax", "amin", "logsumexp", "norm", "prod", "max", "min", "all", "any"}
RESHAPE = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "ravel"}
MOVE = {"transpose", "permute", "t", "T", "mT", "movedim", "moveaxis", "swapaxes", "swapdims"}
SPLIT = {"split", "chunk", "tensor_split", "split_with_sizes"}
POOL = {"max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
        "adaptive_max_pool1d", "adaptive_max_pool2d", "max_pool2d_with_indices", "max_pool1d_with_indices",
        "lp_pool2d"}
IGNORED = {"size", "dim", "numel", "is_floating_point", "is_complex", "ndimension", "nelement", "stride",
           "data_ptr", "is_contiguous", "element_size", "get_device", "item", "tolist", "equal", "__len__",
           "dtype", "device", "shape", "is_cuda", "requires_grad", "grad", "layout", "is_leaf", "ndim",
           "_set_grad_enabled", "is_nonzero", "numpy", "__format__", "__bool__", "__index__", "__int__",
           "__float__", "names", "is_sparse", "is_quantized", "is_meta", "is_mps", "untyped_storage", "_is_view",
           "grad_fn", "output_nr", "_version", "is_nested", "has_names", "is_inference", "storage_offset"}


class _Tracer(TorchFunctionMode):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
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

    def new_site(self, kind: str, desc: Desc) -> list[int]:
        count = self.s.size_of(desc)
        self.sites.append(Site(kind, desc, self.n_nodes, count))
        nodes = list(range(self.n_nodes, self.n_nodes + count))
        self.n_nodes += count
        return nodes

    def site_on(self, t: torch.Tensor, inf: TInfo, axes: list[int], kind: str) -> TInfo:
        """Create a fresh node set for the units along ``axes`` of ``t``; return info carrying it."""
        axes = sorted(a % t.dim() for a in axes)
        desc = Prod(tuple(inf.axes[a] for a in axes)) if len(axes) != 1 else inf.axes[axes[0]]
        nodes = torch.tensor(self.new_site(kind, desc), dtype=torch.long)
        shape = [t.shape[a] if a in axes else 1 for a in range(t.dim())]
        uid = nodes.view(shape).expand(t.shape).contiguous()
        return TInfo(inf.axes, uid, False, None)

    def uid(self, t: torch.Tensor, inf: TInfo) -> torch.Tensor:
        return inf.uid if inf.uid is not None else torch.full(t.shape, -1, dtype=torch.long)

    def nodes_along(self, t: torch.Tensor, inf: TInfo, axis: int, op: str, kind: str = "hidden") -> list[int]:
        """Node of each index along ``axis``; creates an input node set when ``t`` has none."""
        axis %= t.dim()
        if inf.uid is None or bool((inf.uid < 0).all()):
            kind = "input" if id(t) in self.inputs else kind
            new = self.site_on(t, inf, [axis], kind)
            inf.uid = new.uid
        u = inf.uid.movedim(axis, 0).reshape(t.shape[axis], -1)
        if not bool((u == u[:, :1]).all()) or bool((u < 0).any()):
            raise self.fail(op, "the input's units are not laid out along the contracted axis")
        return u[:, 0].tolist()

    def link(self, kind: str, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = torch.broadcast_tensors(a, b)
        for d in range(a.dim()):
            first_a, first_b = a.narrow(d, 0, 1), b.narrow(d, 0, 1)
            if a.shape[d] > 1 and torch.equal(a, first_a.expand_as(a)) and torch.equal(b, first_b.expand_as(b)):
                a, b = first_a, first_b
        a, b = a.reshape(-1), b.reshape(-1)
        keep = (a >= 0) & (b >= 0) & (a != b)
        keys = torch.unique(a[keep] * (1 << 31) + b[keep])
        if len(keys):
            self.links.append(Link(kind, (keys >> 31).tolist(), (keys & ((1 << 31) - 1)).tolist()))

    def place_nodes(self, key: str, nodes: torch.Tensor, op: str) -> bool:
        if key in self.placed:
            return True
        flat = nodes.reshape(-1)
        if bool((flat < 0).any()) or len(torch.unique(flat)) != len(flat):
            return False
        self.node_params.append(NodePlacement(key, flat.tolist()))
        self.placed.add(key)
        return True

    def place_edges(self, key: str, kind: str, out_axis: int, in_axis: int, out_nodes: list[int],
                    in_nodes: list[int]) -> None:
        primary = key not in self.placed
        self.placed.add(key)
        self.edges.append(EdgePlacement(key, kind, out_axis, in_axis, out_nodes, in_nodes, primary))

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

    # ------------------------------------------------------------------ dispatch
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.call = self.calls
        self.calls += 1
        out = func(*args, **kwargs)
        name = op_name(func)
        if name in IGNORED:
            return out
        outs, _ = tree_flatten(out)
        touts = [o for o in outs if isinstance(o, torch.Tensor)]
        if not touts:
            return out
        ins = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        infos = [self.get(a) for a in ins]
        if all(i.const for i in infos):
            for o in touts:
                if not (id(o) in self.info and self.info[id(o)][0] is o):
                    self.set(o, TInfo(self.fresh(o), None, True))
            return out
        handler = getattr(self, "op_" + name, None)
        if handler is None:
            handler = self._family(name)
        if handler is None:
            raise self.fail(name, "this operation is not supported by weightspace tracing "
                                  "(its effect on weight symmetries is unknown)")
        results = handler(name, func, args, kwargs, out)
        for o, r in zip(touts, results):
            self.set(o, r)
        return out

    def _family(self, name: str):
        for names, h in ((UNARY, self.unary), (BINARY, self.binary), (REDUCE, self.reduce),
                         (RESHAPE, self.reshape), (MOVE, self.move), (SPLIT, self.split), (POOL, self.pool)):
            if name in names:
                return h
        return None

    # ------------------------------------------------------------------ shape ops
    def unary(self, name, func, args, kwargs, out):
        x = args[0]
        inf = self.get(x)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            raise self.fail(name, "expected an elementwise result of the input's shape")
        param = inf.param if name in {"to", "float", "half", "double", "bfloat16", "type", "type_as",
                                      "contiguous", "clone", "detach", "data"} else None
        return [TInfo(inf.axes, inf.uid, False, param)]

    def op_getitem(self, name, func, args, kwargs, out):
        x, idx = args[0], args[1]
        inf = self.get(x)
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(isinstance(i, (torch.Tensor, list)) for i in idx):
            for a in inf.axes:
                self.s.fix(a)
            uid = None if inf.uid is None else func(inf.uid, args[1])
            return [TInfo(self.fresh(out), uid, False)]
        n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
        expanded: list[Any] = []
        for i in idx:
            if i is Ellipsis:
                expanded.extend([slice(None)] * (x.dim() - n_real))
            else:
                expanded.append(i)
        expanded.extend([slice(None)] * (x.dim() - sum(1 for i in expanded if i is not None)))
        axes: list[Desc] = []
        d = 0
        for i in expanded:
            if i is None:
                axes.append(self.s.var(1))
                continue
            a, n = inf.axes[d], x.shape[d]
            if isinstance(i, slice):
                start, stop, step = i.indices(n)
                if (start, stop, step) == (0, n, 1):
                    axes.append(a)
                else:
                    self.s.fix(a)
                    axes.append(self.s.var(len(range(start, stop, step)), True))
            else:
                self.s.fix(a)
            d += 1
        uid = None if inf.uid is None else func(inf.uid, args[1])
        return [TInfo(axes, uid, False)]

    def op_select(self, name, func, args, kwargs, out):
        x, dim = args[0], args[1] % args[0].dim()
        idx = [slice(None)] * dim + [args[2]]
        return self.op_getitem("getitem", lambda u, i: u[i], (x, tuple(idx)), {}, out)

    def op_narrow(self, name, func, args, kwargs, out):
        x, dim, start, length = args[0], args[1] % args[0].dim(), args[2], args[3]
        idx = [slice(None)] * dim + [slice(int(start), int(start) + int(length))]
        return self.op_getitem("getitem", lambda u, i: u[i], (x, tuple(idx)), {}, out)

    def reshape(self, name, func, args, kwargs, out):
        x = args[0]
        inf = self.get(x)
        axes = self._reshape_axes(inf.axes, list(x.shape), list(out.shape), name)
        uid = None if inf.uid is None else inf.uid.reshape(out.shape)
        return [TInfo(axes, uid, False)]

    def _reshape_axes(self, axes: list[Desc], ins: list[int], outs: list[int], op: str) -> list[Desc]:
        res: list[Desc] = []
        i = j = 0
        while i < len(ins) or j < len(outs):
            if i < len(ins) and ins[i] == 1:
                i += 1
                continue
            if j < len(outs) and outs[j] == 1:
                res.append(self.s.var(1))
                j += 1
                continue
            gi, gj = [i], [j]
            pi, pj = ins[i], outs[j]
            i, j = i + 1, j + 1
            while pi != pj:
                if pi < pj:
                    gi.append(i)
                    pi *= ins[i]
                    i += 1
                else:
                    gj.append(j)
                    pj *= outs[j]
                    j += 1
            src = axes[gi[0]] if len(gi) == 1 else Prod(tuple(axes[g] for g in gi))
            if len(gj) == 1:
                res.append(src)
            else:
                res.extend(self.s.split(src, [outs[g] for g in gj], self.where(op)))
        return res

    def move(self, name, func, args, kwargs, out):
        x = args[0]
        inf = self.get(x)
        probe = torch.empty([k + 2 for k in range(x.dim())], device="meta")
        moved = func(probe, *args[1:], **kwargs)
        order = [n - 2 for n in moved.shape]
        uid = None if inf.uid is None else func(inf.uid, *args[1:], **kwargs)
        param = None
        if inf.param is not None:
            key, dims = inf.param
            param = (key, tuple(dims[o] for o in order))
        return [TInfo([inf.axes[o] for o in order], uid, False, param)]

    def op_expand(self, name, func, args, kwargs, out):
        x = args[0]
        inf = self.get(x)
        lead = out.dim() - x.dim()
        axes = [self.s.var(n, True) for n in out.shape[:lead]]
        for a, n_in, n_out in zip(inf.axes, x.shape, out.shape[lead:]):
            axes.append(a if n_in == n_out else self.s.var(n_out, True))
        uid = None if inf.uid is None else inf.uid.expand(out.shape)
        return [TInfo(axes, uid, False)]

    op_expand_as = op_broadcast_to = op_expand

    def split(self, name, func, args, kwargs, out):
        x = args[0]
        inf = self.get(x)
        dim = kwargs.get("dim", args[2] if len(args) > 2 else 0) % x.dim()
        parts = tuple(self.s.var(o.shape[dim], self.s.is_fixed(inf.axes[dim])) for o in out)
        self.s.unify(inf.axes[dim], Cat(parts), self.where(name))
        uids = None if inf.uid is None else func(inf.uid, *args[1:], **kwargs)
        return [TInfo(inf.axes[:dim] + [p] + inf.axes[dim + 1:], None if uids is None else uids[k], False)
                for k, p in enumerate(parts)]

    def op_unbind(self, name, func, args, kwargs, out):
        x = args[0]
        inf = self.get(x)
        dim = (kwargs.get("dim", args[1] if len(args) > 1 else 0)) % x.dim()
        self.s.fix(inf.axes[dim])
        uids = None if inf.uid is None else func(inf.uid, *args[1:], **kwargs)
        return [TInfo(inf.axes[:dim] + inf.axes[dim + 1:], None if uids is None else uids[k], False)
                for k in range(len(out))]

    def op_cat(self, name, func, args, kwargs, out):
        ts = list(args[0])
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0) % out.dim()
        infs = [self.get(t) for t in ts]
        for d in range(out.dim()):
            if d != dim:
                for other in infs[1:]:
                    self.s.unify(infs[0].axes[d], other.axes[d], self.where(name))
        axes = list(infs[0].axes)
        axes[dim] = Cat(tuple(i.axes[dim] for i in infs))
        uid = None
        if any(i.uid is not None for i in infs):
            uid = torch.cat([self.uid(t, i) for t, i in zip(ts, infs)], dim)
        return [TInfo(axes, uid, False)]

    op_concat = op_concatenate = op_cat

    def op_stack(self, name, func, args, kwargs, out):
        ts = list(args[0])
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0) % out.dim()
        infs = [self.get(t) for t in ts]
        for other in infs[1:]:
            for a, b in zip(infs[0].axes, other.axes):
                self.s.unify(a, b, self.where(name))
        axes = list(infs[0].axes)
        axes.insert(dim, self.s.var(len(ts), True))
        uid = None
        if any(i.uid is not None for i in infs):
            uid = torch.stack([self.uid(t, i) for t, i in zip(ts, infs)], dim)
        return [TInfo(axes, uid, False)]

    # --------------------------------------------------------------- elementwise
    def binary(self, name, func, args, kwargs, out):
        operands = [a for a in args if isinstance(a, torch.Tensor)]
        if name in {"rsub", "radd", "rmul", "rtruediv"}:
            operands = operands[::-1]
        infs = [self.get(t) for t in operands]
        nd = out.dim()
        axes: list[Desc] = []
        for d in range(nd):
            cands = [inf.axes[d - (nd - t.dim())] for t, inf in zip(operands, infs)
                     if d - (nd - t.dim()) >= 0 and t.shape[d - (nd - t.dim())] == out.shape[d]]
            if not cands:
                axes.append(self.s.var(out.shape[d], True))
                continue
            for c in cands[1:]:
                self.s.unify(cands[0], c, self.where(name))
            axes.append(cands[0])
        acts = [(t, i) for t, i in zip(operands, infs) if i.param is None]
        params = [(t, i) for t, i in zip(operands, infs) if i.param is not None]
        carriers = [(t, i) for t, i in acts if i.uid is not None and bool((i.uid >= 0).any())]
        uid = None
        if len(carriers) == 1:
            uid = carriers[0][1].uid.expand(out.shape) if carriers[0][0].shape != out.shape else carriers[0][1].uid
        elif len(carriers) > 1:
            us = torch.broadcast_tensors(*[i.uid for _, i in carriers])
            if all(torch.equal(us[0], u) for u in us[1:]):
                uid = us[0].expand(out.shape)
            else:
                feat = [d for d in range(nd) if any((u != u.narrow(d, 0, 1)).any() for u in
                                                    [x.expand(out.shape) for x in us])]
                additive = name in {"add", "sub", "iadd", "isub", "radd", "rsub"}
                uid = self.site_on(out, TInfo(axes), feat, "residual" if additive else "product").uid
                kind = "residual" if additive else "gate"
                for u in us:
                    self.link(kind, u.expand(out.shape), uid)
        if uid is not None:
            uid = uid.contiguous()
        site = self._bias_add_site(name, acts, params, out, uid)
        for t, i in params:
            key = i.param[0]
            if uid is None:
                continue
            pu = uid
            nd_p = t.dim()
            lead = nd - nd_p
            red = [d for d in range(nd) if d < lead or t.shape[d - lead] == 1]
            if red:
                first = pu
                for d in sorted(red, reverse=True):
                    first = first.narrow(d, 0, 1)
                pu = first.reshape([s for d, s in enumerate(first.shape) if d >= lead]).expand(t.shape)
            if i.param[1] != tuple(range(nd_p)):
                inv = [0] * nd_p
                for a, b in enumerate(i.param[1]):
                    inv[b] = a
                pu = pu.permute(inv)
            self.place_nodes(key, pu, name)
        return [TInfo(axes, uid, False, site=site)]

    def _bias_add_site(self, name, acts, params, out, uid) -> int | None:
        """``h = x @ W; h + b``: the sum becomes the activation site of ``h``'s units, with ``b`` as its bias."""
        if name not in {"add", "radd", "iadd"} or len(acts) != 1 or len(params) != 1:
            return None
        (h, hi), (b, bi) = acts[0], params[0]
        if hi.site is None or h.shape != out.shape or uid is None or hi.uid is None or not torch.equal(uid, hi.uid):
            return None
        old = self.act_sites[hi.site]
        if old.bias is not None or b.dim() == 0 or bi.param[1] != tuple(range(b.dim())):
            return None
        lead = out.dim() - b.dim()
        if [d + lead for d, n in enumerate(b.shape) if n != 1] != [old.dim] or b.shape[old.dim - lead] != out.shape[old.dim]:
            return None
        self.act_sites[hi.site] = replace(old, call=self.call, op=name, module=self.stack[-1][0], bias=bi.param[0])
        return hi.site

    def op_where(self, name, func, args, kwargs, out):
        return self.binary(name, func, args, kwargs, out)

    def reduce(self, name, func, args, kwargs, out):
        x = args[0]
        inf = self.get(x)
        results = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        dim = kwargs.get("dim", args[1] if len(args) > 1 and not isinstance(args[1], (float, str, bool)) else None)
        if dim is None:
            dims = list(range(x.dim()))
        else:
            dims = [d % x.dim() for d in (dim if isinstance(dim, (tuple, list)) else [dim])]
        res0 = results[0]
        keep = res0.dim() == x.dim()
        axes = [self.s.var(1) if d in dims else a for d, a in enumerate(inf.axes)]
        if not keep:
            axes = [a for d, a in enumerate(axes) if d not in dims]
        uid = None
        if inf.uid is not None:
            u = inf.uid
            const = all(bool((u == u.narrow(d, 0, 1)).all()) for d in dims)
            if const:
                for d in dims:
                    u = u.narrow(d, 0, 1)
                uid = u if keep else u.reshape(res0.shape)
        infos = [TInfo(axes, uid, False)]
        for extra in results[1:]:
            infos.append(TInfo(self.fresh(extra), None, False))
        return infos

    def pool(self, name, func, args, kwargs, out):
        x = args[0]
        inf = self.get(x)
        results = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        res0 = results[0]
        lead = x.dim() - (1 if "1d" in name else 2)
        axes = list(inf.axes[:lead]) + [self.s.var(n, True) for n in res0.shape[lead:]]
        uid = None
        if inf.uid is not None:
            u = inf.uid
            for d in range(lead, x.dim()):
                u = u.narrow(d, 0, 1)
            if not torch.equal(inf.uid, u.expand_as(inf.uid)):
                raise self.fail(name, "pooling across units is not supported")
            uid = u.expand(res0.shape).contiguous()
        return [TInfo(axes, uid, False)] + [TInfo(self.fresh(r), None, False) for r in results[1:]]

    # ---------------------------------------------------------------- layers
    def op_linear(self, name, func, args, kwargs, out):
        x, w = args[0], args[1]
        b = kwargs.get("bias", args[2] if len(args) > 2 else None)
        return self._affine(name, x, w, b, out, w_out_axis=0, kind="linear")

    def _affine(self, name, x, w, b, out, w_out_axis, kind):
        xi, wi = self.get(x), self.get(w)
        key = self.param_key(wi, name, want_identity=False)
        if key is None:
            raise self.fail(name, "the weight is not a parameter of the model")
        dims = wi.param[1]
        w_in_axis = 1 - w_out_axis
        self.s.unify(xi.axes[-1], wi.axes[w_in_axis], self.where(name))
        axes = list(xi.axes[:-1]) + [wi.axes[w_out_axis]]
        in_nodes = self.nodes_along(x, xi, -1, name)
        res = self.site_on(out, TInfo(axes), [out.dim() - 1], kind)
        out_nodes = res.uid.movedim(-1, 0).reshape(out.shape[-1], -1)[:, 0].tolist()
        self.place_edges(key, kind, dims[w_out_axis], dims[w_in_axis], out_nodes, in_nodes)
        bkey = None
        if b is not None:
            bi = self.get(b)
            bkey = self.param_key(bi, name)
            self.s.unify(bi.axes[0], wi.axes[w_out_axis], self.where(name))
            self.place_nodes(bkey, torch.tensor(out_nodes), name)
        return [self.activation_site(res, name, out.dim() - 1, wi.axes[w_out_axis], key, dims[w_out_axis], bkey)]

    def op_matmul(self, name, func, args, kwargs, out):
        a, b = args[0], args[1]
        if name == "rmatmul":
            a, b = b, a
        ai, bi = self.get(a), self.get(b)
        if bi.param is not None and b.dim() == 2 and ai.param is None:
            return self._affine(name, a, b, None, out, w_out_axis=1, kind="linear")
        if ai.param is not None or bi.param is not None or a.dim() < 2 or b.dim() < 2:
            raise self.fail(name, "only activation @ activation and activation @ weight matrix are supported")
        self.s.unify(ai.axes[-1], bi.axes[-2], self.where(name))
        nb = out.dim() - 2
        batch: list[Desc] = []
        for d in range(nb):
            cands = []
            for t, i in ((a, ai), (b, bi)):
                k = d - (nb - (t.dim() - 2))
                if k >= 0 and t.shape[k] == out.shape[d]:
                    cands.append(i.axes[k])
            for c in cands[1:]:
                self.s.unify(cands[0], c, self.where(name))
            batch.append(cands[0] if cands else self.s.var(out.shape[d], True))
        axes = batch + [ai.axes[-2], bi.axes[-1]]
        ua, ub = ai.uid, bi.uid
        if ua is not None and ub is not None:
            self.link("attn_qk", ua.select(-2, 0), ub.select(-1, 0))
            return [TInfo(axes, None, False)]
        if ub is not None and bool((ub >= 0).any()):
            if not bool((ub == ub.narrow(-2, 0, 1)).all()):
                raise self.fail(name, "units on both contracted and kept axes are not supported")
            return [self._attend(out, axes, ub, name)]
        if ua is not None and bool((ua >= 0).any()):
            raise self.fail(name, "units on the left operand's rows are not supported")
        return [TInfo(axes, None, False)]

    op_mm = op_bmm = op_rmatmul = op_matmul

    def _attend(self, out: torch.Tensor, axes: list[Desc], v_uid: torch.Tensor, op: str) -> TInfo:
        """Context vectors: a new node set over v's units, linked one-to-one to them."""
        vu = v_uid.narrow(-2, 0, 1)
        nd = out.dim()
        vu = vu.reshape([1] * (nd - vu.dim()) + list(vu.shape))
        feat = [d for d in range(nd) if d != nd - 2 and vu.shape[d] > 1 and bool((vu != vu.narrow(d, 0, 1)).any())]
        res = self.site_on(out, TInfo(axes), feat, "attention")
        self.link("attn_v", vu.expand(out.shape), res.uid)
        return res

    def op_scaled_dot_product_attention(self, name, func, args, kwargs, out):
        q, k, v = args[0], args[1], args[2]
        qi, ki, vi = self.get(q), self.get(k), self.get(v)
        if kwargs.get("enable_gqa"):
            raise self.fail(name, "grouped-query attention is not supported")
        w = self.where(name)
        self.s.unify(qi.axes[-1], ki.axes[-1], w)
        self.s.unify(ki.axes[-2], vi.axes[-2], w)
        nd = out.dim()
        for d in range(nd - 2):
            self.s.unify(qi.axes[d], ki.axes[d], w)
            self.s.unify(qi.axes[d], vi.axes[d], w)
        axes = list(qi.axes[:-1]) + [vi.axes[-1]]
        if qi.uid is not None and ki.uid is not None:
            self.link("attn_qk", qi.uid.select(-2, 0), ki.uid.select(-2, 0))
        if vi.uid is None:
            return [TInfo(axes, None, False)]
        return [self._attend(out, axes, vi.uid, name)]

    def op_multi_head_attention_forward(self, name, func, args, kwargs, out):
        names = ["query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
                 "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias"]
        a = dict(zip(names, args))
        a.update(kwargs)
        q, k, v = a["query"], a["key"], a["value"]
        if kwargs.get("use_separate_proj_weight") or a.get("bias_k") is not None or a.get("add_zero_attn"):
            raise self.fail(name, "only packed in-projections without bias_k/bias_v/add_zero_attn are supported")
        if not (q is k and k is v) and q.dim() == 3:
            qi0 = self.get(q)
            if not all(t is q or (self.get(t).uid is not None and qi0.uid is not None and
                                  torch.equal(self.get(t).uid, qi0.uid)) for t in (k, v)):
                raise self.fail(name, "only self-attention (query, key and value from one tensor) is supported")
        if q.dim() != 3:
            raise self.fail(name, "unbatched attention inputs are not supported")
        heads = int(a["num_heads"])
        qi = self.get(q)
        wi, ow = self.get(a["in_proj_weight"]), self.get(a["out_proj_weight"])
        wkey, okey = self.param_key(wi, name), self.param_key(ow, name)
        e = q.shape[-1]
        s, where = self.s, self.where(name)
        h, dqk, dv = s.var(heads), s.var(e // heads), s.var(e // heads)
        qd, kd, vd = Prod((h, dqk)), Prod((h, dqk)), Prod((h, dv))
        s.unify(wi.axes[0], Cat((qd, kd, vd)), where)
        s.unify(wi.axes[1], qi.axes[-1], where)
        s.unify(ow.axes[1], vd, where)
        in_nodes = self.nodes_along(q, qi, -1, name)
        qkv = self.new_site("attention_qkv", wi.axes[0])
        self.place_edges(wkey, "attn_in", 0, 1, qkv, in_nodes)
        if a.get("in_proj_bias") is not None:
            bi = self.get(a["in_proj_bias"])
            s.unify(bi.axes[0], wi.axes[0], where)
            self.place_nodes(self.param_key(bi, name), torch.tensor(qkv), name)
        ctx = self.new_site("attention", vd)
        self.links.append(Link("attn_qk", qkv[:e], qkv[e:2 * e]))
        self.links.append(Link("attn_v", qkv[2 * e:], ctx))
        o = out[0]
        axes = list(qi.axes[:-1]) + [ow.axes[0]]
        res = self.site_on(o, TInfo(axes), [o.dim() - 1], "linear")
        out_nodes = res.uid.movedim(-1, 0).reshape(o.shape[-1], -1)[:, 0].tolist()
        self.place_edges(okey, "attn_out", 0, 1, out_nodes, ctx)
        obkey = None
        if a.get("out_proj_bias") is not None:
            bi = self.get(a["out_proj_bias"])
            s.unify(bi.axes[0], ow.axes[0], where)
            obkey = self.param_key(bi, name)
            self.place_nodes(obkey, torch.tensor(out_nodes), name)
        results = [self.activation_site(res, name, o.dim() - 1, ow.axes[0], okey, 0, obkey)]
        if isinstance(out, tuple) and isinstance(out[1], torch.Tensor):
            results.append(TInfo(self.fresh(out[1]), None, False))
        return results

    def _conv(self, name, func, args, kwargs, out, nd: int):
        x, w = args[0], args[1]
        b = kwargs.get("bias", args[2] if len(args) > 2 else None)
        groups = kwargs.get("groups", args[6] if len(args) > 6 else 1)
        if groups != 1:
            raise self.fail(name, f"grouped convolutions (groups={groups}) are not supported")
        xi, wi = self.get(x), self.get(w)
        key = self.param_key(wi, name)
        if key is None:
            raise self.fail(name, "the kernel is not a parameter of the model")
        where = self.where(name)
        cdim = x.dim() - nd - 1
        self.s.unify(xi.axes[cdim], wi.axes[1], where)
        for a in wi.axes[2:]:
            self.s.fix(a)
        axes = list(xi.axes[:cdim]) + [wi.axes[0]] + [self.s.var(n, True) for n in out.shape[cdim + 1:]]
        in_nodes = self.nodes_along(x, xi, cdim, name)
        res = self.site_on(out, TInfo(axes), [cdim], "conv")
        out_nodes = res.uid.movedim(cdim, 0).reshape(out.shape[cdim], -1)[:, 0].tolist()
        self.place_edges(key, "conv", 0, 1, out_nodes, in_nodes)
        bkey = None
        if b is not None:
            bi = self.get(b)
            self.s.unify(bi.axes[0], wi.axes[0], where)
            bkey = self.param_key(bi, name)
            self.place_nodes(bkey, torch.tensor(out_nodes), name)
        return [self.activation_site(res, name, cdim, wi.axes[0], key, 0, bkey)]

    def op_conv1d(self, *a):
        return self._conv(*a, nd=1)

    def op_conv2d(self, *a):
        return self._conv(*a, nd=2)

    def _norm(self, name, x, feat_axes: list[int], params: list[torch.Tensor | None], out) -> list[TInfo]:
        """Normalisation over ``feat_axes``; ``params`` starts with the per-unit weight and bias (either may be None)."""
        xi = self.get(x)
        where = self.where(name)
        for p in params:
            if p is None:
                continue
            pi = self.get(p)
            for k, a in enumerate(feat_axes):
                self.s.unify(pi.axes[k], xi.axes[a], where)
        if xi.uid is None or bool((xi.uid < 0).all()):
            self.nodes_along(x, xi, feat_axes[0], name) if len(feat_axes) == 1 else None
        res = self.site_on(out, TInfo(list(xi.axes)), feat_axes, "norm")
        if xi.uid is not None:
            self.link("norm", xi.uid, res.uid)
        sl = [slice(None)] * x.dim()
        for d in range(x.dim()):
            if d not in feat_axes:
                sl[d] = 0
        nodes = res.uid[tuple(sl)]
        keys = []
        for p in params:
            key = None if p is None else self.param_key(self.get(p), name)
            keys.append(key)
            if key is not None:
                self.place_nodes(key, nodes, name)
        if len(feat_axes) == 1:
            weight, bias = (keys + [None, None])[:2]
            self.activation_site(res, name, feat_axes[0], xi.axes[feat_axes[0]], weight,
                                 None if weight is None else 0, bias)
        return [res]

    def op_batch_norm(self, name, func, args, kwargs, out):
        names = ["input", "running_mean", "running_var", "weight", "bias"]
        a = dict(zip(names, args))
        a.update({k: v for k, v in kwargs.items() if k in names})
        return self._norm(name, a["input"], [1], [a.get("weight"), a.get("bias"), a.get("running_mean"),
                                                    a.get("running_var")], out)

    def op_layer_norm(self, name, func, args, kwargs, out):
        names = ["input", "normalized_shape", "weight", "bias"]
        a = dict(zip(names, args))
        a.update({k: v for k, v in kwargs.items() if k in names})
        x = a["input"]
        n = len(a["normalized_shape"])
        return self._norm(name, x, list(range(x.dim() - n, x.dim())), [a.get("weight"), a.get("bias")], out)

    def op_rms_norm(self, name, func, args, kwargs, out):
        x, shape = args[0], args[1]
        w = kwargs.get("weight", args[2] if len(args) > 2 else None)
        return self._norm(name, x, list(range(x.dim() - len(shape), x.dim())), [w, None], out)

    def op_embedding(self, name, func, args, kwargs, out):
        idx, w = args[0], args[1]
        ii, wi = self.get(idx), self.get(w)
        key = self.param_key(wi, name)
        if key is None:
            raise self.fail(name, "the table is not a parameter of the model")
        self.s.fix(wi.axes[0])
        axes = list(ii.axes) + [wi.axes[1]]
        table = self.new_site("embedding_index", wi.axes[0])
        res = self.site_on(out, TInfo(axes), [out.dim() - 1], "embedding")
        out_nodes = res.uid.movedim(-1, 0).reshape(out.shape[-1], -1)[:, 0].tolist()
        self.place_edges(key, "embedding", 1, 0, out_nodes, table)
        return [self.activation_site(res, name, out.dim() - 1, wi.axes[1], key, 1)]


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
    tracer = _Tracer(model)
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
        tensor_leaves=list(leafsets), activation_sites=tracer.act_sites)


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
