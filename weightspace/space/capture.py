"""Capture the activations at a space's activation sites by re-running the forward."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ..errors import WeightSpaceError
from .forward import op_name, run_forward
from .records import ActivationSite


class _Capture(TorchFunctionMode):
    def __init__(self, sites: Sequence[ActivationSite]) -> None:
        super().__init__()
        self.want = {s.call: s for s in sites}
        self.calls = 0
        self.found: dict[int, torch.Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        call = self.calls
        self.calls += 1
        out = func(*args, **(kwargs or {}))
        site = self.want.get(call)
        if site is not None:
            name = op_name(func)
            tensors = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
            if name != site.op or not tensors:
                raise WeightSpaceError(
                    f"activation site of module '{site.module or '<root>'}': call {call} of the forward is "
                    f"'{name}', but it was '{site.op}' when the model was traced; the forward took another "
                    f"path than when traced (other input kind, control flow, or another model)")
            self.found[call] = tensors[0].detach()
        return out


def capture_activations(model: nn.Module, inputs: Any, sites: Sequence[ActivationSite]) -> dict[int, torch.Tensor]:
    """Run ``model`` once on ``inputs`` and return the output of each site's call, keyed by ``site.call``.

    ``inputs`` follows :meth:`WeightSpace.from_module`'s convention (a tensor, a tuple of
    positional arguments, or one other object such as a dict). The model runs in eval mode
    without gradients, as when traced. Raises :class:`WeightSpaceError` when a site's call
    is another operation, or never happens.
    """
    mode = _Capture(sites)
    run_forward(model, inputs, mode)
    missing = [s for s in sites if s.call not in mode.found]
    if missing:
        s = missing[0]
        raise WeightSpaceError(
            f"activation site of module '{s.module or '<root>'}' ('{s.op}', call {s.call}) was never reached: "
            f"the forward made {mode.calls} calls and took another path than when traced")
    return mode.found
