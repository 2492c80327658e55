"""WeightSpace tracing: groups, permutations (function invariance), JSON persistence, errors."""
import hashlib
import json
import re

import pytest
import torch
import torch.nn as nn

from families import families
from weightspace import NonFiniteWeights, StateDictMismatch, UnsupportedOperation, WeightSpace, WeightSpaceError
from weightspace.tasks.models import build

FAMILIES = families()


def test_permutation_preserves_function(family):
    name, make, model, x, space = family
    sd = model.state_dict()
    assert space.permutable_groups, name
    with torch.no_grad():
        y = model(x)
        for seed in range(3):
            perm = space.random_permutation(torch.Generator().manual_seed(seed))
            psd = space.permute(sd, perm)
            assert any(not torch.equal(psd[k], sd[k]) for k in sd), "a random permutation must move weights"
            other = make()
            other.load_state_dict(psd)
            other.eval()
            torch.testing.assert_close(other(x), y, rtol=1e-4, atol=1e-5)


def test_bad_permutations_are_refused(family):
    _, _, _, _, space = family
    g = space.permutable_groups[0]
    with pytest.raises(WeightSpaceError, match=g.name):
        space.permute({}, {g.name: torch.zeros(space.identity_permutation()[g.name].shape, dtype=torch.long)})
    with pytest.raises(WeightSpaceError, match="unknown group"):
        space.permute({}, {"nope": torch.arange(2)})


def test_inverse_and_compose_are_exact(family):
    _, _, model, _, space = family
    sd = model.state_dict()
    p = space.random_permutation(torch.Generator().manual_seed(1))
    q = space.random_permutation(torch.Generator().manual_seed(2))
    back = space.permute(space.permute(sd, p), space.inverse(p))
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    two = space.permute(space.permute(sd, p), q)
    one = space.permute(sd, space.compose(p, q))
    assert all(torch.equal(two[k], one[k]) for k in sd)


def test_wrong_permutation_breaks_function():
    """Sanity check of the invariance test itself: permuting only one side of a layer changes outputs."""
    name, make, example = FAMILIES[0]
    model = make().eval()
    x = example()
    sd = model.state_dict()
    bad = dict(sd)
    bad["net.0.weight"] = sd["net.0.weight"].flip(0)
    other = make()
    other.load_state_dict(bad)
    assert not torch.allclose(other(x), model(x), atol=1e-4)


def test_json_round_trip(tmp_path, family):
    _, _, model, _, space = family
    path = space.save(tmp_path / "space.json")
    loaded = WeightSpace.load(path)
    assert loaded.fingerprint == space.fingerprint
    assert loaded.to_json() == space.to_json()
    perm = space.random_permutation(torch.Generator().manual_seed(0))
    sd = model.state_dict()
    a, b = space.permute(sd, perm), loaded.permute(sd, perm)
    assert all(torch.equal(a[k], b[k]) for k in sd)


def test_gpt_groups_residual_heads_and_tied_embeddings():
    from families import GPT
    model = GPT(kind="separate", layers=2, heads=2, d=8)
    space = WeightSpace.from_module(model, torch.randint(0, 11, (2, 6)))
    p = space.params
    residual = p["wte.weight"].axes[1]
    assert space.groups[residual].permutable
    for k in ["wpe.weight", "blocks.0.mlp.2.weight", "blocks.1.attn.proj.weight"]:
        axis = 1 if k.endswith("wpe.weight") else 0
        assert p[k].axes[axis] == residual, k
    assert p["blocks.1.ln2.weight"].axes[0] == residual
    assert not space.groups[p["wte.weight"].axes[0]].permutable, "vocabulary is fixed"
    assert not space.groups[p["wpe.weight"].axes[0]].permutable, "positions are fixed"
    assert space.aliases == {"head.weight": "wte.weight"}
    q_axis = p["blocks.0.attn.q.weight"].axes[0]
    heads, within = q_axis.parts
    assert space.groups[heads].size == 2 and space.groups[heads].permutable
    assert p["blocks.0.attn.k.weight"].axes[0] == q_axis, "q and k share head and within-head groups"
    v_heads, v_within = p["blocks.0.attn.v.weight"].axes[0].parts
    assert v_heads == heads and v_within != within, "v/out have their own within-head group"
    assert p["blocks.0.attn.proj.weight"].axes[1] == p["blocks.0.attn.v.weight"].axes[0]
    for g in (within, v_within):
        assert space.groups[g].parent == space.groups[heads].name, "units within a head permute per head"
    perm = space.random_permutation(torch.Generator().manual_seed(0))
    assert perm[space.groups[within].name].shape == (2, 4)
    sd = model.state_dict()
    psd = space.permute(sd, space.random_permutation())
    assert torch.equal(psd["head.weight"], psd["wte.weight"])


def test_fused_and_mha_projections_are_concatenations():
    from families import GPT
    for kind, key in [("fused", "blocks.0.attn.qkv.weight"), ("mha", "blocks.0.attn.mha.in_proj_weight")]:
        space = WeightSpace.from_module(GPT(kind=kind), torch.randint(0, 11, (2, 6)))
        axis = space.params[key].axes[0]
        assert type(axis).__name__ == "Cat" and len(axis.parts) == 3, space.describe(axis)
        q, k, v = axis.parts
        assert q == k and q != v
        assert space.groups[q.parts[1]].parent == space.groups[q.parts[0]].name


class Sliced(nn.Module):
    """Uses only the first half of a hidden layer: that layer's units are not interchangeable."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))[:, :4])


def test_slicing_fixes_the_group_instead_of_breaking_the_function():
    model = Sliced().eval()
    x = torch.randn(3, 4)
    space = WeightSpace.from_module(model, x)
    assert not space.groups[space.params["a.weight"].axes[0]].permutable
    assert not space.permutable_groups


class Cumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 8))
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(torch.cumsum(self.inner(x), dim=-1))


def test_unsupported_layer_is_refused():
    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(4, 5, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0]

    with pytest.raises(UnsupportedOperation, match=r"module 'rnn' \(LSTM\)"):
        WeightSpace.from_module(Recurrent(), torch.randn(2, 3, 4))


def test_unsupported_operation_names_module_and_operation():
    with pytest.raises(UnsupportedOperation, match=r"module '<root>'.*'cumsum'"):
        WeightSpace.from_module(Cumsum(), torch.randn(2, 4))

    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))

        def forward(self, x):
            return self.body(x)

    with pytest.raises(UnsupportedOperation, match=r"body\.0.*Conv2d.*conv2d.*groups=2"):
        WeightSpace.from_module(Grouped(), torch.randn(1, 4, 5, 5))


def test_check_reports_keys_shapes_and_nonfinite(family):
    _, _, model, _, space = family
    sd = dict(model.state_dict())
    tied = set(space.aliases) | set(space.aliases.values())
    key = next(k for k, t in sd.items() if t.is_floating_point() and t.numel() > 1 and k not in tied)
    missing = {k: v for k, v in sd.items() if k != key}
    with pytest.raises(StateDictMismatch, match=f"in ckpt.safetensors.*missing keys.*{key}"):
        space.check(missing, source="ckpt.safetensors")
    with pytest.raises(StateDictMismatch, match="unexpected keys.*bogus"):
        space.check({**sd, "bogus": torch.zeros(1)})
    with pytest.raises(StateDictMismatch, match=f"'{key}' has shape"):
        space.check({**sd, key: torch.zeros(1, 2, 3)})
    nan = sd[key].clone()
    nan.view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteWeights, match=key):
        space.check({**sd, key: nan})
    space.check({**sd, key: nan}, allow_nonfinite=True)


def test_summary_lists_every_key(family):
    _, _, model, _, space = family
    text = space.summary()
    for k in model.state_dict():
        assert k in text


def test_permute_refuses_state_dicts_that_do_not_fit(family):
    """Missing, unexpected and wrongly shaped keys raise StateDictMismatch naming the key and shapes."""
    _, _, model, _, space = family
    sd = dict(model.state_dict())
    perm = space.random_permutation(torch.Generator().manual_seed(0))
    tied = set(space.aliases) | set(space.aliases.values())
    key = next(k for k, t in sd.items() if t.is_floating_point() and t.dim() >= 1 and k not in tied)
    shape = tuple(sd[key].shape)
    with pytest.raises(StateDictMismatch, match=rf"missing keys '{key}' \(expected shape {re.escape(str(shape))}\)"):
        space.permute({k: v for k, v in sd.items() if k != key}, perm)
    wrong = torch.zeros(*shape[:-1], shape[-1] + 1)
    with pytest.raises(StateDictMismatch,
                       match=rf"'{key}' has shape {re.escape(str(tuple(wrong.shape)))}, expected {re.escape(str(shape))}"):
        space.permute({**sd, key: wrong}, perm)
    with pytest.raises(StateDictMismatch, match=r"unexpected keys 'bogus' \(shape \(2, 3\)\)"):
        space.permute({**sd, "bogus": torch.zeros(2, 3)}, perm)


def test_malformed_permutations_name_the_group():
    from weightspace.errors import InvalidPermutation
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    space = WeightSpace.from_module(model, torch.randn(3, 4))
    (g,) = space.permutable_groups
    sd = model.state_dict()
    cases = [({g.name: torch.arange(7)}, rf"'{g.name}'.*8 units.*got shape \(7,\)"),
             ({g.name: torch.arange(8.0)}, rf"'{g.name}'.*float32 tensor, not integers"),
             ({g.name: torch.zeros(8, dtype=torch.long)}, rf"'{g.name}'.*repeat"),
             ({g.name: "01234567"}, rf"'{g.name}'.*got str"),
             ({"g99": torch.arange(8)}, rf"unknown group 'g99'.*{g.name}"),
             ([torch.arange(8)], "dict from group name")]
    for perm, msg in cases:
        for call in (lambda: space.permute(sd, perm), lambda: space.inverse(perm),
                     lambda: space.compose(space.identity_permutation(), perm)):
            with pytest.raises(InvalidPermutation, match=msg):
                call()


def _mlp(act: str) -> nn.Module:
    return build("mlp", seed=0, in_features=6, widths=[5, 4], out_features=3, activation=act)


def test_nonlinearities_are_part_of_the_architecture():
    """Same shapes, different nonlinearity: different functions, so different weight spaces (fingerprints)."""
    x = torch.rand(2, 6)
    spaces = {act: WeightSpace.from_module(_mlp(act), x) for act in ("relu", "tanh", "gelu")}
    assert len({s.fingerprint for s in spaces.values()}) == 3
    assert WeightSpace.from_module(_mlp("relu"), x).fingerprint == spaces["relu"].fingerprint
    hidden = [n for s in spaces["relu"].sites if s.kind != "input"
              for n in range(s.offset, s.offset + s.count)]
    hidden = [n for n in hidden if n not in spaces["relu"].output_nodes]
    for act, space in spaces.items():
        assert space.nonlinearities == {act: hidden}, act
    assert "nonlinearities: tanh on 9 nodes" in spaces["tanh"].summary()


def test_spaces_saved_without_nonlinearities_keep_their_fingerprint(tmp_path):
    """JSON written before nonlinearities were traced loads with none and hashes as it did then."""
    space = WeightSpace.from_module(_mlp("relu"), torch.rand(2, 6))
    old = space.to_json()
    del old["nonlinearities"]
    loaded = WeightSpace.from_json(old)
    assert loaded.nonlinearities == {}
    legacy = {k: v for k, v in old.items() if k not in ("notes", "name", "activation_sites")}
    assert loaded.fingerprint == hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:16]
    assert WeightSpace.load(space.save(tmp_path / "s.json")).nonlinearities == space.nonlinearities
