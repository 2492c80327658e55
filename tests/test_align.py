"""Alignment: planted permutations recovered exactly for every family, activation/STE matching, LMC, errors."""
import pytest
import torch
import torch.nn as nn

from families import MLP, families, randomize
from weightspace import NonFiniteWeights, StateDictMismatch, WeightSpace
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


def test_activation_matching_recovers_planted_permutation(family):
    name, make, example, model, x, space = family
    planted = space.random_permutation(torch.Generator().manual_seed(7))
    other = make()
    other.load_state_dict(space.permute(model.state_dict(), planted))
    other.eval()
    perm = activation_matching(model, other, [example() for _ in range(3)], space=space)
    assert _same(space, perm, space.inverse(planted)), name


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


def test_ste_matching_runs_and_keeps_function():
    torch.manual_seed(0)
    a, b = MLP((6, 16, 3)), MLP((6, 16, 3))
    space = WeightSpace.from_module(a, torch.randn(2, 6))
    data = [(torch.randn(16, 6), torch.randint(0, 3, (16,))) for _ in range(2)]
    perm = ste_matching(a, a.state_dict(), b.state_dict(), data, space=space, steps=3)
    assert set(perm) == {g.name for g in space.permutable_groups}


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


def test_bn_reset_repair_and_plot(tmp_path):
    name, make, example = FAMILIES[IDS.index("cnn")]
    torch.manual_seed(0)
    a, b = make(), make()
    data = [example() for _ in range(3)]
    space = WeightSpace.from_module(a, data[0])
    reset_bn_stats(a, data)
    assert float(a.b1.running_var.sum()) != a.b1.running_var.numel()
    mid = interpolate(space, a.state_dict(), b.state_dict(), 0.5)
    fixed = repair(a, a.state_dict(), b.state_dict(), mid, data, space=space)
    assert set(fixed) == set(mid)
    c0 = Curve([0, 0.5, 1], [0.1, 0.9, 0.2], [1.0, 0.5, 0.9])
    c1 = Curve([0, 0.5, 1], [0.1, 0.2, 0.2], [1.0, 0.95, 0.9])
    p = plot_interpolation({"naive": c0, "aligned": c1}, tmp_path / "lmc.png")
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
