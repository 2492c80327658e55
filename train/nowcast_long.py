"""Meta-train NiNo and WNN on long trajectories generated on the spot, with long horizons, within a wall-clock budget.

Issue 15's recipe: the nowcasters of ``weightspace/nowcast/pretrained`` were meta-trained on 1,000-step
zoos for horizons up to 16 context spacings, while NiNo's schedule jumps up to k = 40. This script

1. trains a mix of small models with AdamW for several thousand steps at several learning rates
   (3e-4 included), in parallel worker processes, saving every ``--save-every`` steps: digits MLPs
   (width 16-128, depth 1-3), digits CNNs (channels 4-16, with and without BatchNorm), synthetic-task
   MLPs and char-level tiny GPTs (d_model 32-64); ``--sizes wide`` draws larger ones, up to and past the
   benchmark tasks' sizes. Every benchmark task of ``scripts/bench_nowcast.py`` stays held out (other
   widths or channels, and no breast-cancer data);
2. meta-trains a NiNo and a WNN side by side on windows of ``--context`` states taken 1, 2 or 3
   saved checkpoints apart, for horizons 1..``--horizons`` spacings, until the time budget is spent
   (cosine learning rate over the budget);
3. writes each model's ``save_pretrained`` folder, its held-out scaled L1 (windows of held-out runs,
   beside linefit, "no change" and the packaged nowcasters on the horizons they know) and the history
   into ``--out``.

    python train/nowcast_long.py --out runs/long --device cuda --gen-seconds 80 --train-seconds 110
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from weightspace.graph.layout import EDGE_TYPES, NODE_TYPES
from weightspace.nowcast import WNN, LineFit, NiNo, NodeNiNo, NowcastError, ParamLayout, Window, load_nowcaster
from weightspace.nowcast.train import nowcast_loss
from weightspace.space import WeightSpace
from weightspace.tasks.data import char_batch, digits_split, stdlib_corpus, synthetic_split
from weightspace.tasks.models import build, example_input
from weightspace.utils import atomic_write_text

LRS = (1e-4, 3e-4, 1e-3, 3e-3)
FAMILIES = ("mlp", "cnn", "synth", "gpt")
MODELS = ("nino", "nino_small", "wnn", "node")
# "wide" reaches the benchmark tasks' sizes (MLP width 192 x 4, CNN 16/32/32, GPT d_model 96) from both sides
# without any of them: no width 192, no d_model 96, and the FM-16 channels are drawn again.
SIZES = {
    "small": dict(mlp_width=(16, 32, 48, 64, 96, 128), mlp_depth=(1, 2, 3), cnn_channels=(4, 8, 12, 16),
                  gpt_d_model=(32, 48, 64)),
    "wide": dict(mlp_width=(32, 64, 128, 160, 256), mlp_depth=(2, 3, 4), cnn_channels=(8, 12, 16, 24, 32),
                 gpt_d_model=(48, 64, 80, 128)),
}
HELD_OUT_CHANNELS = {(16, 32, 32)}
GENERATION_OPTIONS = ("runs", "families", "lrs", "sizes", "steps", "gpt_steps", "save_every", "gen_seconds",
                      "workers")
_DATA: dict[str, Any] = {}


def recipes(n: int, steps: int, gpt_steps: int, seed: int = 0, families: tuple[str, ...] = FAMILIES,
            lrs: tuple[float, ...] = LRS, sizes: str = "small") -> list[dict[str, Any]]:
    """``n`` run configurations, the families interleaved (so a budget cut keeps the mix); AdamW's learning
    rate drawn from ``lrs`` (GPTs keep their own range); model sizes from ``SIZES[sizes]``."""
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown or not families:
        raise SystemExit(f"--families: unknown {unknown}, choose from {','.join(FAMILIES)}")
    if sizes not in SIZES:
        raise SystemExit(f"--sizes: unknown {sizes!r}, choose from {', '.join(SIZES)}")
    size = SIZES[sizes]
    cycle = [f for f in ("mlp", "cnn", "synth", "cnn", "mlp", "gpt") if f in families]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        fam = cycle[i % len(cycle)]
        lr = rng.choice(lrs)
        c: dict[str, Any] = {"id": i, "seed": rng.randrange(10_000), "lr": lr, "steps": steps, "batch": 128,
                             "wd": rng.choice((0.0, 0.0, 1e-3, 1e-2))}
        if fam == "mlp":
            c.update(family="mlp", data="digits-flat", model=dict(
                in_features=64, widths=[rng.choice(size["mlp_width"])] * rng.choice(size["mlp_depth"]),
                out_features=10, activation=rng.choice(("relu", "gelu", "tanh", "silu"))))
        elif fam == "synth":
            c.update(family="mlp", data="synthetic", model=dict(
                in_features=32, widths=[rng.choice((16, 32, 64))] * rng.choice((1, 2, 3)), out_features=5,
                activation=rng.choice(("relu", "gelu", "tanh", "silu"))))
        elif fam == "cnn":
            channels = (16, 32, 32)
            while channels in HELD_OUT_CHANNELS:
                channels = tuple(rng.choice(size["cnn_channels"]) for _ in range(3))
            c.update(family="cnn", data="digits", model=dict(
                channels=channels, batchnorm=rng.random() < 0.4,
                activation=rng.choice(("relu", "relu", "gelu", "tanh"))))
        else:
            lr = rng.choice((3e-4, 1e-3, 3e-3))
            c.update(family="gpt", data="stdlib", lr=lr, steps=gpt_steps, batch=16, wd=0.0, model=dict(
                vocab_size=97, block_size=32, n_layer=rng.choice((1, 2)), n_head=rng.choice((2, 4)),
                d_model=rng.choice(size["gpt_d_model"]), attention=rng.choice(("separate", "fused", "mha")),
                tie_embeddings=True, mlp_ratio=4))
        out.append(c)
    return out


def _load_data() -> None:
    _DATA["digits"] = digits_split(0)
    _DATA["digits-flat"] = digits_split(0, flat=True)
    _DATA["synthetic"] = synthetic_split(0)
    _DATA["stdlib"] = stdlib_corpus(max_chars=1_000_000)


def trajectory(c: dict[str, Any], save_every: int) -> tuple[dict[str, Any], torch.Tensor]:
    """Train one configuration with AdamW; its flat parameters (layout order) every ``save_every`` steps."""
    torch.set_num_threads(1)
    data = _DATA[c["data"]]
    if c["family"] == "gpt":
        c["model"]["vocab_size"] = data.vocab_size
    model = build(c["family"], seed=c["seed"], **c["model"])
    layout = ParamLayout.from_space(WeightSpace.from_module(model, example_input(model)))
    opt = torch.optim.AdamW(model.parameters(), lr=c["lr"], weight_decay=c["wd"])
    g = torch.Generator().manual_seed(c["seed"])
    states = [layout.flatten(model).clone()]
    if c["family"] == "gpt":
        def batch_loss() -> torch.Tensor:
            x, y = char_batch(data.train_ids, c["model"]["block_size"], c["batch"], g)
            return F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    else:
        n = len(data.y_train)
        state = {"order": torch.randperm(n, generator=g), "pos": 0}

        def batch_loss() -> torch.Tensor:
            if state["pos"] + c["batch"] > n:
                state["order"], state["pos"] = torch.randperm(n, generator=g), 0
            idx = state["order"][state["pos"]:state["pos"] + c["batch"]]
            state["pos"] += c["batch"]
            return F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
    model.train()
    for step in range(1, c["steps"] + 1):
        loss = batch_loss()
        if not math.isfinite(loss.item()):
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if c["family"] == "gpt":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % save_every == 0:
            states.append(layout.flatten(model).clone())
    return c, torch.stack(states)


def generate(configs: list[dict[str, Any]], save_every: int, workers: int, seconds: float
             ) -> list[tuple[dict[str, Any], torch.Tensor]]:
    """Run ``configs`` on ``workers`` processes; keep what finished within ``seconds``."""
    _load_data()
    t_end = time.monotonic() + seconds
    done: list[tuple[dict[str, Any], torch.Tensor]] = []
    if workers <= 1:
        for c in configs:
            if time.monotonic() > t_end:
                break
            done.append(trajectory(c, save_every))
        return done
    import multiprocessing as mp

    ex = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"))
    queue = list(configs)
    running = {ex.submit(trajectory, queue.pop(0), save_every) for _ in range(min(workers * 2, len(queue)))}
    while running and time.monotonic() < t_end:
        fin, running = wait(running, timeout=max(0.1, t_end - time.monotonic()), return_when=FIRST_COMPLETED)
        for f in fin:
            if f.exception() is None:
                done.append(f.result())
            else:
                print(f"trajectory failed: {f.exception()!r}", file=sys.stderr)
            if queue:
                running.add(ex.submit(trajectory, queue.pop(0), save_every))
    for f in running:
        f.cancel()
    for p in list(getattr(ex, "_processes", {}).values()):
        p.terminate()
    ex.shutdown(wait=False, cancel_futures=True)
    return done


class MemoryWindows:
    """Windows over in-memory trajectories: ``context`` states ``stride`` saves apart, ``horizons`` future states."""

    def __init__(self, runs: list[tuple[dict[str, Any], torch.Tensor]], context: int, horizons: int,
                 strides: tuple[int, ...], device: torch.device) -> None:
        self.context, self.horizons, self.strides = context, horizons, strides
        self.layouts: dict[str, ParamLayout] = {}
        self.runs = []
        for c, flat in runs:
            key = json.dumps([c["family"], c["model"]], sort_keys=True)
            if key not in self.layouts:
                model = build(c["family"], seed=0, **c["model"])
                self.layouts[key] = ParamLayout.from_space(WeightSpace.from_module(model, example_input(model)))
            if flat.shape[0] >= context + 1:
                self.runs.append((c, flat.to(device), self.layouts[key]))
        fams = sorted({c["family"] + c["data"] for c, _, _ in self.runs})
        per = {f: sum(1 for c, _, _ in self.runs if c["family"] + c["data"] == f) for f in fams}
        self.weights = torch.tensor([1.0 / per[c["family"] + c["data"]] for c, _, _ in self.runs])

    def sample(self, g: torch.Generator) -> Window:
        r = int(torch.multinomial(self.weights, 1, generator=g))
        c, flat, layout = self.runs[r]
        M = flat.shape[0]
        strides = [s for s in self.strides if (self.context - 1) * s + s < M] or [1]
        s = strides[int(torch.randint(len(strides), (1,), generator=g))]
        start = int(torch.randint(M - (self.context - 1) * s - s, (1,), generator=g))
        ctx_idx = start + s * torch.arange(self.context)
        fut_idx = int(ctx_idx[-1]) + s * torch.arange(1, self.horizons + 1)
        mask = fut_idx < M
        future = torch.zeros(self.horizons, flat.shape[1], device=flat.device)
        future[mask.to(flat.device)] = flat[fut_idx[mask].to(flat.device)]
        return Window(flat[ctx_idx.to(flat.device)], future, mask.to(flat.device), layout, str(c["id"]), start)


@torch.no_grad()
def heldout_l1(model: Any, windows: list[Window], max_k: int | None = None) -> float:
    """Mean scaled L1 of ``model``'s residual predictions over horizons ``1..max_k`` of ``windows``."""
    vals = []
    preds = model(windows) if isinstance(model, torch.nn.Module) else None
    for i, w in enumerate(windows):
        target, _, std = w.targets()
        K = min(max_k or target.shape[0], target.shape[0])
        if model is None:
            pred = torch.zeros_like(target[:K])
        elif isinstance(model, LineFit):
            pred = torch.stack([(model.nowcast(w.context, k) - w.context[-1]) / std for k in range(1, K + 1)])
        else:
            pred = preds[i][:K].float()
        m = w.mask[:K]
        if bool(m.any()):
            vals.append((pred - target[:K])[m].abs().mean())
    return float(torch.stack(vals).mean())


def finish(models: dict[str, Any], eval_set: list[Window], args: argparse.Namespace, out: Path,
           info: dict[str, Any], final: bool) -> None:
    """Save every model (``save_pretrained``) and ``result.json``; with ``final`` also the held-out L1 table."""
    if final:
        K = args.horizons
        l1: dict[str, Any] = {}
        for k, m in models.items():
            m.eval()
            l1[f"{k}_k1-{K}"] = heldout_l1(m, eval_set)
            l1[f"{k}_k1-16"] = heldout_l1(m, eval_set, 16)
        for name, nc in (("linefit", LineFit(args.context)), ("zero", None)):
            l1[f"{name}_k1-{K}"] = heldout_l1(nc, eval_set)
            l1[f"{name}_k1-16"] = heldout_l1(nc, eval_set, 16)
        device = eval_set[0].context.device
        for name, cls in (("packaged_nino", NiNo), ("packaged_wnn", WNN)):
            try:
                old = cls.from_pretrained().to(device).eval()
                l1[f"{name}_k1-16"] = heldout_l1(old, eval_set, old.max_horizon)
            except Exception as ex:  # a packaged model may refuse a parameter type it never saw
                l1[f"{name}_k1-16"] = repr(ex)
        info["heldout_l1"] = l1
        print(json.dumps(l1, indent=1), flush=True)
    for k, m in models.items():
        m.to("cpu").save_pretrained(out / k)
        m.to(eval_set[0].context.device)
    atomic_write_text(out / "result.json", json.dumps(info, indent=1, default=str))


def warm_start(fresh: Any, source: str) -> Any:
    """``fresh`` with the weights of the checkpoint ``source`` (a folder or packaged name, e.g. ``nino_cnn_k40``).

    Sizes must match ``fresh``'s (a clear error names the differences). A NiNo keeps every parameter type either
    knows, so a CNN-only checkpoint can go on meta-training on MLPs and GPTs: its embedding tables cover all
    types, and the rows of types it never saw start from their initialisation. A NodeNiNo may start from a WNN
    (:meth:`NodeNiNo.from_wnn`: it predicts what the WNN does until meta-training teaches it what the graph adds).
    """
    src = load_nowcaster(source)
    if isinstance(fresh, NodeNiNo) and isinstance(src, WNN):
        mine = dict(fresh._hub_mixin_config)
        if (src.context, src.max_horizon, src.hidden) != (mine["context"], mine["horizons"], mine["decoder_hidden"]):
            raise SystemExit(f"--init {source}: a WNN of context {src.context}, horizons {src.max_horizon} and hidden "
                             f"{src.hidden} starts a NodeNiNo of the same (pass --node-size W,L,{src.hidden})")
        return NodeNiNo.from_wnn(src, **{k: mine[k] for k in ("node_hidden", "layers", "edge_types", "node_types")})
    cfg, mine = src._hub_mixin_config, dict(fresh._hub_mixin_config)
    sizes = {k: (cfg.get(k), v) for k, v in mine.items()
             if k not in ("edge_types", "node_types") and cfg.get(k) != v}
    if sizes:
        raise SystemExit(f"--init {source}: its sizes differ from the model this run builds "
                         + ", ".join(f"{k} {a} (checkpoint) vs {b}" for k, (a, b) in sizes.items())
                         + "; pass the checkpoint's sizes (--hidden, --layers, --decoder-hidden, --horizons, "
                           "--context)")
    if isinstance(fresh, (NiNo, NodeNiNo)):
        mine["edge_types"] = [t for t in EDGE_TYPES if t in {*mine["edge_types"], *cfg["edge_types"]}]
        mine["node_types"] = [t for t in NODE_TYPES if t in {*mine["node_types"], *cfg["node_types"]}]
        fresh = type(fresh)(**mine)
    fresh.load_state_dict(src.state_dict())
    return fresh


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto", help="auto: cuda when there is one (checked after the workers fork)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 4))
    p.add_argument("--runs", type=int, default=600, help="configurations queued (generation stops at --gen-seconds)")
    p.add_argument("--families", default=",".join(FAMILIES), help="trajectory families to generate")
    p.add_argument("--lrs", default=",".join(map(str, LRS)), help="AdamW learning rates drawn for non-GPT runs")
    p.add_argument("--sizes", default="small", choices=sorted(SIZES),
                   help="model sizes drawn: small (MLP width 16-128 depth 1-3, CNN channels 4-16, GPT d_model 32-64) "
                        "or wide (MLP 32-256 depth 2-4, CNN 8-32, GPT 48-128; the benchmark tasks stay held out)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--gpt-steps", type=int, default=1500)
    p.add_argument("--save-every", type=int, default=20)
    p.add_argument("--gen-seconds", type=float, default=80)
    p.add_argument("--train-seconds", type=float, default=110)
    p.add_argument("--context", type=int, default=5)
    p.add_argument("--horizons", type=int, default=40)
    p.add_argument("--strides", default="1,2,3")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--decoder-hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--held-out", type=float, default=0.1, help="fraction of each trajectory file's runs held out, "
                   "drawn the same way per file, so adding files keeps the earlier held-out runs held out")
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-seconds", type=float, default=15)
    p.add_argument("--trajectories", action="append", default=[],
                   help="file that keeps the generated trajectories: read if it exists, else written; repeat it to "
                        "train on several files generated before (e.g. runs with other --seed)")
    p.add_argument("--resume", action="store_true",
                   help="start each model from its folder in --out if there is one (a fresh optimizer and schedule)")
    p.add_argument("--init", action="append", default=[], metavar="MODEL=FOLDER",
                   help="start MODEL (one of --models) from a checkpoint folder or packaged name, e.g. "
                        "nino=nino_cnn_k40 (sizes must match; a NiNo learns the data's new parameter types), or "
                        "node=wnn_k40 (a NodeNiNo that starts as that WNN)")
    p.add_argument("--models", default="nino,nino_small,wnn",
                   help="nino (--hidden/--layers/--decoder-hidden), nino_small (the packaged size: 16/2/32), wnn, "
                        "node (NodeNiNo, --node-size)")
    p.add_argument("--node-size", default="16,2,32", help="NodeNiNo's node width, layers and decoder width")
    args = p.parse_args(argv)
    try:
        node_size = [int(x) for x in args.node_size.split(",")]
        if len(node_size) != 3 or min(node_size) < 1:
            raise ValueError
    except ValueError:
        raise SystemExit(f"--node-size takes three positive ints WIDTH,LAYERS,DECODER, "
                         f"got {args.node_size!r}") from None
    bad = sorted(set(args.models.split(",")) - set(MODELS))
    if bad:
        raise SystemExit(f"--models: unknown {bad}; choose from {', '.join(MODELS)}")
    inits = dict(item.partition("=")[::2] for item in args.init)
    bad = sorted(set(inits) - set(args.models.split(","))) + sorted(k for k, v in inits.items() if not v)
    if bad:
        raise SystemExit(f"--init: {bad} is not MODEL=FOLDER with MODEL one of --models ({args.models})")
    for folder in inits.values():
        try:
            NiNo.pretrained_config(folder)
        except NowcastError as e:
            raise SystemExit(f"--init {folder}: {e}") from None
    if args.trajectories and all(Path(f).is_file() for f in args.trajectories):
        unused = [f"--{k.replace('_', '-')}" for k in GENERATION_OPTIONS if getattr(args, k) != p.get_default(k)]
        if unused:
            raise SystemExit(f"{', '.join(unused)}: only used to generate trajectories, but every --trajectories file "
                             f"exists and is read as it is; drop the option, or name a new file to generate into")
    t0 = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    files = [Path(f) for f in args.trajectories]
    if files and all(f.is_file() for f in files):
        parts: list[list[tuple[dict[str, Any], torch.Tensor]]] = []
        for f in files:
            parts.append([])
            for c, flat in torch.load(f, weights_only=True, mmap=True):
                c = json.loads(c)
                c["id"] = sum(map(len, parts))
                parts[-1].append((c, flat))
    elif len(files) > 1:
        raise SystemExit(f"--trajectories: {', '.join(str(f) for f in files if not f.is_file())} not found; "
                         f"several files are only read (generate each with its own run)")
    else:
        families = tuple(f.strip() for f in args.families.split(",") if f.strip())
        lrs = tuple(float(x) for x in args.lrs.split(","))
        runs = generate(recipes(args.runs, args.steps, args.gpt_steps, args.seed, families, lrs, args.sizes),
                        args.save_every, args.workers, args.gen_seconds)
        if files:
            tmp = files[0].with_suffix(".tmp")
            torch.save([(json.dumps(c), flat) for c, flat in runs], tmp)
            tmp.replace(files[0])
        parts = [runs]
    runs = [r for part in parts for r in part]
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    gen_s = time.monotonic() - t0
    fams: dict[str, int] = {}
    for c, _ in runs:
        fams[c["family"] + "/" + c["data"]] = fams.get(c["family"] + "/" + c["data"], 0) + 1
    print(f"{len(runs)} trajectories in {gen_s:.0f} s: {fams}", flush=True)
    held, train = [], []
    for part in parts:
        rng = random.Random(args.seed)
        idx = list(range(len(part)))
        rng.shuffle(idx)
        n_held = max(1, int(args.held_out * len(part)))
        held += [part[i] for i in idx[:n_held]]
        train += [part[i] for i in idx[n_held:]]
    strides = tuple(int(s) for s in args.strides.split(","))
    W = MemoryWindows(train, args.context, args.horizons, strides, device)
    H = MemoryWindows(held, args.context, args.horizons, strides, device)
    gh = torch.Generator().manual_seed(10_000_019)
    eval_set = [H.sample(gh) for _ in range(args.eval_windows)]

    lays = [*W.layouts.values(), *H.layouts.values()]
    e = sorted({int(t) for lay in lays for t in lay.space.layout.edge_type.unique()})
    n = sorted({int(t) for lay in lays for t in lay.space.layout.node_type.unique()})
    types = dict(edge_types=[EDGE_TYPES[i] for i in e], node_types=[NODE_TYPES[i] for i in n])
    make = {
        "nino": lambda: NiNo(context=args.context, horizons=args.horizons, hidden=args.hidden, layers=args.layers,
                             decoder_hidden=args.decoder_hidden, **types),
        "nino_small": lambda: NiNo(context=args.context, horizons=args.horizons, hidden=16, layers=2,
                                   decoder_hidden=32, **types),
        "wnn": lambda: WNN(context=args.context, horizons=args.horizons, hidden=64, layers=3),
        "node": lambda: NodeNiNo(context=args.context, horizons=args.horizons, node_hidden=node_size[0],
                                 layers=node_size[1], decoder_hidden=node_size[2], **types),
    }
    models = {}
    for k in args.models.split(","):
        torch.manual_seed(args.seed)
        models[k] = make[k]()
        if args.resume and (out / k / "config.json").is_file():
            models[k] = type(models[k]).from_pretrained(out / k)
            print(f"resumed {k} from {out / k}", flush=True)
        elif k in inits:
            models[k] = warm_start(models[k], inits[k])
            print(f"{k} starts from {inits[k]}", flush=True)
        models[k] = models[k].to(device)
    opts = {k: torch.optim.AdamW(m.parameters(), lr=args.lr, weight_decay=1e-4) for k, m in models.items()}
    g = torch.Generator().manual_seed(args.seed)
    history: list[dict[str, Any]] = []
    t_train = time.monotonic()
    step, last_log = 0, t_train
    run_loss, run_n = {k: 0.0 for k in models}, 0
    while (elapsed := time.monotonic() - t_train) < args.train_seconds:
        frac = elapsed / args.train_seconds
        lr = args.lr * (min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * frac)))
        wins = [W.sample(g) for _ in range(args.batch)]
        for k, m in models.items():
            for group in opts[k].param_groups:
                group["lr"] = lr
            m.train()
            loss = nowcast_loss(m, wins)
            opts[k].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opts[k].step()
            run_loss[k] += float(loss.detach())
        step += 1
        run_n += 1
        if time.monotonic() - last_log > args.log_seconds:
            last_log = time.monotonic()
            rec = {"step": step, "seconds": round(last_log - t_train, 1), "lr": lr,
                   **{f"train_{k}": v / run_n for k, v in run_loss.items()}}
            rec.update({f"heldout_{k}": heldout_l1(m.eval(), eval_set) for k, m in models.items()})
            history.append(rec)
            run_loss, run_n = {k: 0.0 for k in models}, 0
            print(json.dumps(rec), flush=True)
            finish(models, eval_set, args, out, {"meta_steps": step, "history": history, "partial": True}, final=False)
    finish(models, eval_set, args, out, {
        "trajectories": len(runs), "held_out_runs": len(held), "families": fams, "generation_seconds": gen_s,
        "train_seconds": time.monotonic() - t_train, "meta_steps": step, "args": vars(args), "device": str(device),
        "machine": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "history": history,
        "total_seconds": time.monotonic() - t0}, final=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
