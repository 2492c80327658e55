"""Which parameters a generator learns, chosen from a WeightSpace's keys (the rest come from a base checkpoint).

p-diff (Wang et al. 2024, "Neural Network Diffusion") generates a chosen subset of a model's
parameters, such as the last BatchNorm layers, and takes every other parameter from the model
the subset was trained in. A selection here is read from the space alone, never from module types:

- ``"all"``: every floating-point tensor;
- ``"last:k"``: every floating-point tensor from the ``k``-th last weight placed as graph edges
  onwards, in the space's canonical (state_dict) order, i.e. the last ``k`` layers with their
  biases and any norm layers between them;
- ``"norm"``: per-unit tensors of units that no weight writes to (norm layers' scales, shifts
  and running statistics; biases sit on the units their weight writes to and are left out);
- a list of ``fnmatch`` patterns over the state_dict keys (``["features.8.*", "fc.*"]``).
"""
from __future__ import annotations

import fnmatch
from typing import Sequence

from ..space import WeightSpace
from .errors import GeneratorError

Selection = str | Sequence[str]


def _floating(space: WeightSpace) -> list[str]:
    return [k for k in space.canonical_keys if space.params[k].dtype.is_floating_point]


def select_keys(space: WeightSpace, selection: Selection = "all") -> list[str]:
    """The canonical floating-point keys ``selection`` names, in canonical order; an empty choice is refused."""
    floating = _floating(space)
    if isinstance(selection, str) and selection == "all":
        chosen = set(floating)
    elif isinstance(selection, str) and selection.startswith("last:"):
        try:
            k = int(selection.split(":", 1)[1])
        except ValueError:
            raise GeneratorError(f"selection {selection!r}: 'last:k' needs an integer k") from None
        weights = [e.key for e in space.edges if e.primary]
        if not 1 <= k <= len(weights):
            raise GeneratorError(f"selection {selection!r}: the model has {len(weights)} weight layers "
                                 f"({', '.join(weights)})")
        start = space.canonical_keys.index(weights[-k])
        chosen = set(space.canonical_keys[start:]) & set(floating)
    elif isinstance(selection, str) and selection == "norm":
        written = {n for e in space.edges for n in e.out_nodes}
        chosen = {p.key for p in space.node_params if p.nodes and not set(p.nodes) & written} & set(floating)
        if not chosen:
            raise GeneratorError(f"selection 'norm': {space.name or 'the model'} has no per-unit tensors outside "
                                 f"its weights' output units (no norm layers)")
    else:
        patterns = [selection] if isinstance(selection, str) else list(selection)
        chosen = set()
        for pat in patterns:
            hits = {space.aliases.get(k, k) for k in space.keys if fnmatch.fnmatchcase(k, pat)}
            hits &= set(floating)
            if not hits:
                raise GeneratorError(f"selection pattern {pat!r} matches no floating-point tensor of "
                                     f"{space.name or 'the model'} (keys: {', '.join(floating[:12])}"
                                     f"{' ...' if len(floating) > 12 else ''})")
            chosen |= hits
    return [k for k in floating if k in chosen]
