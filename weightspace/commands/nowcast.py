"""``weightspace nowcast train|bench``: meta-train a NiNo/WNN nowcaster, and benchmark nowcasters against Adam.

``train`` runs under torchrun too (``torchrun --nproc_per_node 2 train/nowcast.py train ...``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..training.flags import add_train_arguments


def register(sub: argparse._SubParsersAction) -> None:
    nc = sub.add_parser("nowcast", help="nowcast training trajectories (NiNo, WNN, linefit, LAWA)").add_subparsers(
        dest="action", required=True)
    t = nc.add_parser("train", help="meta-train a nowcaster on trajectories of checkpoint collections")
    t.add_argument("--collection", action="append", required=True,
                   help="collection folder or hf:// URI (repeat to mix zoos)")
    t.add_argument("--out", required=True, help="output folder (re-running resumes from its last checkpoint)")
    t.add_argument("--model", choices=("nino", "wnn", "node"), default="nino",
                   help="nino, wnn, or node (NodeNiNo: --hidden is its node width)")
    t.add_argument("--context", type=int, default=5)
    t.add_argument("--horizons", type=int, default=16, help="K: future states predicted, in context spacings")
    t.add_argument("--stride", type=int, default=1, help="saved checkpoints between context states")
    t.add_argument("--allow-nonfinite", action="store_true",
                   help="accept trajectories holding NaN/Inf weights (refused by default, naming run and step)")
    t.add_argument("--hidden", type=int, default=32)
    t.add_argument("--layers", type=int, default=3)
    t.add_argument("--decoder-hidden", type=int, default=64)
    t.add_argument("--weighting", choices=("collection", "window", "sqrt"), default="collection")
    add_train_arguments(t, steps=1500, batch_size=4)
    t.set_defaults(func=train)

    b = nc.add_parser("bench", help="steps-to-target of Adam vs nowcasters on held-out tasks (needs the source "
                                    "checkout: runs its scripts/bench_nowcast.py)",
                      description="Runs scripts/bench_nowcast.py of the source checkout this package was loaded "
                                  "from, writing its section of that checkout's BENCHMARKS.md (or --benchmarks). "
                                  "An installed package has no scripts/: clone the repository to run it.")
    b.add_argument("--nino", default=None, help="NiNo folder or Hub id (default: the packaged checkpoint)")
    b.add_argument("--wnn", default=None, help="WNN folder or Hub id (default: the packaged checkpoint)")
    b.add_argument("--tasks", default=None, help="comma-separated subset of task names")
    b.add_argument("--seeds", type=int, default=None, help="seeds per task (default 3; 5 with --peer)")
    b.add_argument("--peer", action="store_true", help="run only the peer's setting (ANCHORS.md: FM-16 CNN, lr 3e-4, "
                   "3,000 steps, period 300) and write its own section")
    b.add_argument("--out", default="bench_nowcast", help="folder for the plot and raw JSON")
    b.add_argument("--benchmarks", default=None,
                   help="markdown file for the results section (default: the checkout's BENCHMARKS.md)")
    b.add_argument("--methods", default=None,
                   help="comma-separated methods: adam, nino, wnn, linefit, lawa, each optionally with -noguard, -h<K>, "
                        "-reset, -now, -tol<x> (default: all of the benchmark's)")
    b.add_argument("--resume", action="store_true", help="keep the runs already in OUT/results.json")
    b.add_argument("--quick", action="store_true", help="shorter budgets (smoke test)")
    b.set_defaults(func=bench)


def train(args: argparse.Namespace) -> int:
    import torch

    from ..collections import CheckpointCollection
    from ..nowcast.train import NowcastTrainSpec, train_nowcaster
    from ..training import is_main_process, train_config_from_args

    colls = [CheckpointCollection.open(p) for p in args.collection]
    spec = NowcastTrainSpec(model=args.model, context=args.context, horizons=args.horizons, stride=args.stride,
                            hidden=args.hidden, layers=args.layers, decoder_hidden=args.decoder_hidden,
                            weighting=args.weighting, allow_nonfinite=args.allow_nonfinite)
    cfg = train_config_from_args(args)
    torch.manual_seed(args.seed)
    _, result = train_nowcaster(colls, args.out, spec, cfg)
    if is_main_process():
        last = [h for h in result.history if "eval_loss" in h]
        print(f"trained {result.step} steps in {result.seconds:.0f} s")
        if last:
            h = last[-1]
            print(f"held-out scaled L1: {args.model} {h['eval_loss']:.4f}, linefit {h['eval_linefit']:.4f}, "
                  f"no change {h['eval_zero']:.4f}")
        print(f"model: {Path(args.out) / 'model'}; loss curve: {Path(args.out) / 'loss.png'}")
    return 0


def bench_script() -> Path:
    """scripts/bench_nowcast.py of the source checkout this package runs from; a clear error when installed."""
    from ..errors import WeightSpaceError

    path = Path(__file__).resolve().parents[2] / "scripts" / "bench_nowcast.py"
    if not path.is_file():
        raise WeightSpaceError(f"'weightspace nowcast bench' needs the source checkout: it runs "
                               f"scripts/bench_nowcast.py, which an installed package does not ship (looked for "
                               f"{path}); clone the repository and run it there")
    return path


def bench(args: argparse.Namespace) -> int:
    import importlib.util
    import sys

    path = bench_script()
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("bench_nowcast", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_nowcast"] = mod
    spec.loader.exec_module(mod)
    return mod.run(args)
