"""Check that metanetwork training works on a GPU: bf16 training, 2-process DDP, throughput.

    python scripts/gpu_check.py --out gpu_check.json              # on a CUDA machine (~3-5 min on one GPU)
    python scripts/gpu_check.py --cpu-dry-run --out dry.json      # the same code paths, briefly, on CPU

It builds tiny real zoos (digits-MLP, digits-CNN, tiny-GPT; ``build_zoo(size="tiny")``) and runs a
list of checks (``CHECKS``), each independent, each reporting ``ok`` and its figures:

- ``predict``: the property predictor trains under bf16 autocast on the GPU; its loss falls, and its
  mean over the last 20% of the CPU reference's steps is within tolerance of a CPU fp32 run with
  the same seed and batches (the reference stops early with ``Trainer.fit(stop_at=...)``, so both
  follow the same learning-rate schedule over the compared steps).
- ``nowcast``: the same for NiNo meta-training on trajectory windows.
- ``hyper``: the same for the graph hypernetwork meta-trained on digits MLP/CNN architectures
  (its loss is the predicted models' cross-entropy on a batch of digits).
- ``ddp``: 2 processes train the predictor with DDP over NCCL (two ranks on ``cuda:0`` when there is
  one GPU; if NCCL refuses that, gloo on CUDA tensors, and the output says so). Both replicas must
  end with identical weights and the loss must fall.
- ``throughput``: graphs/s of the metanetwork's forward pass (inference) and forward + backward
  (training) on digits-MLP, digits-CNN and tiny-GPT graphs, fp32 and bf16, at several batch sizes.

The tolerance on the loss: bf16 keeps 8 significant bits, and the two runs' trajectories drift
apart step by step, so they are compared on a window mean, not per step. ``--rtol`` (default 0.25)
bounds the relative difference of those means, with an absolute floor of 0.05 times the CPU run's
first-window loss for losses that fall close to zero. The scale is the spread between fp32 CPU
runs that differ only in seed, measured on the predictor (hidden 16, 2 layers, batch 8, 40 steps,
last-8-step mean): 1.304, 1.460 and 1.383 for seeds 0, 1 and 2, up to 12% apart, while bf16
autocast on CPU moved the same mean by under 0.02% (1.30368 vs 1.30371). So a GPU run passes when it
is as close to the CPU run as another seed would be (0.25 is about twice that spread) and fails when
bf16 or a device bug changes what is learnt, e.g. a loss off by a factor of 2.

At the end it prints a JSON summary (also written to ``--out``, and rewritten there after every
check with ``"finished": false``, so a run cut short still leaves what it measured) and a markdown snippet for
BENCHMARKS.md (``--benchmarks FILE`` writes it there as the ``gpu_check`` section). Exit status 1
when a check fails. New checks (the hypernetwork, generators) are added to ``CHECKS``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import machine, markdown_table, write_section  # noqa: E402

from weightspace.errors import WeightSpaceError  # noqa: E402
from weightspace.training import TrainConfig, Trainer  # noqa: E402

FAMILIES = {"digits-mlp": "MLP", "digits-cnn": "CNN", "tiny-gpt": "GPT"}
T0 = time.perf_counter()


class GPUCheckError(WeightSpaceError):
    """The GPU check cannot run as asked (no CUDA device, an option that needs one, a failed launch)."""


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


@dataclass
class Settings:
    """Step counts and sizes of every check; ``dry_run()`` shrinks them to a CPU smoke test."""

    device: str = "cuda"
    predict_steps: int = 300
    predict_cpu_steps: int = 80
    nowcast_steps: int = 300
    nowcast_cpu_steps: int = 80
    hyper_steps: int = 300
    hyper_cpu_steps: int = 40
    hyper_lr: float = 5e-3
    hyper_families: tuple[str, ...] = ("mlp", "cnn")
    ddp_steps: int = 120
    batch_size: int = 16
    lr: float = 1e-3
    hidden: int = 32
    layers: int = 2
    bench_hidden: int = 64
    bench_layers: int = 4
    batch_sizes: tuple[int, ...] = (8, 32, 64)
    dtypes: tuple[str, ...] = ("fp32", "bf16")
    repeats: int = 10
    rtol: float = 0.25
    atol_frac: float = 0.05
    ddp_backend: str = "nccl"
    ddp_timeout_s: int = 90

    def dry_run(self) -> "Settings":
        return replace(self, device="cpu", predict_steps=12, predict_cpu_steps=12, nowcast_steps=12,
                       nowcast_cpu_steps=12, hyper_steps=24, hyper_cpu_steps=24, hyper_lr=1e-2, hyper_families=("mlp",), ddp_steps=4, batch_size=4, hidden=16, layers=2, bench_hidden=16, bench_layers=2, batch_sizes=(4,),
                       dtypes=("fp32",), repeats=1, ddp_backend="gloo")


@dataclass
class Context:
    settings: Settings
    dry_run: bool
    work: Path
    zoos: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return torch.device(self.settings.device)


# ----------------------------------------------------------------------------- shared pieces

def build_zoos(ctx: Context) -> dict[str, Any]:
    from weightspace.tasks.zoo import build_zoo

    out = {}
    for recipe in FAMILIES:
        t = time.perf_counter()
        coll = build_zoo(recipe, ctx.work / recipe, size="tiny", progress=False)
        ctx.zoos[recipe] = coll
        out[recipe] = {"checkpoints": len(coll.rows()), "runs": len(coll.runs()),
                       "seconds": round(time.perf_counter() - t, 2)}
        log(f"zoo {recipe}: {coll!r} in {out[recipe]['seconds']} s")
    return {"ok": True, "zoos": out}


def property_store(ctx: Context, recipes: list[str]):
    from weightspace.predict import PropertyGraphs

    target = ["test_acc"] if all(r != "tiny-gpt" for r in recipes) else ["val_loss"]
    return PropertyGraphs.from_collections([ctx.zoos[r] for r in recipes], target, progress=False)


def new_predictor(ctx: Context, store, seed: int = 0):
    """A :class:`PropertyPredictor` sized to ``store`` the way ``train_predictor`` sizes it."""
    from weightspace.predict import PropertyPredictor

    torch.manual_seed(seed)
    mean = store.targets.mean(0)
    std = store.targets.std(0).clamp(min=1e-6)
    return PropertyPredictor(targets=store.target_names, target_mean=mean.tolist(), target_std=std.tolist(),
                             edge_features=max(9, store.edge_features), node_features=max(4, store.node_features),
                             max_positions=max(128, store.max_position + 1), hidden=ctx.settings.hidden,
                             layers=ctx.settings.layers)


def train_config(ctx: Context, steps: int, device: str, seed: int = 0, lr: float | None = None) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=ctx.settings.batch_size, lr=lr or ctx.settings.lr, warmup=max(1, steps // 10),
                       seed=seed, device=device, checkpoint_every=0, log_every=1, eval_every=0, progress=False,
                       plot=False)


def window_mean(history: list[dict[str, float]], lo: int, hi: int) -> float:
    """Mean training loss over steps ``lo < step <= hi``."""
    vals = [h["loss"] for h in history if lo < h["step"] <= hi and "loss" in h]
    return float(sum(vals) / len(vals)) if vals else math.nan


def compare_to_cpu(name: str, ctx: Context, make: Callable[[], tuple[torch.nn.Module, Callable, Any]],
                   steps: int, cpu_steps: int, lr: float | None = None) -> dict[str, Any]:
    """Train ``make()`` for ``steps`` on the check device and for the first ``cpu_steps`` of the same
    schedule on CPU in fp32; the loss must fall, and agree on the last 20% of the CPU steps."""
    s = ctx.settings
    cpu_steps = min(cpu_steps, steps)
    runs = {}
    for where, device, stop in (("device", s.device, steps), ("cpu_fp32", "cpu", cpu_steps)):
        model, loss_fn, data = make()
        t = time.perf_counter()
        res = Trainer(model, loss_fn, data, train_config(ctx, steps, device, lr=lr)).fit(stop_at=stop)
        if any(not math.isfinite(h["loss"]) for h in res.history):
            raise GPUCheckError(f"{name}: non-finite training loss on {device}")
        runs[where] = res
        log(f"{name} on {device}{' (bf16 autocast)' if device.startswith('cuda') else ''}: {stop} steps in "
            f"{res.seconds:.1f} s, {res.graphs_per_second:.0f} graphs/s, loss {res.history[0]['loss']:.4g} -> "
            f"{res.history[-1]['loss']:.4g} (total {time.perf_counter() - t:.1f} s)")
    dev, cpu = runs["device"].history, runs["cpu_fp32"].history
    head = max(1, steps // 10)
    first, last = window_mean(dev, 0, head), window_mean(dev, steps - max(1, steps // 5), steps)
    lo = cpu_steps - max(1, cpu_steps // 5)
    dev_w, cpu_w = window_mean(dev, lo, cpu_steps), window_mean(cpu, lo, cpu_steps)
    cpu_first = window_mean(cpu, 0, max(1, cpu_steps // 10))
    tol = s.rtol * abs(cpu_w) + s.atol_frac * abs(cpu_first)
    falls = last < 0.9 * first
    close = abs(dev_w - cpu_w) <= tol
    return {"ok": bool(falls and close), "loss_falls": bool(falls), "matches_cpu": bool(close),
            "device": s.device, "autocast": "bf16" if ctx.device.type == "cuda" else "none",
            "steps": steps, "cpu_steps": cpu_steps, "loss_first_10pct": first, "loss_last_20pct": last,
            "window": [lo, cpu_steps], "device_window_loss": dev_w, "cpu_window_loss": cpu_w, "tolerance": tol,
            "train_graphs_per_s": round(runs["device"].graphs_per_second, 1),
            "cpu_train_graphs_per_s": round(runs["cpu_fp32"].graphs_per_second, 1),
            "seconds": round(runs["device"].seconds, 2)}


# ----------------------------------------------------------------------------- checks

def check_predict(ctx: Context) -> dict[str, Any]:
    from weightspace.predict.api import PredictionLoss

    store = property_store(ctx, ["digits-mlp", "digits-cnn"])
    log(f"predict: {store}")
    return compare_to_cpu("predict", ctx, lambda: (new_predictor(ctx, store), PredictionLoss(1.0), store),
                          ctx.settings.predict_steps, ctx.settings.predict_cpu_steps)


def check_nowcast(ctx: Context) -> dict[str, Any]:
    from weightspace.nowcast import TrajectoryWindows
    from weightspace.nowcast.train import NowcastTrainSpec, build_nowcaster, nowcast_loss

    spec = NowcastTrainSpec(model="nino", context=3, horizons=2, hidden=32, layers=2, decoder_hidden=32)
    windows = TrajectoryWindows([ctx.zoos["digits-mlp"]], spec.context, spec.horizons, spec.stride,
                                spec.weighting)

    def make():
        torch.manual_seed(0)
        return build_nowcaster(spec, windows), nowcast_loss, windows

    log(f"nowcast: {len(windows)} windows of context {spec.context}, {spec.horizons} horizons")
    return compare_to_cpu("nowcast", ctx, make, ctx.settings.nowcast_steps, ctx.settings.nowcast_cpu_steps)


def check_hyper(ctx: Context) -> dict[str, Any]:
    from weightspace.hyper import GraphHyperNetwork
    from weightspace.hyper.train import ArchDistribution, ArchitectureCache, ArchitectureTasks, HyperLoss
    from weightspace.tasks.data import digits_split

    data = digits_split(0)
    s = ctx.settings

    def make():
        torch.manual_seed(0)
        hyper = GraphHyperNetwork(hidden=s.hidden, layers=s.layers)
        return hyper, HyperLoss(ArchitectureCache(hyper)), ArchitectureTasks(ArchDistribution(s.hyper_families), data, 64,
                                                                       seed=0)

    log(f"hyper: digits {'/'.join(s.hyper_families)} architectures, 64 images each")
    return compare_to_cpu("hyper", ctx, make, s.hyper_steps, s.hyper_cpu_steps, lr=s.hyper_lr)


def _ddp_worker(rank: int, world: int, port: int, backend: str, device: str, zoo_root: str, hidden: int,
                layers: int, steps: int, batch_size: int, out: str) -> None:
    """One DDP rank: join the group, check an all-reduce, train the predictor, save weights and losses
    (or, on failure, the error in ``rank<r>.err``)."""
    try:
        _ddp_rank(rank, world, port, backend, device, zoo_root, hidden, layers, steps, batch_size, out)
    except BaseException as e:
        Path(out, f"rank{rank}.err").write_text(f"{type(e).__name__}: {e}"[:2000])
        raise


def _ddp_rank(rank: int, world: int, port: int, backend: str, device: str, zoo_root: str, hidden: int,
              layers: int, steps: int, batch_size: int, out: str) -> None:
    import torch.distributed as dist

    from weightspace.collections import CheckpointCollection
    from weightspace.predict import PropertyGraphs
    from weightspace.predict.api import PredictionLoss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    kw: dict[str, Any] = {"rank": rank, "world_size": world, "timeout": timedelta(seconds=60)}
    try:  # device_id makes NCCL set up its communicator now, so a refusal shows here, not in a later hang
        dist.init_process_group(backend, **kw, **({"device_id": dev} if backend == "nccl" else {}))
    except TypeError:  # a torch without device_id
        dist.init_process_group(backend, **kw)
    try:
        t = torch.full((1,), float(rank + 1), device=dev)
        dist.all_reduce(t)
        if float(t) != world * (world + 1) / 2:
            raise GPUCheckError(f"all_reduce over {backend} gave {float(t)}, expected {world * (world + 1) / 2}")
        store = PropertyGraphs.from_collections(CheckpointCollection.open(zoo_root), ["test_acc"], progress=False)
        ctx = Context(replace(Settings(), hidden=hidden, layers=layers, batch_size=batch_size), False, Path(out))
        model = new_predictor(ctx, store)
        trainer = Trainer(model, PredictionLoss(1.0), store, train_config(ctx, steps, device))
        if trainer.world != world:
            raise GPUCheckError(f"rank {rank}: the trainer sees {trainer.world} processes, expected {world}")
        res = trainer.fit()
        torch.save({"state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "losses": [h["loss"] for h in res.history], "graphs_per_s": res.graphs_per_second,
                    "backend": dist.get_backend(), "device": str(dev)}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _launch(backend: str, devices: list[str], ctx: Context, out: Path) -> tuple[bool, str]:
    """Start 2 ranks (spawned processes); ``(ok, error)``. Ranks that hang past the timeout are killed."""
    import torch.multiprocessing as mp

    from weightspace.training.distributed import _free_port

    out.mkdir(parents=True, exist_ok=True)
    s = ctx.settings
    port = _free_port()
    mpc = mp.get_context("spawn")
    procs = [mpc.Process(target=_ddp_worker, args=(r, 2, port, backend, devices[r], str(ctx.zoos["digits-mlp"].root),
                                                   s.hidden, s.layers, s.ddp_steps, s.batch_size, str(out)))
             for r in range(2)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + s.ddp_timeout_s
    for p in procs:
        p.join(max(1.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    if hung:
        return False, f"{backend}: {len(hung)} rank(s) still running after {s.ddp_timeout_s} s, killed"
    codes = [p.exitcode for p in procs]
    if any(codes):
        why = "; ".join(f"rank {r}: {(out / f'rank{r}.err').read_text()}" for r in range(2)
                        if (out / f"rank{r}.err").exists())
        return False, f"{backend}: ranks exited with codes {codes}" + (f" ({why})" if why else "")
    return True, ""


def check_ddp(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    if ctx.device.type == "cuda":
        n = torch.cuda.device_count()
        devices = [f"cuda:{r % n}" for r in range(2)]
    else:
        devices = ["cpu", "cpu"]
    attempts = [s.ddp_backend] + (["gloo"] if s.ddp_backend == "nccl" else [])
    errors = []
    for backend in attempts:
        out = ctx.work / f"ddp-{backend}"
        t = time.perf_counter()
        ok, err = _launch(backend, devices, ctx, out)
        if not ok:
            errors.append(err)
            log(f"ddp over {backend} on {devices} failed: {err}")
            continue
        ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
        same = all(torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]) for k in ranks[0]["state"])
        losses = ranks[0]["losses"]
        k = max(1, len(losses) // 4)
        falls = sum(losses[-k:]) / k < 0.9 * sum(losses[:k]) / k
        fallback = backend != s.ddp_backend
        reason = [ln for ln in errors[0].splitlines() if ln.strip()][-1][:200] if errors else ""
        note = (f"NCCL failed on {devices} ({reason}); fell back to gloo on the same devices"
                if fallback else "")
        log(f"ddp over {backend} on {devices}: {s.ddp_steps} steps in {time.perf_counter() - t:.1f} s (with start-up), "
            f"replicas identical: {same}, loss {losses[0]:.4g} -> {losses[-1]:.4g}" + (f"; {note}" if note else ""))
        return {"ok": bool(same and falls), "backend": backend, "requested_backend": s.ddp_backend,
                "fallback": fallback, "note": note, "devices": devices, "replicas_identical": bool(same),
                "loss_falls": bool(falls), "loss_first": losses[0], "loss_last": losses[-1],
                "graphs_per_s_rank0": round(ranks[0]["graphs_per_s"], 1), "errors": errors}
    return {"ok": False, "backend": None, "devices": devices, "errors": errors}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_throughput(ctx: Context) -> dict[str, Any]:
    """Graphs/s of the predictor's metanetwork (forward; forward + backward) per family, dtype and batch size."""
    s, dev = ctx.settings, ctx.device
    rows = []
    for recipe, fam in FAMILIES.items():
        store = property_store(ctx, [recipe])
        for dtype in s.dtypes:
            if dtype == "bf16" and dev.type != "cuda":
                raise GPUCheckError(f"bf16 throughput is measured under CUDA autocast only, not on {dev}")
            model = new_predictor(replace(ctx, settings=replace(s, hidden=s.bench_hidden, layers=s.bench_layers)),
                                  store).to(dev)
            for bs in s.batch_sizes:
                idx = torch.arange(bs) % len(store)
                batch, _ = store.batch(idx, dev)
                amp = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
                rec: dict[str, Any] = {"family": fam, "dtype": dtype, "batch": bs}
                try:
                    _measure(model, batch, amp, dev, s.repeats, rec)
                except torch.cuda.OutOfMemoryError:
                    rec.update(infer_graphs_per_s="OOM", train_graphs_per_s="OOM")
                    torch.cuda.empty_cache()
                if dev.type == "cuda":
                    rec["peak_mem_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
                    torch.cuda.reset_peak_memory_stats(dev)
                rows.append(rec)
                log(f"throughput {fam} {dtype} batch {bs}: inference {rec['infer_graphs_per_s']} graphs/s, "
                    f"training {rec['train_graphs_per_s']} graphs/s")
    return {"ok": True, "model": {"hidden": s.bench_hidden, "layers": s.bench_layers}, "rows": rows}


def _measure(model: torch.nn.Module, batch: Any, amp: Any, dev: torch.device, repeats: int,
             rec: dict[str, Any]) -> None:
    """Fill ``rec`` with inference and training graphs/s: the mean over ``repeats`` calls after one warm-up."""
    for mode in ("infer", "train"):
        def step() -> None:
            if mode == "infer":
                with torch.no_grad(), amp:
                    model(batch)
            else:
                with amp:
                    out = model(batch)
                out.float().square().mean().backward()
                model.zero_grad(set_to_none=True)

        step()
        _sync(dev)
        t = time.perf_counter()
        for _ in range(repeats):
            step()
        _sync(dev)
        rec[f"{mode}_graphs_per_s"] = round(rec["batch"] * repeats / (time.perf_counter() - t), 1)


CHECKS: list[tuple[str, Callable[[Context], dict[str, Any]]]] = [
    ("zoos", build_zoos),
    ("predict", check_predict),
    ("nowcast", check_nowcast),
    ("hyper", check_hyper),
    ("ddp", check_ddp),
    ("throughput", check_throughput),
]
"""Every check, in order; each takes the shared :class:`Context` and returns a dict with ``ok``."""


# ----------------------------------------------------------------------------- report

def markdown(summary: dict[str, Any]) -> str:
    c = summary["checks"]
    lines = [f"`scripts/gpu_check.py` on {summary['device']} ({'CPU dry run' if summary['dry_run'] else 'bf16 autocast'}); "
             f"all checks {'passed' if summary['ok'] else 'did NOT pass'}; {summary['seconds']:.0f} s in all.", ""]
    train_rows = []
    for name in ("predict", "nowcast", "hyper"):
        r = c.get(name, {})
        if "loss_first_10pct" in r:
            train_rows.append([name, r["steps"], f"{r['loss_first_10pct']:.4g} → {r['loss_last_20pct']:.4g}",
                               f"{r['device_window_loss']:.4g}", f"{r['cpu_window_loss']:.4g}",
                               f"±{r['tolerance']:.3g}", r["train_graphs_per_s"], "yes" if r["ok"] else "**no**"])
        elif r:
            train_rows.append([name, "-", "-", "-", "-", "-", "-", f"**failed**: {r.get('error', '')[:80]}"])
    if train_rows:
        lines += [markdown_table(["check", "steps", "loss (first 10% → last 20%)", "device, window mean",
                                  "CPU fp32, window mean", "tolerance", "train graphs/s", "ok"], train_rows), ""]
    d = c.get("ddp", {})
    if d:
        lines.append(f"2-process DDP: backend {d.get('backend')} on {d.get('devices')}, replicas identical: "
                     f"{d.get('replicas_identical')}, loss falls: {d.get('loss_falls')}"
                     + (f" ({d['note']})" if d.get("note") else "") + ".")
        lines.append("")
    rows = c.get("throughput", {}).get("rows", [])
    if rows:
        m = c["throughput"]["model"]
        lines += [f"Metanetwork (property predictor, hidden {m['hidden']}, {m['layers']} layers) graphs/s:", "",
                  markdown_table(["family", "dtype", "batch", "inference graphs/s", "training graphs/s",
                                  "peak memory (MiB)"],
                                 [[r["family"], r["dtype"], r["batch"], r["infer_graphs_per_s"],
                                   r["train_graphs_per_s"], r.get("peak_mem_mib", "-")] for r in rows])]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-dry-run", action="store_true", help="run every check briefly on CPU (gloo, fp32)")
    p.add_argument("--device", default="cuda:0", help="CUDA device of the checks (default cuda:0)")
    p.add_argument("--out", default=None, help="write the JSON summary here")
    p.add_argument("--benchmarks", default=None, help="write the markdown snippet into this BENCHMARKS.md")
    p.add_argument("--work", default=None, help="folder for the zoos and DDP outputs (default: a temporary one)")
    p.add_argument("--checks", default=",".join(n for n, _ in CHECKS),
                   help="comma-separated subset of checks (zoos always runs)")
    p.add_argument("--predict-steps", type=int, default=None)
    p.add_argument("--nowcast-steps", type=int, default=None)
    p.add_argument("--hyper-steps", type=int, default=None)
    p.add_argument("--cpu-steps", type=int, default=None, help="steps of the CPU fp32 references")
    p.add_argument("--rtol", type=float, default=None)
    p.add_argument("--ddp-backend", default=None, choices=("nccl", "gloo"))
    return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    s = Settings()
    if args.cpu_dry_run:
        s = s.dry_run()
    else:
        if not torch.cuda.is_available():
            raise GPUCheckError("no CUDA device is visible (torch.cuda.is_available() is False; torch "
                                f"{torch.__version__}, CUDA build {torch.version.cuda}); run with --cpu-dry-run "
                                "to exercise the same code paths on CPU")
        dev = torch.device(args.device)
        if dev.type != "cuda":
            raise GPUCheckError(f"--device {args.device} is not a CUDA device; use --cpu-dry-run for CPU")
        if (dev.index or 0) >= torch.cuda.device_count():
            raise GPUCheckError(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s) visible")
        s = replace(s, device=str(dev) if dev.index is not None else "cuda:0")
    if args.predict_steps:
        s = replace(s, predict_steps=args.predict_steps, predict_cpu_steps=min(s.predict_cpu_steps, args.predict_steps))
    if args.nowcast_steps:
        s = replace(s, nowcast_steps=args.nowcast_steps, nowcast_cpu_steps=min(s.nowcast_cpu_steps, args.nowcast_steps))
    if args.hyper_steps:
        s = replace(s, hyper_steps=args.hyper_steps, hyper_cpu_steps=min(s.hyper_cpu_steps, args.hyper_steps))
    if args.cpu_steps:
        s = replace(s, predict_cpu_steps=args.cpu_steps, nowcast_cpu_steps=args.cpu_steps,
                    hyper_cpu_steps=args.cpu_steps)
    if args.rtol is not None:
        s = replace(s, rtol=args.rtol)
    if args.ddp_backend:
        s = replace(s, ddp_backend=args.ddp_backend)
    return s


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
    except GPUCheckError as e:
        print(f"gpu_check: {e}", file=sys.stderr, flush=True)
        return 2
    wanted = {n.strip() for n in args.checks.split(",") if n.strip()}
    unknown = wanted - {n for n, _ in CHECKS}
    if unknown:
        print(f"gpu_check: unknown checks {sorted(unknown)}; choose from {[n for n, _ in CHECKS]}", file=sys.stderr)
        return 2
    if args.benchmarks and args.cpu_dry_run:
        print("gpu_check: --benchmarks is refused with --cpu-dry-run (a dry run measures nothing worth "
              "recording)", file=sys.stderr)
        return 2
    if settings.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        try:
            nccl = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception as e:  # noqa: BLE001 - a torch built without NCCL still runs every other check
            nccl = f"unavailable ({type(e).__name__})"
        log(f"CUDA: {torch.cuda.get_device_name(settings.device)}, {torch.cuda.device_count()} device(s), "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL {nccl}")
    log(f"settings: {settings}")
    tmp = None
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="gpu_check-")
        work = Path(tmp.name)
    ctx = Context(settings, args.cpu_dry_run, work)
    results: dict[str, Any] = {}

    def summary(finished: bool) -> dict[str, Any]:
        return {"ok": finished and all(r["ok"] for r in results.values()), "finished": finished,
                "dry_run": args.cpu_dry_run, "device": settings.device, "machine": machine(),
                "seconds": round(time.perf_counter() - T0, 1),
                "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.__dict__.items()},
                "checks": results}

    def write(s: dict[str, Any]) -> str:
        text = json.dumps(s, indent=1, default=str)
        if args.out:
            from weightspace.utils import atomic_write_text

            atomic_write_text(Path(args.out), text)
        return text

    try:
        for name, fn in CHECKS:
            if name != "zoos" and name not in wanted:
                continue
            t = time.perf_counter()
            log(f"== {name}")
            try:
                results[name] = fn(ctx)
            except Exception as e:  # noqa: BLE001 - one failed check must not hide the others' results
                traceback.print_exc()
                results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            results[name]["check_seconds"] = round(time.perf_counter() - t, 2)
            log(f"== {name}: {'ok' if results[name]['ok'] else 'FAILED'} ({results[name]['check_seconds']} s)")
            write(summary(False))
            if name == "zoos" and not results[name]["ok"]:
                break
    finally:
        if tmp is not None:
            tmp.cleanup()
    final = summary(True)
    md = markdown(final)
    final["markdown"] = md
    print("\n" + md + "\n", flush=True)
    text = write(final)
    if args.benchmarks:
        write_section("gpu_check", md, args.benchmarks)
    print(text, flush=True)
    return 0 if final["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
