"""A set of checkpoints of one architecture as rows of a flat matrix, with the models excluded for NaN/Inf.

Every floating-point tensor of the space counts, in the space's canonical key order: weights,
biases, norm parameters and BatchNorm running statistics (they permute with the units they
describe, so they belong to the model's point in weight space). Integer buffers such as
``num_batches_tracked`` carry no weight-space position and are left out; tied tensors count once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
from torch import Tensor

from ..errors import StateDictMismatch, WeightSpaceError
from ..space import WeightSpace

StateDict = Mapping[str, Tensor]


class MemorizationError(WeightSpaceError):
    """A memorization measurement is ill-posed: too few training models, data the models cannot run on, ..."""


def float_keys(space: WeightSpace) -> list[str]:
    """The keys that make up a model's flat vector: the space's canonical floating-point tensors."""
    return [k for k in space.canonical_keys if space.params[k].dtype.is_floating_point]


def first_mismatch(space: WeightSpace, sd: StateDict) -> str | None:
    """A sentence naming the first tensor of ``sd`` (in the space's key order) that does not fit ``space``."""
    for k in space.keys:
        spec = space.params[space.aliases.get(k, k)]
        if k not in sd:
            if k in space.aliases:
                continue
            return f"tensor '{k}' is missing (expected shape {spec.shape})"
        t = sd[k]
        if not isinstance(t, Tensor):
            return f"'{k}' is a {type(t).__name__}, not a tensor"
        if tuple(t.shape) != spec.shape:
            return f"tensor '{k}' has shape {tuple(t.shape)}, expected {spec.shape}"
        if t.is_floating_point() != spec.dtype.is_floating_point:
            return f"tensor '{k}' is {t.dtype}, expected {spec.dtype}"
    extra = [k for k in sd if k not in space.params and k not in space.aliases]
    if extra:
        return f"tensor '{extra[0]}' is not part of the architecture"
    return None


@dataclass
class ModelSet:
    """Checkpoints as rows of ``flat`` ``[N, P]``; ``excluded`` maps a row to why it was left out (NaN/Inf)."""

    space: WeightSpace
    flat: Tensor
    excluded: dict[int, str] = field(default_factory=dict)
    template: dict[str, Tensor] = field(default_factory=dict)
    """Non-floating tensors (integer buffers) used when a row is turned back into a state_dict."""

    @classmethod
    def build(cls, space: WeightSpace, sds: Iterable[StateDict], what: str, *,
              dtype: torch.dtype = torch.float32) -> "ModelSet":
        """Flatten ``sds``; a model that does not fit ``space`` raises :class:`StateDictMismatch` naming
        its first mismatching tensor, a model with NaN/Inf is kept as a NaN row and listed in ``excluded``."""
        keys = float_keys(space)
        rows: list[Tensor] = []
        excluded: dict[int, str] = {}
        template: dict[str, Tensor] = {}
        for i, sd in enumerate(sds):
            bad = first_mismatch(space, sd)
            if bad is not None:
                raise StateDictMismatch(f"{what} {i} does not match the architecture "
                                        f"{space.name or space.fingerprint}: {bad}")
            parts = [sd[k].detach().reshape(-1).to("cpu", dtype) for k in keys]
            vec = torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)
            if not bool(torch.isfinite(vec).all()):
                first = next(k for k, p in zip(keys, parts) if not bool(torch.isfinite(p).all()))
                n = int((~torch.isfinite(vec)).sum())
                excluded[i] = f"{n} NaN/Inf values (first in '{first}')"
                vec = torch.full_like(vec, float("nan"))
            if not template:
                template = {k: sd[k].detach().to("cpu").clone() for k in space.canonical_keys if k not in keys}
            rows.append(vec)
        if not rows:
            raise MemorizationError(f"no {what}s were given")
        return cls(space, torch.stack(rows), excluded, template)

    def __len__(self) -> int:
        return self.flat.shape[0]

    @property
    def valid(self) -> list[int]:
        """Rows that hold finite weights."""
        return [i for i in range(len(self)) if i not in self.excluded]

    def state_dict(self, i: int) -> dict[str, Tensor]:
        """Row ``i`` as a state_dict of the space (tied keys share their tensor)."""
        return unflatten(self.space, self.flat[i], self.template)


def flatten(space: WeightSpace, sd: StateDict, dtype: torch.dtype = torch.float32) -> Tensor:
    """One model's flat vector over :func:`float_keys` (raises on a mismatching architecture)."""
    return ModelSet.build(space, [sd], "model", dtype=dtype).flat[0]


def unflatten(space: WeightSpace, vec: Tensor, template: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The state_dict of a flat vector; integer buffers come from ``template`` (zeros without one)."""
    out: dict[str, Tensor] = {}
    off = 0
    for k in space.canonical_keys:
        spec = space.params[k]
        if spec.dtype.is_floating_point:
            n = torch.Size(spec.shape).numel()
            out[k] = vec[off:off + n].reshape(spec.shape).to(spec.dtype)
            off += n
        else:
            out[k] = template[k].clone() if template and k in template else torch.zeros(spec.shape, dtype=spec.dtype)
    return {k: out[space.aliases.get(k, k)] for k in space.keys}
