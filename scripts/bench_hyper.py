"""Graph hypernetwork benchmark: held-out digits architectures, zero-shot and fine-tuning, ablations, cost.

For each held-out architecture (:data:`HELD_OUT`: widths, depths and channel counts outside the
training grid, narrower and wider; CNNs with and without BatchNorm) and seed it measures the validation
accuracy of the predicted model (running statistics calibrated on 256 training images), of PyTorch's
default init, and of the same architecture trained from scratch with Adam for ``--budget`` steps. It
then fine-tunes the predicted model with the same Adam, batches and budget and counts the steps to
reach 98% of the scratch run's final accuracy, against the scratch run's own steps (evaluated every
``--eval-every`` steps; a run that never reaches it counts as the budget). Every hypernetwork variant
of ``scripts/pretrain_hyper.py`` is measured in the same run (the ablations).

    python scripts/bench_hyper.py --models runs/hyper                  # variants trained elsewhere (e.g. a GPU)
    python scripts/bench_hyper.py --train-steps 400 --models runs/hyper-cpu   # train missing variants here first
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchlib import markdown_table, write_section
from pretrain_hyper import VARIANTS, main as pretrain_main
from weightspace.hyper import GraphHyperNetwork
from weightspace.hyper.model import PRETRAINED
from weightspace.tasks.data import digits_split
from weightspace.tasks.models import build
from weightspace.utils import atomic_write_text

DIGITS_VARIANTS = [v for v in VARIANTS if v != "gpt"]
BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
"""The repository's BENCHMARKS.md: written by default wherever the script is run from."""


def _mlp(widths: list[int], act: str = "relu") -> dict[str, Any]:
    return {"family": "mlp", "in_features": 64, "widths": widths, "out_features": 10, "activation": act}


def _cnn(channels: list[int], bn: bool, act: str = "relu") -> dict[str, Any]:
    return {"family": "cnn", "channels": channels, "batchnorm": bn, "in_channels": 1, "num_classes": 10,
            "activation": act}


HELD_OUT: list[tuple[str, dict[str, Any]]] = [
    ("MLP 8 (narrower)", _mlp([8])),
    ("MLP 256 (wider)", _mlp([256])),
    ("MLP 48-48, gelu (between)", _mlp([48, 48], "gelu")),
    ("MLP 24x4 (deeper)", _mlp([24] * 4)),
    ("CNN 3-3-3 (narrower)", _cnn([3, 3, 3], False)),
    ("CNN 24-24-24 (wider)", _cnn([24, 24, 24], False)),
    ("CNN 6-12-24 + BN", _cnn([6, 12, 24], True)),
    ("CNN 32-32-32 + BN, tanh (wider)", _cnn([32, 32, 32], True, "tanh")),
]
"""Training grid (``tasks.zoo``): MLP widths 16/32/64/128, depths 1-3; CNN channels 4/8/16; none of these."""


def shaped(x: torch.Tensor, arch: dict[str, Any]) -> torch.Tensor:
    return x.reshape(len(x), -1) if arch["family"] == "mlp" else x.reshape(-1, 1, 8, 8)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    acc = float((model.eval()(x).argmax(1) == y).float().mean())
    model.train(was)
    return acc


def adam_curve(model: torch.nn.Module, data, arch: dict[str, Any], budget: int, lr: float, every: int,
               seed: int) -> list[tuple[int, float]]:
    """Validation accuracy every ``every`` Adam steps (batch 64, the same batches for every init of a seed)."""
    x_tr, x_va = shaped(data.x_train, arch), shaped(data.x_val, arch)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    curve = [(0, accuracy(model, x_va, data.y_val))]
    model.train()
    for step in range(1, budget + 1):
        rows = torch.randint(len(data.y_train), (64,), generator=g)
        loss = F.cross_entropy(model(x_tr[rows]), data.y_train[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            curve.append((step, accuracy(model, x_va, data.y_val)))
    return curve


def steps_to(curve: list[tuple[int, float]], target: float, budget: int) -> tuple[int, bool]:
    for step, acc in curve:
        if acc >= target:
            return step, True
    return budget, False


def load_variants(models: Path, names: list[str]) -> dict[str, tuple[GraphHyperNetwork, dict]]:
    out = {}
    for v in names:
        d = models / v
        if (d / "model" / "config.json").is_file():
            info = json.loads((d / "hyper_train.json").read_text()) if (d / "hyper_train.json").is_file() else {}
            out[v] = (GraphHyperNetwork.from_pretrained(str(d / "model")).eval(), info)
    return out


class ScratchCache:
    """Scratch Adam curves (they do not depend on the hypernetwork), kept in a JSON file between runs."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.data = json.loads(self.path.read_text()) if self.path and self.path.is_file() else {}

    def curve(self, arch: dict[str, Any], seed: int, args: argparse.Namespace, data) -> list[tuple[int, float]]:
        key = json.dumps([arch, seed, args.budget, args.lr, args.eval_every], sort_keys=True)
        if key not in self.data:
            kwargs = {k: v for k, v in arch.items() if k != "family"}
            self.data[key] = adam_curve(build(arch["family"], seed=seed, **kwargs), data, arch, args.budget,
                                        args.lr, args.eval_every, seed)
            if self.path:
                atomic_write_text(self.path, json.dumps(self.data))
        return [tuple(c) for c in self.data[key]]


def bench(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    data = digits_split(0)
    cache = ScratchCache(args.scratch_cache)
    if args.scratch_only:
        for _, arch in HELD_OUT:
            for s in range(args.finetune_seeds):
                print(arch, s, cache.curve(arch, s, args, data)[-1], flush=True)
        sys.exit(0)
    variants = load_variants(Path(args.models), args.variants)
    if args.main is not None:
        path = Path(args.main) if args.main else None
        info_file = (path or PRETRAINED) / "training.json"
        if path and not info_file.is_file():
            info_file = path.parent / "hyper_train.json"
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}
        variants = {"packaged": (GraphHyperNetwork.from_pretrained(str(path) if path else None).eval(), info),
                    **variants}
    missing = [v for v in args.variants if v not in variants]
    if missing and args.train_steps:
        pretrain_main(["--out", args.models, "--variants", *missing, "--steps", str(args.train_steps),
                       "--device", "cpu", "--threads", "1", "--batch-size", str(args.train_batch)])
        variants = load_variants(Path(args.models), args.variants)
    if MAIN(variants) not in variants:
        sys.exit(f"no trained 'main' hypernetwork under {args.models}; pass --models, --main or --train-steps")
    rows = []
    for name, arch in HELD_OUT:
        kwargs = {k: v for k, v in arch.items() if k != "family"}
        x_cal, x_va = shaped(data.x_train[:256], arch), shaped(data.x_val, arch)
        rec: dict[str, Any] = {"name": name, "arch": arch, "default": [], "scratch": [], "zero_shot": {},
                               "steps_default": [], "steps_pred": {}}
        for s in range(args.seeds):
            model = build(arch["family"], seed=s, **kwargs)
            rec["default"].append(accuracy(model, x_va, data.y_val))
            for v, (hyper, _) in variants.items():
                hyper.init_(model, x_cal, seed=s)
                rec["zero_shot"].setdefault(v, []).append(accuracy(model, x_va, data.y_val))
        for s in range(args.finetune_seeds):
            scratch = cache.curve(arch, s, args, data)
            final = scratch[-1][1]
            rec["scratch"].append(final)
            target = 0.98 * final
            rec["steps_default"].append(steps_to(scratch, target, args.budget))
            for v, (hyper, _) in variants.items():
                if v not in args.finetune_variants and v != "packaged":
                    continue
                model = build(arch["family"], seed=s, **kwargs)
                hyper.init_(model, x_cal, seed=s)
                curve = adam_curve(model, data, arch, args.budget, args.lr, args.eval_every, s)
                rec["steps_pred"].setdefault(v, []).append(steps_to(curve, target, args.budget))
        rows.append(rec)
        zs = {v: round(statistics.mean(a), 3) for v, a in rec["zero_shot"].items()}
        print(f"{name}: default {statistics.mean(rec['default']):.3f} scratch {statistics.mean(rec['scratch']):.3f} "
              f"zero-shot {zs} steps default {rec['steps_default']} predicted {rec['steps_pred']}", flush=True)
    return {"rows": rows, "variants": {v: info for v, (_, info) in variants.items()},
            "settings": {k: v for k, v in vars(args).items()}, "gpt": bench_gpt(args) if args.gpt_steps else None}


GPT_HELD_OUT = ("GPT d_model 64, 3 layers, 4 heads (wider and deeper)",
                {"family": "gpt", "vocab_size": 97, "block_size": 16, "n_layer": 3, "n_head": 4, "d_model": 64,
                 "attention": "separate", "tie_embeddings": True, "mlp_ratio": 4})
"""Outside the GPT training grid (``ArchDistribution``: d_model 32/48, 1-2 layers)."""


def lm_curve(model: torch.nn.Module, corpus, steps: int, lr: float, seed: int, every: int) -> list[tuple[int, float]]:
    """Validation loss (8 fixed windows of 16 x 16 characters) every ``every`` Adam steps (batch 16)."""
    from weightspace.tasks.data import char_batch
    from weightspace.tasks.train import evaluate_lm

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    curve = [(0, evaluate_lm(model, corpus.val_ids, 16, 16, 8))]
    model.train()
    for step in range(1, steps + 1):
        x, y = char_batch(corpus.train_ids, 16, 16, g)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            curve.append((step, evaluate_lm(model, corpus.val_ids, 16, 16, 8)))
    return curve


def bench_gpt(args: argparse.Namespace) -> dict[str, Any] | None:
    """Validation loss of the GPT-trained hypernetwork's prediction for :data:`GPT_HELD_OUT`, and after
    ``--gpt-steps`` Adam steps, against default init (per seed)."""
    d = Path(args.models) / "gpt"
    if not (d / "model" / "config.json").is_file():
        return None
    from weightspace.tasks.data import char_batch, stdlib_corpus
    from weightspace.tasks.zoo import GPT_CORPUS_CHARS

    corpus = stdlib_corpus(max_chars=GPT_CORPUS_CHARS)
    hyper = GraphHyperNetwork.from_pretrained(str(d / "model")).eval()
    info = json.loads((d / "hyper_train.json").read_text()) if (d / "hyper_train.json").is_file() else {}
    name, arch = GPT_HELD_OUT
    kwargs = {k: v for k, v in arch.items() if k != "family"}
    out: dict[str, Any] = {"name": name, "arch": arch, "default": [], "predicted": [], "info": info}
    for s in range(args.gpt_seeds):
        x, _ = char_batch(corpus.train_ids, 16, 16, torch.Generator().manual_seed(100 + s))
        model = build("gpt", seed=s, **kwargs)
        out["default"].append(lm_curve(model, corpus, args.gpt_steps, args.gpt_lr, s, args.gpt_steps // 4))
        model = build("gpt", seed=s, **kwargs)
        hyper.init_(model, x, seed=s)
        out["predicted"].append(lm_curve(model, corpus, args.gpt_steps, args.gpt_lr, s, args.gpt_steps // 4))
        print(name, s, "default", out["default"][-1], "predicted", out["predicted"][-1], flush=True)
    return out


def MAIN(variants) -> str:  # noqa: N802
    """The variant of the goal rows: the packaged (or ``--main``) model when given, else ``main``."""
    return "packaged" if "packaged" in variants else "main"


def _mean(xs: list[float]) -> float:
    return statistics.mean(xs) if xs else float("nan")


def ratio(rec: dict[str, Any], v: str) -> float:
    d = statistics.median(s for s, _ in rec["steps_default"])
    p = statistics.median(s for s, _ in rec["steps_pred"][v])
    return max(d, 1) / max(p, 1)


def report(res: dict[str, Any], args: argparse.Namespace) -> str:
    rows, variants = res["rows"], list(res["variants"])
    main = MAIN(variants)
    table = []
    for r in rows:
        d = _mean(r["default"])
        sc = _mean(r["scratch"])
        z = _mean(r["zero_shot"][main])
        sd = "/".join(f"{s}{'' if ok else '+'}" for s, ok in r["steps_default"])
        sp = "/".join(f"{s}{'' if ok else '+'}" for s, ok in r["steps_pred"][main])
        table.append([r["name"], f"{d:.3f}", f"{z:.3f}", f"{sc:.3f}", f"{z / sc:.2f}", sd, sp, f"{ratio(r, main):.2f}x"])
    frac = _mean([_mean(r["zero_shot"][main]) / _mean(r["scratch"]) for r in rows])
    med = statistics.median(ratio(r, main) for r in rows)
    abl = []
    for v in variants:
        zs = _mean([_mean(r["zero_shot"][v]) for r in rows])
        fr = _mean([_mean(r["zero_shot"][v]) / _mean(r["scratch"]) for r in rows])
        rt = statistics.median(ratio(r, v) for r in rows) if v in rows[0]["steps_pred"] else float("nan")
        info = res["variants"][v]
        rt_text = f"{rt:.2f}x" if rt == rt else "not measured"
        abl.append([v, VARIANT_TEXT.get(v, v), info.get("steps", "?"), f"{zs:.3f}", f"{fr:.2f}", rt_text,
                    f"{info.get('final', {}).get('loss', float('nan')):.3f}"])
    cost = []
    infos = {v: res["variants"][v] for v in variants}
    if res.get("gpt"):
        infos["gpt"] = res["gpt"].get("info", {})
    for v, info in infos.items():
        secs = info.get("seconds", float("nan"))
        cost.append([v, info.get("device", "?"), info.get("gpu") or "-", info.get("steps", "?"),
                     f"{secs:.0f} s ({secs / 3600:.3f} h)", f"{info.get('graphs_per_second', float('nan')):.1f}"])
    mean_default = _mean([_mean(r["default"]) for r in rows])
    mean_zero = _mean([_mean(r["zero_shot"][main]) for r in rows])
    mean_scratch = _mean([_mean(r["scratch"]) for r in rows])
    goal1 = "met" if frac >= 0.8 else "not met"
    goal2 = "met" if med >= 2 else "not met"
    s = args
    body = [
        "## Graph hypernetwork: parameter prediction for held-out architectures (`scripts/bench_hyper.py`)",
        "",
        f"Digits validation accuracy (360 images). Held-out architectures are outside the training grid "
        f"(MLP widths 16/32/64/128, depths 1-3; CNN channels 4/8/16). Zero-shot: the predicted model, "
        f"mean over {s.seeds} unit-feature seeds (default init: the same seeds), BatchNorm statistics "
        f"calibrated on 256 training images. Scratch: Adam lr {s.lr}, batch 64, {s.budget} steps. "
        f"Steps: Adam steps to 98% of the scratch run's final accuracy (every {s.eval_every}; `+`: not "
        f"reached in the budget), per fine-tuning seed; ratio = default / predicted (medians).",
        "",
        markdown_table(["architecture", "default init", "zero-shot", "scratch", "zero-shot / scratch",
                        "steps from default", "steps from predicted", "ratio"], table),
        "",
        f"Means: default init {mean_default:.3f}, zero-shot {mean_zero:.3f}, scratch {mean_scratch:.3f}.",
        "",
        f"- **Goal: mean zero-shot >= 80% of scratch accuracy: {frac:.0%} -> {goal1}.**",
        f"- **Goal: >= 2x fewer fine-tuning steps than default init (median over architectures): "
        f"{med:.2f}x -> {goal2}.**",
        "",
        "### Ablations (same held-out architectures, same run)",
        "",
        "The variants of `--models` were trained with the same settings and steps as each other "
        "(`training steps` x the batch of architectures in their `hyper_train.json`); a `packaged` row was "
        "trained separately, longer.",
        "",
        markdown_table(["variant", "what changes", "training steps", "mean zero-shot", "zero-shot / scratch",
                        "median steps ratio", "final training loss"], abl),
        "",
        *gpt_section(res.get("gpt"), args),
        "### Training cost",
        "",
        markdown_table(["variant", "device", "GPU", "steps", "time", "architectures/s"], cost),
    ]
    if not any(info.get("gpu") for info in infos.values()):
        body += ["", "GPU architectures/s: not measured (no hypernetwork here was trained on a GPU)."]
    if args.note:
        body += ["", args.note]
    return "\n".join(body)


def gpt_section(g: dict[str, Any] | None, args: argparse.Namespace) -> list[str]:
    if not g:
        return ["### Tiny GPT", "", "Not measured: no GPT-trained hypernetwork (`<models>/gpt/model`) was given.", ""]
    steps = [st for st, _ in g["default"][0]]
    rows = []
    for label, key in (("default init", "default"), ("predicted init", "predicted")):
        rows.append([label] + [f"{_mean([c[i][1] for c in g[key]]):.3f}" for i in range(len(steps))])
    info = g.get("info", {})
    return ["### Tiny GPT (stdlib text, character level)", "",
            f"{g['name']}, outside the GPT training grid (d_model 32/48, 1-2 layers). A hypernetwork of the same "
            f"design meta-trained on tiny GPTs only ({info.get('steps', '?')} steps, {info.get('device', '?')}) "
            f"predicts it; validation loss (nats/char, 8 fixed windows) at init and after Adam steps (lr "
            f"{args.gpt_lr}, batch 16 x 16 chars), mean over {len(g['default'])} seeds.", "",
            markdown_table(["init"] + [f"step {st}" for st in steps], rows), ""]


VARIANT_TEXT = {
    "packaged": "the packaged model (`GraphHyperNetwork.from_pretrained()`): the main design, trained longer",
    "main": "MIP (theta0 + delta), fan-in scaling, per-edge decoder from the two endpoint units (mean-field pair "
            "term), units told apart by their relative position",
    "ghn2": "no MIP: GHN-2's fan-in normalisation of the raw output",
    "nofanin": "MIP without fan-in scaling of the delta",
    "tile": "GHN-2-style decoder: one tile per layer pair, repeated (channels duplicated)",
    "random": "units told apart by Gaussian random features instead of relative positions (GHN-style)",
    "nomeanfield": "pair term scaled by 1/sqrt(fan_in) like the rest, instead of mean-field 1/fan_in",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="runs/hyper", help="pretrain_hyper.py output: <variant>/model folders")
    p.add_argument("--variants", nargs="+", default=DIGITS_VARIANTS, choices=DIGITS_VARIANTS)
    p.add_argument("--main", nargs="?", const="", default=None,
                   help="also measure this model (no value: the packaged one) and use it for the goal rows")
    p.add_argument("--train-steps", type=int, default=0, help="train missing variants here (CPU) for this many steps")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--finetune-seeds", type=int, default=1)
    p.add_argument("--budget", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--finetune-variants", nargs="*", default=DIGITS_VARIANTS, choices=DIGITS_VARIANTS,
                   help="variants whose fine-tuning is measured (zero-shot is measured for every variant)")
    p.add_argument("--scratch-cache", default=None, help="JSON file keeping the scratch Adam curves between runs")
    p.add_argument("--scratch-only", action="store_true", help="only compute the scratch curves (into the cache)")
    p.add_argument("--gpt-steps", type=int, default=100, help="Adam steps for the tiny-GPT rows (0: skip)")
    p.add_argument("--gpt-seeds", type=int, default=2)
    p.add_argument("--gpt-lr", type=float, default=3e-3)
    p.add_argument("--note", default="", help="a paragraph appended to the section (e.g. how the models were made)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--benchmarks", default=str(BENCHMARKS))
    p.add_argument("--no-write", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    args = p.parse_args(argv)
    t0 = time.time()
    res = bench(args)
    res["seconds"] = time.time() - t0
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(res, indent=1))
    body = report(res, args)
    if args.no_write:
        print(body)
    else:
        write_section("bench_hyper", body, args.benchmarks)
        print(f"wrote section bench_hyper of {args.benchmarks} ({res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
