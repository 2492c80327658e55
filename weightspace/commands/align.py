"""``weightspace align A B --out DIR``: bring checkpoint B into the basin of checkpoint A modulo permutations.

The architecture is read from beside the checkpoints, as ``weightspace merge`` does: ``--space``
(a WeightSpace JSON), else ``weightspace.json`` in A's folder, else the architecture of the
collection A belongs to (``architectures/<arch_id>.json``, named by the checkpoint's
``weightspace.arch_id`` metadata). Without a stored architecture, ``--family`` and ``--model-args``
build a model of ``weightspace.tasks`` and trace it.

Without ``--data`` no model is run: B is weight-matched to A, and the command reports the L2
distance between A and B before and after alignment. With ``--data`` it also measures the loss
(and accuracy) barrier along the straight line from A to B, naive and aligned, and plots it.
Running a model needs its constructor: the zoo recipe its collection records (hyperparameter
``recipe``), or ``--family``/``--model-args``. BatchNorm statistics of interpolated models are
re-estimated on training batches (``--bn reset``, default) or REPAIRed (``--bn repair``).

Writes DIR/model.safetensors (B aligned to A) with weightspace.json, permutation.json,
report.json, and lmc.png when there is data.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import StateDictMismatch, WeightSpaceError
from ..utils import read_safetensors

if TYPE_CHECKING:
    import torch.nn as nn
    from torch import Tensor

    from ..space import WeightSpace

DATA_SETS = ("digits", "digits-flat", "wine", "breast_cancer", "iris", "stdlib")
SPACE_FILE = "weightspace.json"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("align", help="align checkpoint B to A modulo permutations; distances, barriers, plot",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="checkpoint A (.safetensors)")
    p.add_argument("b", help="checkpoint B (.safetensors)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--space", default=None, help="WeightSpace JSON of the architecture (default: stored beside A)")
    p.add_argument("--family", help="model family of weightspace.tasks (mlp, cnn, resnet, gpt)")
    p.add_argument("--model-args", default=None, help="JSON constructor arguments, e.g. '{\"widths\": [128]}'")
    p.add_argument("--data", choices=DATA_SETS, default=None,
                   help="evaluation data; without it, only weight-space distances are reported")
    p.add_argument("--method", choices=("weight", "activation"), default="weight",
                   help="weight matching, or activation matching (needs --data)")
    p.add_argument("--fallback", choices=("error", "weight"), default=None,
                   help="activation matching: groups that no activation site carries are an error (default), or "
                        "weight-matched with the others held fixed")
    p.add_argument("--bn", choices=("none", "reset", "repair"), default=None,
                   help="interpolated models: keep BatchNorm statistics, re-estimate them (default with --data), "
                        "or REPAIR every unit's statistics (needs --data)")
    p.add_argument("--lambdas", type=int, default=None, help="points on the interpolation path (default 11; "
                                                            "needs --data)")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------- checkpoints and architecture
def _collection_root(path: Path, arch: str | None) -> Path | None:
    for parent in path.resolve().parents:
        if arch and (parent / "architectures" / f"{arch}.json").exists():
            return parent
    return None


def _stored_space(pa: Path, meta: dict[str, str], explicit: str | None) -> tuple["WeightSpace | None", str]:
    """The architecture stored beside A, and where it was found."""
    from ..space import WeightSpace
    if explicit is not None:
        if not Path(explicit).exists():
            raise WeightSpaceError(f"weight space file {explicit} does not exist")
        return WeightSpace.load(explicit), explicit
    if (pa.parent / SPACE_FILE).exists():
        return WeightSpace.load(pa.parent / SPACE_FILE), str(pa.parent / SPACE_FILE)
    arch = meta.get("weightspace.arch_id")
    root = _collection_root(pa, arch)
    if root is not None:
        spec = root / "architectures" / f"{arch}.json"
        return WeightSpace.load(spec), str(spec)
    return None, ""


def _recipe_model(pa: Path, meta: dict[str, str]) -> "tuple[nn.Module, str] | None":
    """The model of A's run, rebuilt from the zoo recipe and hyperparameters its collection records."""
    from ..collections import CheckpointCollection
    from ..collections.card import HP_PREFIX
    from ..tasks.zoo import RECIPES
    root = _collection_root(pa, meta.get("weightspace.arch_id"))
    run_id, step = meta.get("weightspace.run_id"), meta.get("weightspace.step")
    if root is None or run_id is None or step is None:
        return None
    row = CheckpointCollection(root, read_only=True).row(run_id, int(step))
    config = {k[len(HP_PREFIX):]: v for k, v in row.items() if k.startswith(HP_PREFIX)}
    recipe = RECIPES.get(config.get("recipe"))
    if recipe is None:
        return None
    return recipe.model(config), f"zoo recipe {recipe.name} of run {run_id!r}"


def _family_model(args: argparse.Namespace, meta: dict[str, str]) -> "tuple[nn.Module, str] | None":
    from ..tasks import build
    family = args.family or meta.get("family")
    if not family:
        if args.model_args:
            raise WeightSpaceError("--model-args needs --family")
        return None
    try:
        kwargs = json.loads(args.model_args) if args.model_args else json.loads(meta.get("model_kwargs", "{}"))
    except json.JSONDecodeError as e:
        raise WeightSpaceError(f"--model-args is not JSON: {e}") from e
    try:
        return build(family, seed=0, **kwargs), f"family {family} {kwargs}"
    except (TypeError, ValueError) as e:
        raise WeightSpaceError(f"cannot build {family} with {kwargs}: {e}") from e


# ---------------------------------------------------------------------------- evaluation data
@dataclass
class _Eval:
    """Evaluation data: training batches (for statistics) and a loss/accuracy function on held-out data."""

    name: str
    batches: list
    evaluate: Callable[["nn.Module"], Any]


def _eval_data(name: str, model: "nn.Module", source: str) -> _Eval:
    import torch

    from ..tasks import digits_split, evaluate_classifier, evaluate_lm, stdlib_corpus, tabular_split
    from ..tasks.zoo import GPT_CORPUS_CHARS
    if name == "stdlib":
        block = getattr(model, "block_size", None)
        if not isinstance(block, int):
            raise StateDictMismatch(f"architectures don't match: data stdlib is character windows, but the model "
                                    f"({source}) declares no block_size")
        corpus = stdlib_corpus(max_chars=GPT_CORPUS_CHARS)
        from ..tasks import char_batch
        g = torch.Generator().manual_seed(0)
        batches = [char_batch(corpus.train_ids, block, 32, g) for _ in range(4)]
        ev = _Eval(name, batches, lambda net: evaluate_lm(net, corpus.val_ids, block, 32, 8))
    else:
        data = (digits_split(flat=name == "digits-flat") if name.startswith("digits") else tabular_split(name))
        batches = [(data.x_train[i:i + 256], data.y_train[i:i + 256]) for i in range(0, len(data.y_train), 256)]
        ev = _Eval(name, batches, lambda net: evaluate_classifier(net, data.x_val, data.y_val))
    x = batches[0][0][:2]
    was = model.training
    try:
        with torch.no_grad():
            model.eval()
            model(x)
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        raise StateDictMismatch(f"architectures don't match: the model ({source}) does not take the inputs of "
                                f"data {name} (shape {tuple(x.shape)}, {x.dtype}): {e}") from e
    finally:
        model.train(was)
    return ev


# ---------------------------------------------------------------------------- report
def _distance(space: "WeightSpace", sd_a, sd_b=None) -> float:
    """L2 distance between two checkpoints (or the norm of one) over floating-point tensors; tied ones count once."""
    import torch
    total = torch.zeros((), dtype=torch.float64)
    for k in space.canonical_keys:
        a = sd_a[k]
        if a.is_floating_point():
            total += (a.double() - (0 if sd_b is None else sd_b[k].double())).pow(2).sum()
    return float(total.sqrt())


def run(args: argparse.Namespace) -> int:
    from ..align import activation_matching, interpolation_curve, plot_interpolation, weight_matching
    from ..merge import save_merged
    from ..space import WeightSpace
    from ..tasks import example_input
    from ..utils import atomic_write_text

    pa, pb = Path(args.a), Path(args.b)
    for p in (pa, pb):
        if not p.is_file():
            raise WeightSpaceError(f"checkpoint {p} does not exist")
    if args.data is None:
        for flag, value in (("--method activation", args.method == "activation"), ("--bn", args.bn),
                            ("--fallback", args.fallback),
                            ("--lambdas", args.lambdas)):
            if value:
                raise WeightSpaceError(f"{flag} needs evaluation data: pass --data ({', '.join(DATA_SETS)})")
    if args.fallback and args.method != "activation":
        raise WeightSpaceError("--fallback applies to --method activation only")
    meta = read_safetensors(pa, tensors=False)[1]
    read_safetensors(pb, tensors=False)
    space, space_from = _stored_space(pa, meta, args.space)
    built = _family_model(args, meta) or (_recipe_model(pa, meta) if args.data else None)
    model, model_from = built if built is not None else (None, "")
    if space is None:
        if model is None:
            raise WeightSpaceError(f"no architecture is stored beside {pa} (no {SPACE_FILE}, no collection): pass "
                                   f"--space JSON, or --family and --model-args to trace a model of weightspace.tasks")
        space, space_from = WeightSpace.from_module(model, example_input(model)), f"traced {model_from}"
    sd_a, sd_b = read_safetensors(pa)[0], read_safetensors(pb)[0]
    space.check(sd_a, source=str(pa))
    try:
        space.check(sd_b, source=str(pb))
    except StateDictMismatch as e:
        raise StateDictMismatch(f"architectures don't match: {pb} is not a checkpoint of A's architecture "
                                f"({space_from}): {e}") from e
    if model is not None:
        try:
            space.check(model.state_dict(), source=f"the model built from {model_from}")
        except StateDictMismatch as e:
            raise StateDictMismatch(f"architectures don't match: {e} (architecture from {space_from})") from e
    if args.data is not None and model is None:
        raise WeightSpaceError(f"--data {args.data} needs a model to run: A is not in a zoo collection that records "
                               f"its recipe; pass --family and --model-args")
    ev = _eval_data(args.data, model, model_from) if args.data else None
    if ev is not None:
        traced = WeightSpace.from_module(model, ev.batches[0][0][:2])
        if traced != space:
            raise StateDictMismatch(f"architectures don't match: the model built from {model_from} traces to "
                                    f"architecture {traced.fingerprint}, the checkpoints' is {space.fingerprint} "
                                    f"({space_from})")
        space = traced  # same architecture, with the activation sites of this forward

    if args.method == "weight":
        perm = weight_matching(space, sd_a, sd_b, progress=True)
    else:
        import copy
        ma, mb = copy.deepcopy(model), copy.deepcopy(model)
        ma.load_state_dict(sd_a)
        mb.load_state_dict(sd_b)
        perm = activation_matching(ma, mb, ev.batches, space=space, fallback=args.fallback or "error")
    aligned = space.permute(sd_b, perm)
    report: dict[str, Any] = {"architecture": space_from, "method": args.method,
                              "distance": {"naive": _distance(space, sd_a, sd_b),
                                           "aligned": _distance(space, sd_a, aligned),
                                           "norm_a": _distance(space, sd_a)}}
    out = Path(args.out)
    save_merged(out, aligned, space, {"aligned_to": str(pa), "source": str(pb)})
    atomic_write_text(out / "permutation.json", json.dumps({k: v.tolist() for k, v in perm.items()}))
    d = report["distance"]
    print(f"L2 distance to A: {d['naive']:.4f} before alignment, {d['aligned']:.4f} after "
          f"(|A| = {d['norm_a']:.4f})")
    if ev is not None:
        bn = args.bn or "reset"
        curves = {label: interpolation_curve(model, sd_a, sd, ev.evaluate, lambdas=args.lambdas or 11, space=space,
                                             bn=bn, data=ev.batches[:4], progress=True)
                  for label, sd in (("naive", sd_b), ("aligned", aligned))}
        report |= {"data": ev.name, "bn": bn,
                   "barriers": {label: c.summary() | {"lambdas": c.lambdas, "losses": c.losses, "accs": c.accs}
                                for label, c in curves.items()}}
        plot_interpolation(curves, out / "lmc.png", title=f"{ev.name}: {pa.name} vs {pb.name}")
        for label, c in curves.items():
            acc = f"  accuracy barrier {c.acc_barrier:.4f}" if c.accs else ""
            print(f"{label:>8}: loss barrier {c.barrier:.4f}  (Re-Basin variant {c.rebasin_barrier:.4f}){acc}")
    atomic_write_text(out / "report.json", json.dumps(report, indent=1))
    print(f"wrote {out / 'model.safetensors'} (B aligned to A), weightspace.json, permutation.json, report.json"
          + (", lmc.png" if ev is not None else ""))
    return 0
