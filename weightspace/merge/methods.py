"""Merging methods, one small function per method in a registry (in the style of mergekit).

Every method maps the tensors of one key across the input models to the merged tensor::

    fn(tensors, weights, base, *, key, **parameters) -> Tensor

``tensors`` are float32 copies, ``weights`` one float per model, ``base`` the base model's tensor
(or ``None``), ``key`` the state_dict key (methods with randomness seed from it, so that a
streaming merge equals an in-memory one). Per-model parameters (``density``) arrive as lists.

A method declares its parameters by its keyword-only arguments (with their defaults, which give
their types); a trailing underscore is dropped from the public name (``lambda_`` is ``lambda``).
:func:`check_parameters` refuses any other name, and values of the wrong type, before a merge runs.
"""
from __future__ import annotations

import hashlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from ..errors import MergeError
from ..utils import did_you_mean


MergeFn = Callable[..., Tensor]


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: MergeFn
    needs_base: bool = False
    min_models: int = 1
    max_models: int | None = None
    per_model: tuple[str, ...] = ("weight",)
    parameters: Mapping[str, Any] = field(default_factory=dict)
    """Public parameter name -> default value (its type is the expected type)."""

    def argument(self, name: str) -> str:
        """The keyword argument of :attr:`fn` that receives the public parameter ``name``."""
        return name + "_" if name + "_" in inspect.signature(self.fn).parameters else name


def _declared(fn: MergeFn) -> dict[str, Any]:
    sig = inspect.signature(fn)
    bad = [p.name for p in sig.parameters.values() if p.kind is p.VAR_KEYWORD]
    if bad:
        raise TypeError(f"merge method {fn.__name__} takes **{bad[0]}: declare each parameter as a keyword argument")
    return {p.name.rstrip("_"): p.default for p in sig.parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name != "key"}


METHODS: dict[str, MergeMethod] = {}


def register(name: str, *, needs_base: bool = False, min_models: int = 1, max_models: int | None = None,
             per_model: tuple[str, ...] = ("weight",)) -> Callable[[MergeFn], MergeFn]:
    """Decorator adding a merge function to :data:`METHODS` under ``name``; its keyword-only arguments
    (after ``key``) are the parameters it accepts, ``per_model`` those that may also be set per model."""
    def deco(fn: MergeFn) -> MergeFn:
        params = _declared(fn)
        missing = [p for p in per_model if p != "weight" and p not in params]
        if missing:
            raise TypeError(f"merge method {name}: per-model parameters {missing} are not keyword arguments of "
                            f"{fn.__name__}")
        METHODS[name] = MergeMethod(name, fn, needs_base, min_models, max_models, per_model, params)
        return fn
    return deco


def get_method(name: str) -> MergeMethod:
    if name not in METHODS:
        raise MergeError(f"unknown merge method {name!r}{did_you_mean(str(name), sorted(METHODS))}; choose one of "
                         f"{', '.join(sorted(METHODS))}")
    return METHODS[name]


def _check_value(where: str, value: Any, default: Any) -> None:
    """``value`` (a scalar, a per-model list for per-model parameters, or a list of ``{filter, value}``
    entries) must have the type of ``default``: bool for flags, a number for the rest."""
    if isinstance(value, (list, tuple)):
        for i, entry in enumerate(value):
            if isinstance(entry, Mapping):
                extra = set(entry) - {"filter", "value"}
                if extra or "value" not in entry:
                    raise MergeError(f"{where}[{i}]: a per-tensor entry is {{filter: regex, value: v}}, got "
                                     f"{dict(entry)}")
                _check_value(f"{where}[{i}].value", entry["value"], default)
            else:
                _check_value(f"{where}[{i}]", entry, default)
        return
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise MergeError(f"{where} must be true or false, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MergeError(f"{where} must be a number, got {value!r} ({type(value).__name__})")
    elif isinstance(default, int) and not isinstance(value, int):
        raise MergeError(f"{where} must be an integer, got {value!r}")
    elif not math.isfinite(float(value)):
        raise MergeError(f"{where} must be finite, got {value!r}")


def check_parameters(method: MergeMethod, parameters: Mapping[str, Any],
                     model_parameters: Sequence[Mapping[str, Any]]) -> None:
    """Refuse parameters ``method`` does not declare (suggesting the closest name) and values that are not
    numbers (or booleans for flags), naming the field at fault."""
    valid = {"weight": 1.0, **method.parameters}
    for name, value in parameters.items():
        if name not in valid:
            raise MergeError(f"merge method {method.name} has no parameter {name!r}{did_you_mean(name, list(valid))}; "
                             f"its parameters are {', '.join(sorted(valid))}")
        _check_value(f"parameters.{name}", value, valid[name])
    for i, mp in enumerate(model_parameters):
        if not isinstance(mp, Mapping):
            raise MergeError(f"models[{i}].parameters must be a mapping, got {mp!r}")
        for name, value in mp.items():
            if name not in method.per_model:
                raise MergeError(f"models[{i}].parameters: merge method {method.name} has no per-model parameter "
                                 f"{name!r}{did_you_mean(name, method.per_model)}; its per-model parameters are "
                                 f"{', '.join(method.per_model)}")
            _check_value(f"models[{i}].parameters.{name}", value, valid[name])


def _normalised(weights: Sequence[float], normalize: bool, what: str = "weights") -> list[float]:
    total = float(sum(weights))
    if normalize:
        if abs(total) < 1e-12:
            raise MergeError(f"merge {what} {list(weights)} sum to {total:g}; they cannot be normalised")
        return [w / total for w in weights]
    if abs(total - 1.0) > 1e-6:
        raise MergeError(f"merge {what} {list(weights)} sum to {total:g}, not 1, and normalize is off: "
                         "the merged weights would be rescaled; fix the weights or set normalize: true")
    return list(weights)


def _seed(key: str, seed: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{index}/{key}".encode()).digest()[:8], "little") & (2**63 - 1)


@register("linear")
def linear(tensors: Sequence[Tensor], weights: Sequence[float], base: Tensor | None = None, *, key: str = "",
           normalize: bool = True) -> Tensor:
    """Weighted average of the models (model soups; Wortsman et al. 2022)."""
    w = _normalised(weights, normalize)
    return sum(wi * t for wi, t in zip(w, tensors))


@register("slerp", min_models=2, max_models=2)
def slerp(tensors: Sequence[Tensor], weights: Sequence[float], base: Tensor | None = None, *, key: str = "",
          t: float = 0.5, eps: float = 1e-8) -> Tensor:
    """Spherical linear interpolation from model 0 (``t=0``) to model 1 (``t=1``), per tensor.

    Falls back to linear interpolation when the two tensors are (anti)parallel or zero.
    """
    a, b = tensors
    na, nb = a.norm(), b.norm()
    if na < eps or nb < eps:
        return torch.lerp(a, b, t)
    dot = float((a.flatten() @ b.flatten()) / (na * nb))
    dot = max(-1.0, min(1.0, dot))
    if abs(dot) > 0.9995:
        return torch.lerp(a, b, t)
    omega = math.acos(dot)
    so = math.sin(omega)
    return (math.sin((1 - t) * omega) / so) * a + (math.sin(t * omega) / so) * b


@register("task_arithmetic", needs_base=True)
def task_arithmetic(tensors: Sequence[Tensor], weights: Sequence[float], base: Tensor | None = None, *,
                    key: str = "", lambda_: float = 1.0, normalize: bool = False) -> Tensor:
    """``base + lambda * sum_i w_i (model_i - base)``: adding task vectors (Ilharco et al. 2023)."""
    lam = float(lambda_)
    w = _normalised(weights, True) if normalize else list(weights)
    assert base is not None
    return base + lam * sum(wi * (t - base) for wi, t in zip(w, tensors))


def _per_model(value, n: int) -> list[float]:
    if isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    return [float(value)] * n


def _trim(delta: Tensor, density: float) -> Tensor:
    if density >= 1:
        return delta
    k = int(math.ceil(density * delta.numel()))
    if k <= 0:
        return torch.zeros_like(delta)
    keep = torch.zeros(delta.numel(), dtype=torch.bool, device=delta.device)
    keep[torch.topk(delta.abs().flatten(), k, sorted=False).indices] = True
    return delta * keep.view(delta.shape)


def _sign_consensus(deltas: Sequence[Tensor], weights: Sequence[float], normalize: bool) -> Tensor:
    weighted = torch.stack([w * d for w, d in zip(weights, deltas)])
    sign = torch.sign(weighted.sum(0))
    agree = (torch.sign(torch.stack(list(deltas))) == sign) & (sign != 0)
    total = (weighted * agree).sum(0)
    if not normalize:
        return total
    wsum = (torch.tensor(list(weights), dtype=total.dtype).view(-1, *([1] * total.dim())) * agree).sum(0)
    nonzero = wsum.abs() > 1e-12
    return torch.where(nonzero, total / torch.where(nonzero, wsum, torch.ones_like(wsum)), torch.zeros_like(total))


@register("ties", needs_base=True, per_model=("weight", "density"))
def ties(tensors: Sequence[Tensor], weights: Sequence[float], base: Tensor | None = None, *, key: str = "",
         density: float = 0.2, lambda_: float = 1.0, normalize: bool = True) -> Tensor:
    """TIES-merging (Yadav et al. 2023): trim each task vector to its top-``density`` magnitudes,
    elect a sign per entry by weighted sum, then average the entries that agree with it."""
    assert base is not None
    lam = float(lambda_)
    dens = _per_model(density, len(tensors))
    deltas = [_trim(t - base, d) for t, d in zip(tensors, dens)]
    return base + lam * _sign_consensus(deltas, weights, normalize)


@register("dare", needs_base=True, per_model=("weight", "density"))
def dare(tensors: Sequence[Tensor], weights: Sequence[float], base: Tensor | None = None, *, key: str = "",
         density: float = 0.5, seed: int = 0, sign_consensus: bool = False, lambda_: float = 1.0,
         normalize: bool = False) -> Tensor:
    """DARE (Yu et al. 2024): drop each task-vector entry with probability ``1 - density`` and rescale
    the rest by ``1 / density``; then add them (task arithmetic) or, with ``sign_consensus``, merge
    them TIES-style. Randomness is seeded from ``seed``, the key and the model's index."""
    assert base is not None
    lam = float(lambda_)
    dens = _per_model(density, len(tensors))
    deltas = []
    for i, (t, d) in enumerate(zip(tensors, dens)):
        if not 0 < d <= 1:
            raise MergeError(f"dare density must be in (0, 1], got {d}")
        g = torch.Generator().manual_seed(_seed(key, int(seed), i))
        keep = torch.rand(t.shape, generator=g) < d
        deltas.append((t - base) * keep.to(t.device) / d)
    if sign_consensus:
        return base + lam * _sign_consensus(deltas, weights, True)
    w = _normalised(weights, True) if normalize else list(weights)
    return base + lam * sum(wi * dl for wi, dl in zip(w, deltas))


@register("model_stock", needs_base=True, min_models=2)
def model_stock(tensors: Sequence[Tensor], weights: Sequence[float], base: Tensor | None = None, *, key: str = "",
                eps: float = 1e-8) -> Tensor:
    """Model Stock (Jang et al. 2024): ``t * mean(models) + (1 - t) * base`` per tensor, with
    ``t = N cos / (1 + (N - 1) cos)`` from the mean pairwise cosine of the task vectors."""
    assert base is not None
    n = len(tensors)
    deltas = [(t - base).flatten() for t in tensors]
    cos = []
    for i in range(n):
        for j in range(i + 1, n):
            den = deltas[i].norm() * deltas[j].norm()
            cos.append(float(deltas[i] @ deltas[j] / den) if den > eps else 0.0)
    c = sum(cos) / len(cos)
    ratio = n * c / (1 + (n - 1) * c) if abs(1 + (n - 1) * c) > eps else 0.0
    ratio = min(1.0, max(0.0, ratio))
    return ratio * sum(tensors) / n + (1 - ratio) * base
