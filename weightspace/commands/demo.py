"""``weightspace demo``: the whole mission at a tiny scale, every number computed in the run.

Seven steps, each a small function returning its figures: a zoo, its graphs, a property
predictor, nowcasting against Adam, alignment and merging, parameter prediction with the
packaged hypernetwork, and a generator measured for memorization. PNGs are written beside the
summary (``--out``), and the run ends with a table of what each step measured.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

MLP = {"in_features": 64, "widths": [64, 64], "out_features": 10, "activation": "relu"}
"""The digits MLP that the nowcasting and alignment steps train from scratch."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole mission at a tiny scale: zoo, graphs, prediction, nowcasting, "
                                    "alignment and merging, parameter prediction, generation and memorization")
    p.add_argument("--out", default=None, help="folder for the zoos, models, PNGs and summary.json "
                                               "(default: a new temporary folder)")
    p.add_argument("--steps", default="1,2,3,4,5,6,7",
                   help="comma-separated subset of the steps to run (default: all seven)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _header(i: int, text: str) -> None:
    print(f"\n{i}. {text}", flush=True)


def _say(text: str) -> None:
    print("   " + text.replace("\n", "\n   "), flush=True)


def step_zoo(ctx: dict[str, Any]) -> dict[str, Any]:
    from ..collections import CheckpointCollection
    from ..tasks.zoo import build_zoo

    out = ctx["out"] / "zoo-digits-mlp"
    _header(1, f"A tiny digits-MLP zoo in {out} (real training on scikit-learn digits)")
    build_zoo("digits-mlp", out, size="tiny", seed=0, progress=ctx["progress"])
    coll = CheckpointCollection.open(out)
    ctx["zoo"] = coll
    _say(repr(coll))
    last = [coll.row(r, coll.steps(r)[-1]) for r in coll.runs()]
    accs = [r["test_acc"] for r in last]
    _say(f"final test accuracy of its {len(last)} runs: " + ", ".join(f"{a:.3f}" for a in accs))
    _say(f"problems found by verify(): {len(coll.verify())}")
    return {"runs": len(coll.runs()), "checkpoints": len(coll), "architectures": len(coll.architectures()),
            "best final test_acc": max(accs)}


def step_graphs(ctx: dict[str, Any]) -> dict[str, Any]:
    from torch_geometric.loader import DataLoader

    from ..collections import GraphDataset

    coll = ctx["zoo"]
    _header(2, "Its checkpoints as neural graphs (a lazy PyTorch Geometric dataset)")
    ds = GraphDataset(coll, targets=["test_acc"])
    batch = next(iter(DataLoader(ds, batch_size=8, shuffle=True)))
    _say(f"{ds}: a batch of 8 is {batch}")
    row = coll.rows()[-1]
    space = coll.space(row)
    sds = coll.trajectory(row["run_id"])
    data = space.to_graph(sds)
    exact = all(torch.equal(a[k], b[k]) for a, b in zip(space.from_graph(data), sds) for k in a)
    perm = space.random_permutation(torch.Generator().manual_seed(0))
    moved = space.permute(sds[-1], perm)
    relabel = torch.equal(space.to_graph(moved).x, data.x[:, -1:][space.node_permutation(perm)])
    _say(f"graph -> state_dicts round trip bit-exact: {exact}; a random permutation only relabels nodes: {relabel}")
    if not (exact and relabel):
        raise RuntimeError("the graph round trip or the permutation check failed")
    return {"graphs": len(ds), "round trip exact": exact, "permutation = relabelling": relabel}


def step_predict(ctx: dict[str, Any]) -> dict[str, Any]:
    from ..predict import PropertyGraphs, predict_store, train_predictor
    from ..predict.plots import plot_predictions
    from ..training import TrainConfig

    _header(3, "A property predictor: test accuracy from weights, on a run it never saw")
    store = PropertyGraphs.from_collections([ctx["zoo"]], ["test_acc"], progress=False)
    train, test = store.split_by_run(0.25, 0)
    cfg = TrainConfig(steps=200, batch_size=8, lr=3e-3, warmup=20, checkpoint_every=0, log_every=25,
                      progress=ctx["progress"])
    run = train_predictor(train, ctx["out"] / "predictor", model_config={"hidden": 32, "layers": 2},
                          train_config=cfg, test=test, resume=False)
    pred = predict_store(run.model, test)[:, 0]
    true = test.targets[:, 0].numpy()
    tau, r2 = run.metrics["test_acc"]["tau"], run.metrics["test_acc"]["r2"]
    _say(f"trained on {len(train)} checkpoints of {len(set(train.run_ids))} runs; on {len(test)} held-out "
         f"checkpoints: Kendall tau {tau:.3f}, R^2 {r2:.3f}")
    _say(f"scatter: {plot_predictions(pred, true, ctx['out'] / 'predict.png', 'held-out run')}")
    return {"held-out tau": tau, "held-out R2": r2}


def _digits_task(seed: int) -> tuple[Any, Callable[[torch.nn.Module], float], Callable[[torch.nn.Module, int], torch.Tensor]]:
    """Flat digits, a validation-accuracy function, and a seeded minibatch loss."""
    from ..tasks.data import digits_split

    data = digits_split(0, flat=True)
    g = torch.Generator().manual_seed(seed)

    def accuracy(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return float((model(data.x_val).argmax(1) == data.y_val).float().mean())

    def loss(model: torch.nn.Module, batch: int = 128) -> torch.Tensor:
        idx = torch.randint(len(data.y_train), (batch,), generator=g)
        return F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
    return data, accuracy, loss


def _train_curve(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int,
                 every: int = 10) -> list[tuple[int, float]]:
    """Validation accuracy every ``every`` steps of ``opt`` (any optimizer, a NowcastOptimizer included)."""
    _, accuracy, loss = _digits_task(seed)
    curve = [(0, accuracy(model))]
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        loss(model).backward()
        opt.step()
        if step % every == 0:
            curve.append((step, accuracy(model)))
    return curve


def step_nowcast(ctx: dict[str, Any]) -> dict[str, Any]:
    from ..nowcast import NiNo, NowcastOptimizer
    from ..tasks.models import build

    steps, lr, period = 600, 3e-4, 100
    _header(4, f"Nowcasting a fresh digits MLP with the packaged NiNo, against AdamW alone ({steps} steps, lr {lr})")
    nino = NiNo.from_pretrained()
    curves = {}
    for name in ("AdamW", "AdamW + NiNo"):
        model = build("mlp", seed=0, **MLP)
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        if name != "AdamW":
            opt = NowcastOptimizer(model, opt, nino, period=period)
        t = time.perf_counter()
        curves[name] = _train_curve(model, opt, steps, seed=0)
        _say(f"{name}: final validation accuracy {curves[name][-1][1]:.3f} ({time.perf_counter() - t:.1f} s)")
    target = curves["AdamW"][-1][1]
    reach = {n: next((s for s, a in c if a >= target), math.inf) for n, c in curves.items()}
    ratio = reach["AdamW"] / reach["AdamW + NiNo"] if math.isfinite(reach["AdamW + NiNo"]) else 0.0
    _say(f"steps to AdamW's final accuracy {target:.3f}: AdamW {reach['AdamW']}, with NiNo "
         f"{reach['AdamW + NiNo']} -> {ratio:.2f}x fewer")
    _say(f"curves: {_curves(curves, ctx['out'] / 'nowcast.png', 'validation accuracy')}")
    return {"AdamW final acc": target, "steps to it, AdamW": reach["AdamW"],
            "steps to it, with NiNo": reach["AdamW + NiNo"], "speed-up": ratio}


def step_align(ctx: dict[str, Any]) -> dict[str, Any]:
    from ..align import interpolation_curve, plot_interpolation, weight_matching
    from ..merge import merge
    from ..space import WeightSpace
    from ..tasks.models import build, example_input
    from ..tasks.train import train_classifier

    _header(5, "Two digits MLPs trained from different seeds: align them (Git Re-Basin), then merge")
    data, accuracy, _ = _digits_task(0)
    sds = []
    for seed in (1, 2):
        model = build("mlp", seed=seed, **MLP)
        train_classifier(model, data, steps=400, lr=1e-3, batch_size=128, seed=seed)
        sds.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    space = WeightSpace.from_module(model, example_input(model))
    perm = weight_matching(space, sds[0], sds[1])
    aligned = space.permute(sds[1], perm)

    def evaluate(net: torch.nn.Module) -> tuple[float, float]:
        with torch.no_grad():
            logits = net(data.x_val)
        return float(F.cross_entropy(logits, data.y_val)), float((logits.argmax(1) == data.y_val).float().mean())

    naive = interpolation_curve(model, sds[0], sds[1], evaluate, space=space)
    matched = interpolation_curve(model, sds[0], aligned, evaluate, space=space)
    merged = merge([sds[0], sds[1]], "linear", space=space, align="weight")
    model.load_state_dict(merged)
    merged_acc = accuracy(model)
    _say(f"loss barrier: naive {naive.barrier:.3f} -> aligned {matched.barrier:.3f}; midpoint accuracy naive "
         f"{naive.accs[len(naive.accs) // 2]:.3f}, aligned {matched.accs[len(matched.accs) // 2]:.3f}")
    _say(f"merge(linear, align=weight): accuracy {merged_acc:.3f} (the two models: "
         f"{naive.accs[0]:.3f}, {naive.accs[-1]:.3f})")
    _say(f"curves: {plot_interpolation({'naive': naive, 'aligned': matched}, ctx['out'] / 'align.png')}")
    return {"barrier naive": naive.barrier, "barrier aligned": matched.barrier, "merged acc": merged_acc}


def step_hyper(ctx: dict[str, Any]) -> dict[str, Any]:
    from ..hyper import GraphHyperNetwork
    from ..tasks.data import digits_split
    from ..tasks.models import build

    arch = {"in_features": 64, "widths": [40, 40, 40], "out_features": 10, "activation": "relu"}
    _header(6, f"The packaged graph hypernetwork predicts every weight of an MLP 64-40x3-10 (a width it never saw)")
    data = digits_split(0, flat=True)
    hyper = GraphHyperNetwork.from_pretrained()
    accs = {}
    for name in ("default init", "predicted"):
        model = build("mlp", seed=0, **arch)
        if name == "predicted":
            hyper.init_(model, data.x_train[:256])
        with torch.no_grad():
            accs[name] = float((model.eval()(data.x_val).argmax(1) == data.y_val).float().mean())
    _say(f"zero-shot validation accuracy: default init {accs['default init']:.3f}, predicted {accs['predicted']:.3f}")
    return {"default-init acc": accs["default init"], "predicted acc": accs["predicted"]}


def step_generate(ctx: dict[str, Any]) -> dict[str, Any]:
    from ..generate import PDiff
    from ..memorization import report
    from ..tasks.zoo import RECIPES, build_zoo
    from ..training import TrainConfig

    out = ctx["out"] / "zoo-pdiff-mlp"
    _header(7, "Generate weights with p-diff latent diffusion, then measure what it memorized")
    coll = build_zoo("pdiff-mlp", out, size="small", seed=0, shard="0/12", progress=ctx["progress"])
    recipe = RECIPES["pdiff-mlp"]
    hp = recipe.config(0)
    space = coll.space(coll.architectures()[0])
    first = coll.runs()[0]
    training = [coll.load(r["run_id"], r["step"]) for r in coll.rows()
                if r["run_id"] == first and r["finetuning"] == 1.0]
    _say(f"p-diff's data: the {len(training)} checkpoints of one run's last phase, in which only "
         f"the layers {hp['layers']!r} keep training")

    def cfg(steps: int) -> TrainConfig:
        return TrainConfig(steps=steps, batch_size=32, lr=1e-3, warmup=20, checkpoint_every=0, log_every=25,
                           progress=ctx["progress"], plot=False)

    gen = PDiff.fit(training, space=space, keys=hp["layers"], autoencoder=cfg(300), diffusion=cfg(400),
                    latent=16, hidden=128, denoiser_hidden=128)
    samples = gen.sample(16, seed=0)
    rep = report(space, {"p-diff": samples}, training, data="digits-flat", model=recipe.model(hp), k=3,
                 progress=ctx["progress"])
    path = rep.save(ctx["out"] / "memorization")
    verdict = rep.verdicts["p-diff"]
    _say(rep.markdown())
    _say(f"verdict: p-diff {verdict}; report and plots: {path}")
    return {"training models": len(training), "samples": len(samples), "verdict": verdict}


STEPS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: step_zoo, 2: step_graphs, 3: step_predict, 4: step_nowcast, 5: step_align, 6: step_hyper, 7: step_generate}


def _curves(curves: dict[str, list[tuple[int, float]]], path: Path, ylabel: str) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.6))
    ax = fig.add_subplot()
    for name, c in curves.items():
        ax.plot([s for s, _ in c], [v for _, v in c], label=name)
    ax.set(xlabel="step", ylabel=ylabel)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    try:
        wanted = sorted({int(s) for s in args.steps.split(",") if s.strip()})
    except ValueError:
        raise ConfigError(f"--steps takes comma-separated step numbers 1-7, got {args.steps!r}") from None
    bad = [s for s in wanted if s not in STEPS]
    if bad or not wanted:
        raise ConfigError(f"--steps: no step {bad or args.steps!r}; the steps are 1-7")
    if any(s in (2, 3) for s in wanted) and 1 not in wanted:
        raise ConfigError("steps 2 and 3 read the zoo of step 1: add 1 to --steps")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="weightspace-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    ctx: dict[str, Any] = {"out": out, "progress": not args.no_progress}
    print(f"weightspace demo: writing to {out}")
    summary: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for s in wanted:
        t = time.perf_counter()
        summary[STEPS[s].__name__[5:]] = {**STEPS[s](ctx), "seconds": round(time.perf_counter() - t, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"\nSummary ({time.perf_counter() - t0:.0f} s; {out / 'summary.json'}):")
    width = max(len(k) for v in summary.values() for k in v)
    for step, figures in summary.items():
        print(f"  {step}")
        for k, v in figures.items():
            print(f"    {k:<{width}}  {_fmt(v)}")
    return 0
