"""Nowcasting: windows, scaling, baselines, NowcastOptimizer (guard, schedulers, errors), NiNo/WNN."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from weightspace.errors import NonFiniteWeights
from weightspace.nowcast import (LAWA, WNN, LineFit, NiNo, NodeNiNo, NowcastError, NowcastOptimizer, ParamLayout,
                                 TrajectoryWindows, horizon_schedule, load_nowcaster)
from weightspace.nowcast.core import _scale as scale
from weightspace.nowcast.core import _unscale as unscale
from weightspace.tasks.models import MLP, build, example_input


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small(cls: type, context: int = 3, horizons: int = 4, layers: int = 1, **kw):
    """A learned nowcaster of width 8 (decoder 16 for the graph ones)."""
    if cls is WNN:
        return WNN(context=context, horizons=horizons, hidden=8, **kw)
    width = {"node_hidden" if cls is NodeNiNo else "hidden": 8}
    return cls(context=context, horizons=horizons, layers=layers, decoder_hidden=16, **width, **kw)


def _toy(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = MLP(in_features=8, widths=[16], out_features=3)
    x = torch.randn(128, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return model, x, y


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    from weightspace.collections import CheckpointCollection
    from weightspace.space import WeightSpace

    root = tmp_path_factory.mktemp("zoo")
    coll = CheckpointCollection.create(root / "c", name="toy")
    for r, width in enumerate([4, 4, 6]):
        torch.manual_seed(r)
        m = MLP(in_features=5, widths=[width], out_features=2)
        space = WeightSpace.from_module(m, torch.randn(2, 5))
        with coll.run_writer(f"run-{r}", space=space, hparams={"width": width}) as w:
            for step in range(9 + r):
                with torch.no_grad():
                    for p in m.parameters():
                        p.add_(0.01 * (step + 1))
                w.append(step * 10, m.state_dict(), metrics={"loss": 1.0 / (step + 1)})
    return CheckpointCollection.open(root / "c")


# ----------------------------------------------------------------------------- windows and scaling
def test_windows_refuse_nan_trajectories_naming_run_and_step_unless_allowed(tmp_path):
    from weightspace.collections import CheckpointCollection
    from weightspace.errors import NonFiniteWeights
    from weightspace.space import WeightSpace

    m = MLP(in_features=5, widths=[4], out_features=2)
    space = WeightSpace.from_module(m, torch.randn(2, 5))
    coll = CheckpointCollection.create(tmp_path / "c")
    for step in range(6):
        sd = {k: v + 0.01 * step for k, v in m.state_dict().items()}
        if step == 3:
            sd["net.0.weight"][0, 0] = float("nan")
        coll.append("run-0", step, sd, space=space, allow_nonfinite=True)
    coll.finish("run-0")
    with pytest.raises(NonFiniteWeights, match=r"run 'run-0' step 3"):
        TrajectoryWindows([coll], context=3, horizons=2).window(0)
    w = TrajectoryWindows([coll], context=3, horizons=2, allow_nonfinite=True).window(0)
    assert w.context.shape[0] == 3



def test_windows_shapes_mask_and_lazy(zoo):
    W = TrajectoryWindows([zoo], context=3, horizons=4)
    assert len(W) == sum(n - 3 for n in (9, 10, 11))
    w = W.window(0)
    assert w.context.shape[0] == 3 and w.future.shape[0] == 4
    assert w.mask.all()
    last = W.window(int(W.num_windows[0]) - 1)
    assert last.mask.tolist() == [True, False, False, False]
    sd = zoo.load("run-0", 20)
    assert torch.equal(w.context[-1][:sd["net.0.weight"].numel()], sd["net.0.weight"].reshape(-1))
    assert len(W._cache) <= W.cache_runs
    b1, _ = W.batch(torch.tensor([5, 7]))
    b2, _ = W.batch(torch.tensor([5, 7]))
    assert all(torch.equal(a.context, b.context) for a, b in zip(b1, b2))


def test_collection_weighting(zoo):
    W = TrajectoryWindows([zoo, zoo], context=3, horizons=2, runs=[["run-0", "run-1", "run-2"], ["run-0"]])
    coll_of = torch.tensor([r.coll for r in W.runs])
    w = W.run_weights
    assert math.isclose(float(w[coll_of == 0].sum()), 0.5) and math.isclose(float(w[coll_of == 1].sum()), 0.5)
    per = W.summary()["collections"]
    assert [d["runs"] for d in per.values()] == [3, 1] and len(per) == 2


@pytest.mark.parametrize("loop_numel", [1, 10 ** 9])
def test_per_tensor_stats_by_block_and_by_segment_agree(loop_numel, monkeypatch):
    """Both ways ``ParamLayout.stats`` reduces (tensor by tensor, or over the whole vector) give each tensor's own
    mean and population std over the context states."""
    import weightspace.nowcast.core as core

    monkeypatch.setattr(core, "LOOP_NUMEL", loop_numel)
    lay = ParamLayout(["a", "b", "c"], [700, 3, 1200])
    torch.manual_seed(0)
    ctx = torch.randn(4, lay.num_values) * torch.tensor([0.01] * 700 + [5.0] * 3 + [1e-3] * 1200) + 2.0
    mean, std = lay.stats(ctx)
    for a, numel in zip(torch.tensor([0] + lay.numels).cumsum(0).tolist(), lay.numels):
        block = ctx[:, a:a + numel].double()
        torch.testing.assert_close(mean[a:a + numel], block.mean().float().expand(numel))
        torch.testing.assert_close(std[a:a + numel], block.std(unbiased=False).float().expand(numel))


def test_scaling_round_trip_and_residual_targets(zoo):
    W = TrajectoryWindows([zoo], context=4, horizons=3)
    w = W.window(2)
    ctx = w.context.double()
    lay = w.layout
    mean, std = lay.stats(ctx)
    for a, numel in zip(torch.tensor([0] + lay.numels).cumsum(0).tolist(), lay.numels):
        seg = ctx[:, a:a + numel]
        assert torch.allclose(mean[a], seg.mean(), atol=1e-12)
        assert torch.allclose(std[a], seg.std(unbiased=False), atol=1e-12)
    assert torch.equal(unscale(scale(ctx, mean, std), mean, std), ctx) or \
        torch.allclose(unscale(scale(ctx, mean, std), mean, std), ctx, atol=1e-14, rtol=0)
    y, mean32, std32 = w.targets()
    assert torch.allclose(w.context[-1] + y * std32, w.future, atol=1e-6)


# ----------------------------------------------------------------------------- baselines

def test_linefit_extrapolates_a_line_exactly():
    t = torch.arange(5, dtype=torch.float64)[:, None]
    a, b = torch.randn(1, 7, dtype=torch.float64), torch.randn(1, 7, dtype=torch.float64)
    ctx = a + b * t
    for k in (1, 3, 40):
        assert torch.allclose(LineFit(5).nowcast(ctx, k), (a + b * (4 + k))[0], atol=1e-12)


def test_lawa_averages_latest_states():
    ctx = torch.randn(5, 11)
    assert torch.allclose(LAWA(5).nowcast(ctx, 7), ctx.mean(0))


def test_horizon_schedule():
    assert horizon_schedule(40) == [40, 33, 26, 21, 16, 11, 8, 5, 3, 1]
    s = horizon_schedule(16)
    assert s[0] == 16 and s[-1] == 1 and s == sorted(s, reverse=True)


# ----------------------------------------------------------------------------- NowcastOptimizer

class _Const:
    """A nowcaster that returns fixed values (to check what the optimizer does with them)."""

    needs_space = False
    max_horizon = None

    def __init__(self, context: int, fn) -> None:
        self.context, self.fn, self.seen = context, fn, []

    def nowcast(self, context, k, layout):
        self.seen.append((context.clone(), k))
        return self.fn(context)


def _train(opt, model, x, y, steps, sched=None):
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if sched is not None:
            sched.step()


def test_period_smaller_than_context_raises():
    model, _, _ = _toy()
    with pytest.raises(NowcastError, match="period"):
        NowcastOptimizer(model, torch.optim.Adam(model.parameters()), LineFit(5), period=4)


def test_context_states_and_jump_schedule():
    model, x, y = _toy()
    snaps = {}
    nc = _Const(3, lambda c: c[-1])
    opt = NowcastOptimizer(model, torch.optim.SGD(model.parameters(), lr=0.1), nc, period=9, horizons=[5, 2])
    lay = ParamLayout.from_module(model)
    for s in range(1, 28):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        snaps[s] = lay.flatten(model).clone()
    assert [j.step for j in opt.jumps] == [9, 18, 27] and [j.k for j in opt.jumps] == [5, 2, 2]
    ctx, _ = nc.seen[1]
    assert all(torch.equal(ctx[i], snaps[s]) for i, s in enumerate([12, 15, 18]))


def test_guard_rolls_back_a_harmful_nowcast():
    model, x, y = _toy()
    lay = ParamLayout.from_module(model)
    harmful = _Const(2, lambda c: c[-1] + 5.0 * torch.randn_like(c[-1]))
    guard = lambda: F.cross_entropy(model(x), y)  # noqa: E731
    opt = NowcastOptimizer(model, torch.optim.Adam(model.parameters(), lr=1e-2), harmful, period=4, guard=guard)
    _train(opt, model, x, y, 3)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.base.step()
    before = lay.flatten(model).clone()
    opt.num_steps += 1
    opt._record()
    j = opt.jump()
    assert not j.accepted and j.loss_after > j.loss_before and "rose" in j.reason
    assert torch.equal(lay.flatten(model), before)
    assert opt.rollbacks == [j]
    nan = _Const(2, lambda c: torch.full_like(c[-1], float("nan")))
    opt2 = NowcastOptimizer(model, torch.optim.Adam(model.parameters(), lr=1e-2), nan, period=4)
    _train(opt2, model, x, y, 4)
    assert not opt2.jumps[0].accepted and torch.isfinite(lay.flatten(model)).all()


def test_helpful_nowcast_is_kept_and_state_reset():
    model, x, y = _toy()
    opt = NowcastOptimizer(model, torch.optim.Adam(model.parameters(), lr=1e-2), LineFit(4), period=8,
                           guard=lambda: F.cross_entropy(model(x), y), guard_tolerance=10.0, reset_state=True)
    _train(opt, model, x, y, 8)
    assert opt.jumps[0].accepted and len(opt.state) == 0
    _train(opt, model, x, y, 1)
    assert len(opt.state) > 0


def test_works_with_lr_scheduler_and_state_dict():
    model, x, y = _toy()
    base = torch.optim.AdamW(model.parameters(), lr=1e-2)
    opt = NowcastOptimizer(model, base, LineFit(5), period=10)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    l0 = F.cross_entropy(model(x), y).item()
    _train(opt, model, x, y, 20, sched)
    assert math.isclose(base.param_groups[0]["lr"], 1e-2 * 0.5 ** 4)
    assert len(opt.jumps) == 2 and F.cross_entropy(model(x), y).item() < l0
    assert opt.state_dict()["state"].keys() == base.state_dict()["state"].keys()


def test_nan_parameters_raise_a_clear_error():
    model, x, y = _toy()
    opt = NowcastOptimizer(model, torch.optim.SGD(model.parameters(), lr=0.1), LineFit(2), period=2)
    with torch.no_grad():
        model.net[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeights, match="net.0.weight"):
        _train(opt, model, x, y, 1)


# ----------------------------------------------------------------------------- learned nowcasters

@pytest.mark.parametrize("cls", [NiNo, WNN, NodeNiNo])
def test_learned_nowcaster_in_optimizer_any_family(cls):
    torch.manual_seed(0)
    nc = WNN(context=3, horizons=4) if cls is WNN else small(cls)
    for fam, kw in [("cnn", dict(channels=(4, 4, 4), batchnorm=True)),
                    ("gpt", dict(vocab_size=11, block_size=8, d_model=8, n_layer=1, n_head=2))]:
        model = build(fam, seed=0, **kw)
        inp = example_input(model)
        opt = NowcastOptimizer(model, torch.optim.Adam(model.parameters(), lr=1e-3), nc, period=3,
                               example_input=inp)
        for _ in range(6):
            opt.zero_grad()
            model(inp).float().pow(2).mean().backward()
            opt.step()
        assert len(opt.jumps) == 2 and all(torch.isfinite(p).all() for p in model.parameters())


def test_node_nino_alone_runs_its_grids_as_matrix_products_the_same_function():
    """A window alone takes the grid path (matrix products in the network); in a batch, or with
    ``min_block_edges=None``, every weight's messages go one by one: the same predictions."""
    from types import SimpleNamespace

    from weightspace.space import WeightSpace

    torch.manual_seed(0)
    grid = NodeNiNo(context=3, horizons=4, node_hidden=8, layers=2, decoder_hidden=16, min_block_edges=4).double()
    for p in grid.parameters():
        p.data.normal_(0, 0.3)
    plain = NodeNiNo(context=3, horizons=4, node_hidden=8, layers=2, decoder_hidden=16, min_block_edges=None).double()
    plain.load_state_dict(grid.state_dict())
    for fam, kw in [("mlp", dict(in_features=5, widths=[7, 1, 6], out_features=3)),
                    ("cnn", dict(channels=(4, 5, 4), batchnorm=True)),
                    ("gpt", dict(vocab_size=11, block_size=8, d_model=8, n_layer=1, n_head=2))]:
        model = build(fam, seed=0, **kw)
        lay = ParamLayout.from_space(WeightSpace.from_module(model, example_input(model)))
        win = SimpleNamespace(context=torch.randn(3, lay.num_values, dtype=torch.float64).cumsum(0), layout=lay)
        assert grid._plan(lay, win.context.device)[0][0], fam
        with torch.no_grad():
            torch.testing.assert_close(grid([win])[0], plain([win])[0], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("cls", [WNN, NiNo, NodeNiNo])
def test_inference_over_blocks_of_values_equals_one_pass(cls, monkeypatch):
    """Without gradients the decoder runs over blocks of ``DECODE_ROWS`` values: the same predictions as one pass
    over every value (the training path), for one window and for a batch of two architectures."""
    from types import SimpleNamespace

    import weightspace.nowcast.model as model_mod
    from weightspace.space import WeightSpace

    torch.manual_seed(0)
    nc = small(cls).double()
    for p in nc.parameters():
        p.data.normal_(0, 0.3)
    wins = []
    for fam, kw in [("mlp", dict(in_features=5, widths=[7, 6], out_features=3)),
                    ("cnn", dict(channels=(4, 5, 4), batchnorm=True))]:
        model = build(fam, seed=0, **kw)
        lay = ParamLayout.from_space(WeightSpace.from_module(model, example_input(model)))
        wins.append(SimpleNamespace(context=torch.randn(nc.context, lay.num_values, dtype=torch.float64).cumsum(0),
                                    layout=lay))
    for batch in ([wins[0]], wins):
        whole = nc(batch, horizons=[3, 1])
        monkeypatch.setattr(model_mod, "DECODE_ROWS", 17)
        with torch.no_grad():
            blocks = nc(batch, horizons=[3, 1])
        monkeypatch.undo()
        assert len(blocks) == len(batch)
        for a, b in zip(whole, blocks):
            torch.testing.assert_close(a.detach(), b, atol=1e-10, rtol=1e-10)


def test_node_nino_from_a_wnn_predicts_what_the_wnn_does_and_then_learns_from_the_graph():
    from types import SimpleNamespace

    from weightspace.nowcast.train import nowcast_loss
    from weightspace.nowcast.windows import Window
    from weightspace.space import WeightSpace

    torch.manual_seed(0)
    wnn = WNN(context=3, horizons=4, hidden=16)
    node = NodeNiNo.from_wnn(wnn, node_hidden=8, layers=2)
    assert node.hidden == 16 and node.max_horizon == 4 and node.context == 3
    model = build("mlp", seed=0, in_features=5, widths=[7, 6], out_features=3)
    lay = ParamLayout.from_space(WeightSpace.from_module(model, example_input(model)))
    ctx = torch.randn(3, lay.num_values).cumsum(0)
    with torch.no_grad():
        torch.testing.assert_close(node([SimpleNamespace(context=ctx, layout=lay)])[0],
                                   wnn([SimpleNamespace(context=ctx, layout=lay)])[0])
    nowcast_loss(node, [Window(ctx, ctx[-1] + torch.randn(4, lay.num_values), torch.ones(4, dtype=torch.bool), lay)]
                 ).backward()
    assert node.sender_out.weight.grad.abs().sum() > 0
    with pytest.raises(NowcastError, match="3 layers"):
        NodeNiNo.from_wnn(WNN(context=3, horizons=4, hidden=16, layers=4))


@pytest.mark.parametrize("family,kw", [("mlp", dict(in_features=5, widths=[7, 6], out_features=3)),
                                       ("cnn", dict(channels=(4, 5, 4), batchnorm=True))])
@pytest.mark.parametrize("cls", [NiNo, NodeNiNo])
def test_graph_nowcasts_are_permuted_with_the_units(cls, family, kw):
    """Nowcasting a permuted model's trajectory gives the permuted nowcast (the graph network is equivariant)."""
    from weightspace.space import WeightSpace

    torch.manual_seed(0)
    nc = small(cls, layers=2).eval()
    for p in nc.parameters():
        p.data.normal_(0, 0.3)
    model = build(family, seed=0, **kw)
    space = WeightSpace.from_module(model, example_input(model))
    lay = ParamLayout.from_space(space)
    perm = space.random_permutation(torch.Generator().manual_seed(3))
    shapes = {k: v.shape for k, v in model.state_dict().items()}

    def flat(sd):
        model.load_state_dict(sd)
        return lay.flatten(model)

    def unflat(v):
        return {k: t.view(shapes[k]) for k, t in zip(lay.keys, v.split(lay.numels))}

    sds = []
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        sds.append({k: v.clone() for k, v in model.state_dict().items()})
    ctx = torch.stack([flat(sd) for sd in sds])
    ctx_p = torch.stack([flat(space.permute(sd, perm)) for sd in sds])
    assert not torch.allclose(ctx, ctx_p)
    want = space.permute(unflat(nc.nowcast(ctx, 3, lay)), perm)
    got = unflat(nc.nowcast(ctx_p, 3, lay))
    for k in lay.keys:
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-5, msg=k)


@pytest.mark.parametrize("cls", [NiNo, NodeNiNo])
def test_graph_nowcasters_refuse_unseen_parameter_types(cls):
    nc = small(cls, horizons=2, edge_types=["linear"], node_types=["input", "linear", "output"])
    model = build("cnn", seed=0, channels=(4, 4, 4))
    with pytest.raises(NowcastError, match="not meta-trained on.*conv"):
        NowcastOptimizer(model, torch.optim.Adam(model.parameters()), nc, period=3,
                         example_input=example_input(model))
    wide = build("mlp", seed=0, in_features=300, widths=[8], out_features=2)
    nc2 = small(cls, horizons=2)
    opt = NowcastOptimizer(wide, torch.optim.Adam(wide.parameters()), nc2, period=3,
                           example_input=example_input(wide))
    assert torch.isfinite(nc2.nowcast(torch.randn(3, opt.layout.num_values), 1, opt.layout)).all()
    lazy = NowcastOptimizer(model, torch.optim.Adam(model.parameters()), nc, period=3)
    model(example_input(model)).sum().backward()
    with pytest.raises(NowcastError, match="not meta-trained on.*conv"):
        lazy.step()


def test_nowcast_optimizer_traces_the_model_from_its_first_forward():
    """Without example_input the WeightSpace is traced on the first step() from the inputs the first forward saw:
    the run is the same, bit for bit, as one given example_input up front."""
    nc = NiNo(context=3, horizons=4, hidden=8, layers=1, decoder_hidden=16)
    runs = []
    for lazy in (False, True):
        model = build("cnn", seed=0, channels=(4, 4, 4), batchnorm=True)
        x = torch.randn(16, *example_input(model).shape[1:], generator=torch.Generator().manual_seed(1))
        y = torch.arange(16) % 10
        opt = NowcastOptimizer(model, torch.optim.Adam(model.parameters(), lr=1e-2), nc, period=3,
                               example_input=None if lazy else x[:2])
        assert (opt.layout is None) == lazy
        _train(opt, model, x, y, 7)
        assert opt.layout is not None and opt.layout.space is not None and len(opt.jumps) == 2
        assert not model._forward_pre_hooks
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    model = build("cnn", seed=0, channels=(4, 4, 4))
    opt = NowcastOptimizer(model, torch.optim.Adam(model.parameters()), nc, period=3)
    with pytest.raises(NowcastError, match="before any forward"):
        opt.step()


def test_horizons_beyond_max_horizon_are_refused():
    """A nowcaster trained for horizons 1..K refuses k > K (it used to clip it silently while Jump recorded k)."""
    torch.manual_seed(0)
    nc = WNN(context=3, horizons=4, hidden=8)
    model = build("mlp", seed=0, in_features=5, widths=[6], out_features=2)
    with pytest.raises(NowcastError, match="max_horizon"):
        NowcastOptimizer(model, torch.optim.SGD(model.parameters(), lr=0.1), nc, period=3, horizons=[6, 2])
    layout = NowcastOptimizer(model, torch.optim.SGD(model.parameters(), lr=0.1), nc, period=3,
                              horizons=[4, 2]).layout
    ctx = torch.randn(3, layout.num_values)
    for k in (0, 5):
        with pytest.raises(NowcastError, match="horizons 1..4"):
            nc.nowcast(ctx, k, layout)
    assert not torch.equal(nc.nowcast(ctx, 4, layout), nc.nowcast(ctx, 3, layout))


def test_learned_nowcaster_save_load_round_trip(tmp_path):
    nc = WNN(context=3, horizons=2, hidden=8)
    nc.save_pretrained(tmp_path / "wnn")
    back = WNN.from_pretrained(tmp_path / "wnn")
    assert back.context == 3 and back.max_horizon == 2
    assert all(torch.equal(a, b) for a, b in zip(nc.state_dict().values(), back.state_dict().values()))


@pytest.mark.parametrize("cls", [NiNo, WNN])
def test_packaged_pretrained_nowcaster_loads_and_nowcasts(cls):
    from weightspace.nowcast.model import PRETRAINED_DIR

    if not (PRETRAINED_DIR / cls.pretrained_name / "config.json").is_file():
        pytest.skip("no packaged checkpoint in this checkout")
    nc = cls.from_pretrained()
    model = build("mlp", seed=0, in_features=12, widths=[20, 20], out_features=3)
    opt = NowcastOptimizer(model, torch.optim.Adam(model.parameters(), lr=1e-3), nc, period=nc.context,
                           example_input=example_input(model))
    for _ in range(nc.context):
        opt.zero_grad()
        model(example_input(model)).pow(2).mean().backward()
        opt.step()
    assert opt.jumps[0].accepted and all(torch.isfinite(p).all() for p in model.parameters())


def test_cli_parses_nowcast_commands():
    from weightspace.cli import build_parser

    args = build_parser().parse_args(["nowcast", "train", "--collection", "x", "--out", "y", "--model", "wnn"])
    assert args.model == "wnn" and args.horizons == 16 and args.func.__name__ == "train"
    args = build_parser().parse_args(["nowcast", "bench", "--seeds", "1", "--quick"])
    assert args.seeds == 1 and args.func.__name__ == "bench" and args.benchmarks is None


def test_nowcast_bench_outside_a_checkout_says_so_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import weightspace.commands.nowcast as cmd
    from weightspace.cli import main

    monkeypatch.setattr(cmd, "__file__", str(tmp_path / "site-packages" / "weightspace" / "commands" / "nowcast.py"))
    monkeypatch.chdir(tmp_path)
    assert main(["nowcast", "bench", "--quick", "--seeds", "1"]) == 2
    assert "needs the source checkout" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("stop_at", [8, 13])
def test_resume_from_state_dict_matches_an_uninterrupted_run(stop_at):
    """Saved mid-context (13) or with a delayed verdict pending (8), a resumed run ends bit-identical."""
    import io

    def make():
        model, x, y = _toy()
        opt = NowcastOptimizer(model, torch.optim.Adam(model.parameters(), lr=1e-2), LineFit(4), period=8,
                               guard=lambda: F.cross_entropy(model(x), y), guard_tolerance=0.5, guard_delay=1)
        return model, opt, x, y

    model, opt, x, y = make()
    _train(opt, model, x, y, 30)
    model2, opt2, _, _ = make()
    _train(opt2, model2, x, y, stop_at)
    assert (opt2._pending is not None) == (stop_at == 8)
    buf = io.BytesIO()
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    model3, opt3, _, _ = make()
    model3.load_state_dict(saved["model"])
    opt3.load_state_dict(saved["opt"])
    _train(opt3, model3, x, y, 30 - stop_at)
    assert [(j.step, j.k, j.accepted) for j in opt3.jumps] == [(j.step, j.k, j.accepted) for j in opt.jumps]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model3.state_dict().values()))
    other = MLP(in_features=8, widths=[7], out_features=3)
    with pytest.raises(NowcastError, match="another model"):
        NowcastOptimizer(other, torch.optim.Adam(other.parameters()), LineFit(4), period=8).load_state_dict(
            saved["opt"])


def test_delayed_guard_restores_parameters_and_optimizer_state():
    model, x, y = _toy()
    lay = ParamLayout.from_module(model)
    harmful = _Const(2, lambda c: c[-1] + 5.0 * torch.randn_like(c[-1]))
    opt = NowcastOptimizer(model, torch.optim.Adam(model.parameters(), lr=1e-3), harmful, period=8,
                           guard=lambda: F.cross_entropy(model(x), y), guard_delay=2)
    _train(opt, model, x, y, 8)
    assert opt.jumps[0].accepted and not torch.equal(lay.flatten(model), harmful.seen[0][0][-1])
    moments = {id(p): st["exp_avg"].clone() for p, st in opt.state.items()}
    _train(opt, model, x, y, 2)
    j = opt.jumps[0]
    assert not j.accepted and "2 steps after" in j.reason
    assert torch.equal(lay.flatten(model), harmful.seen[0][0][-1])
    assert all(torch.equal(st["exp_avg"], moments[id(p)]) for p, st in opt.state.items())
    with pytest.raises(NowcastError, match="guard_delay"):
        NowcastOptimizer(model, torch.optim.Adam(model.parameters()), LineFit(2), period=8, guard_delay=4)


@pytest.mark.parametrize("kind,cls", [("nino", NiNo), ("node", NodeNiNo)])
def test_meta_training_writes_a_loadable_model_and_resumes(zoo, tmp_path, kind, cls):
    from weightspace.nowcast.train import NowcastTrainSpec, train_nowcaster
    from weightspace.training import TrainConfig

    spec = NowcastTrainSpec(model=kind, context=3, horizons=3, hidden=8, layers=1, decoder_hidden=8,
                            held_out=0.34, eval_windows=2)
    cfg = TrainConfig(steps=4, batch_size=2, lr=1e-3, warmup=1, device="cpu", checkpoint_every=2, eval_every=2,
                      progress=False, plot=True)
    model, result = train_nowcaster([zoo], tmp_path / "run", spec, cfg)
    assert result.step == 4 and (tmp_path / "run" / "loss.png").is_file()
    assert any("eval_linefit" in h for h in result.history)
    back = load_nowcaster(tmp_path / "run" / "model")
    assert type(back) is cls and back.edge_types == ["linear"] and back.max_horizon == 3
    _, again = train_nowcaster([zoo], tmp_path / "run", spec, cfg)
    assert again.step == 4 and len(again.history) == len(result.history)


@pytest.mark.parametrize("cls", [NiNo, WNN, NodeNiNo])
def test_meta_training_step_runs_under_bf16_autocast(cls):
    """The Trainer uses bf16 autocast on CUDA; CPU autocast exercises the same dtype mixing (NiNo's host
    embedding used to index_put bf16 rows into an fp32 buffer and crash)."""
    from weightspace.nowcast.train import nowcast_loss
    from weightspace.nowcast.windows import Window
    from weightspace.space import WeightSpace

    torch.manual_seed(0)
    nc = small(cls)
    model = build("cnn", seed=0, channels=(4, 4, 4), batchnorm=True)
    lay = ParamLayout.from_space(WeightSpace.from_module(model, example_input(model)))
    ctx = torch.randn(3, lay.num_values).cumsum(0)
    win = Window(ctx, ctx[-1] + torch.randn(4, lay.num_values), torch.ones(4, dtype=torch.bool), lay)
    full = nowcast_loss(nc, [win])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nowcast_loss(nc, [win])
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert abs(float(loss) - float(full)) < 0.05 * float(full)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in nc.parameters() if p.requires_grad)
    with torch.no_grad():
        exact = nc([win])[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            approx = nc([win])[0]
    assert approx.dtype == torch.float32 and float((approx - exact).norm()) < 0.05 * float(exact.norm())


@pytest.mark.parametrize("cls", [NiNo, WNN, NodeNiNo])
def test_batched_forward_equals_one_window_at_a_time(cls):
    """Windows of different architectures run as one graph batch and one decoder pass: the same predictions as
    running each window alone."""
    from weightspace.nowcast.windows import Window
    from weightspace.space import WeightSpace

    torch.manual_seed(0)
    nc = small(cls, layers=2)
    wins = []
    for fam, kw in [("mlp", dict(in_features=5, widths=[7, 6], out_features=3)),
                    ("cnn", dict(channels=(4, 5, 4), batchnorm=True)), ("mlp", dict(in_features=5, widths=[9],
                                                                                     out_features=3))]:
        model = build(fam, seed=0, **kw)
        lay = ParamLayout.from_space(WeightSpace.from_module(model, example_input(model)))
        ctx = torch.randn(3, lay.num_values).cumsum(0)
        wins.append(Window(ctx, ctx[-1] + torch.randn(4, lay.num_values), torch.ones(4, dtype=torch.bool), lay))
    with torch.no_grad():
        together = nc(wins)
        alone = [nc([w])[0] for w in wins]
    assert [t.shape for t in together] == [(4, w.context.shape[1]) for w in wins]
    for t, a in zip(together, alone):
        torch.testing.assert_close(t, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", [NiNo, WNN, NodeNiNo])
def test_nowcast_computes_only_its_horizon_and_matches_the_full_prediction(cls):
    from types import SimpleNamespace

    from weightspace.space import WeightSpace

    torch.manual_seed(0)
    nc = small(cls, horizons=5)
    model = build("mlp", seed=0, in_features=5, widths=[7], out_features=3)
    lay = ParamLayout.from_space(WeightSpace.from_module(model, example_input(model)))
    ctx = torch.randn(3, lay.num_values).cumsum(0)
    with torch.no_grad():
        full = nc([SimpleNamespace(context=ctx, layout=lay)])[0]
    _, std = lay.stats(ctx)
    for k in range(1, 6):
        torch.testing.assert_close(nc.nowcast(ctx, k, lay), ctx[-1] + full[k - 1] * std)
    torch.testing.assert_close(nc.nowcast_horizons(ctx, [4, 2], lay), ctx[-1] + full[[3, 1]] * std)
    with pytest.raises(NowcastError, match="horizons 1..5"):
        nc.nowcast_horizons(ctx, [2, 6], lay)


class _Line:
    """Moves every parameter by ``k`` along a fixed direction (to see which horizon a search keeps)."""

    needs_space, max_horizon, context = False, None, 2

    def nowcast(self, context, k, layout):
        return context[-1] + k * torch.ones_like(context[-1])


class _NaNAt2(_Line):
    """A :class:`_Line` whose prediction two spacings ahead is NaN."""

    def nowcast(self, context, k, layout):
        return torch.full_like(context[-1], float("nan")) if k == 2 else super().nowcast(context, k, layout)


def test_horizon_search_keeps_the_horizon_with_the_lowest_guard_loss_and_still_guards_it():
    """The guard's loss is lowest 2 units along the line: of k = 8, 4, 2 (fractions 1, 1/2, 1/4 of the
    scheduled 8) the search keeps 2, writes that prediction, and the guard then judges it as usual. Multiples
    above 1 are capped at the nowcaster's max_horizon."""
    model, _, _ = _toy()
    lay = ParamLayout.from_module(model)
    ring = {}
    guard = lambda: ((lay.flatten(model) - ring["last"] - 2.0) ** 2).sum()  # noqa: E731
    opt = NowcastOptimizer(model, torch.optim.SGD(model.parameters(), lr=0.0), _Line(), period=4, horizons=[8],
                           guard=guard, guard_tolerance=1e9, horizon_search=(1, 0.5, 0.25))
    for _ in range(3):
        opt.step()
    ring["last"] = lay.flatten(model).clone()
    opt.step()
    j = opt.jumps[0]
    assert (j.k, j.accepted) == (2, True)
    torch.testing.assert_close(lay.flatten(model), ring["last"] + 2.0)
    calls = []
    counted = NowcastOptimizer(model, torch.optim.SGD(model.parameters(), lr=0.0), _Line(), period=4, horizons=[8],
                               guard=lambda: calls.append(1) or guard(), guard_tolerance=1e9,
                               horizon_search=(1, 0.5, 0.25))
    for _ in range(3):
        counted.step()
    ring["last"] = lay.flatten(model).clone()
    counted.step()
    assert len(calls) == 4, "before the jump and at each of 3 horizons; the immediate verdict reuses the winner's"
    assert counted.jumps[0].loss_after == pytest.approx(float(guard()))
    strict = NowcastOptimizer(model, torch.optim.SGD(model.parameters(), lr=0.0), _Line(), period=4, horizons=[8],
                              guard=lambda: lay.flatten(model).abs().sum(), horizon_search=(1, 0.5))
    before = lay.flatten(model).clone()
    for _ in range(4):
        strict.step()
    assert (strict.jumps[0].k, strict.jumps[0].accepted) == (4, False) and torch.equal(lay.flatten(model), before)
    ring["last"] = lay.flatten(model).clone()
    longest = NowcastOptimizer(model, torch.optim.SGD(model.parameters(), lr=0.0), _Line(), period=4,
                               horizons=[8], guard=guard, horizon_search=(1, 0.5, 0.25), search_rule="longest")
    for _ in range(4):
        longest.step()
    assert longest.jumps[0].k == 4, "k=8 raises the guard loss, k=4 keeps it (the longest to pass), k=2 lowers it most"
    with pytest.raises(NowcastError, match="'farthest' is not one of lowest, longest"):
        NowcastOptimizer(model, torch.optim.SGD(model.parameters(), lr=0.0), _Line(), period=4, guard=guard,
                         horizon_search=(1, 0.5), search_rule="farthest")
    capped = _Line()
    capped.max_horizon = 10
    far = NowcastOptimizer(model, torch.optim.SGD(model.parameters(), lr=0.0), capped, period=4, horizons=[8],
                           guard=lambda: -lay.flatten(model).sum(), guard_tolerance=1e9, horizon_search=(1, 2))
    for _ in range(4):
        far.step()
    assert far.jumps[0].k == 10
    ring["last"] = lay.flatten(model).clone()
    lenient = lambda: torch.nan_to_num(guard(), nan=-1.0)  # noqa: E731  (a guard that NaN weights would fool)
    skip = NowcastOptimizer(model, torch.optim.SGD(model.parameters(), lr=0.0), _NaNAt2(), period=4, horizons=[8],
                            guard=lenient, guard_tolerance=1e9, horizon_search=(1, 0.5, 0.25))
    for _ in range(4):
        skip.step()
    assert skip.jumps[0].k == 4 and skip.jumps[0].accepted, "the non-finite k=2 is never written or kept"
    for bad, kw in [("needs a guard", {}), ("positive multiples", {"guard": guard})]:
        with pytest.raises(NowcastError, match=bad):
            NowcastOptimizer(model, torch.optim.SGD(model.parameters(), lr=0.0), _Line(), period=4,
                             horizon_search=(1, 0.5) if not kw else (1, 0), **kw)


def test_nino_builds_its_indices_once_per_architecture(monkeypatch):
    """Repeated nowcasts of one architecture reuse the message routes and host rows built on the first call."""
    from weightspace.nn.routes import Routes
    from weightspace.space import WeightSpace

    calls = []
    build_routes = Routes.build
    monkeypatch.setattr(Routes, "build", classmethod(lambda cls, *a, **k: calls.append(1) or build_routes(*a, **k)))
    nc = NiNo(context=3, horizons=2, hidden=8, layers=1, decoder_hidden=8)
    model = build("cnn", seed=0, channels=(4, 4, 4), batchnorm=True)
    lay = ParamLayout.from_space(WeightSpace.from_module(model, example_input(model)))
    ctx = torch.randn(3, lay.num_values).cumsum(0)
    first = nc.nowcast(ctx, 1, lay)
    rows = nc._host_index(lay, ctx.device)
    for _ in range(3):
        assert torch.equal(nc.nowcast(ctx, 1, lay), first)
    assert len(calls) == 1 and nc._host_index(lay, ctx.device) is rows


def test_nowcast_bench_refuses_unknown_methods_and_options_before_running(monkeypatch):
    import importlib

    scripts = Path(__file__).resolve().parents[1] / "scripts"
    monkeypatch.syspath_prepend(str(scripts))
    bench = importlib.import_module("bench_nowcast")
    known = {"nino": object(), "linefit": object()}
    bench.check_methods(["adam", "nino-noguard-d30-h8-tol0.2", "linefit-reset-now-gerr", "nino-p60-d5"], known)
    with pytest.raises(SystemExit, match="unknown option.*-d"):
        bench.check_methods(["nino-d"], known)
    with pytest.raises(SystemExit, match="unknown option.*-noguards"):
        bench.check_methods(["nino-noguards"], known)
    with pytest.raises(SystemExit, match="unknown nowcaster 'lf'"):
        bench.check_methods(["lf"], known)


@pytest.mark.parametrize("cls,name,family,kwargs", [
    (NiNo, "nino_cnn_k40", "cnn", dict(channels=(4, 8, 8), batchnorm=False, activation="relu")),
    (WNN, "wnn_cnn_k40", "cnn", dict(channels=(4, 8, 8), batchnorm=False, activation="relu")),
    (NiNo, "nino_k40", "mlp", dict(in_features=8, widths=[6, 6], out_features=3)),
    (NiNo, "nino_k40", "gpt", dict(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8)),
    (WNN, "wnn_k40", "mlp", dict(in_features=8, widths=[6, 6], out_features=3))])
def test_packaged_long_horizon_variants_load_by_name_and_jump_40_spacings(cls, name, family, kwargs):
    from weightspace.space import WeightSpace
    from weightspace.nowcast.model import PRETRAINED_DIR

    nc = cls.from_pretrained(name)
    same = cls.from_pretrained(PRETRAINED_DIR / name)
    assert all(torch.equal(a, b) for a, b in zip(nc.state_dict().values(), same.state_dict().values()))
    assert nc.max_horizon == 40
    model = build(family, seed=0, **kwargs)
    layout = ParamLayout.from_space(WeightSpace.from_module(model, example_input(model)))
    start = layout.flatten(model)
    drift = torch.randn(start.shape, generator=torch.Generator().manual_seed(0)) * 1e-3
    context = torch.stack([start + i * drift for i in range(nc.context)])
    ahead = nc.nowcast(context, 40, layout)
    assert torch.isfinite(ahead).all() and not torch.equal(ahead, context[-1])


def test_long_meta_training_warm_start_keeps_weights_and_learns_new_parameter_types(monkeypatch, tmp_path):
    """``train/nowcast_long.py --init nino=nino_cnn_k40``: a CNN-only NiNo goes on meta-training on MLPs with its
    weights intact and every type either side knows; a size mismatch is refused by name."""
    import importlib

    from weightspace.space import WeightSpace

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "train"))
    long = importlib.import_module("nowcast_long")
    source = NiNo.from_pretrained("nino_cnn_k40")
    fresh = NiNo(horizons=40, edge_types=["linear"], node_types=["input", "linear", "output"])
    warm = long.warm_start(fresh, "nino_cnn_k40")
    assert all(torch.equal(a, b) for a, b in zip(warm.state_dict().values(), source.state_dict().values()))
    for model in (build("mlp", seed=0, in_features=8, widths=[6], out_features=3),
                  build("cnn", seed=0, channels=(4, 4, 4), batchnorm=True)):
        warm.check_space(ParamLayout.from_space(WeightSpace.from_module(model, example_input(model))))
    mlp = build("mlp", seed=0, in_features=8, widths=[6], out_features=3)
    with pytest.raises(NowcastError, match="not meta-trained on"):
        source.check_space(ParamLayout.from_space(WeightSpace.from_module(mlp, example_input(mlp))))
    with pytest.raises(SystemExit, match="hidden 32 \\(checkpoint\\) vs 16"):
        long.warm_start(NiNo(horizons=40, hidden=16), "nino_cnn_k40")
    with pytest.raises(SystemExit, match="--init no_such_folder: no checkpoint there"):
        long.main(["--out", str(tmp_path), "--models", "nino", "--init", "nino=no_such_folder"])
    assert not any(tmp_path.iterdir())
    wnn = long.warm_start(WNN(horizons=40), "wnn_cnn_k40")
    assert torch.equal(wnn.decoder[0].weight, WNN.from_pretrained("wnn_cnn_k40").decoder[0].weight)


def test_long_meta_training_sizes_keep_the_benchmark_architectures_held_out(monkeypatch, tmp_path):
    """``--sizes wide`` reaches past the benchmark tasks' sizes but never draws one of their architectures;
    ``small`` is the default and stays within the sizes the packaged nowcasters were meta-trained on. Sizes and
    the other generation options are refused, not ignored, when every trajectory file exists."""
    import importlib

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "train"))
    long = importlib.import_module("nowcast_long")
    wide = long.recipes(600, 100, 100, seed=3, sizes="wide")
    small = long.recipes(600, 100, 100, seed=3)
    assert small == long.recipes(600, 100, 100, seed=3, sizes="small")
    cnn = [c["model"]["channels"] for c in wide if c["family"] == "cnn"]
    assert max(map(max, cnn)) == 32 and (16, 32, 32) not in cnn
    mlp = [c["model"]["widths"] for c in wide if c["data"] == "digits-flat"]
    assert max(w[0] for w in mlp) == 256 and max(map(len, mlp)) == 4 and [192] * 4 not in mlp
    gpt = {c["model"]["d_model"] for c in wide if c["family"] == "gpt"}
    assert 128 in gpt and 96 not in gpt
    assert max(max(c["model"]["channels"]) for c in small if c["family"] == "cnn") == 16
    with pytest.raises(SystemExit, match="--sizes: unknown 'huge'"):
        long.recipes(4, 100, 100, sizes="huge")
    (tmp_path / "t.pt").write_bytes(b"")
    with pytest.raises(SystemExit, match="--sizes, --steps: only used to generate trajectories"):
        long.main(["--out", str(tmp_path / "out"), "--trajectories", str(tmp_path / "t.pt"), "--sizes", "wide",
                   "--steps", "10"])
    assert not (tmp_path / "out").exists()


def test_nowcast_bench_period_option_sets_when_jumps_happen(monkeypatch):
    """``-p<N>`` nowcasts every N steps instead of the task's period (and nothing else changes)."""
    import importlib

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    bench = importlib.import_module("bench_nowcast")
    task = bench.Task("tiny", "tiny", "mlp", dict(in_features=30, widths=[8], out_features=2, activation="tanh"),
                      "breast_cancer", 100, 1e-3, 32, period=50)
    known = {"linefit": LineFit(5)}
    runs = {m: bench.run_one(task, m, 0, known) for m in ("linefit-s1-d3", "linefit-s1-d3-p20")}
    assert [g[0] for g in runs["linefit-s1-d3"]["guard"]] == [50]
    assert [g[0] for g in runs["linefit-s1-d3-p20"]["guard"]] == [20, 40, 60, 80]


def test_nowcast_bench_summarize_only_reads_the_saved_runs_and_refuses_a_missing_file(monkeypatch, tmp_path):
    """``--summarize-only`` tables the runs in OUT/results.json (without ``--resume``) and names a missing file."""
    import importlib
    import json

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    bench = importlib.import_module("bench_nowcast")
    args = ["--methods", "adam,linefit-s1-d3", "--seeds", "1", "--tasks", "breast-cancer-mlp", "--quick"]
    with pytest.raises(SystemExit, match="--summarize-only: no .*results.json to summarize"):
        bench.main([*args, "--out", str(tmp_path / "none"), "--summarize-only",
                    "--benchmarks", str(tmp_path / "B.md")])
    assert not (tmp_path / "none").exists() and not (tmp_path / "B.md").exists()
    out = tmp_path / "runs"
    bench.main([*args, "--out", str(out), "--benchmarks", str(tmp_path / "B.md")])
    first = (tmp_path / "B.md").read_text()
    saved = json.loads((out / "results.json").read_text())
    (tmp_path / "B.md").unlink()
    bench.main([*args, "--out", str(out), "--summarize-only", "--benchmarks", str(tmp_path / "B.md")])
    assert json.loads((out / "results.json").read_text()) == saved
    assert (tmp_path / "B.md").read_text().split("_Machine")[0] == first.split("_Machine")[0]
