"""How the tracer and activation capture run a model, so that both see the same calls.

Both run ``model(*args)`` once, in eval mode and without gradients, under a
``TorchFunctionMode``, and number the mode's torch-function calls in order (every call
the mode sees counts, whatever it is). A call index recorded while tracing therefore
names the same call when the forward runs again on inputs of the same kind.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode


def forward_args(example_input: Any) -> tuple:
    """Positional arguments of the forward: a tuple or list is unpacked, anything else (a tensor, a dict) is one."""
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def run_forward(model: nn.Module, example_input: Any, mode: TorchFunctionMode) -> Any:
    """``model(*forward_args(example_input))`` in eval mode, without gradients, under ``mode``."""
    args = forward_args(example_input)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), mode:
            return model(*args)
    finally:
        model.train(was_training)


_DUNDER_KEPT = {"getitem", "setitem", "matmul", "rmatmul", "len", "format", "bool", "index", "int", "float"}


def op_name(func: Callable) -> str:
    """The name an operation is known by in the op registry: ``Tensor.add_`` and ``torch.add`` are both ``add``."""
    name = getattr(func, "__name__", str(func))
    if name == "__get__":
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name in _DUNDER_KEPT:
            return name if name != "float" else "__float__"
    if name.endswith("_") and not name.startswith("_"):
        name = name[:-1]
    return name
