"""``weightspace predict train|eval|checkpoint``: predict test accuracy or the generalisation gap of checkpoints
from weights.

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
    t.add_argument("--edge-hidden", type=int, default=16,
                   help="width of edge states and messages (edges outnumber nodes, so this sets the cost)")
    t.add_argument("--conv", default="pna", choices=["pna", "transformer"],
                   help="message passing: FiLM messages with PNA aggregation, or graph-transformer attention")
    t.add_argument("--test-fraction", type=float, default=0.2)
    t.add_argument("--early-stopping", action=argparse.BooleanOptionalAction, default=None,
                   help="stop when the loss on validation runs (carved from the training runs) stops improving, and "
                        "keep the best weights (default: on when --steps is not given)")
    t.add_argument("--val-fraction", type=float, default=None,
                   help="fraction of the training runs held out for early stopping (default: 0.15)")
    t.add_argument("--patience", type=int, default=None,
                   help="early stopping: evaluations without improvement before training stops (default: 8)")
    add_train_arguments(t, steps=None, batch_size=None)
    _loading_options(t)
    t.set_defaults(func=train)

    e = pred.add_parser("eval", help="evaluate a trained predictor on a collection (Kendall tau, R^2)")
    e.add_argument("--model", required=True, help="folder from save_pretrained (e.g. OUT/model) or a Hub repo id")
    e.add_argument("--collection", action="append", required=True)
    e.add_argument("--split", default=None, help="split.json from training: evaluate its held-out runs only")
    e.add_argument("--strict-architectures", "--strict", dest="strict", action="store_true",
                   help="refuse architectures the predictor was not trained on")
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true", help="print metrics as JSON")
    _loading_options(e)
    e.set_defaults(func=evaluate)

    c = pred.add_parser("checkpoint", help="predict the metrics of one checkpoint",
                        description="Predict the metrics of one checkpoint: a .safetensors file with weightspace.json "
                                    "beside it (or written into a collection), or a run (and step) of a collection.")
    c.add_argument("path", help="a .safetensors checkpoint, or a collection folder / hf:// URI with --run")
    c.add_argument("--model", required=True, help="folder from save_pretrained (e.g. OUT/model) or a Hub repo id")
    c.add_argument("--run", default=None, help="run id in the collection (default: its only run)")
    c.add_argument("--step", type=int, default=None, help="step of the run (default: its last)")
    c.add_argument("--strict-architectures", dest="strict", action="store_true",
                   help="refuse an architecture the predictor was not trained on")
    c.add_argument("--device", default="auto")
    c.add_argument("--json", action="store_true", help="print the predictions as JSON")
    c.set_defaults(func=checkpoint)


def _open(paths: list[str]):
    from ..collections import CheckpointCollection

    return [CheckpointCollection.open(p) for p in paths]


def _log_to_stderr() -> None:
    """Show the predictor's info lines (the chosen schedule, warnings) on stderr, once."""
    import logging

    log = logging.getLogger("weightspace.predict")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("weightspace: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _loading_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-nonfinite", action="store_true", help="accept checkpoints holding NaN/Inf values")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip damaged checkpoints (unreadable, or NaN/Inf) with a warning instead of stopping")


def train(args: argparse.Namespace) -> int:
    import warnings

    import torch

    from ..predict import FewRunsWarning, PropertyGraphs, describe_schedule, train_predictor
    from ..training import is_main_process, train_config_from_args

    from ..errors import ConfigError

    early = args.early_stopping if args.early_stopping is not None else args.steps is None
    if not early:
        given = [f for f, v in (("--patience", args.patience), ("--val-fraction", args.val_fraction)) if v is not None]
        if given:
            verb = "apply" if len(given) > 1 else "applies"
            why = "--no-early-stopping" if args.early_stopping is False else "--steps"
            raise ConfigError(f"{' and '.join(given)} {verb} to early stopping, which is off ({why} was given); "
                              "add --early-stopping to stop early within --steps")
    torch.manual_seed(args.seed)
    targets = args.target or ["test_acc"]
    store = PropertyGraphs.from_collections(_open(args.collection), targets, progress=args.progress,
                                            allow_nonfinite=args.allow_nonfinite, skip_bad=args.skip_bad)
    cfg = train_config_from_args(args)
    if is_main_process():
        _log_to_stderr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewRunsWarning)  # the logger has already said it on stderr
        run = train_predictor(store, args.out,
                              model_config={"hidden": args.hidden, "layers": args.layers, "conv": args.conv,
                                            "edge_hidden": args.edge_hidden},
                              train_config=cfg, test_fraction=args.test_fraction, split_seed=args.seed,
                              rank_weight=args.rank_weight, early_stopping=early,
                              val_fraction=0.15 if args.val_fraction is None else args.val_fraction,
                              patience=8 if args.patience is None else args.patience)
    if is_main_process():
        print(f"{store}")
        print(describe_schedule(run.schedule))
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
    store = PropertyGraphs.from_collections(colls, model.targets, progress=False,
                                            allow_nonfinite=args.allow_nonfinite, skip_bad=args.skip_bad)
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


def _checkpoint_store(args: argparse.Namespace, targets: list[str]):
    """The one checkpoint named by ``args`` as a store, and its recorded metrics (when a collection has them)."""
    from ..collections import CheckpointCollection
    from ..errors import CollectionError, WeightSpaceError
    from ..predict import PropertyGraphs
    from ..predict.data import target_value
    from ..space import WeightSpace
    from ..utils import read_safetensors
    from .align import SPACE_FILE, _collection_root

    path = Path(args.path)
    if path.is_file():
        if args.run is not None or args.step is not None:
            raise WeightSpaceError("--run and --step select a checkpoint of a collection; "
                                   f"{path} is already one checkpoint")
        meta = read_safetensors(path, tensors=False)[1]
        root = _collection_root(path, meta.get("weightspace.arch_id"))
        if (path.parent / SPACE_FILE).exists():
            space = WeightSpace.load(path.parent / SPACE_FILE)
            return PropertyGraphs.from_state_dicts(space, [read_safetensors(path)[0]], targets, [str(path)]), {}
        if root is None or "weightspace.run_id" not in meta:
            raise WeightSpaceError(f"no architecture is stored for checkpoint {path}: put its {SPACE_FILE} beside it "
                                   "(WeightSpace.save), or read it from its collection")
        coll, run, step = CheckpointCollection.open(root), meta["weightspace.run_id"], int(meta["weightspace.step"])
    elif path.is_dir() or str(path).startswith("hf://"):
        coll = CheckpointCollection.open(args.path)
        runs = coll.runs()
        run = args.run
        if run is None:
            if len(runs) != 1:
                raise CollectionError(f"collection {coll.source} has {len(runs)} runs; choose one with --run "
                                      f"({', '.join(runs[:5])}{' ...' if len(runs) > 5 else ''})")
            run = runs[0]
        if run not in runs:
            raise CollectionError(f"collection {coll.source} has no run {run!r}")
        steps = coll.steps(run)
        step = steps[-1] if args.step is None else args.step
        if step not in steps:
            raise CollectionError(f"run {run!r} of {coll.source} has no step {step}; its steps are "
                                  f"{steps[:10]}{' ...' if len(steps) > 10 else ''}")
    else:
        raise WeightSpaceError(f"checkpoint {path} does not exist")
    row = coll.row(run, step)
    source = coll.source if str(coll.source).startswith("hf://") else str(Path(coll.root).resolve())
    store = PropertyGraphs.from_state_dicts(coll.space(row), [coll.load(run, step)], targets, [run], steps=[step],
                                            sources=[source])
    recorded = {t: target_value(row, t) for t in targets}
    return store, {t: v for t, v in recorded.items() if v == v}


def checkpoint(args: argparse.Namespace) -> int:
    from ..predict import PropertyPredictor, predict_store
    from ..utils import resolve_device

    model = PropertyPredictor.from_pretrained(args.model).to(resolve_device(args.device))
    store, recorded = _checkpoint_store(args, list(model.targets))
    pred = predict_store(model, store, allow_new_architectures=not args.strict)[0]
    name = store.name(0)
    predictions = {t: float(v) for t, v in zip(model.targets, pred)}
    if args.json:
        print(json.dumps({"checkpoint": name, "architecture": store.arch_ids[0],
                          "seen_in_training": store.arch_ids[0] in model.arch_ids,
                          "predictions": predictions, "recorded": recorded}))
        return 0
    print(name)
    if model.arch_ids and store.arch_ids[0] not in model.arch_ids:
        print(f"note: architecture {store.arch_ids[0]} was not among those the predictor was trained on")
    for t, v in predictions.items():
        print(f"  {t}: {v:.4f}" + (f" (recorded {recorded[t]:.4f})" if t in recorded else ""))
    return 0
