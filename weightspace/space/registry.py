"""The op registry: every operation weightspace tracing understands, with the rule that describes it.

Each :class:`OpRule` declares which arguments may hold tensors and in which role. When the
tracer meets a call, it looks the operation up by name (``torch.add``, ``Tensor.add``,
``Tensor.add_`` and ``Tensor.__add__`` are all ``add``). An operation without a rule, or a
tensor passed in an argument its rule does not declare, raises
:class:`~weightspace.errors.UnsupportedOperation` naming the module and the operation: a model
is refused rather than described wrongly. Operations whose tensor inputs are all constants (not
derived from the model's input or parameters) need no rule.

:func:`supported_ops` lists the registry, so it doubles as the documentation of what tracing
supports.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten

from . import layer_rules as L
from . import shape_rules as S

ROLES = {
    "input": "the activation the operation acts on",
    "elementwise": "combined elementwise with the other operands, with broadcasting: axes that meet are unified",
    "weight": "a parameter holding the layer's weights",
    "bias": "a per-unit parameter added to the output",
    "param": "another per-unit parameter (norm statistics, projection biases)",
    "parts": "a sequence of tensors joined along an axis",
    "index": "integer indices into another axis (token ids, gather indices); that axis is fixed",
    "mask": "an attention mask; its axes are fixed",
    "meta": "only its shape, dtype or device is read",
}


@dataclass(frozen=True)
class Operand:
    """An argument that may hold a tensor: its keyword ``name``, its position (if positional) and its role."""

    name: str
    pos: int | None
    role: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown operand role {self.role!r}")


@dataclass(frozen=True)
class OpRule:
    """How tracing treats one operation. ``apply`` is None for queries (``size``, ``dim``...) that change nothing."""

    name: str
    category: str
    apply: Callable[..., list] | None
    operands: tuple[Operand, ...]
    doc: str

    def _value(self, op: Operand, args: tuple, kwargs: dict) -> Any:
        if op.name in kwargs:
            return kwargs[op.name]
        return args[op.pos] if op.pos is not None and op.pos < len(args) else None

    def unexpected_operand(self, args: tuple, kwargs: dict) -> str | None:
        """Where a tensor was passed that this rule does not declare (``"argument 2"``, ``"keyword 'min'"``), or None."""
        by_pos = {op.pos: op for op in self.operands if op.pos is not None}
        by_name = {op.name: op for op in self.operands}

        def bad(op: Operand | None, value: Any) -> bool:
            tensors = [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]
            if not tensors:
                return False
            if op is None:
                return True
            return not (isinstance(value, torch.Tensor) or op.role in ("parts", "index"))

        for i, a in enumerate(args):
            if bad(by_pos.get(i), a):
                op = by_pos.get(i)
                return f"argument {i}" + (f" ('{op.name}')" if op else "")
        for k, v in kwargs.items():
            if bad(by_name.get(k), v):
                return f"keyword '{k}'"
        return None

    def tensors(self, call: Any, *roles: str) -> list[torch.Tensor]:
        """The tensors passed in operands of the given roles, in declaration order."""
        out = []
        for op in self.operands:
            if op.role in roles:
                v = self._value(op, call.args, call.kwargs)
                out.extend(t for t in tree_flatten(v)[0] if isinstance(t, torch.Tensor))
        return out


RULES: dict[str, OpRule] = {}


def _spec(spec: str) -> tuple[Operand, ...]:
    """``"input ~dim other:elementwise *out"``: positional names in order (role after ``:``, default
    ``input``); ``~name`` is a positional argument that never holds a tensor; ``*name`` is keyword-only."""
    ops, pos = [], 0
    for word in spec.split():
        name, _, role = word.partition(":")
        if name.startswith("~"):
            pos += 1
        elif name.startswith("*"):
            ops.append(Operand(name[1:], None, role or "input"))
        else:
            ops.append(Operand(name, pos, role or "input"))
            pos += 1
    return tuple(ops)


def register(names: str, category: str, apply: Callable[..., list] | None, spec: str, doc: str) -> None:
    """Add a rule for each name in ``names`` (space-separated)."""
    operands = _spec(spec)
    for name in names.split():
        if name in RULES:
            raise ValueError(f"operation '{name}' registered twice")
        RULES[name] = OpRule(name, category, apply, operands, doc)


def supported_ops() -> dict[str, OpRule]:
    """Every operation tracing supports, by name (sorted), with its category, operands and description."""
    return dict(sorted(RULES.items()))


# ------------------------------------------------------------------ elementwise
register("to float half double bfloat16 type contiguous clone detach data cpu cuda", "cast", S.cast,
         "input other:meta", "Same values in another dtype, device or layout; parameters stay parameters.")
register("type_as", "cast", S.cast, "input other:meta", "Cast to another tensor's dtype.")
register(
    "relu relu6 gelu silu tanh sigmoid elu selu celu leaky_relu hardtanh mish softplus softsign hardswish "
    "hardsigmoid hardshrink softshrink tanhshrink threshold logsigmoid",
    "activation", S.activation, "input",
    "Nonlinearity of one tensor: units are kept, and the units it acts on are recorded with it "
    "(WeightSpace.nonlinearities; part of the fingerprint).")
register(
    "exp exp2 expm1 log log1p log2 log10 neg "
    "negative abs sqrt rsqrt square sin cos tan asin acos atan sinh cosh asinh acosh atanh erf erfc reciprocal "
    "sign sgn ceil floor round trunc frac nan_to_num logit positive pos real identity isnan isinf isfinite "
    "logical_not",
    "elementwise", S.elementwise, "input", "Elementwise function of one tensor: units are kept.")
register("dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout", "elementwise",
         S.elementwise, "input", "Dropout (the identity when traced in eval mode).")
register("softmax log_softmax softmin normalize", "elementwise", S.elementwise, "input",
         "Normalisation along an axis: it commutes with permutations of that axis, so units are kept.")
register(
    "add sub subtract mul multiply div divide true_divide truediv floor_divide floordiv remainder fmod mod "
    "maximum minimum fmax fmin atan2 arctan2 hypot copysign logaddexp logaddexp2 xlogy eq ne lt le gt ge "
    "logical_and logical_or logical_xor radd rsub rmul rdiv rtruediv rfloordiv rmod iadd isub imul idiv "
    "itruediv",
    "elementwise", S.elementwise, "input:elementwise other:elementwise",
    "Elementwise in both operands, with broadcasting: axes that meet in the output are unified.")
register("pow float_power", "elementwise", S.elementwise, "input:elementwise exponent:elementwise",
         "Elementwise power; a tensor exponent is unified with the base like any elementwise operand.")
register("rpow ipow", "elementwise", S.elementwise, "input:elementwise other:elementwise",
         "Elementwise power (reflected or in place).")
register("clamp clip", "elementwise", S.elementwise, "input:elementwise min:elementwise max:elementwise",
         "Elementwise clamp; tensor bounds are unified with the input like any elementwise operand.")
register("clamp_min", "elementwise", S.elementwise, "input:elementwise min:elementwise", "Elementwise lower bound.")
register("clamp_max", "elementwise", S.elementwise, "input:elementwise max:elementwise", "Elementwise upper bound.")
register("where", "elementwise", S.elementwise, "condition:elementwise input:elementwise other:elementwise",
         "Elementwise selection; condition and both branches are unified.")
register("lerp", "elementwise", S.elementwise, "input:elementwise end:elementwise weight:elementwise",
         "Elementwise linear interpolation.")
register("addcmul addcdiv", "elementwise", S.elementwise,
         "input:elementwise tensor1:elementwise tensor2:elementwise", "input + value * tensor1 (*|/) tensor2.")
register("masked_fill", "elementwise", S.elementwise, "input:elementwise mask:elementwise value:elementwise",
         "Elementwise fill where a mask holds.")
register("max min", "elementwise", S.max_min, "input other:elementwise",
         "With a tensor second operand, elementwise (as maximum/minimum); otherwise a reduction, whose "
         "reduced axis is fixed when it also returns positions.")
register("zeros_like ones_like full_like empty_like rand_like randn_like new_zeros new_ones new_full new_empty",
         "constant", S.constant_like, "input:meta", "A new tensor whose values do not depend on the input's.")

# ------------------------------------------------------------------ reductions and axis-wise operations
register("sum mean nansum nanmean var std amax amin logsumexp prod all any", "reduce", S.reduce, "input",
         "Reduction over `dim` (all axes by default); symmetric in the reduced units, which stay interchangeable.")
register("argmax argmin median nanmedian mode", "reduce", S.reduce, "input",
         "Reduction that returns positions: the reduced axis is fixed.")
register("norm", "reduce", partial(S.reduce, dim_pos=2), "input", "Vector norm over `dim`.")
register("kthvalue", "reduce", partial(S.reduce, dim_pos=2), "input",
         "k-th smallest value along `dim`, with its position: that axis is fixed.")
register("flip fliplr flipud roll", "reindex", S.reindex, "input",
         "A fixed reordering along some axes: those axes are fixed, and the graph follows the reordering.")
register("cumsum cumprod cummax cummin logcumsumexp", "ordered", S.ordered, "input",
         "Scan along `dim`: fixed; refused along an axis that carries a layer's units.")
register("sort argsort", "ordered", partial(S.ordered, default_dim=-1), "input",
         "Sort along `dim`: fixed; refused along an axis that carries a layer's units.")
register("msort", "ordered", partial(S.ordered, default_dim=0), "input", "Sort along the first axis.")
register("topk", "ordered", partial(S.ordered, dim_pos=2, default_dim=-1), "input",
         "Largest k along `dim`: fixed; refused along an axis that carries a layer's units.")

# ------------------------------------------------------------------ shapes
register("getitem", "index", S.getitem, "input index:index",
         "Indexing: whole slices keep axes; partial slices and integers fix the axis; tensor indices fix all.")
register("select", "index", S.select, "input", "One index along an axis: that axis is fixed.")
register("narrow", "index", S.narrow, "input", "A range along an axis: that axis is fixed (unless whole).")
register("view reshape flatten unflatten squeeze unsqueeze ravel", "reshape", S.reshape, "input",
         "Reshape: merged axes become products of groups, split axes refine into products.")
register("view_as reshape_as", "reshape", S.reshape, "input other:meta", "Reshape to another tensor's shape.")
register("transpose permute t T mT movedim moveaxis swapaxes swapdims", "move", S.move, "input",
         "Axis reordering: descriptors move with their axes.")
register("expand broadcast_to", "reshape", S.expand, "input", "Broadcasting: new or expanded axes are fixed.")
register("expand_as", "reshape", S.expand, "input other:meta", "Broadcast to another tensor's shape.")
register("split chunk split_with_sizes tensor_split", "split", S.split, "input",
         "Split along `dim`: the axis becomes a concatenation of parts, each permutable on its own.")
register("unbind", "split", S.unbind, "input", "Slices along `dim`: that axis is fixed.")
register("cat concat concatenate", "join", S.cat, "tensors:parts",
         "Concatenation: the joined axis is a concatenation of the parts' groups; other axes are unified.")
register("stack", "join", S.stack, "tensors:parts", "Stacking: a new fixed axis; the parts' axes are unified.")
register("max_pool1d max_pool2d avg_pool1d avg_pool2d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_max_pool1d "
         "adaptive_max_pool2d max_pool2d_with_indices max_pool1d_with_indices lp_pool1d lp_pool2d", "pool", S.pool,
         "input", "Spatial pooling: channels keep their units; spatial axes are fixed.")

# ------------------------------------------------------------------ layers
register("linear", "layer", L.linear, "input weight:weight bias:bias",
         "Linear map: the weight's input axis is unified with the input's last axis; its output axis gives the "
         "output units.")
register("matmul mm bmm rmatmul", "layer", L.matmul, "input other:input",
         "activation @ weight matrix is a linear layer; activation @ activation contracts two unit axes "
         "(attention scores and contexts).")
register("scaled_dot_product_attention", "layer", L.scaled_dot_product_attention,
         "query key value attn_mask:mask", "Attention over heads: q/k share units, contexts follow v.")
register("multi_head_attention_forward", "layer", L.multi_head_attention_forward,
         "query key value ~embed_dim_to_check ~num_heads in_proj_weight:weight in_proj_bias:bias bias_k:param "
         "bias_v:param ~add_zero_attn ~dropout_p out_proj_weight:weight out_proj_bias:bias ~training "
         "key_padding_mask:mask ~need_weights attn_mask:mask",
         "nn.MultiheadAttention with packed projections: heads are permutable blocks, units within a head permute "
         "per head.")
register("conv1d conv2d", "layer", L.conv, "input weight:weight bias:bias",
         "Convolution (groups=1): channels are units; kernel axes are fixed.")
register("batch_norm", "layer", L.batch_norm, "input running_mean:param running_var:param weight:weight bias:bias",
         "Batch normalisation: per-channel parameters and statistics move with the channels.")
register("instance_norm", "layer", L.instance_norm,
         "input running_mean:param running_var:param weight:weight bias:bias",
         "Instance normalisation: per-channel statistics and parameters move with the channels.")
register("group_norm", "layer", L.group_norm, "input ~num_groups weight:weight bias:bias",
         "Group normalisation: channel blocks permute as wholes, channels within a block permute per block.")
register("layer_norm", "layer", L.layer_norm, "input ~normalized_shape weight:weight bias:bias",
         "Layer normalisation over the last axes: per-unit parameters move with the units.")
register("rms_norm", "layer", L.rms_norm, "input ~normalized_shape weight:weight", "RMS normalisation.")
register("embedding", "layer", L.embedding, "input:index weight:weight",
         "Table lookup: table rows (tokens, positions) are fixed; the embedding axis carries units.")

# ------------------------------------------------------------------ queries
register("size dim numel is_floating_point is_complex ndimension nelement stride data_ptr is_contiguous "
         "element_size get_device item tolist equal len dtype device shape is_cuda requires_grad grad layout "
         "is_leaf ndim _set_grad_enabled is_nonzero numpy __float__ format bool index int names is_sparse "
         "is_quantized is_meta is_mps untyped_storage _is_view grad_fn output_nr _version is_nested has_names "
         "is_inference storage_offset", "query", None, "input",
         "Reads a property; nothing to describe.")
