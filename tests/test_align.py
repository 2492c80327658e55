"""Alignment: planted permutations recovered exactly for every family, activation/STE matching, LMC, errors."""
import copy
import logging

import pytest
import torch
import torch.nn as nn

from families import MLP, families, randomize
from weightspace import NonFiniteWeights, StateDictMismatch, WeightSpace, WeightSpaceError
from weightspace.align import matching
from weightspace.align.lmc import _correctable
from weightspace.tasks import build, digits_split, evaluate_classifier, train_classifier
from weightspace.align import (Curve, accuracy_barrier, activation_matching, interpolate, interpolation_curve,
                               loss_barrier, plot_interpolation, repair, reset_bn_stats, ste_matching,
                               weight_matching)

FAMILIES = families()
IDS = [f[0] for f in FAMILIES]


@pytest.fixture(scope="module", params=FAMILIES, ids=IDS)
def family(request):
    name, make, example = request.param
    torch.manual_seed(0)
    model = randomize(make(), seed=5)
    x = example()
    return name, make, example, model, x, WeightSpace.from_module(model, x)


def _same(space, p, q):
    return set(p) == set(q) and all(torch.equal(p[g], q[g]) for g in p)


def test_weight_matching_recovers_planted_permutation(family):
    name, make, _, model, x, space = family
    sd = model.state_dict()
    for seed in range(5):
        planted = space.random_permutation(torch.Generator().manual_seed(seed))
        sd_b = space.permute(sd, planted)
        perm = weight_matching(space, sd, sd_b, seed=seed)
        assert _same(space, perm, space.inverse(planted)), name
        back = space.permute(sd_b, perm)
        assert all(torch.equal(back[k], sd[k]) for k in sd), name


def _forbid_weight_matching(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("activation matching fell back to weight matching")
    monkeypatch.setattr(matching, "weight_matching", forbidden)


def test_activation_matching_recovers_planted_permutation(family, monkeypatch, caplog):
    """Every group is matched on the activations at the space's sites (raw-parameter models included);
    only the heads inside nn.MultiheadAttention have none, and need an explicit, logged fallback."""
    name, make, example, model, x, space = family
    planted = space.random_permutation(torch.Generator().manual_seed(7))
    other = make()
    other.load_state_dict(space.permute(model.state_dict(), planted))
    other.eval()
    batches = [example() for _ in range(3)]
    if name == "gpt_mha":
        with pytest.raises(WeightSpaceError, match="fallback='weight'"):
            activation_matching(model, other, batches, space=space)
        with caplog.at_level(logging.INFO, logger="weightspace.align.matching"):
            perm = activation_matching(model, other, batches, space=space, fallback="weight")
        assert "carried by no activation site" in caplog.text
    else:
        _forbid_weight_matching(monkeypatch)
        perm = activation_matching(model, other, batches, space=space)
    assert _same(space, perm, space.inverse(planted)), name


def test_activation_matching_needs_activation_sites():
    model = MLP()
    space = WeightSpace.from_module(model, torch.randn(2, 6))
    bare = WeightSpace.from_json({**space.to_json(), "activation_sites": []})
    with pytest.raises(WeightSpaceError, match="activation sites"):
        activation_matching(model, MLP(), [torch.randn(4, 6)], space=bare)
    with pytest.raises(WeightSpaceError, match="activation sites"):
        repair(model, model.state_dict(), model.state_dict(), model.state_dict(), [torch.randn(4, 6)], space=bare)


def test_weight_matching_reduces_distance_between_independent_models():
    torch.manual_seed(0)
    a, b = MLP((6, 32, 32, 3)), MLP((6, 32, 32, 3))
    space = WeightSpace.from_module(a, torch.randn(2, 6))
    sa, sb = a.state_dict(), b.state_dict()
    perm = weight_matching(space, sa, sb)
    dist = lambda x, y: sum(float((x[k] - y[k]).pow(2).sum()) for k in x)
    assert dist(sa, space.permute(sb, perm)) < dist(sa, sb)
    with torch.no_grad():
        x = torch.randn(4, 6)
        b2 = MLP((6, 32, 32, 3))
        b2.load_state_dict(space.permute(sb, perm))
        torch.testing.assert_close(b2(x), b(x))


def test_weight_matching_tolerance_stop_is_close_to_exact_fixed_point():
    from weightspace.align.matching import _from_names, _WeightMatcher
    torch.manual_seed(0)
    a, b = MLP((6, 48, 48, 3)), MLP((6, 48, 48, 3))
    space = WeightSpace.from_module(a, torch.randn(2, 6))
    sa, sb = a.state_dict(), b.state_dict()
    m = _WeightMatcher(space, sa, sb)
    exact = m.objective(_from_names(space, weight_matching(space, sa, sb, tol=0.0)))
    loose = m.objective(_from_names(space, weight_matching(space, sa, sb)))
    identity = m.objective(_from_names(space, space.identity_permutation()))
    assert loose > identity
    assert abs(loose - exact) <= 1e-2 * abs(exact)


@pytest.fixture(scope="module")
def trained_pair():
    """Two digits MLPs (64-16-16-10, no normalisation) trained from different seeds, and training batches."""
    data = digits_split(flat=True)
    a, b = (build("mlp", seed=s, widths=[16, 16]) for s in (0, 1))
    for seed, m in enumerate((a, b)):
        train_classifier(m, data, steps=150, lr=3e-3, seed=seed)
    batches = [(data.x_train[i:i + 256], data.y_train[i:i + 256]) for i in range(0, 1024, 256)]
    return a, b, WeightSpace.from_module(a, data.x_train[:2]), batches, data


def _midpoint_loss(model, space, sd_a, sd_b, perm, batches):
    net = copy.deepcopy(model)
    net.load_state_dict(interpolate(space, sd_a, space.permute(sd_b, perm), 0.5))
    net.train()
    with torch.no_grad():
        return sum(float(nn.functional.cross_entropy(net(x), y)) for x, y in batches)


def test_ste_matching_recovers_planted_permutation():
    torch.manual_seed(0)
    a = MLP((6, 16, 16, 3))
    space = WeightSpace.from_module(a, torch.randn(2, 6))
    planted = space.random_permutation(torch.Generator().manual_seed(1))
    sd_b = space.permute(a.state_dict(), planted)
    data = [(torch.randn(16, 6), torch.randint(0, 3, (16,))) for _ in range(2)]
    perm = ste_matching(a, a.state_dict(), sd_b, data, space=space, steps=5, lr=1e-2)
    assert _same(space, perm, space.inverse(planted))


def test_ste_matching_lowers_the_midpoint_loss_below_weight_matching(trained_pair):
    a, b, space, batches, _ = trained_pair
    sa, sb = a.state_dict(), b.state_dict()
    loss = lambda p: _midpoint_loss(a, space, sa, sb, p, batches)
    wm = weight_matching(space, sa, sb)
    ste = ste_matching(a, sa, sb, batches, space=space, steps=20, lr=1e-2)
    assert loss(ste) < loss(wm) - 0.05 < loss(space.identity_permutation())


def test_interpolation_and_barriers():
    torch.manual_seed(0)
    m = MLP((6, 16, 3))
    space = WeightSpace.from_module(m, torch.randn(2, 6))
    sd = m.state_dict()
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))

    def evaluate(net):
        out = net(x)
        return float(nn.functional.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())

    c = interpolation_curve(m, sd, sd, evaluate, lambdas=5, space=space, bn="none")
    assert c.barrier == pytest.approx(0.0, abs=1e-6) and c.rebasin_barrier == pytest.approx(0.0, abs=1e-6)
    assert c.acc_barrier == pytest.approx(0.0, abs=1e-6)
    other = MLP((6, 16, 3)).state_dict()
    mid = interpolate(space, sd, other, 0.25)
    torch.testing.assert_close(mid["net.0.weight"], 0.75 * sd["net.0.weight"] + 0.25 * other["net.0.weight"])
    assert loss_barrier([0, 0.5, 1], [1.0, 3.0, 2.0]) == pytest.approx(1.5)
    assert accuracy_barrier([0, 0.5, 1], [0.9, 0.5, 0.8]) == pytest.approx(0.35)
    assert Curve([0, 0.5, 1], [1.0, 3.0, 2.0]).rebasin_barrier == pytest.approx(1.5)


@pytest.mark.parametrize("fam", ["mlp", "handwritten", "cnn"])
def test_repair_sets_unit_statistics_to_the_interpolated_targets(fam):
    """At every corrected site, the REPAIRed midpoint's per-unit mean and std are the endpoints' interpolated."""
    name, make, example = FAMILIES[IDS.index(fam)]
    torch.manual_seed(0)
    a, b = randomize(make(), seed=1), randomize(make(), seed=2)
    data = [example() for _ in range(3)]
    space = WeightSpace.from_module(a, data[0])
    sa, sb = a.state_dict(), b.state_dict()
    alpha = 0.3
    mid = interpolate(space, sa, sb, alpha)
    sites = _correctable(space)
    assert sites

    def stats(sd):
        net = make()
        net.load_state_dict(sd)
        acts = [space.capture_activations(net, x, sites) for x in data]
        out = {}
        for s in sites:
            y = torch.cat([t[s.call].movedim(s.dim, -1).reshape(-1, t[s.call].shape[s.dim]) for t in acts]).double()
            out[s.call] = (y.mean(0), y.std(0, unbiased=False))
        return out

    st_a, st_b, before = stats(sa), stats(sb), stats(mid)
    after = stats(repair(a, sa, sb, mid, data, alpha=alpha, space=space))
    off = 0.0
    for s in sites:
        mu_t = (1 - alpha) * st_a[s.call][0] + alpha * st_b[s.call][0]
        sd_t = (1 - alpha) * st_a[s.call][1] + alpha * st_b[s.call][1]
        torch.testing.assert_close(after[s.call][0], mu_t, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(after[s.call][1], sd_t, atol=1e-4, rtol=1e-3)
        off = max(off, float((before[s.call][1] - sd_t).abs().max()))
    assert off > 1e-2, "the midpoint already had the target statistics: the test would not see a no-op REPAIR"


def test_repair_cuts_the_barrier_of_an_aligned_mlp_without_normalisation(trained_pair):
    a, b, space, batches, data = trained_pair
    sa, sb = a.state_dict(), b.state_dict()
    aligned = space.permute(sb, weight_matching(space, sa, sb))
    ev = lambda net: evaluate_classifier(net, data.x_val, data.y_val)
    plain = interpolation_curve(a, sa, aligned, ev, lambdas=[0, 0.5, 1], space=space, bn="none")
    repaired = interpolation_curve(a, sa, aligned, ev, lambdas=[0, 0.5, 1], space=space, bn="repair", data=batches)
    assert repaired.losses[0] == plain.losses[0] and repaired.losses[-1] == plain.losses[-1]
    assert repaired.barrier < 0.8 * plain.barrier
    assert repaired.accs[1] > plain.accs[1]


def test_bn_reset_recomputes_running_statistics():
    name, make, example = FAMILIES[IDS.index("cnn")]
    torch.manual_seed(0)
    a = make()
    data = [example() for _ in range(3)]
    with torch.no_grad():
        a.b1.running_mean.fill_(5.0)
        a.b1.running_var.fill_(7.0)
        h = [a.c1(x) for x in data]
    a.b1.momentum = 0.3
    a.eval()
    reset_bn_stats(a, data)
    torch.testing.assert_close(a.b1.running_mean, torch.stack([t.mean((0, 2, 3)) for t in h]).mean(0))
    torch.testing.assert_close(a.b1.running_var, torch.stack([t.var((0, 2, 3)) for t in h]).mean(0))
    assert a.b1.momentum == 0.3 and not a.training


def test_plot_interpolation_leaves_matplotlib_backend_alone(tmp_path):
    import matplotlib
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        c0 = Curve([0, 0.5, 1], [0.1, 0.9, 0.2], [1.0, 0.5, 0.9])
        c1 = Curve([0, 0.5, 1], [0.1, 0.2, 0.2], [1.0, 0.95, 0.9])
        p = plot_interpolation({"naive": c0, "aligned": c1}, tmp_path / "lmc.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert p.read_bytes()[:4] == b"\x89PNG"


def test_bad_inputs_are_refused():
    torch.manual_seed(0)
    m = MLP((6, 8, 3))
    space = WeightSpace.from_module(m, torch.randn(2, 6))
    sd = m.state_dict()
    with pytest.raises(StateDictMismatch):
        weight_matching(space, sd, MLP((6, 9, 3)).state_dict())
    with pytest.raises(StateDictMismatch, match="dtype|float64"):
        weight_matching(space, sd, {k: v.double() for k, v in sd.items()})
    bad = dict(sd)
    bad["net.0.weight"] = bad["net.0.weight"].clone()
    bad["net.0.weight"][0, 0] = float("nan")
    with pytest.raises(NonFiniteWeights):
        weight_matching(space, sd, bad)
