"""Activation sites recorded by the tracer and captured by re-running the forward."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from families import CNN, MLP, Handwritten, randomize
from weightspace import WeightSpace, WeightSpaceError


class RawLinear(nn.Module):
    """Two layers written with raw parameters and F.linear: no nn.Linear anywhere."""

    def __init__(self):
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(7, 5)), nn.Parameter(torch.randn(7))
        self.w2, self.b2 = nn.Parameter(torch.randn(3, 7)), nn.Parameter(torch.randn(3))
        self.extra = False

    def forward(self, x):
        if self.extra:
            x = torch.tanh(x)
        return F.linear(torch.relu(F.linear(x, self.w1, self.b1)), self.w2, self.b2)


def _hooked(model, x, types):
    outs = {}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: outs.__setitem__(n, o.detach()))
             for n, m in model.named_modules() if isinstance(m, types)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return outs


def test_mlp_sites_match_forward_hooks():
    model, x = MLP().eval(), torch.randn(5, 6)
    space = WeightSpace.from_module(model, x)
    sites = space.activation_sites
    assert [(s.op, s.module, s.dim, s.weight, s.weight_axis, s.bias) for s in sites] == [
        ("linear", "net.0", 1, "net.0.weight", 0, "net.0.bias"),
        ("linear", "net.2", 1, "net.2.weight", 0, "net.2.bias")]
    assert [s.desc for s in sites] == [space.params["net.0.weight"].axes[0], space.params["net.2.weight"].axes[0]]
    acts = space.capture_activations(model, x)
    hooked = _hooked(model, x, nn.Linear)
    for s in sites:
        assert torch.equal(acts[s.call], hooked[s.module])


def test_cnn_sites_include_conv_and_batchnorm():
    model, x = randomize(CNN()), torch.randn(3, 1, 8, 8)
    space = WeightSpace.from_module(model, x)
    got = [(s.op, s.module, s.dim, s.bias) for s in space.activation_sites]
    assert got == [("conv2d", "c1", 1, "c1.bias"), ("batch_norm", "b1", 1, "b1.bias"),
                   ("conv2d", "c2", 1, "c2.bias"), ("batch_norm", "b2", 1, "b2.bias"),
                   ("conv2d", "c3", 1, None)], "the head's output units are fixed: no site"
    acts = space.capture_activations(model, x)
    hooked = _hooked(model, x, (nn.Conv2d, nn.BatchNorm2d))
    for s in space.activation_sites:
        assert torch.equal(acts[s.call], hooked[s.module])


def test_raw_parameter_models_get_sites():
    model, x = RawLinear().eval(), torch.randn(4, 5)
    space = WeightSpace.from_module(model, x)
    (s,) = space.activation_sites
    assert (s.op, s.module, s.dim, s.weight, s.weight_axis, s.bias) == ("linear", "", 1, "w1", 0, "b1")
    with torch.no_grad():
        assert torch.equal(space.capture_activations(model, x)[s.call], F.linear(x, model.w1, model.b1))
    hand = Handwritten().eval()
    space = WeightSpace.from_module(hand, torch.randn(4, 6))
    (s,) = space.activation_sites
    assert (s.op, s.dim, s.weight, s.weight_axis, s.bias) == ("add", 1, "w1", 1, "b1"), \
        "x @ W + b: the bias add is the site, so REPAIR can shift it"


def test_captured_activations_follow_permutations(family):
    name, make, model, x, space = family
    assert space.activation_sites, name
    acts = space.capture_activations(model, x)
    for seed in range(2):
        perm = space.random_permutation(torch.Generator().manual_seed(seed))
        other = make()
        other.load_state_dict(space.permute(model.state_dict(), perm))
        moved = space.capture_activations(other, x)
        for s in space.activation_sites:
            idx = space.axis_index(s.desc, perm)
            torch.testing.assert_close(moved[s.call], acts[s.call].index_select(s.dim, idx), rtol=1e-4, atol=1e-5)


def test_site_weight_and_bias_realise_an_affine_map_of_the_output(family):
    """out' = s * out + t per unit, by scaling the weight along weight_axis and setting bias = s * bias + t."""
    name, make, model, x, space = family
    acts = space.capture_activations(model, x)
    g = torch.Generator().manual_seed(0)
    for site in space.activation_sites:
        if site.weight is None:
            continue
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        n = acts[site.call].shape[site.dim]
        s = torch.rand(n, generator=g) + 0.5
        t = torch.randn(n, generator=g) if site.bias else torch.zeros(n)
        w = sd[site.weight]
        shape = [1] * w.dim()
        shape[site.weight_axis] = n
        sd[site.weight] = w * s.view(shape)
        if site.bias:
            sd[site.bias] = s * sd[site.bias] + t
        for alias, canon in space.aliases.items():
            sd[alias] = sd[canon]
        other = make()
        other.load_state_dict(sd)
        out = space.capture_activations(other, x, [site])[site.call]
        view = [1] * out.dim()
        view[site.dim] = n
        torch.testing.assert_close(out, acts[site.call] * s.view(view) + t.view(view), rtol=1e-4, atol=1e-5,
                                   msg=f"{name}: {site}")


def test_sites_survive_json(family, tmp_path):
    _, _, model, x, space = family
    loaded = WeightSpace.load(space.save(tmp_path / "space.json"))
    assert loaded.activation_sites == space.activation_sites
    old = space.to_json()
    del old["activation_sites"]
    assert WeightSpace.from_json(old).activation_sites == []
    assert WeightSpace.from_json(old).fingerprint == space.fingerprint


def test_another_forward_path_is_refused():
    model, x = RawLinear().eval(), torch.randn(4, 5)
    space = WeightSpace.from_module(model, x)
    model.extra = True
    with pytest.raises(WeightSpaceError, match=r"call 0 of the forward is 'tanh'.*'linear'.*another path"):
        space.capture_activations(model, x)
    with pytest.raises(WeightSpaceError, match="never reached"):
        space.capture_activations(nn.Identity(), x)
