"""Meta-train the packaged digits hypernetwork and the benchmark's ablations, within a wall-clock budget.

    python scripts/pretrain_hyper.py --out runs/hyper --seconds 180 --device cuda          # all variants in parallel
    python scripts/pretrain_hyper.py --out runs/hyper-cpu --variants main --steps 4000 --device cpu   # resumable

Every variant trains in its own process with the same settings and budget; ``main`` is the package's
model (MIP, edge decoder, fan-in scaling), the others are ``scripts/bench_hyper.py``'s ablations.
With ``--seconds`` (counted from the command's start), each process traces the grid's architectures, times
a few steps of a throwaway copy and sizes ``--steps`` so the cosine schedule ends inside the budget. ``OUT/<variant>/model`` gets
``save_pretrained`` output and ``OUT/<variant>/hyper_train.json`` the spec, history and throughput.
"""
from __future__ import annotations

import time

STARTED = time.time()

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from weightspace.hyper import ArchDistribution, GraphHyperNetwork, HyperTrainSpec, train_hypernetwork  # noqa: E402
from weightspace.hyper.train import ArchitectureCache  # noqa: E402
from weightspace.training import TrainConfig  # noqa: E402
from weightspace.utils import atomic_write_text, resolve_device  # noqa: E402

VARIANTS: dict[str, dict] = {
    "main": {},
    "ghn2": {"parametrization": "ghn2"},
    "nofanin": {"fan_in_scaling": False},
    "tile": {"decoder": "tile"},
    "random": {"positional": False, "unit_noise": 1.0},
    "nomeanfield": {"mean_field": False},
    "gpt": {},
}
"""Model options of each variant; ``random`` gives units Gaussian features instead of relative positions (GHN-style),
``nomeanfield`` scales the pair term by ``1/sqrt(fan_in)`` instead of ``1/fan_in``,
``gpt`` is the main model meta-trained on tiny GPTs (stdlib text) instead."""
FAMILIES = {"gpt": ("gpt",)}
PROBE_STEPS = 8


def grid_architectures(dist: ArchDistribution) -> list[dict]:
    """Every architecture ``dist`` can draw, up to the activation (which shares the traced layout)."""
    archs = [{"family": "mlp", "in_features": 64, "widths": [w] * d, "out_features": 10,
              "activation": dist.activations[0]} for w in dist.mlp_widths for d in dist.mlp_depths]
    if "cnn" in dist.families:
        archs += [{"family": "cnn", "channels": [a, b, c], "batchnorm": bn, "in_channels": 1, "num_classes": 10,
                   "activation": dist.activations[0]} for a in dist.cnn_channels for b in dist.cnn_channels
                  for c in dist.cnn_channels for bn in dist.cnn_batchnorm]
    if "gpt" in dist.families:
        archs += [dist.gpt(w, d, h, a) for w in dist.gpt_widths for d in dist.gpt_depths for h in dist.gpt_heads
                  for a in dist.gpt_attention]
    return archs if "mlp" in dist.families else [a for a in archs if a["family"] != "mlp"]


def model_options(args: argparse.Namespace, variant: str) -> dict:
    return {"hidden": args.hidden, "layers": args.layers, "unit_features": args.unit_features, "rank": args.rank,
            **VARIANTS[variant]}


def train_variant(args: argparse.Namespace, variant: str) -> None:
    out = Path(args.out) / variant
    dist = ArchDistribution(families=FAMILIES.get(variant, ("mlp", "cnn")))
    spec = HyperTrainSpec(dist, args.data_batch)
    torch.manual_seed(args.seed)
    hyper = GraphHyperNetwork(**model_options(args, variant))
    cache = ArchitectureCache(hyper)
    for a in grid_architectures(dist):
        cache.get(a)
    base = dict(batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, seed=args.seed, device=args.device,
                checkpoint_every=args.checkpoint_every, log_every=10, eval_every=0, progress=False,
                weight_decay=0.0)
    steps = args.steps
    if args.seconds:
        probe = copy.deepcopy(hyper)
        warm = TrainConfig(**{**base, "steps": 2, "plot": False})
        train_hypernetwork(None, warm, spec, probe, cache=cache)  # device start-up, kernels, first allocations
        t0 = time.perf_counter()
        train_hypernetwork(None, TrainConfig(**{**base, "steps": PROBE_STEPS, "plot": False}), spec, probe,
                           cache=cache)
        per_step = (time.perf_counter() - t0) / PROBE_STEPS
        left = (args.started or STARTED) + args.seconds - time.time() - args.reserve
        steps = max(10, int(left / per_step))
        print(f"[{variant}] {per_step * 1000:.0f} ms/step after tracing -> {steps} steps", flush=True)
    config = TrainConfig(**{**base, "steps": steps, "warmup": min(args.warmup, steps // 5)})
    hyper, result = train_hypernetwork(out, config, spec, hyper, cache=cache)
    info = json.loads((out / "hyper_train.json").read_text())
    info.update(variant=variant, options=model_options(args, variant),
                device=str(resolve_device(args.device)),
                seconds=result.seconds, steps=result.step, history=result.history,
                torch_threads=torch.get_num_threads(),
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    atomic_write_text(out / "hyper_train.json", json.dumps(info, indent=1))
    print(f"[{variant}] {result.step} steps in {result.seconds:.0f} s, {result.graphs_per_second:.1f} "
          f"architectures/s, last loss {result.history[-1]['loss']:.4f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seconds", type=float, default=0, help="wall-clock budget per variant (0: use --steps)")
    p.add_argument("--reserve", type=float, default=15, help="seconds of the budget kept for saving")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=16, help="architectures per step")
    p.add_argument("--data-batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=8e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=0)
    p.add_argument("--unit-features", type=int, default=16)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=0, help="torch threads per variant (0: cores / variants)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--started", type=float, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        train_variant(args, args.worker)
        return 0
    threads = args.threads or max(1, (os.cpu_count() or 1) // len(args.variants))
    procs = []
    for v in args.variants:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--worker", v,
               "--started", str(STARTED)]
        procs.append((v, subprocess.Popen(cmd, env=env)))
    failed = [v for v, proc in procs if proc.wait() != 0]
    if failed:
        print(f"variants failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
