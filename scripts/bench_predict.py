"""Benchmark: predicting test accuracy and the generalisation gap from weights (issue 3).

For the digits CNN zoo, the digits MLP zoo, their union (mixed architectures) and the synthetic-task
MLP zoo (``synth-mlp``: test accuracy measured on 8,000 points, so its noise ceiling is near 1), it trains the
graph metanetwork and every baseline on the same run-level split and reports Kendall tau and
R^2 on held-out runs, training throughput and data-loading cost, and a scatter plot of predicted
against true test accuracy. Results go to the ``predict`` section of BENCHMARKS.md.

    python scripts/bench_predict.py --size small            # builds the zoos if missing
    python scripts/bench_predict.py --cnn-zoo Z1 --mlp-zoo Z2 --synth-zoo Z3 --steps 3000
    python scripts/bench_predict.py --settings synth-mlp --synth-zoo Z3 --no-write   # one zoo, BENCHMARKS.md untouched
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from benchlib import markdown_table, write_section
from weightspace.collections import CheckpointCollection
from weightspace.predict.plots import plot_predictions
from weightspace.predict import (FlatMLP, PropertyGraphs, NotApplicable, StatNN, predict_store, regression_metrics,
                                 train_predictor)
from weightspace.tasks import digits_split
from weightspace.tasks.data import SYNTH_TEST, SYNTH_TRAIN
from weightspace.training import TrainConfig
from weightspace.utils import atomic_write, atomic_write_text

ROOT = Path(__file__).resolve().parent
TARGETS = ["test_acc", "gap"]
METANETS = {"deepsets": ("DeepSets-style (no message passing)", {"layers": 0}),
            "pna": ("NG-GNN metanetwork (ours)", {"conv": "pna"}),
            "pnalog": ("NG-GNN, log node features (ours)", {"conv": "pna", "log_node_features": True}),
            "transformer": ("graph-transformer metanetwork (ours)", {"conv": "transformer"})}
BASELINES = {"statnn": ("StatNN (per-tensor stats + GBT)", StatNN), "flat": ("MLP on flat weights", FlatMLP)}
ZOOS = ("digits-cnn", "digits-mlp", "synth-mlp")
SETTING_ZOOS = {"digits-cnn": ("digits-cnn",), "digits-mlp": ("digits-mlp",), "synth-mlp": ("synth-mlp",),
                "mixed": ("digits-cnn", "digits-mlp")}
"""The zoos each setting reads; ``mixed`` is the union of the two digits zoos."""


def eval_sizes(name: str) -> tuple[int, int]:
    """How many test and training examples a setting's accuracies are measured on (for the noise ceiling)."""
    if name == "synth-mlp":
        return SYNTH_TEST, SYNTH_TRAIN
    data = digits_split()
    return len(data.y_val), len(data.y_train)


def open_zoo(recipe: str, path: Path | None, size: str, build: bool) -> CheckpointCollection:
    path = path or ROOT / ".cache" / f"{recipe}-{size}"
    if path.exists() and not build:
        return CheckpointCollection.open(path)
    from weightspace.tasks.zoo import build_zoo

    return build_zoo(recipe, path, size=size, seed=0)


def noise_ceiling(store: PropertyGraphs, n_test: int, n_train: int, seed: int = 0, draws: int = 20) -> dict[str, float]:
    """Kendall tau between the measured metrics and binomial resamples of them (median over draws).

    Test accuracy is measured on ``n_test`` images, so a checkpoint with true accuracy p reads
    Binomial(n_test, p) / n_test; the tau of the measured values against a fresh draw estimates
    how much of the ranking that noise alone scrambles: a rough ceiling for any predictor.
    """
    from scipy.stats import kendalltau

    rng = np.random.default_rng(seed)
    te = store.targets[:, 0].double().numpy()
    tr = (store.targets[:, 1].double() + store.targets[:, 0].double()).clamp(0, 1).numpy()
    acc, gap = [], []
    for _ in range(draws):
        te2, tr2 = rng.binomial(n_test, te) / n_test, rng.binomial(n_train, tr) / n_train
        acc.append(kendalltau(te, te2).statistic)
        gap.append(kendalltau(tr - te, tr2 - te2).statistic)
    return {"test_acc": float(np.median(acc)), "gap": float(np.median(gap))}


def fmt(m: dict[str, dict[str, float]] | None, t: str, k: str) -> str:
    return "n/a" if m is None else f"{m[t][k]:.3f}"


def load_previous(path: Path) -> tuple[dict, dict, list]:
    """Metrics, run facts and other splits' rows of an earlier run of this script (``--reuse``): model rows
    with all four numbers are not recomputed (n/a rows and the noise ceiling are)."""
    import ast

    if not path.exists():
        return {}, {}, []
    saved = json.loads(path.read_text())
    rows = {(r[0], r[1]): {"test_acc": {"tau": float(r[2]), "r2": float(r[3])},
                           "gap": {"tau": float(r[4]), "r2": float(r[5])}}
            for r in saved["rows"] if all(c.replace(".", "", 1).lstrip("-").isdigit() for c in r[2:])}
    extras = {}
    for n, e in saved["extras"].items():
        if e:
            extras[n] = {"graphs_per_second": float(e["graphs_per_second"]), "seconds": float(e["seconds"]),
                         "figure": Path(e["figure"]), "train": int(e["train"]), "test": int(e["test"]),
                         "runs": tuple(ast.literal_eval(e["runs"])), "archs": int(e["archs"]),
                         "threads": int(e.get("threads", 1)), "aux": e.get("aux", "")}
    return rows, extras, saved.get("other_splits", [])


def save_results(path: Path, rows: list[list], extras: dict, seed: int, other_splits: list) -> None:
    """``rows`` and ``extras`` of split ``seed``; ``other_splits`` keeps rows of other split seeds (from --merge)."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(
        {"seed": seed, "rows": rows, "extras": {n: {k: str(v) for k, v in e.items()} for n, e in extras.items()},
         "other_splits": other_splits}, indent=1)))


def over_splits(rows: list[list], seed: int, other_splits: list) -> tuple[list[list], dict[str, list[int]]]:
    """Rows averaged over run-level splits: ``mean ± sd`` where a (collection, model) row was measured on
    several splits, else the single value; and the split seeds behind each collection."""
    per: dict[tuple[str, str], list[list]] = {}
    seeds: dict[str, set[int]] = {}
    for split, group in [(seed, rows)] + [(s["seed"], s["rows"]) for s in other_splits]:
        for r in group:
            per.setdefault((r[0], r[1]), []).append(r)
            seeds.setdefault(r[0], set()).add(split)
    out = []
    for (name, label), rs in per.items():
        cells = []
        for col in zip(*(r[2:] for r in rs)):
            try:
                v = np.array([float(c) for c in col])
            except ValueError:
                cells.append(col[0])
                continue
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}")
        out.append([name, label, *cells])
    return out, {n: sorted(v) for n, v in seeds.items()}


def setting_steps(name: str, args: argparse.Namespace) -> int:
    """Training steps of the learned models in setting ``name`` (its own flag, else ``--steps``)."""
    return {"digits-mlp": args.steps_mlp, "mixed": args.steps_mixed, "synth-mlp": args.steps_synth}.get(name) \
        or args.steps


def run_setting(name: str, store: PropertyGraphs, args: argparse.Namespace, out: Path,
                previous: tuple[dict, dict, list] = ({}, {}, [])) -> tuple[list[list], dict]:
    train, test = store.split_by_run(args.test_fraction, args.seed)
    print(f"[{name}] {store}\n  train {len(train)} checkpoints of {len(set(train.run_ids))} runs, "
          f"test {len(test)} of {len(set(test.run_ids))} runs", flush=True)
    true = test.targets.numpy()
    results: dict[str, dict | None] = {}
    extra: dict = previous[1].get(name, {})
    for key in filter(None, args.baselines.split(",")):
        label, cls = BASELINES[key]
        if (name, label) in previous[0]:
            results[label] = previous[0][(name, label)]
            continue
        t0 = time.perf_counter()
        try:
            results[label] = regression_metrics(cls(seed=args.seed).fit(train).predict(test), true, TARGETS)
        except NotApplicable as e:
            print(f"  {label}: n/a ({e})")
            results[label] = None
        print(f"  {label}: {results[label]} ({time.perf_counter() - t0:.1f}s)", flush=True)
    steps = setting_steps(name, args)
    cfg = TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      warmup=min(100, steps // 10), checkpoint_every=0, progress=args.progress,
                      log_every=25, device=args.device)
    models = [(m, METANETS[m][0], {"hidden": args.hidden, "layers": args.layers, "edge_hidden": args.edge_hidden,
                                   **METANETS[m][1]})
              for m in args.metanets]
    for key, label, mc in models:
        main_net = key == "pna"
        if args.merge and (name, label) not in previous[0]:
            continue
        if (name, label) in previous[0] and (not main_net or extra):
            results[label] = previous[0][(name, label)]
            continue
        run = train_predictor(train, out / f"{name}-{mc['layers']}-{key}", model_config=mc,
                              train_config=cfg, test=test, resume=False, rank_weight=args.rank_weight)
        results[label] = run.metrics
        print(f"  {label}: {run.metrics} ({run.result.graphs_per_second:.0f} graphs/s, "
              f"{run.result.seconds:.0f}s)", flush=True)
        if main_net:
            pred = predict_store(run.model, test)
            fig = plot_predictions(pred[:, 0], true[:, 0],
                                   (out if args.no_write else ROOT / "figures") / f"{args.section}_{name}.png",
                                   title=f"{name}: metanetwork, held-out runs\n"
                                         f"tau {run.metrics['test_acc']['tau']:.3f}, "
                                         f"R2 {run.metrics['test_acc']['r2']:.3f}")
            extra = {"graphs_per_second": run.result.graphs_per_second, "seconds": run.result.seconds,
                     "threads": torch.get_num_threads(), "aux": ",".join(args.aux_targets),
                     "figure": fig, "train": len(train), "test": len(test),
                     "runs": (len(set(train.run_ids)), len(set(test.run_ids))), "archs": len(store.blocks)}
    rows = [[name, label, fmt(m, "test_acc", "tau"), fmt(m, "test_acc", "r2"), fmt(m, "gap", "tau"),
             fmt(m, "gap", "r2")] for label, m in results.items()]
    ceiling = noise_ceiling(test, *eval_sizes(name), args.seed)
    rows.append([name, "measurement-noise ceiling (see below)", f"{ceiling['test_acc']:.3f}", "-",
                 f"{ceiling['gap']:.3f}", "-"])
    return rows, extra


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cnn-zoo", type=Path, default=None)
    p.add_argument("--mlp-zoo", type=Path, default=None)
    p.add_argument("--synth-zoo", type=Path, default=None, help="a synth-mlp collection (built if missing)")
    p.add_argument("--size", default="small", help="zoo size to build when a zoo path is not given")
    p.add_argument("--build", action="store_true", help="build (or resume building) the zoos")
    p.add_argument("--min-step", type=int, default=1, help="skip checkpoints before this step (step 0 is the init)")
    p.add_argument("--max-params", type=int, default=6000,
                   help="skip architectures with more parameters (MLP graphs of width 128 cost ~40k edges each)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--steps-mlp", type=int, default=0, help="steps on the MLP zoo (default: --steps)")
    p.add_argument("--steps-mixed", type=int, default=0, help="steps on the mixed collection (default: --steps)")
    p.add_argument("--steps-synth", type=int, default=0, help="steps on the synth-mlp zoo (default: --steps)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--rank-weight", type=float, default=1.0, help="pairwise ranking loss weight (0: MSE only)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--edge-hidden", type=lambda v: None if v == "none" else int(v), default=16,
                   help="width of edge states (PropertyPredictor's default 16; 'none': as wide as nodes, the "
                        "pre-session-17 model)")
    p.add_argument("--metanets", default=["deepsets", "pna", "transformer"],
                   type=lambda s: [m for m in s.split(",") if m],
                   help="learned models to train: deepsets (baseline), pna (the main metanetwork), pnalog (it with "
                        "log node features), transformer")
    p.add_argument("--baselines", default="statnn,flat", help="non-graph baselines to fit (empty: none)")
    p.add_argument("--aux-targets", default="", type=lambda s: [t for t in s.split(",") if t],
                   help="extra targets the learned models also predict during training (multi-task); only "
                        "test_acc and gap are reported")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--settings", default="digits-cnn,digits-mlp,mixed,synth-mlp",
                   help=f"comma-separated, from {', '.join(SETTING_ZOOS)}; only the zoos they need are opened")
    p.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench_predict")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--reuse", action="store_true",
                   help="reuse results of an earlier run in --work (same data and settings); recompute n/a rows")
    p.add_argument("--no-write", action="store_true",
                   help="print results without touching BENCHMARKS.md or scripts/figures (figures go to --work)")
    p.add_argument("--merge", type=Path, nargs="+", default=None,
                   help="work folders of earlier runs (e.g. one per setting, run side by side with --no-write): "
                        "merge their results into --work and write the section from them (implies --reuse)")
    p.add_argument("--section", default="predict",
                   help="BENCHMARKS.md section (and figure prefix) to write; another name keeps the 'predict' "
                        "section, e.g. for a run of other settings or zoos")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    settings = args.settings.split(",")
    bad_nets = [m for m in args.metanets if m not in METANETS]
    if bad_nets:
        p.error(f"unknown metanets {bad_nets}; choose from {', '.join(METANETS)}")
    unknown = [n for n in settings if n not in SETTING_ZOOS]
    if unknown:
        p.error(f"unknown settings {unknown}; choose from {', '.join(SETTING_ZOOS)}")
    paths = {"digits-cnn": args.cnn_zoo, "digits-mlp": args.mlp_zoo, "synth-mlp": args.synth_zoo}
    needed = [z for z in ZOOS if any(z in SETTING_ZOOS[n] for n in settings)]
    zoos = {z: open_zoo(z, paths[z], args.size, args.build) for z in needed}

    stores, load = {}, {}
    for name, coll in zoos.items():
        def usable(r: dict, coll: CheckpointCollection = coll) -> bool:
            return (r["step"] >= args.min_step and bool(r.get("finished"))
                    and coll.space(r["arch_id"]).num_params <= args.max_params)

        t0 = time.perf_counter()
        stores[name] = PropertyGraphs.from_collections([coll], TARGETS + args.aux_targets, where=usable,
                                                   progress=args.progress)
        load[name] = time.perf_counter() - t0
    if "mixed" in settings:
        stores["mixed"] = PropertyGraphs.concat([stores["digits-cnn"], stores["digits-mlp"]])
    largest = max(stores, key=lambda n: len(stores[n].blocks))
    bench_idx = torch.randperm(len(stores[largest]))[:args.batch_size]
    t0 = time.perf_counter()
    for _ in range(20):
        stores[largest].batch(bench_idx)
    batch_rate = 20 * args.batch_size / (time.perf_counter() - t0)

    if args.merge:
        merged: dict = {"seed": args.seed, "rows": [], "extras": {}, "other_splits": []}
        for w in args.merge:
            saved = json.loads((w / "results.json").read_text())
            merged["other_splits"] += saved.get("other_splits", [])
            if saved.get("seed", 0) != args.seed:
                merged["other_splits"].append({"seed": saved["seed"], "rows": saved["rows"]})
                continue
            merged["rows"] += saved["rows"]
            merged["extras"].update(saved["extras"])
        args.work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.work / "results.json", json.dumps(merged, indent=1))
        args.reuse = True
    previous = load_previous(args.work / "results.json") if args.reuse else ({}, {}, [])
    other_splits = previous[2]
    rows, extras = [], {}
    for name in settings:
        r, extra = run_setting(name, stores[name], args, args.work, previous)
        rows += r
        if extra:
            extras[name] = extra
        save_results(args.work / "results.json", rows, extras, args.seed, other_splits)
    rows, split_seeds = over_splits(rows, args.seed, other_splits)
    several = {n: s for n, s in split_seeds.items() if len(s) > 1}
    header = ["collection", "model", "τ test acc", "R² test acc", "τ gap", "R² gap"]
    lines = [
        "Predicting a checkpoint's test accuracy and generalisation gap (train − test accuracy) from its "
        "weights, on held-out runs (split by run: no run in both train and test). "
        f"Checkpoints from step {args.min_step} on of finished runs of architectures with at most {args.max_params} "
        f"parameters; zoos: {', '.join(f'`{c.name}`' for c in zoos.values())} (built with the zoo recipes). "
        "Kendall τ from `scipy.stats.kendalltau`, R² from `sklearn.metrics.r2_score`.",
        "",
        markdown_table(header, rows),
        "",
        f"Metanetwork: {args.layers} edge-updating PNA/FiLM layers, hidden {args.hidden}, edge states "
        f"{args.edge_hidden or args.hidden} wide (the graph-transformer "
        "variant swaps FiLM/PNA messages for 4-head attention over neighbours with edge features); AdamW, "
        f"batch {args.batch_size}, steps {' / '.join(f'{setting_steps(n, args)} ({n})' for n in settings)} for it "
        f"and the DeepSets-style model, lr {args.lr}, loss MSE + "
        f"{args.rank_weight} x pairwise ranking loss, seed {args.seed}"
        + "".join(f"; {n}: mean ± standard deviation over {len(s)} run-level splits (split and training seeds "
                  f"{', '.join(map(str, s))})" for n, s in several.items())
        + "; where the table below lists auxiliary "
        "targets, the learned models (DeepSets, metanetworks, flat MLP) are also trained to predict them "
        "(multi-task), and they are not reported. The flat-weight MLP "
        "(scikit-learn) zero-pads each tensor, matched by name, to its widest shape in the data; StatNN matches "
        "per-tensor statistics by name (NaN where a tensor is absent). NG-GNN reports τ 0.934 on CIFAR10-GS "
        "(ANCHORS.md; a different, larger zoo)."
        + (" The log-node-features variant (`log_node_features=True`) is the same metanetwork with every node "
           "value (biases, BatchNorm scales, shifts and running statistics) also fed as sign(x)·log(1+|x|)."
           if "pnalog" in args.metanets else ""),
        "",
        "Measurement-noise ceiling: on the digits zoos test accuracy is measured on the 360 digits validation images "
        "(train accuracy on 1,437), on synth-mlp on 8,000 test points (train accuracy on 2,000), so it is a binomial "
        "draw around the checkpoint's true accuracy. The row gives Kendall τ between "
        "the held-out runs' measured values and binomial resamples of them (median of 20): about how much of the "
        "ranking that noise alone scrambles, a rough ceiling for any predictor on these zoos.",
        "",
        markdown_table(["collection", "architectures", "train / test runs", "train / test checkpoints",
                        "training graphs/s", "CPU threads", "train time (s)", "auxiliary targets"],
                       [[n, e["archs"], f"{e['runs'][0]} / {e['runs'][1]}", f"{e['train']} / {e['test']}",
                         f"{e['graphs_per_second']:.0f}", e["threads"], f"{e['seconds']:.0f}", e["aux"] or "none"]
                        for n, e in extras.items()]),
        "",
        f"Data loading: each collection is read once into per-architecture flat tensors "
        f"({', '.join(f'{n}: {len(stores[n])} checkpoints in {load[n]:.1f}s' for n in load)}); a mixed batch is then "
        f"assembled by gathers at {batch_rate:.0f} graphs/s ({largest}), far above the training rate, so loading is not the "
        "bottleneck.",
        "",
        "Predicted vs true test accuracy (metanetwork, held-out runs): "
        + ", ".join(f"[{n}](scripts/figures/{args.section}_{n}.png)" for n in extras),
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        for n, e in extras.items():
            if e["figure"] != ROOT / "figures" / f"{args.section}_{n}.png":
                shutil.copyfile(e["figure"], ROOT / "figures" / f"{args.section}_{n}.png")
        command = "scripts/bench_predict.py" + ("" if args.section == "predict" else f" --section {args.section}")
        write_section(args.section, f"## Property prediction from weights (`{command}`)\n\n" + body)


if __name__ == "__main__":
    main()
