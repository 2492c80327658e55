"""``weightspace align A B --out DIR``: re-basin B onto A and report the loss barrier before and after.

A and B are safetensors checkpoints of one model of a ``weightspace.tasks`` family trained on the
digits task. The architecture comes from ``--family`` and ``--model-args`` (JSON constructor
arguments), or from the checkpoints' safetensors metadata keys ``family`` and ``model_kwargs``.
Barriers are measured on the digits validation split; BatchNorm statistics of interpolated models
are re-estimated on training batches (``--bn reset``, default) or REPAIRed (``--bn repair``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import WeightSpaceError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("align", help="align checkpoint B to A modulo permutations; print barriers; plot",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="checkpoint A (.safetensors)")
    p.add_argument("b", help="checkpoint B (.safetensors)")
    p.add_argument("--out", required=True, help="output folder: aligned B, permutation, barriers, lmc.png")
    p.add_argument("--family", help="model family of weightspace.tasks (mlp, cnn, resnet)")
    p.add_argument("--model-args", default=None, help="JSON constructor arguments, e.g. '{\"widths\": [128]}'")
    p.add_argument("--method", choices=("weight", "activation"), default="weight")
    p.add_argument("--bn", choices=("none", "reset", "repair"), default="reset")
    p.add_argument("--lambdas", type=int, default=11)
    p.set_defaults(func=run)


def _meta(path: Path) -> dict:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:
        raise WeightSpaceError(f"cannot read {path}: {e}") from e


def run(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import load_file

    from ..align import activation_matching, interpolation_curve, plot_interpolation, weight_matching
    from ..merge import save_merged
    from ..space import WeightSpace
    from ..tasks import build, digits_split, evaluate_classifier
    from ..utils import atomic_write_text

    pa, pb = Path(args.a), Path(args.b)
    for p in (pa, pb):
        if not p.exists():
            raise WeightSpaceError(f"checkpoint {p} does not exist")
    meta = _meta(pa)
    family = args.family or meta.get("family")
    if not family:
        raise WeightSpaceError("the model family is unknown: pass --family (mlp, cnn, resnet) and --model-args")
    try:
        kwargs = json.loads(args.model_args) if args.model_args else json.loads(meta.get("model_kwargs", "{}"))
    except json.JSONDecodeError as e:
        raise WeightSpaceError(f"--model-args is not JSON: {e}") from e
    try:
        model = build(family, seed=0, **kwargs)
    except (TypeError, ValueError) as e:
        raise WeightSpaceError(f"cannot build {family} with {kwargs}: {e}") from e
    data = digits_split()
    sd_a, sd_b = load_file(str(pa)), load_file(str(pb))
    space = WeightSpace.from_module(model, data.x_train[:2])
    space.check(sd_a, source=str(pa))
    space.check(sd_b, source=str(pb))
    batches = [(data.x_train[i:i + 256], data.y_train[i:i + 256]) for i in range(0, len(data.y_train), 256)]
    if args.method == "weight":
        perm = weight_matching(space, sd_a, sd_b, progress=True)
    else:
        ma, mb = build(family, seed=0, **kwargs), build(family, seed=0, **kwargs)
        ma.load_state_dict(sd_a)
        mb.load_state_dict(sd_b)
        perm = activation_matching(ma, mb, batches, space=space)
    aligned = space.permute(sd_b, perm)

    def evaluate(net):
        return evaluate_classifier(net, data.x_val, data.y_val)

    curves = {}
    for label, sd in (("naive", sd_b), ("aligned", aligned)):
        curves[label] = interpolation_curve(model, sd_a, sd, evaluate, lambdas=args.lambdas, space=space,
                                            bn=args.bn, data=batches[:4], progress=True)
    out = Path(args.out)
    save_merged(out, aligned, space, {"aligned_to": str(pa), "source": str(pb)})
    atomic_write_text(out / "permutation.json", json.dumps({k: v.tolist() for k, v in perm.items()}))
    report = {label: c.summary() | {"lambdas": c.lambdas, "losses": c.losses, "accs": c.accs}
              for label, c in curves.items()}
    atomic_write_text(out / "barriers.json", json.dumps(report, indent=1))
    plot_interpolation(curves, out / "lmc.png", title=f"{family} {kwargs}: {pa.name} vs {pb.name}")
    for label, c in curves.items():
        print(f"{label:>8}: loss barrier {c.barrier:.4f}  (Re-Basin variant {c.rebasin_barrier:.4f})  "
              f"accuracy barrier {c.acc_barrier:.4f}")
    print(f"wrote {out / 'model.safetensors'} (B aligned to A), permutation.json, barriers.json, lmc.png")
    return 0
