"""Benchmark alignment: planted permutations, barriers of independently trained digits models, runtime vs ``rebasin``.

Writes the ``bench_align`` section of BENCHMARKS.md. The PyPI ``rebasin`` package (0.0.47) is
only used here, never a project dependency: install it outside the project, e.g.
``pip install --no-deps --target REBASIN_DIR rebasin==0.0.47 torchview graphviz``, and pass
``--rebasin-path REBASIN_DIR``.

    python scripts/bench_align.py [--quick] [--rebasin-path DIR] [--threads N]
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
import time
import traceback

import torch

from weightspace import WeightSpace
from weightspace.align import interpolation_curve, plot_interpolation, weight_matching
from benchlib import markdown_table, write_section
from weightspace.tasks import build, digits_split, evaluate_classifier, example_input, train_classifier


def _same(p, q) -> bool:
    return all(torch.equal(p[g], q[g]) for g in p)


def planted(widths: list[int], noises: list[float], trials: int) -> tuple[str, list]:
    """(a) B = permute(A, random) + noise * std(tensor) * N(0, 1): exact recovery rate of weight matching."""
    configs = {
        "mlp": lambda w: dict(family="mlp", widths=(w, w, w)),
        "cnn_bn": lambda w: dict(family="cnn", channels=(w // 4, w // 2, w), batchnorm=True),
        "resnet": lambda w: dict(family="resnet", widths=(w // 4, w // 2, w)),
        "gpt": lambda w: dict(family="gpt", d_model=w, n_head=max(2, w // 64), block_size=8),
    }
    rows = []
    for fam, cfg in configs.items():
        for w in widths:
            kw = cfg(w)
            family = kw.pop("family")
            model = build(family, seed=0, **kw)
            sd = model.state_dict()
            g = torch.Generator().manual_seed(0)
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                    m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            sd = model.state_dict()
            space = WeightSpace.from_module(model, example_input(model))
            for noise in noises:
                ok, secs = 0, []
                for t in range(trials if w <= 128 else min(trials, 3)):
                    gen = torch.Generator().manual_seed(100 + t)
                    perm = space.random_permutation(gen)
                    sd_b = space.permute(sd, perm)
                    if noise:
                        sd_b = {k: v + noise * v.float().std().nan_to_num(0) * torch.randn(v.shape, generator=gen)
                                if v.is_floating_point() and v.numel() > 1 and k not in space.aliases else v
                                for k, v in sd_b.items()}
                        for k, src in space.aliases.items():
                            if k in sd_b:
                                sd_b[k] = sd_b[src]
                    t0 = time.perf_counter()
                    found = weight_matching(space, sd, sd_b, seed=t)
                    secs.append(time.perf_counter() - t0)
                    ok += _same(space.inverse(perm), found)
                rows.append([fam, w, space.num_params, noise, f"{ok}/{len(secs)}", f"{sum(secs) / len(secs):.3f}"])
                print(rows[-1], flush=True)
    table = markdown_table(["family", "width", "params", "noise (x tensor std)", "exact recovery", "mean s"], rows)
    return table, rows


def _train_pair(family: str, kw: dict, steps: int, data) -> list:
    out = []
    for seed in (0, 1):
        m = build(family, seed=seed, **kw)
        train_classifier(m, data, steps=steps, lr=3e-3, seed=seed)
        out.append(m.eval())
    return out


def barriers(mults: list[int], steps: int, figure: Path | None = None) -> str:
    """(b) Loss barrier of pairs of independently trained digits models, naive and after weight matching.

    BatchNorm models are evaluated with their statistics re-estimated along the path (``bn="reset"``)
    and, for the aligned pair, also after REPAIR. ResNets stop at 4x (training cost).
    """
    data = digits_split()
    batches = [(data.x_train[i:i + 256], data.y_train[i:i + 256]) for i in range(0, 1024, 256)]
    ev = lambda net: evaluate_classifier(net, data.x_val, data.y_val)
    rows, curves = [], {}
    for family, base, ks in (("mlp", lambda k: dict(widths=(32 * k, 32 * k)), mults),
                             ("cnn", lambda k: dict(channels=(8 * k, 16 * k, 16 * k), batchnorm=True), mults),
                             ("resnet", lambda k: dict(widths=(16 * k, 64 * k)), [k for k in mults if k <= 4])):
        for k in ks:
            kw = base(k)
            a, b = _train_pair(family, kw, steps, data)
            space = WeightSpace.from_module(a, data.x_train[:2])
            sa, sb = a.state_dict(), b.state_dict()
            t0 = time.perf_counter()
            perm = weight_matching(space, sa, sb)
            secs = time.perf_counter() - t0
            sp = space.permute(sb, perm)
            naive = interpolation_curve(a, sa, sb, ev, space=space, bn="reset", data=batches)
            aligned = interpolation_curve(a, sa, sp, ev, space=space, bn="reset", data=batches)
            rep = "-"
            if family != "mlp":
                rep = f"{interpolation_curve(a, sa, sp, ev, space=space, bn='repair', data=batches).barrier:.3f}"
            if k == ks[0]:
                curves[f"{family} {k}x naive"] = naive
                curves[f"{family} {k}x aligned"] = aligned
            rows.append([family, f"{k}x {kw}", f"{naive.losses[0]:.3f}/{naive.losses[-1]:.3f}",
                         f"{naive.barrier:.3f}", f"{aligned.barrier:.3f}", rep, f"{naive.acc_barrier:.3f}",
                         f"{aligned.acc_barrier:.3f}", f"{secs:.2f}"])
            print(rows[-1], flush=True)
    if figure is not None and curves:
        plot_interpolation(curves, figure, title="digits: naive vs weight-matched interpolation (BN reset)")
    return markdown_table(["family", "width", "endpoint losses", "loss barrier naive", "loss barrier aligned",
                           "aligned + REPAIR", "acc barrier naive", "acc barrier aligned", "matching s"], rows)


def repair_without_normalisation(mults: list[int], steps: int, figure: Path | None = None) -> str:
    """(d) REPAIR (Jordan et al. 2023) on digits networks without normalisation: an MLP and a plain CNN.

    Interpolating two weight-matched networks without BatchNorm shrinks each hidden unit's
    variance; REPAIR restores every unit's mean and std at the midpoint to the endpoints'
    interpolation, folded into the unit's own weight and bias (activation sites of the WeightSpace).
    Statistics come from 1,024 training digits; losses and accuracies from the 360 validation digits.
    """
    data = digits_split()
    batches = [(data.x_train[i:i + 256], data.y_train[i:i + 256]) for i in range(0, 1024, 256)]
    ev = lambda net: evaluate_classifier(net, data.x_val, data.y_val)
    rows, curves = [], {}
    for family, base in (("mlp", lambda k: dict(widths=(32 * k, 32 * k))),
                         ("cnn", lambda k: dict(channels=(8 * k, 16 * k, 16 * k), batchnorm=False))):
        for k in mults:
            kw = base(k)
            a, b = _train_pair(family, kw, steps, data)
            space = WeightSpace.from_module(a, data.x_train[:2])
            sa, sb = a.state_dict(), b.state_dict()
            sp = space.permute(sb, weight_matching(space, sa, sb))
            naive = interpolation_curve(a, sa, sb, ev, space=space, bn="none")
            aligned = interpolation_curve(a, sa, sp, ev, space=space, bn="none")
            t0 = time.perf_counter()
            rep = interpolation_curve(a, sa, sp, ev, space=space, bn="repair", data=batches)
            secs = (time.perf_counter() - t0) / (len(rep.lambdas) - 2)
            mid = len(rep.lambdas) // 2
            if k == mults[0]:
                curves.update({f"{family} {k}x naive": naive, f"{family} {k}x aligned": aligned,
                               f"{family} {k}x aligned + REPAIR": rep})
            rows.append([family, f"{k}x {kw}", f"{aligned.accs[0]:.3f}/{aligned.accs[-1]:.3f}",
                         f"{naive.accs[mid]:.3f}", f"{aligned.accs[mid]:.3f}", f"{rep.accs[mid]:.3f}",
                         f"{naive.barrier:.3f}", f"{aligned.barrier:.3f}", f"{rep.barrier:.3f}",
                         f"{aligned.acc_barrier:.3f}", f"{rep.acc_barrier:.3f}", f"{secs:.2f}"])
            print(rows[-1], flush=True)
    if figure is not None and curves:
        plot_interpolation(curves, figure, title="digits, no normalisation: weight matching with and without REPAIR")
    return markdown_table(["family", "width", "endpoint acc", "midpoint acc naive", "midpoint acc aligned",
                           "midpoint acc aligned + REPAIR", "loss barrier naive", "loss barrier aligned",
                           "loss barrier aligned + REPAIR", "acc barrier aligned", "acc barrier aligned + REPAIR",
                           "REPAIR s per point"], rows)


REPAIR_NOTE = (
    "For reference, REPAIR's paper (Jordan et al. 2023) reports, for VGG11 without normalisation on CIFAR-10, "
    "67.3% accuracy for the weight-matched midpoint and 84.9% after REPAIR. \"REPAIR s per point\" is the time of "
    "one REPAIRed point of the path (REPAIR and evaluation).")


def _planted_model(family: str, kw: dict):
    model = build(family, seed=0, **kw)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def rebasin_planted(PCD, trials: int = 3) -> list[list]:
    """``rebasin`` on planted permutations: B = permute(A). Recovered when B's permuted state_dict equals A's."""
    rows = []
    for label, family, kw in (("MLP 64-256-256-256-10", "mlp", dict(widths=(256, 256, 256))),
                              ("CNN+BN (32,64,64)", "cnn", dict(channels=(32, 64, 64), batchnorm=True))):
        a = _planted_model(family, kw)
        x = example_input(a)
        space = WeightSpace.from_module(a, x)
        sa = {k: v.clone() for k, v in a.state_dict().items()}
        theirs = weights = ours = 0
        for t in range(trials):
            sb = space.permute(sa, space.random_permutation(torch.Generator().manual_seed(100 + t)))
            b = copy.deepcopy(a)
            b.load_state_dict(sb)
            PCD(copy.deepcopy(a), b, x).rebasin()
            got = b.state_dict()
            theirs += all(torch.allclose(got[k].float(), sa[k].float()) for k in sa)
            weights += all(torch.allclose(got[k].float(), sa[k].float()) for k in sa if "running" not in k)
            back = space.permute(sb, weight_matching(space, sa, sb, seed=t))
            ours += all(torch.equal(back[k], sa[k]) for k in sa)
        rows.append([f"planted: {label}", f"{ours}/{trials} exact", f"{theirs}/{trials} "
                     f"(weights and biases only: {weights}/{trials})", "-", "-", "-", "-"])
        print(rows[-1], flush=True)
    return rows


class _LapTimer:
    """Counts the calls of ``scipy.optimize.linear_sum_assignment`` made through ``module`` and their time."""

    def __init__(self, module) -> None:
        self.module, self.calls, self.seconds = module, 0, 0.0

    def __enter__(self) -> "_LapTimer":
        self.inner = self.module.linear_sum_assignment

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return self.inner(*a, **k)
            finally:
                self.calls += 1
                self.seconds += time.perf_counter() - t0

        self.module.linear_sum_assignment = timed
        return self

    def __exit__(self, *exc) -> None:
        self.module.linear_sum_assignment = self.inner


def versus_rebasin(steps: int, quick: bool) -> str:
    """(c) Same trained pair, same thread count: our weight matching vs rebasin's PermutationCoordinateDescent.

    Both solve each coordinate-descent step with scipy's exact ``linear_sum_assignment``; the
    time each spends inside it is measured too, since it bounds the speed-up of any exact method.
    """
    try:
        import rebasin.permutation_coordinate_descent as rebasin_pcd
        from rebasin import PermutationCoordinateDescent
    except Exception as e:
        return f"`rebasin` could not be imported here ({e}); no comparison was run."
    import weightspace.align.matching as ours_mod

    data = digits_split()
    batches = [(data.x_train[i:i + 256], data.y_train[i:i + 256]) for i in range(0, 1024, 256)]
    ev = lambda net: evaluate_classifier(net, data.x_val, data.y_val)
    cases = [(f"MLP 64-{w}-{w}-{w}-10", "mlp", dict(widths=(w, w, w)))
             for w in ((128, 512) if quick else (128, 256, 512, 1024))]
    cases += [("CNN+BN (32,64,64)", "cnn", dict(channels=(32, 64, 64), batchnorm=True)),
              ("ResNet (16,64)", "resnet", dict(widths=(16, 64)))]
    rows = []
    for label, family, kw in cases:
        a, b = _train_pair(family, kw, steps, data)
        x = data.x_train[:2]
        space = WeightSpace.from_module(a, x)
        sa = {k: v.clone() for k, v in a.state_dict().items()}
        sb = {k: v.clone() for k, v in b.state_dict().items()}
        loss_b = ev(b)[0]
        with _LapTimer(ours_mod) as lap_ours:
            t0 = time.perf_counter()
            perm = weight_matching(space, sa, sb)
            ours_s = time.perf_counter() - t0
        ours = interpolation_curve(a, sa, space.permute(sb, perm), ev, space=space, bn="reset", data=batches)
        # rebasin permutes model B in place (and traces A): hand it deep copies, never our state_dicts
        a2, b2 = copy.deepcopy(a), copy.deepcopy(b)
        try:
            with _LapTimer(rebasin_pcd) as lap_theirs:
                t0 = time.perf_counter()
                pcd = PermutationCoordinateDescent(a2, b2, x)
                pcd.rebasin()
                theirs_s = time.perf_counter() - t0
            srb = {k: v.detach().clone() for k, v in b2.state_dict().items()}
            changed = sum(not torch.equal(srb[k], sb[k]) for k in sb)
            theirs = interpolation_curve(a, sa, srb, ev, space=space, bn="reset", data=batches)
            # A valid permutation leaves B's function unchanged, so the barrier is measured against the
            # endpoint losses of A and the original B; B's loss after rebasin's permutation is shown beside it.
            fair = max(v - ((1 - t) * theirs.losses[0] + t * loss_b)
                       for t, v in zip(theirs.lambdas[:-1], theirs.losses[:-1]))
            tb = f"{fair:.3f} (B after its permutation: loss {theirs.losses[-1]:.3f} vs {loss_b:.3f}; " \
                 f"{changed}/{len(sb)} tensors changed)"
            ta = f"{theirs_s:.3f} ({lap_theirs.calls} / {lap_theirs.seconds:.3f})"
            speed = f"{theirs_s / ours_s:.1f}x"
            floor = f"{theirs_s / max(lap_ours.seconds, 1e-9):.1f}x"
        except Exception as e:
            tb, ta, speed, floor = "-", f"failed: {type(e).__name__}", "-", "-"
        rows.append([label, f"{ours_s:.3f} ({lap_ours.calls} / {lap_ours.seconds:.3f})", ta, speed, floor,
                     f"{ours.barrier:.3f}", tb, f"{loss_b:.3f}"])
        print(rows[-1], flush=True)
    gpt = build("gpt", seed=0)
    gpt_b = build("gpt", seed=1)
    try:
        PermutationCoordinateDescent(gpt, gpt_b, example_input(gpt)).rebasin()
        ref = build("gpt", seed=1).state_dict()
        changed = sum(not torch.equal(v, ref[k]) for k, v in gpt_b.state_dict().items())
        note = f"ran without an exception; {changed}/{len(ref)} tensors of B permuted"
        y0 = build("gpt", seed=1)(example_input(gpt))
        y1 = gpt_b(example_input(gpt))
        note += f"; largest output change of B after its permutation: {float((y0 - y1).abs().max().detach()):.3g}"
    except Exception as e:
        note = f"raised {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    rows.append(["TinyGPT (2 layers, 2 heads, d=32)", "see planted table", note, "-", "-", "-", "-", "-"])
    rows += [r[:4] + ["-"] + r[4:] for r in rebasin_planted(PermutationCoordinateDescent)]
    return markdown_table(["model (trained pair on digits)", "ours s (LAP solves / s)", "rebasin s (LAP solves / s)",
                           "speedup", "rebasin s / our LAP s", "barrier ours", "barrier rebasin", "loss of B"], rows)


REBASIN_NOTE = (
    "Times in seconds on the same trained pair, one thread each; in brackets, the number of exact LAP solves "
    "(`scipy.optimize.linear_sum_assignment`, which both use) and the seconds spent in them. "
    "`rebasin s / our LAP s` is the largest speed-up any method could reach while making our exact LAP solves: "
    "on wide MLPs nearly all of our time is in those solves, so the speed-up there is bounded by the solver, not "
    "by overhead. Barriers: loss barrier with BN statistics reset, on the digits validation split.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rebasin-path", default=None)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--out", default="BENCHMARKS.md")
    ap.add_argument("--figure", default="scripts/figures/align_interpolation.png")
    ap.add_argument("--repair-figure", default="scripts/figures/align_repair.png")
    ap.add_argument("--parts", default="abcd", help="which parts to run: a, b (section bench_align), c "
                                                    "(section bench_align_rebasin) and/or d (section bench_align_repair)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.rebasin_path:
        sys.path.append(args.rebasin_path)
    widths = [32, 128] if args.quick else [32, 128, 512]
    noises = [0.0, 0.1, 0.5, 1.0]
    argv = ["REBASIN_DIR" if a == args.rebasin_path else a for a in sys.argv[1:]]
    run = f"Run with `python scripts/bench_align.py {' '.join(argv)}`, {args.threads} thread(s).\n"
    if "a" in args.parts or "b" in args.parts:
        parts = [run]
        if "a" in args.parts:
            parts.append("### (a) Planted permutations (weight matching, no data)\n")
            parts.append(planted(widths, noises, 3 if args.quick else 5)[0])
        if "b" in args.parts:
            parts.append("\n### (b) Loss barriers of independently trained digits models (BN stats reset)\n")
            parts.append(barriers([1, 2, 4] if args.quick else [1, 2, 4, 8], args.steps, Path(args.figure)))
            parts.append(f"\nInterpolation curves at the smallest width: `{args.figure}`.\n")
        write_section("bench_align", "## Alignment (scripts/bench_align.py)\n\n" + "\n".join(parts), args.out)
        print("\n".join(parts))
    if "c" in args.parts:
        try:
            table = versus_rebasin(args.steps, args.quick)
        except Exception:
            table = "comparison crashed:\n```\n" + traceback.format_exc()[-1500:] + "\n```"
        body = "\n".join(["### (c) Runtime vs the PyPI `rebasin` package 0.0.47\n", run, table, "", REBASIN_NOTE])
        write_section("bench_align_rebasin", body, args.out)
        print(body)
    if "d" in args.parts:
        table = repair_without_normalisation([1, 2] if args.quick else [1, 2, 4], args.steps, Path(args.repair_figure))
        body = "\n".join(["### (d) REPAIR on networks without normalisation\n", run, table, "", REPAIR_NOTE, "",
                          f"Interpolation curves at the smallest width: `{args.repair_figure}`."])
        write_section("bench_align_repair", body, args.out)
        print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
