"""Neural graphs: bit-exact round trips and node relabelling under permutations."""
import pytest
import torch
import torch.nn as nn

from weightspace import StateDictMismatch, WeightSpace
from weightspace.graph import EDGE_TYPES

def trajectory(model, steps=3):
    """A few distinct checkpoints of the same model (noise added to every float tensor, ties kept)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                if t.is_floating_point():
                    t.add_(0.1 * torch.randn(t.shape, generator=g))
        out.append({k: v.clone() for k, v in model.state_dict().items()})
    return out


def test_round_trip_is_bit_exact(family):
    name, _, model, _, space = family
    sds = trajectory(model)
    data = space.to_graph(sds)
    assert data.edge_attr.dim() == 3 and data.edge_attr.shape[1] == len(sds)
    assert data.x.shape[:2] == (data.num_nodes, len(sds))
    assert data.edge_index.shape == (2, data.edge_attr.shape[0])
    assert data.edge_type.shape[0] == data.edge_index.shape[1]
    back = space.from_graph(data)
    assert len(back) == len(sds)
    for sd, rt in zip(sds, back):
        assert list(rt) == list(sd)
        for k in sd:
            assert rt[k].dtype == sd[k].dtype and torch.equal(rt[k], sd[k]), (name, k)
    single = space.from_graph(space.to_graph(sds[0]))
    assert isinstance(single, dict) and all(torch.equal(single[k], sds[0][k]) for k in sds[0])


def test_graph_of_permuted_checkpoint_is_relabelled_graph(family):
    name, _, model, _, space = family
    sd = model.state_dict()
    perm = space.random_permutation(torch.Generator().manual_seed(5))
    g0 = space.to_graph(sd)
    g1 = space.to_graph(space.permute(sd, perm))
    idx = space.node_permutation(perm)
    assert not torch.equal(idx, torch.arange(len(idx)))
    assert torch.equal(g1.x, g0.x[idx])
    assert torch.equal(g1.node_type, g0.node_type[idx])
    assert torch.equal(g1.pos_id, g0.pos_id[idx])
    n, t = g0.num_nodes, len(EDGE_TYPES)

    def keyed(src, dst, etype, attr):
        key = (src * n + dst) * t + etype
        order = torch.argsort(key)
        return key[order], attr[order]

    k0, a0 = keyed(g0.edge_index[0], g0.edge_index[1], g0.edge_type, g0.edge_attr)
    k1, a1 = keyed(idx[g1.edge_index[0]], idx[g1.edge_index[1]], g1.edge_type, g1.edge_attr)
    assert torch.equal(k0, k1), "edge sets must match after relabelling"
    assert torch.equal(a0, a1), "edge features must travel with their edges"


def test_fixed_units_carry_positions_and_hidden_units_do_not(family):
    _, _, model, _, space = family
    data = space.to_graph(model.state_dict())
    hidden = torch.tensor([space.groups[g].permutable for g in range(len(space.groups))])
    assert (data.pos_id >= 0).any(), "inputs/outputs have positional ids"
    perm = space.random_permutation(torch.Generator().manual_seed(0))
    moved = space.node_permutation(perm) != torch.arange(data.num_nodes)
    assert (data.pos_id[moved] == -1).all(), "a unit that permutations move must not carry a position"
    assert hidden.any()


def test_conversion_uses_precomputed_layout(family):
    _, _, model, _, space = family
    layout = space.layout
    assert space.layout is layout
    flat = layout.flatten([model.state_dict()])
    assert torch.equal(layout.flat_from_graph(layout.graph_from_flat(flat)), flat[:, :layout.num_values])


def test_graph_of_other_architecture_is_refused():
    a = WeightSpace.from_module(nn.Linear(3, 2), torch.randn(1, 3))
    b = WeightSpace.from_module(nn.Linear(4, 2), torch.randn(1, 4))
    with pytest.raises(StateDictMismatch, match="does not match"):
        a.from_graph(b.to_graph(nn.Linear(4, 2).state_dict()))


def test_tied_embedding_is_one_set_of_values():
    """The tied head is stored once, restored under both keys, and untied values are refused."""
    from families import GPT
    model = GPT(kind="fused")
    space = WeightSpace.from_module(model, torch.randint(0, 11, (2, 6)))
    sd = model.state_dict()
    rt = space.from_graph(space.to_graph(sd))
    assert torch.equal(rt["head.weight"], sd["wte.weight"])
    assert space.layout.num_values == sum(v.numel() for k, v in sd.items() if k != "head.weight")
    space.check({k: v for k, v in sd.items() if k != "head.weight"})
    with pytest.raises(StateDictMismatch, match="tied"):
        space.check({**sd, "head.weight": sd["wte.weight"] + 1})


def _exactly_equal(a, b):
    return list(a) == list(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_round_trip_keeps_dtype(family, dtype):
    """Float tensors of any precision come back bit for bit and in their dtype; integer buffers too."""
    name, _, model, _, space = family
    sds = [{k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()} for sd in trajectory(model, 2)]
    if dtype == torch.float64:
        sds = [{k: v + 1e-12 if v.is_floating_point() else v for k, v in sd.items()} for sd in sds]
    data = space.to_graph(sds)
    assert data.edge_attr.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    back = space.from_graph(data)
    for sd, rt in zip(sds, back):
        assert _exactly_equal(rt, sd), name
    assert _exactly_equal(space.from_graph(space.to_graph(sds[0])), sds[0])


def test_mixed_dtypes_round_trip_exactly():
    """A state_dict mixing float64, float32, float16, bfloat16 and integer tensors round-trips exactly."""
    from families import CNN
    model = CNN()
    space = WeightSpace.from_module(model, torch.randn(3, 1, 8, 8))
    g = torch.Generator().manual_seed(0)
    floats = [k for k, v in model.state_dict().items() if v.is_floating_point()]
    cycle = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
    sd = {k: (torch.randn(v.shape, generator=g).to(cycle[floats.index(k) % 4]) if v.is_floating_point() else v)
          for k, v in model.state_dict().items()}
    assert {v.dtype for v in sd.values()} >= set(cycle) | {torch.long}
    data = space.to_graph(sd)
    assert data.edge_attr.dtype == torch.float64
    assert _exactly_equal(space.from_graph(data), sd)
    no64 = {k: v.float() if v.dtype == torch.float64 else v for k, v in sd.items()}
    assert space.to_graph(no64).edge_attr.dtype == torch.float32
    assert _exactly_equal(space.from_graph(space.to_graph(no64)), no64)
    other = dict(sd)
    key = next(k for k in floats if sd[k].dtype == torch.float16)
    other[key] = sd[key].float()
    with pytest.raises(StateDictMismatch, match=f"'{key}' is torch.float16 in checkpoint 0 but torch.float32"):
        space.to_graph([sd, other])


def test_integer_buffers_stay_exact_beyond_float32():
    """A count beyond 2^24 (inexact in float32) widens the features to float64; beyond 2^53 is refused."""
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    space = WeightSpace.from_module(model.eval(), torch.randn(5, 3))
    sd = dict(model.state_dict())
    sd["1.num_batches_tracked"] = torch.tensor(2**24 + 1)
    data = space.to_graph(sd)
    assert data.edge_attr.dtype == torch.float64
    back = space.from_graph(data)
    assert back["1.num_batches_tracked"].dtype == torch.long and int(back["1.num_batches_tracked"]) == 2**24 + 1
    assert _exactly_equal(back, sd)
    with pytest.raises(StateDictMismatch, match="'1.num_batches_tracked' holds integers"):
        space.to_graph({**sd, "1.num_batches_tracked": torch.tensor(2**53 + 1)})


def test_device_cache_does_not_grow_with_stack_size():
    """Converting stacks of T = 1..32 checkpoints keeps one cached set of single-checkpoint indices."""
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))
    space = WeightSpace.from_module(model, torch.randn(2, 16))
    layout = space.layout
    sds = trajectory(model, 32)

    def cached_bytes():
        return sum(t.numel() * t.element_size() for idx in layout._device_cache.values() for t in idx.values())

    data = space.to_graph(sds[:1])
    space.from_graph(data)
    after_one = cached_bytes()
    for T in range(1, 33):
        data = space.to_graph(sds[:T])
        assert all(_exactly_equal(a, b) for a, b in zip(space.from_graph(data, as_list=True), sds[:T]))
        layout.graph_from_flat(layout.flatten(sds[:T]))
    assert len(layout._device_cache) == 1
    assert cached_bytes() == after_one
    per_value = after_one / layout.num_values
    assert per_value < 64, f"{per_value:.1f} cached bytes per parameter value"
