"""``weightspace predict train|eval``: predict test accuracy or the generalisation gap of checkpoints from weights.

``train`` runs under torchrun too (``torchrun --nproc_per_node 2 train/predict.py train ...``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..training.flags import add_train_arguments


def register(sub: argparse._SubParsersAction) -> None:
    pred = sub.add_parser("predict", help="predict checkpoint metrics from weights").add_subparsers(
        dest="action", required=True)
    t = pred.add_parser("train", help="train a graph metanetwork predictor on collections (split by run)")
    t.add_argument("--collection", action="append", required=True,
                   help="collection folder or hf:// URI (repeat to mix collections and architectures)")
    t.add_argument("--target", action="append", default=None,
                   help="metric to predict (repeatable; 'gap' is train_acc - test_acc); default test_acc")
    t.add_argument("--out", required=True, help="output folder (re-running resumes from its last checkpoint)")
    t.add_argument("--rank-weight", type=float, default=1.0,
                   help="weight of the pairwise ranking loss added to MSE (0: plain regression)")
    t.add_argument("--hidden", type=int, default=64)
    t.add_argument("--layers", type=int, default=4)
    t.add_argument("--conv", default="pna", choices=["pna", "transformer"],
                   help="message passing: FiLM messages with PNA aggregation, or graph-transformer attention")
    t.add_argument("--test-fraction", type=float, default=0.2)
    add_train_arguments(t, steps=2000, batch_size=32)
    t.set_defaults(func=train)

    e = pred.add_parser("eval", help="evaluate a trained predictor on a collection (Kendall tau, R^2)")
    e.add_argument("--model", required=True, help="folder from save_pretrained (e.g. OUT/model) or a Hub repo id")
    e.add_argument("--collection", action="append", required=True)
    e.add_argument("--split", default=None, help="split.json from training: evaluate its held-out runs only")
    e.add_argument("--strict", action="store_true", help="refuse architectures the predictor was not trained on")
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true", help="print metrics as JSON")
    e.set_defaults(func=evaluate)


def _open(paths: list[str]):
    from ..collections import CheckpointCollection

    return [CheckpointCollection.open(p) for p in paths]


def train(args: argparse.Namespace) -> int:
    import torch

    from ..predict import PropertyGraphs, train_predictor
    from ..training import is_main_process, train_config_from_args

    torch.manual_seed(args.seed)
    targets = args.target or ["test_acc"]
    store = PropertyGraphs.from_collections(_open(args.collection), targets, progress=args.progress)
    cfg = train_config_from_args(args)
    run = train_predictor(store, args.out,
                          model_config={"hidden": args.hidden, "layers": args.layers, "conv": args.conv},
                          train_config=cfg, test_fraction=args.test_fraction, split_seed=args.seed,
                          rank_weight=args.rank_weight)
    if is_main_process():
        print(f"{store}")
        print(f"trained {run.result.step} steps at {run.result.graphs_per_second:.0f} graphs/s; "
              f"held-out runs ({len(run.test)} checkpoints):")
        for t, m in run.metrics.items():
            print(f"  {t}: Kendall tau {m['tau']:.3f}, R^2 {m['r2']:.3f}")
        print(f"model: {Path(args.out) / 'model'}; loss curve: {Path(args.out) / 'loss.png'}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from ..errors import WeightSpaceError
    from ..predict import PropertyGraphs, PropertyPredictor, check_compatible, evaluate_predictor
    from ..utils import resolve_device

    model = PropertyPredictor.from_pretrained(args.model).to(resolve_device(args.device))
    colls = _open(args.collection)
    store = PropertyGraphs.from_collections(colls, model.targets, progress=False)
    if args.split:
        try:
            runs = json.loads(Path(args.split).read_text())["test_runs"]
        except (OSError, ValueError, KeyError) as e:
            raise WeightSpaceError(f"cannot read held-out runs from {args.split}: {e}") from e
        store = store.select_runs([tuple(r) for r in runs])
        if not len(store):
            raise WeightSpaceError(f"none of the held-out runs of {args.split} are in the given collections")
    check_compatible(model, store, allow_new_architectures=not args.strict)
    metrics = evaluate_predictor(model, store)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{store}")
        for t, m in metrics.items():
            print(f"{t}: Kendall tau {m['tau']:.3f}, R^2 {m['r2']:.3f}")
    return 0
