"""Running statistics for predicted weights, measured rather than predicted.

A hypernetwork predicts parameters; running statistics (BatchNorm's ``running_mean`` and
``running_var``) depend on the data the model will see. The rule used here: each such buffer is
set to the batch statistic the model's own train-mode forward computes on a calibration batch
with the predicted parameters, so that in eval mode every normalisation layer behaves as it does
in train mode on that batch (the identity in expectation for the predicted weights).

Which buffers are statistics is found from the model's behaviour, not from module types: a
train-mode forward updates a running buffer as ``new = (1 - m) * old + m * stat``. Running it
twice, from ``old = 0`` and ``old = 1``, gives ``m = 1 - (new_1 - new_0)`` and
``stat = new_0 / m`` for every buffer, whatever each layer's momentum (a cumulative average
included); buffers the forward leaves alone keep their values.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torch.func import functional_call

from ..space.forward import forward_args
from .errors import BadExampleInput


def _train_forward(model: nn.Module, tensors: dict[str, Tensor], inputs: Any) -> None:
    was = model.training
    model.train()
    try:
        with torch.no_grad():
            functional_call(model, tensors, forward_args(inputs))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise BadExampleInput(f"the calibration input does not fit {type(model).__name__}: {e}") from e
    finally:
        model.train(was)


def calibrate_statistics(model: nn.Module, state_dict: dict[str, Tensor], inputs: Any) -> dict[str, Tensor]:
    """``state_dict`` with every running-statistic buffer set to its batch statistic on ``inputs``.

    Integer buffers (``num_batches_tracked``) keep their values. ``state_dict`` is not modified.
    """
    names = {name for name, b in model.named_buffers() if b.is_floating_point()}
    stats = [k for k in names if k in state_dict]
    out = dict(state_dict)
    if not stats:
        return out
    buffers = {name for name, _ in model.named_buffers()}
    runs = []
    for start in (0.0, 1.0):
        bufs = {k: torch.full_like(state_dict[k], start) for k in stats}
        rest = {k: v.clone() if k in buffers else v for k, v in state_dict.items() if k not in bufs}
        _train_forward(model, {**rest, **bufs}, inputs)
        runs.append(bufs)
    for k in stats:
        a, b = runs[0][k], runs[1][k]
        if bool((a == 0).all()) and bool((b == 1).all()):
            continue
        m = 1 - (b - a)
        out[k] = torch.where(m > 0, a / m.clamp(min=1e-12), state_dict[k]).to(state_dict[k].dtype)
    return out
