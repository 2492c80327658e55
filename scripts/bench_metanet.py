"""Benchmark: graph-metanetwork throughput and memory, the former scatter path against the segment path.

For one representative architecture of each zoo family (digits MLP, digits CNN, tiny GPT) and
several batch sizes, it times the property predictor's forward pass (inference) and forward +
backward (a training step without the optimizer), in graphs per second, and its peak memory, for
each routing of :class:`weightspace.nn.MetanetConfig`. Both paths compute the same function;
the script also trains a predictor with each from the same seed and reports how far their loss
curves drift apart. Results go to the ``metanet`` section of BENCHMARKS.md.

    python scripts/bench_metanet.py                      # every family, batch sizes 1, 8, 32
    python scripts/bench_metanet.py --families mlp --batch-sizes 8 --no-write
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchlib import markdown_table, write_section

FAMILIES = {
    "mlp": ("digits MLP 64-64-64-10", "mlp", {"in_features": 64, "widths": [64, 64], "out_features": 10}),
    "cnn": ("digits CNN 8-16-16 + BN", "cnn", {"channels": (8, 16, 16), "batchnorm": True, "in_channels": 1,
                                               "num_classes": 10}),
    "gpt": ("tiny GPT d=48, 2 layers", "gpt", {"d_model": 48, "n_layer": 2, "n_head": 4}),
}
ROUTINGS = ("scatter", "segment")


def _batch(family: str, size: int):
    from weightspace import WeightSpace
    from weightspace.nn import collate
    from weightspace.tasks.models import build, example_input

    _, name, kw = FAMILIES[family]
    model = build(name, seed=0, **kw)
    space = WeightSpace.from_module(model, example_input(model))
    return collate([space.to_graph(build(name, seed=i, **kw).state_dict()) for i in range(size)])


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(family: str, routing: str, batch_sizes: list[int], repeats: int) -> list[dict]:
    """Timings and peak memory of one family and routing, batch sizes in increasing order (one process)."""
    from weightspace.predict import PropertyPredictor

    torch.manual_seed(0)
    rows = []
    for B in sorted(batch_sizes):
        batch = _batch(family, B)
        model = PropertyPredictor(edge_features=batch.edge_attr.shape[-1], node_features=batch.x.shape[-1],
                                  max_positions=512)
        model.backbone.config.routing = routing

        def forward() -> None:
            with torch.no_grad():
                model(batch)

        def step() -> None:
            model.zero_grad(set_to_none=True)
            model(batch).pow(2).mean().backward()

        base = _rss_mb()
        step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
        times = {}
        for name, fn in (("forward", forward), ("train", step)):
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            times[name] = statistics.median(ts)
        rows.append({"family": family, "routing": routing, "batch": B, "edges": int(batch.edge_index.shape[1]),
                     "forward_gps": B / times["forward"], "train_gps": B / times["train"], "peak_mb": peak})
    return rows


def loss_curves(steps: int, family: str = "mlp", n: int = 24) -> dict[str, list[float]]:
    """Train a predictor with each routing from the same seed on the same random-init checkpoints."""
    from weightspace.predict import PropertyPredictor

    graphs = _batch(family, n)
    target = torch.stack([g.edge_attr.std() for g in graphs.to_data_list()]).unsqueeze(-1)
    target = (target - target.mean()) / target.std()
    curves = {}
    for routing in ROUTINGS:
        torch.manual_seed(0)
        model = PropertyPredictor(edge_features=graphs.edge_attr.shape[-1], node_features=graphs.x.shape[-1])
        model.backbone.config.routing = routing
        opt = torch.optim.AdamW(model.parameters(), 2e-3)
        curve = []
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(graphs), target)
            loss.backward()
            opt.step()
            curve.append(float(loss))
        curves[routing] = curve
    return curves


VARIANTS = {
    "old": ({"routing": "scatter"}, False, "former default: scatter path, edge width 64, degree normaliser 2.0"),
    "e64": ({}, False, "segment path, edge width 64, degree normaliser 2.0 (same function as old)"),
    "e32": ({"edge_hidden": 32}, False, "segment path, edge width 32, degree normaliser 2.0"),
    "e16": ({"edge_hidden": 16}, False, "segment path, edge width 16, degree normaliser 2.0"),
    "e32fit": ({"edge_hidden": 32}, True, "segment path, edge width 32, degree normaliser fitted on training graphs"),
    "e16fit": ({"edge_hidden": 16}, True, "segment path, edge width 16, degree normaliser fitted on training graphs"),
}


def quality(collection: Path, variants: list[str], steps: int, batch_size: int, results: Path) -> dict:
    """Train the property predictor in each variant on one run-level split; resumable through ``results``."""
    from weightspace.collections import CheckpointCollection
    from weightspace.predict import PropertyGraphs, train_predictor
    from weightspace.training import TrainConfig

    done = json.loads(results.read_text()) if results.exists() else {}
    data = PropertyGraphs.from_collections(CheckpointCollection.open(collection), ["test_acc"], progress=False)
    for name in variants:
        if name in done:
            continue
        mc, fit, _ = VARIANTS[name]
        cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=2e-3, seed=0, eval_every=0,
                          checkpoint_every=0, progress=False, plot=False, log_every=1)
        run = train_predictor(data, model_config=mc, train_config=cfg, fit_degrees=fit)
        done[name] = {"loss": [h["loss"] for h in run.result.history if "loss" in h],
                      "tau": run.metrics["test_acc"]["tau"], "r2": run.metrics["test_acc"]["r2"],
                      "graphs_per_second": run.result.graphs_per_second, "seconds": run.result.seconds}
        results.write_text(json.dumps(done))
        print(name, {k: v for k, v in done[name].items() if k != "loss"}, file=sys.stderr, flush=True)
    return done


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--curve-steps", type=int, default=60, help="training steps of the loss-curve comparison")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    ap.add_argument("--quality", type=Path, metavar="COLLECTION",
                    help="also train the predictor in each --variants setting on this collection (one split)")
    ap.add_argument("--variants", nargs="+", default=["old", "e32", "e16"], choices=list(VARIANTS))
    ap.add_argument("--quality-steps", type=int, default=300)
    ap.add_argument("--quality-batch", type=int, default=16)
    ap.add_argument("--quality-results", type=Path, default=Path("metanet_quality.json"),
                    help="where quality results accumulate (re-running skips finished variants)")
    ap.add_argument("--quality-only", action="store_true", help="run only the quality comparison (resumable)")
    ap.add_argument("--worker", nargs=2, metavar=("FAMILY", "ROUTING"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(measure(*args.worker, args.batch_sizes, args.repeats)))
        return
    if args.quality_only:
        quality(args.quality, args.variants, args.quality_steps, args.quality_batch, args.quality_results)
        return
    rows = []
    for family in args.families:
        for routing in ROUTINGS:
            cmd = [sys.executable, __file__, "--worker", family, routing, "--threads", str(args.threads),
                   "--repeats", str(args.repeats), "--batch-sizes", *map(str, args.batch_sizes)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows += json.loads(out.strip().splitlines()[-1])
            print(f"{family} {routing} done", file=sys.stderr)
    by = {(r["family"], r["batch"], r["routing"]): r for r in rows}
    table = []
    for family in args.families:
        for B in sorted(args.batch_sizes):
            old, new = by[(family, B, "scatter")], by[(family, B, "segment")]
            table.append([FAMILIES[family][0], B, old["edges"],
                          f"{old['forward_gps']:.1f}", f"{new['forward_gps']:.1f}",
                          f"{old['train_gps']:.2f}", f"{new['train_gps']:.2f}",
                          f"**{new['train_gps'] / old['train_gps']:.2f}x**",
                          f"{old['peak_mb']:.0f}", f"{new['peak_mb']:.0f}"])
    curves = loss_curves(args.curve_steps)
    drift = max(abs(a - b) for a, b in zip(curves["scatter"], curves["segment"]))
    body = "\n\n".join([
        "## Metanetwork throughput (`scripts/bench_metanet.py`)",
        "Property predictor (default metanetwork: 4 edge-updating FiLM/PNA layers, hidden 64) on "
        "random-init checkpoints of one architecture per family; graphs/s are medians of "
        f"{args.repeats} runs after one warm-up, on {args.threads} thread(s); *train* is forward + backward "
        "of an MSE loss; peak is the growth of resident memory over the first training step. *old* is "
        "`routing=\"scatter\"` (PNA by scatters, degrees recomputed in every layer); *new* is the default "
        "`routing=\"segment\"` (each direction's edges sorted by receiver once per batch, PNA as segment "
        "reductions with sum and sum of squares in one pass).",
        markdown_table(["architecture", "batch", "edges", "forward old (graphs/s)", "forward new",
                        "train old (graphs/s)", "train new", "train speed-up", "peak old (MB)", "peak new (MB)"],
                       table),
        f"Equal quality: both paths compute the same function. Trained for {args.curve_steps} steps from the "
        f"same seed (AdamW, lr 2e-3, 24 MLP graphs), their loss curves differ by at most {drift:.2e} "
        f"(final loss {curves['scatter'][-1]:.4f} old, {curves['segment'][-1]:.4f} new).",
        f"Run with `python scripts/bench_metanet.py {' '.join(argv if argv is not None else sys.argv[1:])}`.",
    ])
    if args.no_write:
        print(body)
    else:
        write_section("metanet", body, Path(__file__).resolve().parent.parent / "BENCHMARKS.md")
        print(body)


if __name__ == "__main__":
    main()
