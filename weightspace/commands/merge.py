"""``weightspace merge config.yml OUT_DIR``: run a mergekit-style merge config over safetensors checkpoints."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge models from a YAML config (linear, slerp, task_arithmetic, ties, dare, "
                                     "model_stock), streaming over safetensors",
                       description="Config fields: models (list of {model: path, parameters: {weight, density}}), "
                                   "merge_method, base_model, parameters (scalars or [{filter: regex, value}] "
                                   "per-tensor lists), align: weight, space: WeightSpace JSON, dtype. Paths are "
                                   "relative to the config. Writes OUT_DIR/model.safetensors and weightspace.json.")
    p.add_argument("config", help="YAML merge config")
    p.add_argument("out_dir", help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..merge import run_config
    out = run_config(args.config, args.out_dir, progress=not args.quiet)
    print(f"merged model written to {out / 'model.safetensors'}")
    return 0
