"""Nowcasting benchmark: steps for Adam vs NiNo, WNN, linefit and LAWA to reach Adam's validation target.

Tasks are all outside meta-training (see :data:`TASKS`); `--peer` runs ANCHORS.md's setting alone, `--overhead`
measures NowcastOptimizer's time share. For each task and seed, every method trains
the same seeded model on the same batches with AdamW; nowcasting methods wrap it in a
:class:`NowcastOptimizer` (period 100 unless the task sets its own, context 5, NiNo's decaying horizon schedule rescaled to the
nowcaster's K). The target is Adam's validation metric averaged over the last 5% of its budget (mean
over seeds); steps-to-target is the first evaluation at or past it, median over seeds.

    python scripts/bench_nowcast.py --nino runs/nino/model --wnn runs/wnn/model
    weightspace nowcast bench --seeds 3
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchlib import markdown_table, write_section
from weightspace.nowcast import (LAWA, LEARNED_NOWCASTERS, WNN, LineFit, NiNo, NowcastOptimizer, horizon_schedule,
                                 load_nowcaster)
from weightspace.tasks.data import char_batch, digits_split, stdlib_corpus, tabular_split
from weightspace.tasks.models import build, example_input
from weightspace.tasks.train import evaluate_classifier, evaluate_lm
from weightspace.utils import atomic_write_text

FIGURES = Path(__file__).resolve().parent / "figures"
BENCHMARKS = FIGURES.parent.parent / "BENCHMARKS.md"
"""The repository's BENCHMARKS.md: written by default wherever the script is run from."""
PERIOD = 100
PEER_TASK = "peer-digits-fm16-lr3e-4"
PEER_SEEDS = 5
IMPROVING = 0.005
"""A task counts as "Adam still improving" when Adam's metric gains at least this much (relative) from 75-80% of
its budget to its last 5% (the rule that picks the tasks of the issue's 2x goal, fixed before measuring)."""
GUARD_TOLERANCE = 0.1
GUARD_DELAY = 10
HORIZON_SEARCH = 3
"""Every jump tries the scheduled horizon k and k/2, ..., k/2^(HORIZON_SEARCH-1), keeping the lowest guard loss
(``-s<N>`` sets N per method; ``-s1``: the scheduled k alone)."""
METHODS = ("adam", "nino", "nino-noguard", "nino-reset", "wnn", "linefit", "lawa")


@dataclass
class Task:
    name: str
    description: str
    family: str
    kwargs: dict[str, Any]
    data: str
    steps: int
    lr: float
    batch_size: int = 128
    higher_better: bool = True
    metric: str = "val acc"
    period: int = PERIOD
    eval_every: int | None = None


TASKS = [
    Task("digits-mlp-wide-deep", "digits MLP 64-192x4-10 (meta-training: width 16-128, depth 1-3)", "mlp",
         dict(in_features=64, widths=[192] * 4, out_features=10, activation="relu"), "digits-flat", 1000, 1e-3),
    Task("digits-cnn-16-32-32", "digits CNN 16/32/32 channels, NiNo's FM-16 (meta-training: 4-16)", "cnn",
         dict(channels=(16, 32, 32), batchnorm=False, activation="relu"), "digits", 1000, 1e-3),
    Task("tiny-gpt-d96", "char GPT d_model 96, 2 layers, 4 heads (meta-training: d_model 32-64)", "gpt",
         dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, d_model=96, attention="separate",
              tie_embeddings=True, mlp_ratio=4), "stdlib", 600, 1e-3, 16, False, "val loss"),
    Task("digits-mlp-wide-deep-lr3e-4", "the same MLP at lr 3e-4 (Adam still improving at the end)", "mlp",
         dict(in_features=64, widths=[192] * 4, out_features=10, activation="relu"), "digits-flat", 1000, 3e-4),
    Task("digits-cnn-16-32-32-lr3e-4", "the same CNN at lr 3e-4 (ANCHORS' NiNo 2.1x setting, shorter)", "cnn",
         dict(channels=(16, 32, 32), batchnorm=False, activation="relu"), "digits", 1000, 3e-4),
    Task("peer-digits-fm16-lr3e-4", "ANCHORS.md's NiNo setting exactly: FM-16 CNN 16/32/32 (14,378 parameters), "
         "NiNo every 300 steps (public graph checkpoint: 2.1x over 10 seeds)", "cnn",
         dict(channels=(16, 32, 32), batchnorm=False, activation="relu"), "digits", 3000, 3e-4, period=300,
         eval_every=10),
    Task("breast-cancer-mlp", "MLP 30-64-64-2 on breast_cancer (never seen)", "mlp",
         dict(in_features=30, widths=[64, 64], out_features=2, activation="tanh"), "breast_cancer", 600, 3e-4, 64),
]


@lru_cache(maxsize=None)
def _data(name: str):
    if name == "digits-flat":
        return digits_split(0, flat=True)
    if name == "digits":
        return digits_split(0)
    if name == "stdlib":
        corpus = stdlib_corpus(max_chars=1_000_000)
        return corpus
    return tabular_split(name)


def _task_fns(task: Task, model: nn.Module, seed: int, loss_guard: bool = False) -> tuple[Callable[[], torch.Tensor], Callable[[], float],
                                                                 Callable[[], torch.Tensor]]:
    """``train_loss()`` (next minibatch), ``evaluate()`` (validation metric) and ``guard()``.

    The guard looks at a fixed batch of training examples (never validation data): its
    cross-entropy (its error rate for classifiers without ``loss_guard``).
    """
    data = _data(task.data)
    g = torch.Generator().manual_seed(seed)
    if task.family == "gpt":
        gx, gy = char_batch(data.train_ids, task.kwargs["block_size"], 64, torch.Generator().manual_seed(999))

        def train_loss() -> torch.Tensor:
            x, y = char_batch(data.train_ids, task.kwargs["block_size"], task.batch_size, g)
            return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

        def evaluate() -> float:
            return evaluate_lm(model, data.val_ids, task.kwargs["block_size"], 32, 4)

        def guard() -> torch.Tensor:
            return F.cross_entropy(model(gx).flatten(0, 1), gy.flatten())
        return train_loss, evaluate, guard
    n = len(data.y_train)
    bs = min(task.batch_size, n)
    state = {"order": torch.randperm(n, generator=g), "pos": 0}
    guard_idx = torch.randperm(n, generator=torch.Generator().manual_seed(999))[:512]

    def train_loss() -> torch.Tensor:
        if state["pos"] + bs > n:
            state["order"], state["pos"] = torch.randperm(n, generator=g), 0
        idx = state["order"][state["pos"]:state["pos"] + bs]
        state["pos"] += bs
        return F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])

    def evaluate() -> float:
        return evaluate_classifier(model, data.x_val, data.y_val)[1]

    def guard() -> torch.Tensor:
        was = model.training
        model.eval()
        logits = model(data.x_train[guard_idx])
        model.train(was)
        if loss_guard:
            return F.cross_entropy(logits, data.y_train[guard_idx])
        return (logits.argmax(1) != data.y_train[guard_idx]).float().mean()
    return train_loss, evaluate, guard


def check_methods(methods: list[str], nowcasters: dict[str, Any]) -> None:
    """Refuse an unknown nowcaster or option in ``--methods`` before any run starts."""
    for method in methods:
        name, *opts = method.split("-")
        bad = [o for o in opts
               if not re.fullmatch(r"noguard|reset|now|gerr|flat|bt|tol[0-9.]+|[hdsup][0-9]+", o)]
        if method != "adam" and name not in nowcasters:
            raise SystemExit(f"--methods {method!r}: unknown nowcaster {name!r}; known: adam, "
                             f"{', '.join(sorted(nowcasters))} (more with --extra NAME=FOLDER)")
        if bad:
            raise SystemExit(f"--methods {method!r}: unknown option(s) {', '.join('-' + b for b in bad)}; options: "
                             f"-noguard -reset -now -gerr -tol<x> -h<K> -d<N> -s<N> -u<N> -p<N> -bt -flat")


def search_multiples(down: int, up: int = 0) -> list[float]:
    """The horizon multiples a jump tries: 1, 1/2, ..., 1/2^(down-1), then 2, ..., 2^up."""
    return [2.0 ** -i for i in range(down)] + [2.0 ** (i + 1) for i in range(up)]


def run_one(task: Task, method: str, seed: int, nowcasters: dict[str, Any]) -> dict[str, Any]:
    model = build(task.family, seed=seed, **task.kwargs)
    train_loss, evaluate, guard = _task_fns(task, model, seed, loss_guard="gerr" not in method.split("-"))
    base = torch.optim.AdamW(model.parameters(), lr=task.lr, weight_decay=0.0)
    opt: torch.optim.Optimizer = base
    if method != "adam":
        name, *opts = method.split("-")
        def number(prefix: str, default: int | None) -> int | None:
            return next((int(o[1:]) for o in opts if o.startswith(prefix) and o[1:].isdigit()), default)

        tol = next((float(o[3:]) for o in opts if o.startswith("tol")), GUARD_TOLERANCE)
        top, delay = number("h", None), number("d", GUARD_DELAY)
        fractions = search_multiples(number("s", HORIZON_SEARCH), number("u", 0))
        sched = horizon_schedule(top) if top is not None else None
        if "flat" in opts:
            sched = [top or nowcasters[name].max_horizon or 16] * 10
        opt = NowcastOptimizer(model, base, nowcasters[name], period=number("p", task.period),
                               example_input=example_input(model),
                               horizons=sched,
                               guard=None if "noguard" in opts else guard, guard_tolerance=tol,
                               guard_delay=0 if "now" in opts else delay,
                               reset_state="reset" in opts, stop=task.steps,
                               horizon_search=fractions if len(fractions) > 1 and "noguard" not in opts else (),
                               search_rule="longest" if "bt" in opts else "lowest")
    eval_every = task.eval_every or max(1, task.steps // 50)
    curve = [(0, evaluate())]
    step_seconds = 0.0
    model.train()
    for step in range(1, task.steps + 1):
        t0 = time.perf_counter()
        loss = train_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if task.family == "gpt":
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step_seconds += time.perf_counter() - t0
        if step % eval_every == 0 or step == task.steps:
            curve.append((step, evaluate()))
            model.train()
    jumps = getattr(opt, "jumps", [])
    now_s = sum(j.seconds for j in jumps)
    return {"task": task.name, "method": method, "seed": seed, "curve": curve, "train_seconds": step_seconds - now_s,
            "nowcast_seconds": now_s, "jumps": len(jumps), "rollbacks": sum(not j.accepted for j in jumps),
            "rollback_steps": [j.step for j in jumps if not j.accepted],
            "guard": [(j.step, j.loss_before, j.loss_after) for j in jumps]}


def adam_target(adam_runs: list[dict[str, Any]], task: Task) -> float:
    """Adam's metric over the last 5% of its budget, averaged per seed and then over seeds."""
    tail = [statistics.mean(v for s, v in r["curve"] if s >= 0.95 * task.steps) for r in adam_runs]
    return sum(tail) / len(tail)


def per_seed_steps(results: list[dict[str, Any]], task: Task, method: str) -> list[float]:
    """Steps to the task's target for each seed of ``method`` (seed order), with the target of :func:`summarize`."""
    target = adam_target([r for r in results if r["task"] == task.name and r["method"] == "adam"], task)
    runs = sorted((r for r in results if r["task"] == task.name and r["method"] == method), key=lambda r: r["seed"])
    return [steps_to(r["curve"], target, task.higher_better) for r in runs]


def steps_to(curve: list[tuple[int, float]], target: float, higher: bool) -> float:
    for s, v in curve:
        if (v >= target) if higher else (v <= target):
            return s
    return math.inf


def summarize(results: list[dict[str, Any]], tasks: list[Task]) -> tuple[str, dict[str, Any]]:
    by = {}
    for r in results:
        by.setdefault((r["task"], r["method"]), []).append(r)
    found = {k[1] for k in by}
    methods = [m for m in METHODS if m in found] + sorted(found - set(METHODS))
    rows, summary = [], {}
    ratio_rows = []
    for t in tasks:
        adam = by.get((t.name, "adam"), [])
        if not adam:
            continue
        target = adam_target(adam, t)
        gain = adam_gain(adam, t)
        cells = [t.name, f"{t.metric} {target:.4g}"]
        med = {}
        for m in methods:
            rs = by.get((t.name, m), [])
            if not rs:
                cells.append("-")
                continue
            st = [steps_to(r["curve"], target, t.higher_better) for r in rs]
            md = statistics.median(st)
            med[m] = md
            reached = sum(math.isfinite(s) for s in st)
            extra = f" ({reached}/{len(st)})" if reached < len(st) else ""
            cells.append(("never" if not math.isfinite(md) else f"{md:.0f}") + extra)
        rows.append(cells)
        adam_steps = med["adam"] if math.isfinite(med["adam"]) else float(t.steps)
        ratios = {m: adam_steps / med[m] if math.isfinite(med[m]) else 0.0 for m in med}
        bound = "" if math.isfinite(med["adam"]) else ">"
        summary[t.name] = {"target": target, "median_steps": med, "ratios": ratios, "adam_gain": gain,
                           "improving": gain >= IMPROVING}
        nino_runs = by.get((t.name, "nino"), [])
        share = (statistics.median(r["nowcast_seconds"] / max(r["train_seconds"] + r["nowcast_seconds"], 1e-9)
                                   for r in nino_runs) if nino_runs else math.nan)
        rb = sum(r["rollbacks"] for r in nino_runs)
        nj = sum(r["jumps"] for r in nino_runs)
        final = {m: statistics.median(r["curve"][-1][1] for r in by.get((t.name, m), [])) for m in methods
                 if by.get((t.name, m))}
        ratio_rows.append([t.name] + [(f"{bound}{ratios[m]:.2f}x" if ratios[m] > 0 else "never") if m in ratios else "-"
                                    for m in methods[1:]]
                          + [f"{100 * share:.1f}%", f"{rb}/{nj}", f"{final.get('adam', math.nan):.4g}",
                             f"{final.get('nino', math.nan):.4g}", f"{final.get('nino-noguard', math.nan):.4g}"])
        summary[t.name].update(nowcast_share=share, rollbacks=rb, jumps=nj, final=final)
    table1 = markdown_table(["task", "target"] + [f"{m} steps" for m in methods], rows)
    table2 = markdown_table(["task"] + [f"{m} speed-up" for m in methods[1:]]
                            + ["NiNo time share", "NiNo rollbacks", "Adam final", "NiNo final", "NiNo no-guard final"],
                            ratio_rows)
    return table1 + "\n\n" + table2, summary


def adam_gain(adam_runs: list[dict[str, Any]], task: Task) -> float:
    """Relative improvement of Adam's metric (mean over seeds) from 75-80% of its budget to its last 5%."""
    def window(lo: float, hi: float) -> float:
        vals = [v for r in adam_runs for s, v in r["curve"] if lo * task.steps <= s <= hi * task.steps]
        return sum(vals) / len(vals)

    early, late = window(0.75, 0.80), window(0.95, 1.0)
    change = (late - early) if task.higher_better else (early - late)
    return change / max(abs(early), 1e-12)


def verdict(summary: dict[str, Any], tasks: list[Task]) -> str:
    """The goals of issue 15, each checked against the measured numbers."""
    names = [t.name for t in tasks if t.name in summary]
    ratio = lambda n, m: summary[n]["ratios"].get(m, 0.0)  # noqa: E731
    lines = []
    if PEER_TASK in names:
        sp = ratio(PEER_TASK, "nino")
        lines.append(f"- The peer's setting (`{PEER_TASK}`) with this run's `nino` and seeds: {sp:.2f}x (NiNo's "
                     f"checkpoint 2.1x; the goal, >= 2.2x, is judged over {PEER_SEEDS} seeds in the `--peer` "
                     f"section).")
    held = [n for n in names if n != PEER_TASK]
    imp = [n for n in held if summary[n]["improving"]]
    if imp:
        m = statistics.mean(ratio(n, "nino") for n in imp)
        lines.append(f"- Held-out tasks where Adam still improves at the end of its budget (rule, fixed before "
                     f"measuring: Adam's metric over its last 5% of steps at least {IMPROVING:.1%} better than over "
                     f"75-80%, mean over seeds): {', '.join(imp)}; mean NiNo speed-up {m:.2f}x (goal >= 2x): "
                     f"{'met' if m >= 2 else 'not met'}.")
    if all("wnn" in summary[n]["ratios"] for n in held) and held:
        a, b = (statistics.mean(ratio(n, k) for n in held) for k in ("nino", "wnn"))
        lines.append(f"- Graph NiNo vs WNN, mean over held-out tasks: {a:.2f}x vs {b:.2f}x (goal: NiNo ahead): "
                     f"{'met' if a > b else 'not met'}.")
    rivals = [k for k in ("linefit", "lawa") if all(k in summary[n]["ratios"] for n in names)]
    if rivals:
        best = lambda n, k: max(r for m, r in summary[n]["ratios"].items() if m.split("-")[0] == k)  # noqa: E731
        beats = [n for n in names if all(ratio(n, "nino") > best(n, k) for k in rivals)]
        variants = sorted(m for m in summary[names[0]]["ratios"] if m.split("-")[0] in rivals)
        lines.append(f"- NiNo beats {' and '.join(rivals)} (each at its best of {', '.join(variants)}) on "
                     f"{len(beats)} of {len(names)} tasks (goal: all): "
                     f"{'met' if len(beats) == len(names) else 'not met'}"
                     + (f"; not on {', '.join(n for n in names if n not in beats)}." if len(beats) < len(names)
                        else "."))
    worse = [n for n in names if 0 < ratio(n, "nino") < 1.0 or ratio(n, "nino") == 0.0]
    lines.append(f"- Guarded NiNo slower than Adam on {len(worse)} task(s) ({', '.join(worse) or 'none'}; goal: none).")
    return "Goals of issue 15, as measured here:\n\n" + "\n".join(lines)


def plot(results: list[dict[str, Any]], tasks: list[Task], path: Path) -> None:
    from matplotlib.figure import Figure

    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig = Figure(figsize=(4.4 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.set_visible(False)
    for ax, t in zip(axes.flat, tasks):
        found = {r["method"] for r in results}
        for m in [m for m in METHODS if m in found] + sorted(found - set(METHODS)):
            rs = [r for r in results if r["task"] == t.name and r["method"] == m]
            if not rs:
                continue
            steps = [s for s, _ in rs[0]["curve"]]
            med = [statistics.median(r["curve"][i][1] for r in rs) for i in range(len(steps))]
            ax.plot(steps, med, label=m, lw=1.2)
        ax.axvline(t.period, color="0.85", lw=0.5)
        ax.set_title(t.name, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(t.metric)
        if t.higher_better:
            lo = min(r["curve"][len(r["curve"]) // 5][1] for r in results if r["task"] == t.name)
            ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def figure_link(out: Path, benchmarks: str, name: str = "nowcast_curves.png") -> str:
    """Markdown link to the curves: copied into ``scripts/figures`` when the repository's BENCHMARKS.md is written."""
    fig = out / name
    if Path(benchmarks).resolve() == BENCHMARKS:
        shutil.copyfile(fig, FIGURES / fig.name)
        return f"[scripts/figures/{fig.name}](scripts/figures/{fig.name})"
    return f"`{fig}`"


def load_nowcasters(nino: str | None, wnn: str | None, extra: list[str]
                    ) -> tuple[dict[str, Any], dict[str, str | None]]:
    """The benchmark's nowcasters by method name, and where each learned one came from (``None``: packaged
    default); ``extra`` adds ``NAME=FOLDER`` ones (NiNo, NodeNiNo or WNN, from its config; FOLDER may be a packaged
    name)."""
    out: dict[str, Any] = {"nino": NiNo.from_pretrained(nino), "wnn": WNN.from_pretrained(wnn),
                           "linefit": LineFit(5), "lawa": LAWA(5)}
    sources: dict[str, str | None] = {"nino": nino, "wnn": wnn}
    for item in extra:
        name, _, path = item.partition("=")
        if not name.isalnum() or not path:
            raise SystemExit(f"--extra takes NAME=FOLDER with an alphanumeric NAME (a method name), got {item!r}")
        out[name] = load_nowcaster(path)
        sources[name] = path
    return out, sources


def describe_nowcasters(nowcasters: dict[str, Any], sources: dict[str, str | None]) -> str:
    """One line per learned nowcaster: its checkpoint (repository-relative or packaged name) and size."""
    repo = BENCHMARKS.parent
    lines = []
    for name, nc in nowcasters.items():
        if not isinstance(nc, LEARNED_NOWCASTERS):
            continue
        src = sources.get(name)
        if src is None:
            where = f"packaged `{type(nc).pretrained_name}`"
        else:
            path = Path(type(nc).pretrained_location(src)).resolve()
            where = f"`{path.relative_to(repo)}`" if path.is_relative_to(repo) else f"folder `{path.name}`"
        lines.append(f"`{name}`: {type(nc).__name__} {where} ({nc.sizes}, K={nc.max_horizon}, "
                     f"{sum(p.numel() for p in nc.parameters()):,} parameters)")
    return "Learned nowcasters: " + "; ".join(lines) + "." if lines else ""


def _one_thread_run(task: Task, method: str, seed: int, nowcasters: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(1)
    return run_one(task, method, seed, nowcasters)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    args.benchmarks = str(args.benchmarks or BENCHMARKS)
    peer = bool(getattr(args, "peer", False))
    if peer:
        tasks = [t for t in TASKS if t.name == PEER_TASK]
    else:
        tasks = [t for t in TASKS if args.tasks is None or t.name in args.tasks.split(",")]
    seeds = args.seeds if args.seeds is not None else (PEER_SEEDS if peer else 3)
    if args.quick:
        for t in tasks:
            t.steps = 300
            t.period = min(t.period, 100)
    methods = args.methods.split(",") if getattr(args, "methods", None) else list(METHODS)
    nowcasters, sources = load_nowcasters(args.nino, args.wnn, getattr(args, "extra", None) or [])
    check_methods(methods, nowcasters)
    out = Path(args.out)
    raw_path = out / "results.json"
    summarize_only = bool(getattr(args, "summarize_only", False))
    if summarize_only and not raw_path.is_file():
        raise SystemExit(f"--summarize-only: no {raw_path} to summarize (run the benchmark with --out {out} first)")
    out.mkdir(parents=True, exist_ok=True)
    keep = raw_path.exists() and (getattr(args, "resume", False) or summarize_only)
    results = json.loads(raw_path.read_text()) if keep else []
    done = {(r["task"], r["method"], r["seed"]) for r in results}
    from tqdm.auto import tqdm

    todo = [(t, m, s) for t in tasks for s in range(seeds) for m in methods if (t.name, m, s) not in done]
    if summarize_only:
        todo = []
    workers = getattr(args, "workers", 1) or 1
    if workers > 1 and todo:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as ex:
            futures = [ex.submit(_one_thread_run, t, m, s, nowcasters) for t, m, s in todo]
            for f in tqdm(as_completed(futures), total=len(futures), desc="bench_nowcast", unit="run"):
                results.append(f.result())
                atomic_write_text(raw_path, json.dumps(results))
    for t, m, s in (tqdm(todo, desc="bench_nowcast", unit="run") if workers <= 1 else []):
        results.append(run_one(t, m, s, nowcasters))
        atomic_write_text(raw_path, json.dumps(results))
    tables, summary = summarize(results, tasks)
    fig_name = "nowcast_peer_curves.png" if peer else "nowcast_curves.png"
    plot(results, tasks, out / fig_name)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    speedups = [summary[t.name]["ratios"].get("nino", math.nan) for t in tasks if t.name in summary]
    periods = sorted({t.period for t in tasks})
    from weightspace.nowcast import horizon_schedule as hs

    Ks = sorted({getattr(nc, "max_horizon", None) or 16 for nc in nowcasters.values()})
    sched = ("context spacings of " + ", ".join(f"{p // 5} steps at period {p}" for p in periods)
             + "; horizons in spacings: NiNo's decaying schedule rescaled to each nowcaster's max horizon K ("
             + "; ".join(f"K={K}: `{hs(K)}`" for K in Ks) + "; linefit and LAWA as K=16, or K from `-h<K>`)")
    body = (f"Steps to reach Adam's validation target (Adam's metric averaged over the last 5% of its budget, "
            f"mean over seeds), median over {seeds} seeds; `(r/n)`: only r of n seeds reached it. "
            f"AdamW, weight decay 0; nowcasters wrap it with NowcastOptimizer (context 5, {sched}; "
            f"no jump on the last step). All nowcasters run with the "
            f"same guard except the `-noguard` ones: cross-entropy on a fixed training batch just before a jump and "
            f"{GUARD_DELAY} steps after it; the jump is rolled back (parameters and AdamW state restored) if "
            f"that loss is non-finite or more than {GUARD_TOLERANCE:.0%} above its pre-jump value. "
            f"`-reset` also clears AdamW's moments after each jump; `-now` judges at once (no delay); `-h<K>` "
            f"rescales the schedule to a first horizon of K spacings. Each guarded jump tries the scheduled "
            f"horizon k and k/2, ..., k/2^(N-1) (N = {HORIZON_SEARCH}; `-s<N>` sets N, `-s1` jumps k alone) and "
            f"keeps the one with the lowest guard loss right after it (`-bt`: the longest one that passes the "
            f"guard's test right after it). No task was seen in meta-training:\n\n"
            + "\n".join(
                f"- `{t.name}`: {t.description}; {t.steps} steps, lr {t.lr}, batch {t.batch_size}, period {t.period}"
                for t in tasks)
            + "\n\n" + tables + "\n\nSpeed-up: Adam's median steps over the method's (`>`: Adam's median "
            f"never reached the target, its budget is used, a lower bound; `never`: the method's median did not "
            f"reach it). Time share: nowcasting (NiNo forward, guard evaluations, parameter copies) over "
            f"nowcasting plus training steps, median over seeds; evaluation excluded. Mean NiNo speed-up over tasks: "
            f"{statistics.mean(speedups) if speedups else math.nan:.2f}x. "
            f"Curves: {figure_link(out, args.benchmarks, fig_name)}.")
    used = dict.fromkeys(x.split("-")[0] for x in methods)
    described = describe_nowcasters({m: nowcasters[m] for m in used if m in nowcasters}, sources)
    if described:
        body += "\n\n" + described
    if peer:
        body += "\n\nPer seed, steps to target: " + "; ".join(
            f"{m} " + "/".join(("never" if not math.isfinite(x) else f"{x:.0f}") for x in per_seed_steps(results, t, m))
            for t in tasks for m in methods) + "."
    if peer:
        sp = summary.get(PEER_TASK, {}).get("ratios", {}).get("nino", math.nan)
        body += (f"\n\nThe peer's setting: guarded NiNo {sp:.2f}x fewer steps than AdamW (NiNo's public graph "
                 f"checkpoint: 2.1x, ANCHORS.md; goal >= 2.2x): {'met' if sp >= 2.2 else 'not met'}.")
        write_section("bench_nowcast_peer", "## Nowcasting in the peer's own setting (scripts/bench_nowcast.py "
                      "--peer)\n\n" + body, args.benchmarks)
    else:
        body += "\n\n" + verdict(summary, tasks)
        write_section("bench_nowcast", "## Nowcasting (scripts/bench_nowcast.py)\n\n" + body, args.benchmarks)
    print(tables)
    return 0


OVERHEAD_TASKS = ("peer-digits-fm16-lr3e-4", "digits-mlp-wide-deep")
OVERHEAD_PERIODS = (1000, 300)


def measure_overhead(task: Task, nowcaster: Any, repeats: int = 5, steps: int = 200) -> dict[str, float]:
    """Seconds of one AdamW step, one context record and one guarded jump (NiNo forward, the guard's
    evaluations before and at each searched horizon, whose winner's loss is the immediate verdict, parameter
    copies) of :class:`NowcastOptimizer` on ``task``'s model; medians."""
    model = build(task.family, seed=0, **task.kwargs)
    train_loss, _, guard = _task_fns(task, model, 0, loss_guard=True)
    base = torch.optim.AdamW(model.parameters(), lr=task.lr, weight_decay=0.0)
    opt = NowcastOptimizer(model, base, nowcaster, period=5, example_input=example_input(model), guard=guard,
                           guard_tolerance=1e9, horizons=[2 ** (HORIZON_SEARCH - 1)],
                           horizon_search=search_multiples(HORIZON_SEARCH))
    step_t = []
    for i in range(steps):
        t0 = time.perf_counter()
        loss = train_loss()
        base.zero_grad(set_to_none=True)
        loss.backward()
        base.step()
        step_t.append(time.perf_counter() - t0)
    rec_t, jump_t = [], []
    for _ in range(repeats):
        for _ in range(opt.context):
            t0 = time.perf_counter()
            opt._record()
            rec_t.append(time.perf_counter() - t0)
        jump_t.append(opt.jump().seconds)
    return {"step": statistics.median(step_t[steps // 4:]), "record": statistics.median(rec_t),
            "jump": statistics.median(jump_t)}


def run_overhead(args: argparse.Namespace) -> int:
    """NowcastOptimizer's share of training time at NiNo's period (1,000) and at 300 (goals: <= 2% and <= 5%)."""
    torch.set_num_threads(1)
    args.benchmarks = str(args.benchmarks or BENCHMARKS)
    loaded, sources = load_nowcasters(args.nino, args.wnn, args.extra)
    nowcasters = {n: nc for n, nc in loaded.items() if isinstance(nc, LEARNED_NOWCASTERS)}
    rows, shares = [], []
    for tname in OVERHEAD_TASKS:
        task = next(t for t in TASKS if t.name == tname)
        for nname, nc in nowcasters.items():
            m = measure_overhead(task, nc)
            cells = [tname, nname, f"{1e3 * m['step']:.2f}", f"{1e3 * m['jump']:.1f}"]
            for period in OVERHEAD_PERIODS:
                extra = m["jump"] + nc.context * m["record"]
                share = extra / (extra + period * m["step"])
                shares.append((tname, nname, period, share))
                cells.append(f"{100 * share:.2f}%")
            rows.append(cells)
            print(cells, flush=True)
    context = next(iter(nowcasters.values())).context
    table = markdown_table(["task", "nowcaster", "AdamW step (ms)", "guarded jump (ms)"]
                           + [f"share at period {p}" for p in OVERHEAD_PERIODS], rows)
    goal = {1000: 0.02, 300: 0.05}
    met = [f"period {p}: " + ", ".join(f"{t} {n} {'met' if s <= goal[p] else 'not met'}"
                                       for t, n, pp, s in shares if pp == p) for p in OVERHEAD_PERIODS]
    body = (f"NowcastOptimizer's share of training wall-clock: (one guarded jump + {context} context records) / "
            f"(that + period x one AdamW step), each the median of repeated timings on one thread. A jump is the "
            f"nowcaster's forward, the guard's loss before and at each of the {HORIZON_SEARCH} searched horizons "
            f"(cross-entropy on 512 fixed training examples; the immediate verdict reuses the winner's) and the "
            f"parameter copies; evaluation excluded. "
            f"Goals on CPU (issue 15): <= 2% at period 1,000, <= 5% at period 300.\n\n{table}\n\n"
            + describe_nowcasters(nowcasters, sources) + "\n\n" + "\n".join(
                f"- {line}." for line in met))
    write_section("bench_nowcast_overhead", "## Nowcasting overhead (scripts/bench_nowcast.py --overhead)\n\n"
                  + body, args.benchmarks)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nino", default=None)
    p.add_argument("--wnn", default=None)
    p.add_argument("--tasks", default=None)
    p.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(METHODS)}, each optionally "
                   "with -noguard, -reset, -now, -tol<x>, -h<K> (NiNo's schedule rescaled to a first horizon K), -d<N> "
                   f"(guard verdict N steps after the jump; default {GUARD_DELAY}), -s<N> (at each jump try the "
                   f"horizons k, k/2, ..., k/2^(N-1) and keep the one with the lowest guard loss; default "
                   f"{HORIZON_SEARCH}, -s1: k alone), -u<N> (also 2k, ..., 2^N k), -p<N> (nowcast every N steps "
                   "instead of the task's period), -bt (keep the longest horizon that passes the guard's test at "
                   "once), -flat (the max horizon at every jump)")
    p.add_argument("--seeds", type=int, default=None, help=f"seeds per task (default 3; {PEER_SEEDS} with --peer)")
    p.add_argument("--peer", action="store_true",
                   help=f"run only the peer's setting ({PEER_TASK}) and write its own BENCHMARKS.md section")
    p.add_argument("--out", default="bench_nowcast")
    p.add_argument("--benchmarks", default=None, help="markdown file to write (default: the repository's)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--resume", action="store_true", help="keep results already in OUT/results.json")
    p.add_argument("--extra", action="append", default=[],
                   help="NAME=FOLDER: one more NiNo/WNN nowcaster, run as method NAME (repeatable)")
    p.add_argument("--workers", type=int, default=1, help="runs in parallel processes (one thread each)")
    p.add_argument("--summarize-only", action="store_true", help="no runs: tables from OUT/results.json")
    p.add_argument("--overhead", action="store_true",
                   help="measure NowcastOptimizer's time share at periods 1000 and 300 and write its own section")
    args = p.parse_args(argv)
    return run_overhead(args) if args.overhead else run(args)


if __name__ == "__main__":
    sys.exit(main())
