"""What every weight generator shares: its training models, the base checkpoint, and state_dicts out.

A generator is an ``nn.Module`` (with ``PyTorchModelHubMixin``: ``save_pretrained``,
``from_pretrained``, ``push_to_hub``) whose config holds the traced :class:`WeightSpace` as JSON,
so a saved generator needs neither the model class nor the training data. It generates the
floating-point values of a subset of the space's tensors (:mod:`.subset`); every other value
(unchosen tensors, integer buffers such as ``num_batches_tracked``) comes from the *base*
checkpoint, the first usable training model, as in p-diff (Wang et al. 2024).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from ..memorization.flat import StateDict, float_keys, unflatten
from ..space import WeightSpace
from .errors import GeneratorError


@dataclass
class TrainingModels:
    """The finite training models as rows ``[N, P]`` over :func:`float_keys`, and the ones excluded for NaN/Inf."""

    space: WeightSpace
    rows: Tensor
    base: dict[str, Tensor]
    excluded: dict[int, str] = field(default_factory=dict)
    source: str = "state_dicts"


def load_models(training, space: WeightSpace | None = None, *, steps: str = "last", align: bool = False,
                progress: bool = False) -> TrainingModels:
    """The training set of a generator: state_dicts, or the last (``steps="all"``: every) checkpoint of each
    run of a ``CheckpointCollection``.

    A model of another architecture raises :class:`~weightspace.errors.StateDictMismatch` naming its
    first mismatching tensor; models with NaN/Inf weights are excluded and counted in ``excluded``;
    fewer than two usable models raise :class:`GeneratorError`. With ``align`` every model is
    weight-matched (Git Re-Basin) to the base model first, so that the rows share one basis.
    """
    from ..memorization.training import load_training

    train = load_training(training, space, steps=steps, progress=progress)
    models = train.models
    valid = models.valid
    if len(valid) < 2:
        raise GeneratorError(f"a generator needs at least 2 training models with finite weights; got "
                             f"{len(models)} ({len(models.excluded)} excluded for NaN/Inf"
                             f"{': ' + '; '.join(models.excluded.values()) if models.excluded else ''})")
    rows = models.flat[valid]
    if align:
        from ..memorization.nearest import NearestIndex
        rows = NearestIndex(models, aligned=True, k=1, device="cpu", progress=progress).base[valid].cpu()
    base = models.state_dict(valid[0])
    return TrainingModels(models.space, rows, base, dict(models.excluded), train.source)


class WeightGenerator(nn.Module):
    """Base of the generators: the space, which values are generated, the base checkpoint and ``sample``."""

    def _init_space(self, space: Mapping[str, Any], keys: Sequence[str]) -> None:
        self.space = WeightSpace.from_json(space)
        floating = float_keys(self.space)
        bad = [k for k in keys if k not in floating]
        if bad:
            raise GeneratorError(f"{bad[0]!r} is not a floating-point tensor of {self.space.name or 'the model'}")
        self.keys = list(keys)
        sizes = {k: torch.Size(self.space.params[k].shape).numel() for k in floating}
        offsets, off = {}, 0
        for k in floating:
            offsets[k] = off
            off += sizes[k]
        self.num_values = off
        index = torch.cat([torch.arange(offsets[k], offsets[k] + sizes[k]) for k in keys]) if keys else \
            torch.zeros(0, dtype=torch.long)
        self.register_buffer("value_index", index, persistent=False)
        self.register_buffer("base_values", torch.zeros(off))
        ints = [k for k in self.space.canonical_keys if k not in floating]
        self._int_keys = ints
        n_int = sum(torch.Size(self.space.params[k].shape).numel() for k in ints)
        self.register_buffer("base_integers", torch.zeros(n_int, dtype=torch.float64))

    @property
    def dim(self) -> int:
        """Number of generated values per model."""
        return int(self.value_index.numel())

    def key_slices(self) -> list[slice]:
        """Where each generated tensor (``keys``, in order) lies in a generated vector."""
        out, off = [], 0
        for k in self.keys:
            n = torch.Size(self.space.params[k].shape).numel()
            out.append(slice(off, off + n))
            off += n
        return out

    def _set_normaliser(self, mean: Tensor, scale: Tensor) -> None:
        """Store the ``mean`` and ``scale`` buffers (registered by the subclass) that :meth:`normalise` uses."""
        with torch.no_grad():
            self.mean.copy_(mean)
            self.scale.copy_(scale.clamp(min=1e-8))

    def normalise(self, values: Tensor) -> Tensor:
        return (values.to(self.mean.device) - self.mean) / self.scale

    def denormalise(self, x: Tensor) -> Tensor:
        return x * self.scale + self.mean

    def _set_base(self, base: StateDict) -> None:
        with torch.no_grad():
            self.base_values.copy_(torch.cat([base[k].reshape(-1).float() for k in float_keys(self.space)]))
            if self._int_keys:
                self.base_integers.copy_(torch.cat([base[k].reshape(-1).double() for k in self._int_keys]))

    def _template(self) -> dict[str, Tensor]:
        out, off = {}, 0
        for k in self._int_keys:
            spec = self.space.params[k]
            n = torch.Size(spec.shape).numel()
            out[k] = self.base_integers[off:off + n].cpu().reshape(spec.shape).round().to(spec.dtype)
            off += n
        return out

    def to_state_dicts(self, values: Tensor) -> list[dict[str, Tensor]]:
        """State_dicts of generated values ``[n, dim]``: placed into the base checkpoint's flat vector."""
        full = self.base_values.detach().cpu().float().expand(values.shape[0], -1).clone()
        full[:, self.value_index.cpu()] = values.detach().cpu().float()
        template = self._template()
        return [unflatten(self.space, row, template) for row in full]

    def training_values(self, models: TrainingModels) -> Tensor:
        """The generated values ``[N, dim]`` of the training rows."""
        return models.rows[:, self.value_index.cpu()]

    def sample_values(self, n: int, seed: int = 0) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> list[dict[str, Tensor]]:
        """``n`` complete state_dicts (every key of the space); the same ``seed`` gives the same models."""
        if n < 1:
            raise GeneratorError(f"sample needs n >= 1, got {n}")
        was = self.training
        self.eval()
        try:
            return self.to_state_dicts(self.sample_values(n, seed))
        finally:
            self.train(was)


class RowSource:
    """A :class:`~weightspace.training.Trainer` batch source over the rows of a matrix (no targets)."""

    def __init__(self, rows: Tensor) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return self.rows.shape[0]

    def batch(self, indices: Tensor, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        x = self.rows[indices].to(device)
        return x, x.new_zeros(len(indices))


def sample_accuracy(generator: WeightGenerator, evaluator, n: int = 8, seed: int = 12345) -> dict[str, float]:
    """Mean and best test accuracy of ``n`` samples (an eval function for the trainer's progress log)."""
    accs = []
    for sd in generator.sample(n, seed=seed):
        pred, y = evaluator.predict(sd)
        accs.append(float((pred == y).float().mean()))
    return {"sample_acc": sum(accs) / len(accs), "sample_acc_max": max(accs)}


def make_evaluator(space: WeightSpace, data, model: nn.Module | None, base: StateDict) -> Callable | None:
    """An :class:`~weightspace.memorization.Evaluator` on ``data``, checked now on the base model, so that data the
    models cannot run on is refused before any training."""
    if data is None:
        if model is not None:
            raise GeneratorError("model= is used to evaluate samples on data=; pass data too")
        return None
    from ..memorization.behaviour import Evaluator
    ev = Evaluator(space, data, model=model)
    ev.predict(base)
    return ev
