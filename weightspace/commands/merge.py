"""``weightspace merge config.yml OUT_DIR``: run a mergekit-style merge config over safetensors checkpoints."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge models from a YAML config (linear, slerp, task_arithmetic, ties, dare, "
                                     "model_stock), streaming over safetensors",
                       description="Config fields: models (list of {model: path, parameters: {weight, density}}), "
                                   "merge_method, base_model, parameters (scalars or [{filter: regex, value}] "
                                   "per-tensor lists), align: weight, space: WeightSpace JSON, dtype, "
                                   "out_shard_size. Paths are relative to the config. Writes "
                                   "OUT_DIR/model.safetensors (above the shard size: model-0000i-of-0000N."
                                   "safetensors shards and model.safetensors.index.json, as mergekit does), "
                                   "and OUT_DIR/weightspace.json only when the models' WeightSpace is known "
                                   "(space: in the config, or a weightspace.json beside an input model). "
                                   "Examples for every method: examples/merge/ in the source repository.")
    p.add_argument("config", help="YAML merge config")
    p.add_argument("out_dir", help="output folder")
    p.add_argument("--max-shard-size", default=None,
                   help="largest output shard, e.g. 5GB, 500MB or 2GiB (default: the config's out_shard_size, "
                        "else 5GB)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..merge import run_config
    out = run_config(args.config, args.out_dir, progress=not args.quiet, max_shard_size=args.max_shard_size)
    files = sorted(p.name for p in out.iterdir() if p.name.startswith("model"))
    print(f"merged model written to {out}: {', '.join(files)}")
    return 0
