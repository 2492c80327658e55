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
