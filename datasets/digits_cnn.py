"""Build the `digits-cnn` zoo (see datasets/README.md): `python datasets/digits_cnn.py --out zoos/digits-cnn --size small`."""
from __future__ import annotations

import argparse

from weightspace.tasks.zoo import RECIPES, SIZES, build_zoo

RECIPE = "digits-cnn"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=RECIPES[RECIPE].description)
    p.add_argument("--out", required=True, help="collection folder (created, or resumed when it exists)")
    p.add_argument("--size", default="small", choices=SIZES)
    p.add_argument("--seed", type=int, default=0, help="recipe seed: which configurations are sampled")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    coll = build_zoo(RECIPE, args.out, size=args.size, seed=args.seed, progress=not args.quiet)
    print(repr(coll))


if __name__ == "__main__":
    main()
