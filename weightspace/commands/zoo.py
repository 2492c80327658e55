"""``weightspace zoo build``: train a zoo of small models on real offline data into a collection."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..tasks.zoo import RECIPES

    zoo = sub.add_parser("zoo", help="build checkpoint collections").add_subparsers(dest="action", required=True)
    p = zoo.add_parser("build", help="train a model zoo into a checkpoint collection (re-running resumes, "
                                     "and retrains runs whose checkpoints are damaged)")
    p.add_argument("recipe", choices=sorted(RECIPES))
    p.add_argument("--out", required=True, help="collection folder (created or resumed)")
    p.add_argument("--size", default="small", choices=["tiny", "small", "medium", "large"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="build only runs i with i %% N == K (K from 0), a disjoint slice for one of N workers; "
                        "join the slices with `weightspace collection merge`")
    p.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None,
                   help="store each finished run as one safetensors file with a step axis instead of one file per "
                        "checkpoint (default: on for medium and large, off for tiny and small)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=build)


def build(args: argparse.Namespace) -> int:
    from ..tasks.zoo import build_zoo

    coll = build_zoo(args.recipe, args.out, size=args.size, seed=args.seed, progress=not args.quiet,
                     shard=args.shard, pack=args.pack)
    print(repr(coll))
    return 0
