"""Rules for operations that move, combine or reduce values without weights of their own.

Each rule takes the :class:`~weightspace.space.dispatch.Tracer` and the :class:`Call`, imposes
the equalities between axis descriptors that the operation implies, and returns the
:class:`TInfo` of each tensor output. An axis whose units the operation reorders or mixes in a
fixed order (slicing, flip, cumsum, sort...) is *fixed*: its units stop being interchangeable.
"""
from __future__ import annotations

from typing import Any

import torch

from .axes import Cat, Desc, Prod
from .dispatch import Call, TInfo, Tracer
from .layer_rules import bias_add_site
from .vocabulary import EdgeKind, NodeKind

ADDITIVE = {"add", "sub", "subtract", "iadd", "isub", "radd", "rsub"}


def _dims(value: Any, ndim: int, default: list[int] | None = None) -> list[int] | None:
    if value is None or isinstance(value, (bool, float, str)):
        return default
    return [int(d) % ndim for d in (value if isinstance(value, (tuple, list)) else [value])]


def _constant_along(uid: torch.Tensor | None, dim: int) -> bool:
    return uid is None or bool((uid == uid.narrow(dim, 0, 1)).all())


# ------------------------------------------------------------------ elementwise
def cast(tr: Tracer, c: Call) -> list[TInfo]:
    """Dtype/device/memory-layout changes and copies: the same values, the same units (parameters stay parameters)."""
    x = c.arg(0, "input")
    inf = tr.get(x)
    if not isinstance(c.out, torch.Tensor) or c.out.shape != x.shape:
        raise tr.fail(c.name, "expected a result of the input's shape")
    return [TInfo(inf.axes, inf.uid, False, inf.param)]


def activation(tr: Tracer, c: Call) -> list[TInfo]:
    """A nonlinearity of one tensor: elementwise, and the units it acts on are recorded as having it.

    The nonlinearity is part of what a unit computes, so it is part of the architecture: a ReLU and a
    tanh network of the same shapes are different weight spaces (different fingerprints).
    """
    x = c.arg(0, "input")
    inf = tr.get(x)
    if inf.uid is not None:
        tr.record_nonlinearity(c.name, inf.uid)
    return elementwise(tr, c)


def elementwise(tr: Tracer, c: Call) -> list[TInfo]:
    """Elementwise in all tensor operands, with broadcasting: axes that meet in the output index the same units."""
    operands = c.rule.tensors(c, "input", "elementwise")
    out = c.out
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(torch.broadcast_shapes(*[t.shape for t in operands])):
        raise tr.fail(c.name, "expected an elementwise result of the operands' broadcast shape")
    infs = [tr.get(t) for t in operands]
    nd = out.dim()
    axes: list[Desc] = []
    for d in range(nd):
        cands = [inf.axes[d - (nd - t.dim())] for t, inf in zip(operands, infs)
                 if d - (nd - t.dim()) >= 0 and t.shape[d - (nd - t.dim())] == out.shape[d]]
        if not cands:
            axes.append(tr.s.var(out.shape[d], True))
            continue
        for other in cands[1:]:
            tr.s.unify(cands[0], other, tr.where(c.name))
        axes.append(cands[0])
    acts = [(t, i) for t, i in zip(operands, infs) if i.param is None]
    params = [(t, i) for t, i in zip(operands, infs) if i.param is not None]
    carriers = [(t, i) for t, i in acts if i.uid is not None and bool((i.uid >= 0).any())]
    uid = None
    if len(carriers) == 1:
        uid = carriers[0][1].uid.expand(out.shape)
    elif len(carriers) > 1:
        us = torch.broadcast_tensors(*[i.uid for _, i in carriers])
        if all(torch.equal(us[0], u) for u in us[1:]):
            uid = us[0].expand(out.shape)
        else:
            feat = [d for d in range(nd) if any((u != u.narrow(d, 0, 1)).any() for u in
                                                [x.expand(out.shape) for x in us])]
            additive = c.name in ADDITIVE
            uid = tr.site_on(out, TInfo(axes), feat, NodeKind.RESIDUAL if additive else NodeKind.PRODUCT).uid
            for u in us:
                tr.link(EdgeKind.RESIDUAL if additive else EdgeKind.GATE, u.expand(out.shape), uid)
    if uid is not None:
        uid = uid.contiguous()
    site = bias_add_site(tr, c, acts, params, out, uid)
    for t, i in params:
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
        tr.place_nodes(i.param[0], pu, c.name)
    return [TInfo(axes, uid, False, site=site)]


def max_min(tr: Tracer, c: Call) -> list[TInfo]:
    """``torch.max(a, b)`` is elementwise; ``torch.max(a[, dim])`` is a reduction."""
    if isinstance(c.arg(1, "other"), torch.Tensor):
        return elementwise(tr, c)
    return reduce(tr, c)


# ------------------------------------------------------------------ reductions
INDEX_RESULTS = {"max", "min", "argmax", "argmin", "median", "nanmedian", "mode", "kthvalue"}


def reduce(tr: Tracer, c: Call, dim_pos: int = 1) -> list[TInfo]:
    """Reductions over ``dim`` (all axes by default). Sums and means are symmetric in the units they reduce,
    so those units stay interchangeable, unless the op also returns positions (argmax, max with dim...)."""
    x = c.arg(0, "input")
    inf = tr.get(x)
    results = c.outs
    dims = _dims(c.arg(dim_pos, "dim"), x.dim(), list(range(x.dim())))
    if c.name in ("argmax", "argmin") or c.name in INDEX_RESULTS and len(results) > 1:
        for d in dims:
            tr.s.fix(inf.axes[d])
    res0 = results[0]
    keep = res0.dim() == x.dim()
    axes = [tr.s.var(1) if d in dims else a for d, a in enumerate(inf.axes)]
    if not keep:
        axes = [a for d, a in enumerate(axes) if d not in dims]
    uid = None
    if inf.uid is not None and all(_constant_along(inf.uid, d) for d in dims):
        u = inf.uid
        for d in dims:
            u = u.narrow(d, 0, 1)
        uid = u if keep else u.reshape(res0.shape)
    return [TInfo(axes, uid, False)] + [TInfo(list(axes), None, False) for _ in results[1:]]


def pool(tr: Tracer, c: Call) -> list[TInfo]:
    """Spatial pooling: channels keep their units, spatial axes are fixed."""
    x = c.arg(0, "input")
    inf = tr.get(x)
    results = c.outs
    res0 = results[0]
    lead = x.dim() - (1 if "1d" in c.name else 2)
    axes = list(inf.axes[:lead]) + [tr.s.var(n, True) for n in res0.shape[lead:]]
    uid = None
    if inf.uid is not None:
        u = inf.uid
        for d in range(lead, x.dim()):
            u = u.narrow(d, 0, 1)
        if not torch.equal(inf.uid, u.expand_as(inf.uid)):
            raise tr.fail(c.name, "pooling across units is not supported")
        uid = u.expand(res0.shape).contiguous()
    return [TInfo(axes, uid, False)] + [TInfo(tr.fresh(r), None, False) for r in results[1:]]


# ------------------------------------------------------------------ along one axis
def reindex(tr: Tracer, c: Call) -> list[TInfo]:
    """flip/roll: a fixed re-indexing along some axes; those axes are fixed and the wiring follows exactly."""
    x = c.arg(0, "input")
    inf = tr.get(x)
    if c.name == "roll":
        dims = _dims(c.arg(2, "dims"), x.dim(), list(range(x.dim())))
    elif c.name == "fliplr":
        dims = [1]
    elif c.name == "flipud":
        dims = [0]
    else:
        dims = _dims(c.arg(1, "dims"), x.dim(), [])
    for d in dims:
        tr.s.fix(inf.axes[d])
    uid = None if inf.uid is None else c.func(inf.uid, *c.args[1:], **c.kwargs)
    return [TInfo(list(inf.axes), uid, False)]


def ordered(tr: Tracer, c: Call, dim_pos: int = 1, default_dim: int | None = None) -> list[TInfo]:
    """Scans and sorts (cumsum, sort, topk...) along ``dim``: order-dependent, so that axis is fixed.

    Along an axis that carries a layer's units the result mixes or reorders units in a way the
    neural graph cannot show, so it is refused.
    """
    x = c.arg(0, "input")
    inf = tr.get(x)
    dim = c.arg(dim_pos, "dim", default_dim)
    if dim is None:
        raise tr.fail(c.name, "an axis is required")
    dim = int(dim) % x.dim()
    if not _constant_along(inf.uid, dim):
        raise tr.fail(c.name, f"it reorders or mixes the units of a layer (axis {dim}); weightspace cannot "
                              f"describe the result")
    tr.s.fix(inf.axes[dim])
    out: list[TInfo] = []
    for o in c.outs:
        axes = list(inf.axes)
        if o.shape[dim] != x.shape[dim]:
            axes[dim] = tr.s.var(o.shape[dim], True)
        uid = None if inf.uid is None else inf.uid.narrow(dim, 0, 1).expand(o.shape).contiguous()
        out.append(TInfo(axes, uid, False))
    return out


def constant_like(tr: Tracer, c: Call) -> list[TInfo]:
    """zeros_like, new_ones...: values that do not depend on the input's values."""
    return [TInfo(tr.fresh(o), None, True) for o in c.outs]


# ------------------------------------------------------------------ indexing
def getitem(tr: Tracer, c: Call) -> list[TInfo]:
    """Basic indexing keeps whole axes; a partial slice or an integer fixes the axis; tensor indices fix all."""
    x, idx_arg = c.args[0], c.args[1]
    out = c.out
    inf = tr.get(x)
    idx = idx_arg if isinstance(idx_arg, tuple) else (idx_arg,)
    if any(isinstance(i, (torch.Tensor, list)) for i in idx):
        for a in inf.axes:
            tr.s.fix(a)
        uid = None if inf.uid is None else c.func(inf.uid, idx_arg)
        return [TInfo(tr.fresh(out), uid, False)]
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
            axes.append(tr.s.var(1))
            continue
        a, n = inf.axes[d], x.shape[d]
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            if (start, stop, step) == (0, n, 1):
                axes.append(a)
            else:
                tr.s.fix(a)
                axes.append(tr.s.var(len(range(start, stop, step)), True))
        else:
            tr.s.fix(a)
        d += 1
    uid = None if inf.uid is None else c.func(inf.uid, idx_arg)
    return [TInfo(axes, uid, False)]


def _index(tr: Tracer, c: Call, x: torch.Tensor, idx: tuple) -> list[TInfo]:
    return getitem(tr, Call("getitem", lambda u, i: u[i], (x, idx), {}, c.out, c.rule))


def select(tr: Tracer, c: Call) -> list[TInfo]:
    x = c.arg(0, "input")
    dim = c.arg(1, "dim") % x.dim()
    return _index(tr, c, x, tuple([slice(None)] * dim + [c.arg(2, "index")]))


def narrow(tr: Tracer, c: Call) -> list[TInfo]:
    x = c.arg(0, "input")
    dim, start, length = c.arg(1, "dim") % x.dim(), int(c.arg(2, "start")), int(c.arg(3, "length"))
    return _index(tr, c, x, tuple([slice(None)] * dim + [slice(start, start + length)]))


# ------------------------------------------------------------------ reshapes and moves
def reshape(tr: Tracer, c: Call) -> list[TInfo]:
    """view/reshape/flatten/...: merged axes become products, split axes refine into products."""
    x = c.args[0]
    inf = tr.get(x)
    axes = reshape_axes(tr, inf.axes, list(x.shape), list(c.out.shape), c.name)
    uid = None if inf.uid is None else inf.uid.reshape(c.out.shape)
    return [TInfo(axes, uid, False)]


def reshape_axes(tr: Tracer, axes: list[Desc], ins: list[int], outs: list[int], op: str) -> list[Desc]:
    res: list[Desc] = []
    i = j = 0
    while i < len(ins) or j < len(outs):
        if i < len(ins) and ins[i] == 1:
            i += 1
            continue
        if j < len(outs) and outs[j] == 1:
            res.append(tr.s.var(1))
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
            res.extend(tr.s.split(src, [outs[g] for g in gj], tr.where(op)))
    return res


def move(tr: Tracer, c: Call) -> list[TInfo]:
    """transpose/permute/movedim...: axes move with their descriptors (a parameter stays one, transposed)."""
    x = c.args[0]
    inf = tr.get(x)
    probe = torch.empty([k + 2 for k in range(x.dim())], device="meta")
    moved = c.func(probe, *c.args[1:], **c.kwargs)
    order = [n - 2 for n in moved.shape]
    uid = None if inf.uid is None else c.func(inf.uid, *c.args[1:], **c.kwargs)
    param = None
    if inf.param is not None:
        key, dims = inf.param
        param = (key, tuple(dims[o] for o in order))
    return [TInfo([inf.axes[o] for o in order], uid, False, param)]


def expand(tr: Tracer, c: Call) -> list[TInfo]:
    x, out = c.args[0], c.out
    inf = tr.get(x)
    lead = out.dim() - x.dim()
    axes = [tr.s.var(n, True) for n in out.shape[:lead]]
    for a, n_in, n_out in zip(inf.axes, x.shape, out.shape[lead:]):
        axes.append(a if n_in == n_out else tr.s.var(n_out, True))
    uid = None if inf.uid is None else inf.uid.expand(out.shape)
    return [TInfo(axes, uid, False)]


# ------------------------------------------------------------------ split and join
def split(tr: Tracer, c: Call) -> list[TInfo]:
    """split/chunk: the axis becomes a concatenation of parts, each of which may be permuted on its own."""
    x = c.args[0]
    inf = tr.get(x)
    dim = c.arg(2, "dim", 0) % x.dim()
    parts = tuple(tr.s.var(o.shape[dim], tr.s.is_fixed(inf.axes[dim])) for o in c.out)
    tr.s.unify(inf.axes[dim], Cat(parts), tr.where(c.name))
    uids = None if inf.uid is None else c.func(inf.uid, *c.args[1:], **c.kwargs)
    return [TInfo(inf.axes[:dim] + [p] + inf.axes[dim + 1:], None if uids is None else uids[k], False)
            for k, p in enumerate(parts)]


def unbind(tr: Tracer, c: Call) -> list[TInfo]:
    x = c.args[0]
    inf = tr.get(x)
    dim = c.arg(1, "dim", 0) % x.dim()
    tr.s.fix(inf.axes[dim])
    uids = None if inf.uid is None else c.func(inf.uid, *c.args[1:], **c.kwargs)
    return [TInfo(inf.axes[:dim] + inf.axes[dim + 1:], None if uids is None else uids[k], False)
            for k in range(len(c.out))]


def cat(tr: Tracer, c: Call) -> list[TInfo]:
    """Concatenation: the joined axis is a ``Cat`` of the parts' axes, the other axes are unified."""
    ts = list(c.arg(0, "tensors"))
    out = c.out
    dim = c.arg(1, "dim", 0) % out.dim()
    infs = [tr.get(t) for t in ts]
    for d in range(out.dim()):
        if d != dim:
            for other in infs[1:]:
                tr.s.unify(infs[0].axes[d], other.axes[d], tr.where(c.name))
    axes = list(infs[0].axes)
    axes[dim] = Cat(tuple(i.axes[dim] for i in infs))
    uid = None
    if any(i.uid is not None for i in infs):
        uid = torch.cat([tr.uid(t, i) for t, i in zip(ts, infs)], dim)
    return [TInfo(axes, uid, False)]


def stack(tr: Tracer, c: Call) -> list[TInfo]:
    ts = list(c.arg(0, "tensors"))
    out = c.out
    dim = c.arg(1, "dim", 0) % out.dim()
    infs = [tr.get(t) for t in ts]
    for other in infs[1:]:
        for a, b in zip(infs[0].axes, other.axes):
            tr.s.unify(a, b, tr.where(c.name))
    axes = list(infs[0].axes)
    axes.insert(dim, tr.s.var(len(ts), True))
    uid = None
    if any(i.uid is not None for i in infs):
        uid = torch.stack([tr.uid(t, i) for t, i in zip(ts, infs)], dim)
    return [TInfo(axes, uid, False)]
