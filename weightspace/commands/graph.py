"""``weightspace graph inspect``: groups, parameter axes and graph size of a space, checkpoint or collection."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError, NonFiniteWeights, WeightSpaceError
from ..graph import EDGE_TYPES
from ..space import WeightSpace
from ..utils import read_safetensors


def register(sub: argparse._SubParsersAction) -> None:
    graph = sub.add_parser("graph", help="inspect neural graphs").add_subparsers(dest="action", required=True)
    p = graph.add_parser("inspect", help="print groups, parameter axes, node and edge counts")
    p.add_argument("target", help="a collection folder or hf:// URI, a WeightSpace JSON, or a checkpoint "
                                  "(.safetensors) inside a collection")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="accept a checkpoint holding NaN/Inf values (a checkpoint target's values are checked)")
    p.set_defaults(func=inspect)


def describe(space: WeightSpace) -> str:
    layout = space.layout
    counts: dict[str, int] = {}
    for t in layout.edge_type.tolist():
        counts[EDGE_TYPES[t]] = counts.get(EDGE_TYPES[t], 0) + 1
    return "\n".join([
        space.summary(),
        f"graph: {layout.num_nodes} nodes ({layout.node_features} node features), {layout.num_edges} edges "
        f"({layout.edge_features} edge features); edges by type: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
        f"values outside the graph (aux): {len(layout.aux_gather)} from {layout.aux_keys}",
        f"fingerprint: {space.fingerprint}",
    ])


def _spaces_for(target: str, allow_nonfinite: bool = False) -> list[tuple[str, WeightSpace]]:
    path = Path(target)
    if allow_nonfinite and path.suffix != ".safetensors":
        raise ConfigError(f"--allow-nonfinite applies to a checkpoint (.safetensors) target; {target} holds no "
                          "weights that inspect reads")
    if target.startswith("hf://") or (path.is_dir() and (path / "architectures").is_dir()):
        from ..collections import CheckpointCollection
        coll = CheckpointCollection.open(target)
        print(repr(coll))
        return [(arch, coll.space(arch)) for arch in coll.architectures()]
    if path.suffix == ".json":
        return [(path.name, WeightSpace.load(path))]
    if path.suffix == ".safetensors":
        arch = read_safetensors(path, tensors=False)[1].get("weightspace.arch_id")
        for parent in path.parents:
            spec = parent / "architectures" / f"{arch}.json"
            if arch and spec.exists():
                space = WeightSpace.load(spec)
                try:
                    space.check(read_safetensors(path)[0], allow_nonfinite=allow_nonfinite, source=str(path))
                except NonFiniteWeights as e:
                    raise NonFiniteWeights(f"{e}; on the command line: --allow-nonfinite") from None
                return [(arch, space)]
        raise WeightSpaceError(f"{path} names no architecture of an enclosing collection (arch_id={arch!r}); "
                               "a bare checkpoint needs its model to be traced: WeightSpace.from_module(model, x)")
    raise WeightSpaceError(f"{target}: expected a collection folder, hf:// URI, WeightSpace .json or .safetensors")


def inspect(args: argparse.Namespace) -> int:
    for name, space in _spaces_for(args.target, args.allow_nonfinite):
        print(f"== architecture {name}")
        print(describe(space))
    return 0

