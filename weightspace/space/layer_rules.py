"""Rules for operations with weights: linear maps, attention, convolutions, normalisation, embeddings.

Each places its parameters in the neural graph (weights as edges, per-unit parameters as node
features), creates the node set of its output units, and records the output as an
:class:`~weightspace.space.records.ActivationSite`.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from einops import rearrange

from .axes import Cat, Desc, Prod
from .dispatch import Call, TInfo, Tracer
from .records import Link
from .vocabulary import EdgeKind, NodeKind


def _last_axis_nodes(uid: torch.Tensor) -> list[int]:
    """Node of each index along the last axis of a unit-id tensor laid out along it."""
    return rearrange(uid, "... u -> u (...)")[:, 0].tolist()


# ------------------------------------------------------------------ linear maps
def linear(tr: Tracer, c: Call) -> list[TInfo]:
    return _affine(tr, c.name, c.arg(0, "input"), c.arg(1, "weight"), c.arg(2, "bias"), c.out, w_out_axis=0)


def _affine(tr: Tracer, name: str, x, w, b, out, w_out_axis: int) -> list[TInfo]:
    xi, wi = tr.get(x), tr.get(w)
    key = tr.param_key(wi, name, want_identity=False)
    if key is None:
        raise tr.fail(name, "the weight is not a parameter of the model")
    dims = wi.param[1]
    w_in_axis = 1 - w_out_axis
    tr.s.unify(xi.axes[-1], wi.axes[w_in_axis], tr.where(name))
    axes = list(xi.axes[:-1]) + [wi.axes[w_out_axis]]
    in_nodes = tr.nodes_along(x, xi, -1, name)
    res = tr.site_on(out, TInfo(axes), [out.dim() - 1], NodeKind.LINEAR)
    out_nodes = _last_axis_nodes(res.uid)
    tr.place_edges(key, EdgeKind.LINEAR, dims[w_out_axis], dims[w_in_axis], out_nodes, in_nodes)
    bkey = None
    if b is not None:
        bi = tr.get(b)
        bkey = tr.param_key(bi, name)
        tr.s.unify(bi.axes[0], wi.axes[w_out_axis], tr.where(name))
        tr.place_nodes(bkey, torch.tensor(out_nodes), name)
    return [tr.activation_site(res, name, out.dim() - 1, wi.axes[w_out_axis], key, dims[w_out_axis], bkey)]


def bias_add_site(tr: Tracer, c: Call, acts, params, out: torch.Tensor, uid: torch.Tensor | None) -> int | None:
    """``h = x @ W; h + b``: the sum becomes the activation site of ``h``'s units, with ``b`` as its bias."""
    if c.name not in {"add", "radd", "iadd"} or len(acts) != 1 or len(params) != 1:
        return None
    (h, hi), (b, bi) = acts[0], params[0]
    if hi.site is None or h.shape != out.shape or uid is None or hi.uid is None or not torch.equal(uid, hi.uid):
        return None
    old = tr.act_sites[hi.site]
    if old.bias is not None or b.dim() == 0 or bi.param[1] != tuple(range(b.dim())):
        return None
    lead = out.dim() - b.dim()
    if [d + lead for d, n in enumerate(b.shape) if n != 1] != [old.dim] or b.shape[old.dim - lead] != out.shape[old.dim]:
        return None
    tr.act_sites[hi.site] = replace(old, call=tr.call, op=c.name, module=tr.stack[-1][0], bias=bi.param[0])
    return hi.site


def matmul(tr: Tracer, c: Call) -> list[TInfo]:
    """``activation @ weight`` is a linear layer; ``activation @ activation`` contracts two unit axes (attention)."""
    a, b = c.args[0], c.arg(1, "other")
    if c.name == "rmatmul":
        a, b = b, a
    name, out = c.name, c.out
    ai, bi = tr.get(a), tr.get(b)
    if bi.param is not None and b.dim() == 2 and ai.param is None:
        return _affine(tr, name, a, b, None, out, w_out_axis=1)
    if ai.param is not None or bi.param is not None or a.dim() < 2 or b.dim() < 2:
        raise tr.fail(name, "only activation @ activation and activation @ weight matrix are supported")
    tr.s.unify(ai.axes[-1], bi.axes[-2], tr.where(name))
    nb = out.dim() - 2
    batch: list[Desc] = []
    for d in range(nb):
        cands = []
        for t, i in ((a, ai), (b, bi)):
            k = d - (nb - (t.dim() - 2))
            if k >= 0 and t.shape[k] == out.shape[d]:
                cands.append(i.axes[k])
        for other in cands[1:]:
            tr.s.unify(cands[0], other, tr.where(name))
        batch.append(cands[0] if cands else tr.s.var(out.shape[d], True))
    axes = batch + [ai.axes[-2], bi.axes[-1]]
    ua, ub = ai.uid, bi.uid
    if ua is not None and ub is not None:
        tr.link(EdgeKind.ATTN_QK, ua.select(-2, 0), ub.select(-1, 0))
        return [TInfo(axes, None, False)]
    if ub is not None and bool((ub >= 0).any()):
        if not bool((ub == ub.narrow(-2, 0, 1)).all()):
            raise tr.fail(name, "units on both contracted and kept axes are not supported")
        return [_attend(tr, out, axes, ub)]
    if ua is not None and bool((ua >= 0).any()):
        raise tr.fail(name, "units on the left operand's rows are not supported")
    return [TInfo(axes, None, False)]


# ------------------------------------------------------------------ attention
def _attend(tr: Tracer, out: torch.Tensor, axes: list[Desc], v_uid: torch.Tensor) -> TInfo:
    """Context vectors: a new node set over v's units, linked one-to-one to them."""
    vu = v_uid.narrow(-2, 0, 1)
    nd = out.dim()
    vu = vu.reshape([1] * (nd - vu.dim()) + list(vu.shape))
    feat = [d for d in range(nd) if d != nd - 2 and vu.shape[d] > 1 and bool((vu != vu.narrow(d, 0, 1)).any())]
    res = tr.site_on(out, TInfo(axes), feat, NodeKind.ATTENTION)
    tr.link(EdgeKind.ATTN_V, vu.expand(out.shape), res.uid)
    return res


def scaled_dot_product_attention(tr: Tracer, c: Call) -> list[TInfo]:
    q, k, v = c.arg(0, "query"), c.arg(1, "key"), c.arg(2, "value")
    name, out = c.name, c.out
    qi, ki, vi = tr.get(q), tr.get(k), tr.get(v)
    if c.kwargs.get("enable_gqa"):
        raise tr.fail(name, "grouped-query attention is not supported")
    w = tr.where(name)
    tr.s.unify(qi.axes[-1], ki.axes[-1], w)
    tr.s.unify(ki.axes[-2], vi.axes[-2], w)
    nd = out.dim()
    for d in range(nd - 2):
        tr.s.unify(qi.axes[d], ki.axes[d], w)
        tr.s.unify(qi.axes[d], vi.axes[d], w)
    axes = list(qi.axes[:-1]) + [vi.axes[-1]]
    if qi.uid is not None and ki.uid is not None:
        tr.link(EdgeKind.ATTN_QK, qi.uid.select(-2, 0), ki.uid.select(-2, 0))
    if vi.uid is None:
        return [TInfo(axes, None, False)]
    return [_attend(tr, out, axes, vi.uid)]


MHA_ARGS = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
            "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
            "key_padding_mask", "need_weights", "attn_mask")


def multi_head_attention_forward(tr: Tracer, c: Call) -> list[TInfo]:
    """``nn.MultiheadAttention`` with packed in-projections: heads are blocks, q/k share within-head units."""
    name, out = c.name, c.out
    a = dict(zip(MHA_ARGS, c.args))
    a.update(c.kwargs)
    q, k, v = a["query"], a["key"], a["value"]
    if a.get("use_separate_proj_weight") or a.get("bias_k") is not None or a.get("add_zero_attn"):
        raise tr.fail(name, "only packed in-projections without bias_k/bias_v/add_zero_attn are supported")
    if not (q is k and k is v) and q.dim() == 3:
        qi0 = tr.get(q)
        if not all(t is q or (tr.get(t).uid is not None and qi0.uid is not None and
                              torch.equal(tr.get(t).uid, qi0.uid)) for t in (k, v)):
            raise tr.fail(name, "only self-attention (query, key and value from one tensor) is supported")
    if q.dim() != 3:
        raise tr.fail(name, "unbatched attention inputs are not supported")
    heads = int(a["num_heads"])
    qi = tr.get(q)
    wi, ow = tr.get(a["in_proj_weight"]), tr.get(a["out_proj_weight"])
    wkey, okey = tr.param_key(wi, name), tr.param_key(ow, name)
    e = q.shape[-1]
    s, where = tr.s, tr.where(name)
    h, dqk, dv = s.var(heads), s.var(e // heads), s.var(e // heads)
    qd, kd, vd = Prod((h, dqk)), Prod((h, dqk)), Prod((h, dv))
    s.unify(wi.axes[0], Cat((qd, kd, vd)), where)
    s.unify(wi.axes[1], qi.axes[-1], where)
    s.unify(ow.axes[1], vd, where)
    in_nodes = tr.nodes_along(q, qi, -1, name)
    qkv = tr.new_site(NodeKind.ATTENTION_QKV, wi.axes[0])
    tr.place_edges(wkey, EdgeKind.ATTN_IN, 0, 1, qkv, in_nodes)
    if a.get("in_proj_bias") is not None:
        bi = tr.get(a["in_proj_bias"])
        s.unify(bi.axes[0], wi.axes[0], where)
        tr.place_nodes(tr.param_key(bi, name), torch.tensor(qkv), name)
    ctx = tr.new_site(NodeKind.ATTENTION, vd)
    tr.links.append(Link(EdgeKind.ATTN_QK.value, qkv[:e], qkv[e:2 * e]))
    tr.links.append(Link(EdgeKind.ATTN_V.value, qkv[2 * e:], ctx))
    o = out[0]
    axes = list(qi.axes[:-1]) + [ow.axes[0]]
    res = tr.site_on(o, TInfo(axes), [o.dim() - 1], NodeKind.LINEAR)
    out_nodes = _last_axis_nodes(res.uid)
    tr.place_edges(okey, EdgeKind.ATTN_OUT, 0, 1, out_nodes, ctx)
    obkey = None
    if a.get("out_proj_bias") is not None:
        bi = tr.get(a["out_proj_bias"])
        s.unify(bi.axes[0], ow.axes[0], where)
        obkey = tr.param_key(bi, name)
        tr.place_nodes(obkey, torch.tensor(out_nodes), name)
    results = [tr.activation_site(res, name, o.dim() - 1, ow.axes[0], okey, 0, obkey)]
    if isinstance(out, tuple) and isinstance(out[1], torch.Tensor):
        results.append(TInfo(tr.fresh(out[1]), None, False))
    return results


# ------------------------------------------------------------------ convolutions
def conv(tr: Tracer, c: Call) -> list[TInfo]:
    """conv1d/conv2d: channels are units, kernel and spatial axes are fixed features."""
    nd = int(c.name[-2])
    x, w, b = c.arg(0, "input"), c.arg(1, "weight"), c.arg(2, "bias")
    name, out = c.name, c.out
    groups = c.arg(6, "groups", 1)
    if groups != 1:
        raise tr.fail(name, f"grouped convolutions (groups={groups}) are not supported")
    xi, wi = tr.get(x), tr.get(w)
    key = tr.param_key(wi, name)
    if key is None:
        raise tr.fail(name, "the kernel is not a parameter of the model")
    where = tr.where(name)
    cdim = x.dim() - nd - 1
    tr.s.unify(xi.axes[cdim], wi.axes[1], where)
    for a in wi.axes[2:]:
        tr.s.fix(a)
    axes = list(xi.axes[:cdim]) + [wi.axes[0]] + [tr.s.var(n, True) for n in out.shape[cdim + 1:]]
    in_nodes = tr.nodes_along(x, xi, cdim, name)
    res = tr.site_on(out, TInfo(axes), [cdim], NodeKind.CONV)
    out_nodes = res.uid.movedim(cdim, 0).reshape(out.shape[cdim], -1)[:, 0].tolist()
    tr.place_edges(key, EdgeKind.CONV, 0, 1, out_nodes, in_nodes)
    bkey = None
    if b is not None:
        bi = tr.get(b)
        tr.s.unify(bi.axes[0], wi.axes[0], where)
        bkey = tr.param_key(bi, name)
        tr.place_nodes(bkey, torch.tensor(out_nodes), name)
    return [tr.activation_site(res, name, cdim, wi.axes[0], key, 0, bkey)]


# ------------------------------------------------------------------ normalisation
def _norm(tr: Tracer, name: str, x, feat_axes: list[int], params: list, out) -> list[TInfo]:
    """Normalisation over ``feat_axes``; ``params`` starts with the per-unit weight and bias (either may be None)."""
    xi = tr.get(x)
    where = tr.where(name)
    for p in params:
        if p is None:
            continue
        pi = tr.get(p)
        for k, a in enumerate(feat_axes):
            tr.s.unify(pi.axes[k], xi.axes[a], where)
    if (xi.uid is None or bool((xi.uid < 0).all())) and len(feat_axes) == 1:
        tr.nodes_along(x, xi, feat_axes[0], name)
    res = tr.site_on(out, TInfo(list(xi.axes)), feat_axes, NodeKind.NORM)
    if xi.uid is not None:
        tr.link(EdgeKind.NORM, xi.uid, res.uid)
    sl = [slice(None)] * x.dim()
    for d in range(x.dim()):
        if d not in feat_axes:
            sl[d] = 0
    nodes = res.uid[tuple(sl)]
    keys = []
    for p in params:
        key = None if p is None else tr.param_key(tr.get(p), name)
        keys.append(key)
        if key is not None:
            tr.place_nodes(key, nodes, name)
    if len(feat_axes) == 1:
        weight, bias = (keys + [None, None])[:2]
        tr.activation_site(res, name, feat_axes[0], xi.axes[feat_axes[0]], weight, None if weight is None else 0, bias)
    return [res]


def batch_norm(tr: Tracer, c: Call) -> list[TInfo]:
    return _norm(tr, c.name, c.arg(0, "input"), [1], [c.arg(3, "weight"), c.arg(4, "bias"),
                                                     c.arg(1, "running_mean"), c.arg(2, "running_var")], c.out)


def instance_norm(tr: Tracer, c: Call) -> list[TInfo]:
    return batch_norm(tr, c)


def group_norm(tr: Tracer, c: Call) -> list[TInfo]:
    """Channels in ``num_groups`` blocks: blocks permute as wholes, channels within a block per block."""
    x, groups = c.arg(0, "input"), int(c.arg(1, "num_groups"))
    channels = x.shape[1]
    if 1 < groups < channels:
        tr.s.split(tr.get(x).axes[1], [groups, channels // groups], tr.where(c.name))
    return _norm(tr, c.name, x, [1], [c.arg(2, "weight"), c.arg(3, "bias")], c.out)


def layer_norm(tr: Tracer, c: Call) -> list[TInfo]:
    x, n = c.arg(0, "input"), len(c.arg(1, "normalized_shape"))
    return _norm(tr, c.name, x, list(range(x.dim() - n, x.dim())), [c.arg(2, "weight"), c.arg(3, "bias")], c.out)


def rms_norm(tr: Tracer, c: Call) -> list[TInfo]:
    x, n = c.arg(0, "input"), len(c.arg(1, "normalized_shape"))
    return _norm(tr, c.name, x, list(range(x.dim() - n, x.dim())), [c.arg(2, "weight"), None], c.out)


# ------------------------------------------------------------------ embeddings
def embedding(tr: Tracer, c: Call) -> list[TInfo]:
    """A table lookup: table rows (tokens, positions) are fixed, the embedding axis carries units."""
    idx, w, out = c.arg(0, "input"), c.arg(1, "weight"), c.out
    ii, wi = tr.get(idx), tr.get(w)
    key = tr.param_key(wi, c.name)
    if key is None:
        raise tr.fail(c.name, "the table is not a parameter of the model")
    tr.s.fix(wi.axes[0])
    axes = list(ii.axes) + [wi.axes[1]]
    table = tr.new_site(NodeKind.EMBEDDING_INDEX, wi.axes[0])
    res = tr.site_on(out, TInfo(axes), [out.dim() - 1], NodeKind.EMBEDDING)
    out_nodes = _last_axis_nodes(res.uid)
    tr.place_edges(key, EdgeKind.EMBEDDING, 1, 0, out_nodes, table)
    return [tr.activation_site(res, c.name, out.dim() - 1, wi.axes[1], key, 1)]
