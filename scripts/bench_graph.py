"""Benchmark: checkpoint <-> neural-graph conversion speed, and lazy opening of large collections.

Writes the ``bench_graph`` section of BENCHMARKS.md. Run: ``python scripts/bench_graph.py``.
"""
from __future__ import annotations

import argparse
import copy
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from weightspace import WeightSpace
from weightspace.graph import GraphLayout  # noqa: F401  (import cost kept out of the timings)
from benchlib import markdown_table, median_time, write_section
from weightspace.collections import CheckpointCollection
from weightspace.tasks.models import MLP, SmallCNN, TinyGPT

T = 5


def models() -> list[tuple[str, torch.nn.Module, torch.Tensor]]:
    gpt = TinyGPT(vocab_size=96, block_size=128, n_layer=4, n_head=4, d_model=144, attention="fused")
    return [
        ("MLP 64-512-512-10", MLP(64, [512, 512], 10), torch.randn(2, 64)),
        ("Small-CNN-Zoo CNN 16-32-32 + BN", SmallCNN((16, 32, 32), batchnorm=True), torch.randn(2, 1, 8, 8)),
        ("GPT 4 layers, d=144, fused qkv, tied", gpt, torch.randint(0, 96, (2, 128))),
    ]


def trajectory(model: torch.nn.Module, steps: int) -> list[dict[str, torch.Tensor]]:
    """``steps`` distinct checkpoints: noise added in place, so tied weights stay tied."""
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            for t in list(model.parameters()) + list(model.buffers()):
                if t.is_floating_point():
                    t.add_(0.01 * torch.randn(t.shape, generator=g))
            out.append({k: v.clone() for k, v in model.state_dict().items()})
    return out


def interleaved(fns, repeats: int) -> tuple[float, ...]:
    """Median time of each function, run in turn in every repeat, and median per-repeat ratios to the first.

    Interleaving keeps the ratios honest on a machine whose load changes over time.
    """
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for t, fn in zip(times, fns):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    ratios = [statistics.median(a / b for a, b in zip(t, times[0])) for t in times[1:]]
    return (*[statistics.median(t) for t in times], *ratios)


def bench_conversion(repeats: int) -> str:
    rows = []
    for name, model, x in models():
        t0 = time.perf_counter()
        space = WeightSpace.from_module(model, x)
        trace_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _ = space.layout
        layout_s = time.perf_counter() - t0
        sds = trajectory(model, T)
        keys = space.layout.keys
        P = space.num_params
        data = space.to_graph(sds)
        cat_s, to_s, back_s, to_r, back_r = interleaved(
            [lambda: torch.stack([torch.cat([sd[k].reshape(-1).float() for k in keys]) for sd in sds]),
             lambda: space.to_graph(sds, check=False), lambda: space.from_graph(data)], repeats)
        back = space.from_graph(data)
        exact = all(torch.equal(b[k], s[k]) for b, s in zip(back, sds) for k in s)
        rows.append([name, f"{P:,}", f"{data.num_nodes:,} / {data.edge_index.shape[1]:,}",
                     f"{trace_s:.2f} s + {layout_s:.2f} s", f"{T * P / to_s / 1e6:.0f} M/s",
                     f"{T * P / back_s / 1e6:.0f} M/s", f"{to_r:.2f}x", f"{back_r:.2f}x",
                     "yes" if exact else "NO"])
        tqdm.write(" | ".join(map(str, rows[-1])))
    table = markdown_table(["model", "params", "nodes / edges", "trace + layout (once)", "to_graph",
                            "from_graph", "to_graph / torch.cat", "from_graph / torch.cat", "bit-exact"], rows)
    return (f"### Conversion of a stack of T={T} checkpoints (median of {repeats})\n\n"
            "Values per second, and the time relative to a plain `torch.cat` of the same tensors "
            "(flattening the T state_dicts), timed in turn within each repeat (median of per-repeat ratios). "
            "Goal: within 3x of that copy.\n\n" + table)


def _tiny() -> tuple[torch.nn.Module, WeightSpace]:
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    return model, WeightSpace.from_module(model, torch.randn(1, 8))


def build_collection(root: Path, n: int, per_run: int = 50) -> CheckpointCollection:
    """``n`` checkpoints of a tiny MLP, one file per checkpoint, appended one by one as a training run does."""
    model, space = _tiny()
    coll = CheckpointCollection.create(root, name=root.name)
    sd = model.state_dict()
    with tqdm(total=n, desc=f"writing {n} checkpoints", leave=False) as bar:
        for r in range(n // per_run):
            with coll.run_writer(f"run-{r:04d}", space=space, hparams={"seed": r}) as w:
                for s in range(per_run):
                    w.append(s, sd, {"loss": float(s)})
                    bar.update()
    return coll


def build_packed(root: Path, n: int, per_run: int = 50) -> CheckpointCollection:
    """``n`` synthetic checkpoints (distinct random weights) packed one file per run, written run by run."""
    model, space = _tiny()
    coll = CheckpointCollection.create(root, name=root.name, pack_runs=True)
    g = torch.Generator().manual_seed(0)
    keys = {k: v.shape for k, v in model.state_dict().items()}
    for r in tqdm(range(n // per_run), desc=f"writing {n} packed checkpoints", leave=False):
        sds = [{k: torch.randn(shape, generator=g) for k, shape in keys.items()} for _ in range(per_run)]
        coll.append_run(f"run-{r:05d}", list(range(per_run)), sds, space=space, hparams={"seed": r},
                        metrics=[{"loss": float(s)} for s in range(per_run)])
    return coll


def bench_lazy_open(sizes: list[int], packed_sizes: list[int], repeats: int) -> str:
    """Build every collection first, then time opening each and loading one checkpoint, in turn in every repeat
    (interleaved, so a change in the machine's load hits every size alike)."""
    built = []
    tmp = Path(tempfile.mkdtemp(prefix="ws-bench-"))
    try:
        for layout, build, chosen in (("one file per checkpoint", build_collection, sizes),
                                      ("packed: one file per run", build_packed, packed_sizes)):
            for n in chosen:
                root = tmp / f"c{n}-{build.__name__}"
                t0 = time.perf_counter()
                build(root, n)
                build_s = time.perf_counter() - t0
                runs = sorted(p.name for p in (root / "weights").iterdir())
                files = sum(1 for p in root.rglob("*") if p.is_file())
                built.append((n, layout, files, build_s, root, runs[len(runs) // 2]))

        def open_and_read(root: Path, run: str):
            return lambda: CheckpointCollection.open(root).load(run, 25)

        fns = [open_and_read(root, run) for *_, root, run in built]
        times: list[list[float]] = [[] for _ in fns]
        for fn in fns:
            fn()
        for _ in range(repeats):
            for t, fn in zip(times, fns):
                t0 = time.perf_counter()
                fn()
                t.append(time.perf_counter() - t0)
        rows = [[f"{n:,}", layout, f"{files:,}", f"{statistics.median(t) * 1e3:.2f} ms / {min(t) * 1e3:.2f} ms",
                 f"{build_s / n * 1e3:.2f} ms"] for (n, layout, files, build_s, _, _), t in zip(built, times)]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = markdown_table(["checkpoints in collection", "layout", "files", "open + load one (median / min)",
                            "write (per checkpoint)"], rows)
    return (f"### Lazy open ({repeats} repeats, interleaved)\n\nOpening reads no weights and no metadata; loading "
            "one checkpoint reads its run's metadata shard and its own file, or its slice of the run's packed file. "
            "The time must not grow with the collection's size. One file per checkpoint is written by appending "
            "checkpoints one at a time (`run_writer`, 50 per run); packed collections by `append_run` (a whole "
            "50-checkpoint run per write, synthetic weights), which keeps 100k checkpoints at about 4k files, "
            f"below the Hub's recommended 100k files per repository. Load average at the end: {load:.1f} (on a shared machine the "
            "minimum is the steadier figure).\n\n"
            + table)


def kept_conversion(path: Path = Path("BENCHMARKS.md")) -> str:
    """The conversion subsection already in BENCHMARKS.md, with the date it was measured."""
    text = path.read_text() if path.exists() else ""
    start, end = text.find("### Conversion"), text.find("### Lazy open")
    if start < 0 or end < start:
        raise SystemExit("--lazy-only needs a conversion table in BENCHMARKS.md; run without it first")
    section_end = text.find("<!-- end bench_graph -->", end)
    measured = re.search(r"measured (\d{4}-\d{2}-\d{2})", text[end:section_end])
    when = f"measured {measured.group(1)}" if measured else "measured earlier"
    return text[start:end].strip() + f"\n\n_(Conversion table {when} by a full run; kept by a `--lazy-only` run.)_"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 500, 5000],
                    help="collection sizes with one file per checkpoint")
    ap.add_argument("--packed-sizes", type=int, nargs="+", default=[50, 5000, 100_000],
                    help="collection sizes with packed runs")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 keeps timings stable on a shared machine)")
    ap.add_argument("--lazy-only", action="store_true",
                    help="measure only the lazy-open table and keep BENCHMARKS.md's conversion table as it is")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    conversion = kept_conversion() if args.lazy_only else bench_conversion(args.repeats)
    body = conversion + "\n\n" + bench_lazy_open(args.sizes, args.packed_sizes, args.repeats)
    path = write_section("bench_graph", "## Neural graphs and collections (`scripts/bench_graph.py`)\n\n" + body)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
