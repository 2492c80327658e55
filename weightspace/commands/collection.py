"""``weightspace collection verify|merge``: check a collection's checkpoints, join slices built by several workers."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    coll = sub.add_parser("collection", help="check and join checkpoint collections").add_subparsers(
        dest="action", required=True)
    v = coll.add_parser("verify", help="list damaged checkpoints (missing, truncated or corrupt files, NaN/Inf, "
                                       "tensors not fitting the architecture), each with its run and step; "
                                       "exit status 1 when there are any",
                        description="Re-running `weightspace zoo build` into the folder retrains the damaged runs.")
    v.add_argument("collection", help="collection folder or hf://datasets/<owner>/<name>[@rev]")
    v.add_argument("--run", action="append", default=None, help="only this run (repeatable)")
    v.add_argument("--fast", action="store_true", help="check file sizes and headers only, without reading tensors")
    v.add_argument("--allow-nonfinite", action="store_true", help="do not report NaN/Inf values")
    v.add_argument("--json", action="store_true", help="print the problems as JSON lines")
    v.set_defaults(func=verify)
    m = coll.add_parser("merge", help="join collection slices (e.g. from `zoo build --shard K/N`) into one new "
                                      "collection, atomically")
    m.add_argument("slices", nargs="+", help="collection folders, disjoint in their runs")
    m.add_argument("--out", required=True, help="new collection folder (must not exist, or be empty)")
    m.add_argument("--name", default=None, help="name of the merged collection (default: the slices' common name)")
    m.add_argument("--allow-unfinished", action="store_true", help="also copy runs that are not finished")
    m.set_defaults(func=merge)
    k = coll.add_parser("pack", help="store each finished run as one safetensors file with a step axis (two files "
                                     "per run instead of one per checkpoint), and pack runs finished later too")
    k.add_argument("collection", help="collection folder")
    k.set_defaults(func=pack)


def verify(args: argparse.Namespace) -> int:
    from ..collections import CheckpointCollection

    coll = CheckpointCollection.open(args.collection)
    problems = coll.verify(args.run, deep=not args.fast, allow_nonfinite=args.allow_nonfinite)
    if args.json:
        for p in problems:
            print(json.dumps({"run_id": p.run_id, "step": p.step, "file": p.file, "kind": p.kind,
                              "message": p.message}))
    else:
        for p in problems:
            print(p)
        runs = sorted({p.run_id for p in problems})
        n = len(coll.runs()) if args.run is None else len(args.run)
        print(f"{coll.source}: {len(problems)} problem(s) in {len(runs)} of {n} run(s)"
              + (f": {', '.join(runs[:10])}{' ...' if len(runs) > 10 else ''}" if runs else ", all checkpoints OK"))
    return 1 if problems else 0


def merge(args: argparse.Namespace) -> int:
    from ..collections import merge_collections

    coll = merge_collections(args.slices, args.out, name=args.name, allow_unfinished=args.allow_unfinished)
    print(repr(coll))
    return 0


def pack(args: argparse.Namespace) -> int:
    from ..collections import CheckpointCollection
    from ..utils import progress_bar

    coll = CheckpointCollection.open(args.collection)
    coll.set_pack_runs(True)
    done = [run for run in coll.runs() if coll.is_finished(run)]
    for run in progress_bar(done, desc="packing", unit="run"):
        coll.pack(run)
    print(f"{coll.source}: packed {len(done)} finished run(s); {len(coll.runs()) - len(done)} unfinished run(s) "
          f"are packed when they finish")
    return 0
