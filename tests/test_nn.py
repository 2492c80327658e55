"""Graph metanetworks: invariance/equivariance under weight-space permutations for every model family."""
import pytest
import torch

from families import families
from families import randomize
from weightspace import WeightSpace
from weightspace.graph import EDGE_TYPES
from weightspace.nn import EdgeHead, GraphHead, GraphMetanetwork, IncompatibleGraph, NodeHead, collate
from weightspace.nn.routes import Routes, dense_blocks

FAMILIES = families()
TOL = 1e-4


def make_net(positional: str = "fixed", states: int = 1, conv: str = "pna", edge_hidden: int | None = None,
             log_node_features: bool = False) -> tuple[GraphMetanetwork, GraphHead, NodeHead, EdgeHead]:
    torch.manual_seed(0)
    net = GraphMetanetwork(hidden=16, layers=2, states=states, edge_features=9, node_features=4, max_positions=16,
                           positional=positional, conv=conv, edge_hidden=edge_hidden,
                           log_node_features=log_node_features)
    de = edge_hidden or 16
    return net.eval(), GraphHead(16, 2, de).eval(), NodeHead(16, 3).eval(), EdgeHead(de, states, 9).eval()


@pytest.fixture(scope="module", params=FAMILIES, ids=[f[0] for f in FAMILIES])
def permuted_pair(request):
    name, make, example = request.param
    torch.manual_seed(1)
    model = randomize(make())
    space = WeightSpace.from_module(model, example())
    sds = [model.state_dict()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sds.append({k: v.clone() for k, v in model.state_dict().items()})
    perm = space.random_permutation(torch.Generator().manual_seed(7))
    g0 = space.to_graph(sds)
    g1 = space.to_graph([space.permute(sd, perm) for sd in sds])
    return name, g0, g1, space.node_permutation(perm)


def edge_correspondence(g0, g1, idx: torch.Tensor) -> torch.Tensor:
    """For each edge of the permuted graph, the index of the same weight's edge in the original graph."""
    n, t = g0.num_nodes, len(EDGE_TYPES)
    k0 = (g0.edge_index[0] * n + g0.edge_index[1]) * t + g0.edge_type
    k1 = (idx[g1.edge_index[0]] * n + idx[g1.edge_index[1]]) * t + g1.edge_type
    assert k0.unique().numel() == k0.numel()
    order = torch.argsort(k0)
    pos = torch.searchsorted(k0[order], k1)
    assert torch.equal(k0[order][pos], k1)
    return order[pos]


def check_symmetry(g0, g1, idx: torch.Tensor, positional: str, conv: str = "pna", edge_hidden: int | None = None,
                   log_node_features: bool = False) -> None:
    """Assert graph outputs are invariant, and node and edge outputs equivariant, under the permutation."""
    net, gh, nh, eh = make_net(positional=positional, states=2, conv=conv, edge_hidden=edge_hidden,
                               log_node_features=log_node_features)
    e0, e1 = net(g0), net(g1)
    torch.testing.assert_close(nh(e1), nh(e0)[idx], atol=TOL, rtol=TOL)
    emap = edge_correspondence(g0, g1, idx)
    torch.testing.assert_close(eh(e1), eh(e0)[emap], atol=TOL, rtol=TOL)
    torch.testing.assert_close(gh(e1), gh(e0), atol=TOL, rtol=TOL)


CONVS = ["pna", "transformer"]


@torch.no_grad()
@pytest.mark.parametrize("conv", CONVS)
def test_outputs_are_invariant_and_equivariant(permuted_pair, conv):
    name, g0, g1, idx = permuted_pair
    assert not torch.equal(idx, torch.arange(len(idx)))
    check_symmetry(g0, g1, idx, "fixed", conv)
    net, _, _, eh = make_net(states=2, conv=conv)
    assert eh(net(g0)).shape == (g0.edge_index.shape[1], 2, 9)


@torch.no_grad()
def test_narrow_edges_keep_the_symmetry(permuted_pair):
    """Edge states and messages narrower than nodes (edge_hidden) change widths, not the symmetry."""
    name, g0, g1, idx = permuted_pair
    check_symmetry(g0, g1, idx, "fixed", edge_hidden=8)
    net, _, _, eh = make_net(states=2, edge_hidden=8)
    assert net(g0).edge.shape == (g0.edge_index.shape[1], 8)


@torch.no_grad()
def test_log_node_features_keep_the_symmetry_and_are_read(permuted_pair):
    """Node values also entering on a log scale keep the symmetry, and the net reads that log half."""
    name, g0, g1, idx = permuted_pair
    check_symmetry(g0, g1, idx, "fixed", log_node_features=True)
    if not bool(g0.x.abs().sum()):
        pytest.skip(f"{name} has no node values")
    net, gh, _, _ = make_net(states=2, log_node_features=True)
    assert net.node_in.in_features == 2 * 2 * 4
    raw = torch.tensor([0, 1, 2, 3, 8, 9, 10, 11])
    net.node_in.weight[:, raw] = 0.0
    scaled = g0.clone()
    scaled.x = g0.x * 100.0
    assert not torch.allclose(gh(net(scaled)), gh(net(g0)), atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("conv", CONVS)
def test_positions_on_hidden_units_break_symmetry(permuted_pair, conv):
    """The same check fails when hidden units are given positional features: it is not vacuous."""
    name, g0, g1, idx = permuted_pair
    with pytest.raises(AssertionError):
        check_symmetry(g0, g1, idx, "all", conv)


@torch.no_grad()
@pytest.mark.parametrize("conv", CONVS)
def test_mixed_architecture_batch_matches_single_graphs(conv):
    graphs = []
    for name, make, example in FAMILIES[:5] + FAMILIES[5:6]:
        torch.manual_seed(0)
        model = randomize(make())
        graphs.append(WeightSpace.from_module(model, example()).to_graph(model.state_dict()))
    assert len({g.edge_attr.shape[-1] for g in graphs}) > 1, "batch must mix edge widths"
    net, gh, _, _ = make_net(conv=conv)
    batched = gh(net(collate(graphs)))
    single = torch.cat([gh(net(g)) for g in graphs])
    torch.testing.assert_close(batched, single, atol=TOL, rtol=TOL)


def test_incompatible_graphs_are_refused():
    _, make, example = FAMILIES[2]
    model = make()
    g = WeightSpace.from_module(model, example()).to_graph(model.state_dict())
    with pytest.raises(IncompatibleGraph, match="at most 1"):
        GraphMetanetwork(hidden=8, layers=1, edge_features=1)(g)
    with pytest.raises(IncompatibleGraph, match="stacked states"):
        GraphMetanetwork(hidden=8, layers=1, states=2)(g)
    with pytest.raises(IncompatibleGraph, match="position"):
        GraphMetanetwork(hidden=8, layers=1, max_positions=2)(g)
    with pytest.raises(ValueError, match="conv"):
        GraphMetanetwork(hidden=8, layers=1, conv="gat")
    with pytest.raises(ValueError, match="heads"):
        GraphMetanetwork(hidden=10, layers=1, conv="transformer", heads=4)


@pytest.mark.parametrize("conv", CONVS)
def test_gradients_flow_to_every_parameter(conv):
    _, make, example = FAMILIES[4]
    model = randomize(make())
    g = WeightSpace.from_module(model, example()).to_graph(model.state_dict())
    net, gh, _, _ = make_net(conv=conv)
    gh(net(g)).sum().backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None]
    assert unused == []


def _mixed_batch():
    graphs = []
    for name, make, example in FAMILIES:
        torch.manual_seed(0)
        model = randomize(make())
        graphs.append(WeightSpace.from_module(model, example()).to_graph(model.state_dict()))
    return collate(graphs)


@pytest.mark.parametrize("min_block_edges, max_block_edges", [(None, None), (4, None), (4, 8)])
def test_segment_routing_computes_the_scatter_path_function_and_gradients(min_block_edges, max_block_edges):
    """The default segment routing (edges sorted by receiver once per batch) equals the reference scatter path,
    with messages formed per edge (``None``) or per dense grid of edges (here grids of 4 edges and more, so that the
    tiny test models have grids as well as edges outside them), whole or cut into bands of rows.

    Features get a little noise so that no two messages tie: at a tie, max and min have several valid
    subgradients, and either path may pick another one.
    """
    batch = _mixed_batch()
    torch.manual_seed(5)
    batch.x = (batch.x + 0.1 * torch.randn_like(batch.x)).double()
    batch.edge_attr = (batch.edge_attr + 0.1 * torch.randn_like(batch.edge_attr)).double()
    routes = Routes.build(batch.edge_index, batch.num_nodes, torch.float64, min_block_edges, max_block_edges)
    if min_block_edges is not None:
        assert routes.forward.blocks and routes.forward.rest.numel()
        whole = Routes.build(batch.edge_index, batch.num_nodes, torch.float64, min_block_edges, None)
        assert (len(routes.forward.blocks) > len(whole.forward.blocks)) == (max_block_edges is not None)
    outs, grads = {}, {}
    for routing in ("scatter", "segment"):
        torch.manual_seed(0)
        net = GraphMetanetwork(hidden=16, layers=2, edge_features=9, node_features=4, max_positions=64,
                               routing=routing).double()
        head = EdgeHead(16, 1, 9).double()
        enc = net(batch, routes)
        out = torch.cat([enc.node.flatten(), head(enc).flatten()])
        torch.manual_seed(1)
        (out * torch.randn_like(out)).sum().backward()
        outs[routing] = out.detach()
        grads[routing] = torch.cat([p.grad.flatten() for p in net.parameters()])
    torch.testing.assert_close(outs["segment"], outs["scatter"], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(grads["segment"], grads["scatter"], atol=1e-8, rtol=1e-8)


def test_dense_blocks_finds_the_grids_of_consecutive_edges():
    # a 2x3 grid (nodes 0-2 into 3-4), one edge 0 -> 5, then a 3x2 grid (3-4 into 6-8) whose runs share senders,
    # then two runs into 9 and 10 with other senders (no grid)
    grid_a = [(s, d) for d in (3, 4) for s in (0, 1, 2)]
    grid_b = [(s, d) for d in (6, 7, 8) for s in (3, 4)]
    edges = grid_a + [(0, 5)] + grid_b + [(1, 9), (2, 9), (0, 10), (1, 10)]
    edge_index = torch.tensor(edges).t()
    blocks, rest = dense_blocks(edge_index, min_edges=3)
    assert [(b.start, b.rows, b.cols) for b in blocks] == [(0, 2, 3), (7, 3, 2)]
    for b in blocks:
        r, c = torch.meshgrid(torch.arange(b.rows), torch.arange(b.cols), indexing="ij")
        grid = torch.stack([b.col_nodes[c], b.row_nodes[r]]).flatten(1)
        torch.testing.assert_close(edge_index[:, b.start:b.stop], grid)
    assert rest.tolist() == [6, 13, 14, 15, 16]
    assert dense_blocks(edge_index, min_edges=7)[0] == [] and dense_blocks(edge_index, min_edges=7)[1].numel() == 17
    bands, rest = dense_blocks(edge_index, min_edges=3, max_edges=4)  # grids cut into bands of whole rows
    assert [(b.start, b.rows, b.cols) for b in bands] == [(0, 1, 3), (3, 1, 3), (7, 2, 2), (11, 1, 2)]
    assert bands[3].row_nodes.tolist() == [8] and rest.tolist() == [6, 13, 14, 15, 16]


def test_fit_degrees_sets_the_mean_log_degree_of_each_direction():
    from torch_geometric.data import Data

    # node 2 receives from 0 and 1, node 3 from 2: forward in-degrees {2: 2, 3: 1}; backward {0: 1, 1: 1, 2: 1}
    g = Data(edge_index=torch.tensor([[0, 1, 2], [2, 2, 3]]), num_nodes=4)
    net = GraphMetanetwork(hidden=8, layers=2)
    fwd, bwd = net.fit_degrees([g])
    assert fwd == pytest.approx((torch.log(torch.tensor(3.0)) + torch.log(torch.tensor(2.0))).item() / 2)
    assert bwd == pytest.approx(torch.log(torch.tensor(2.0)).item())
    for layer in net.layers:
        assert float(layer.fwd.pna.avg_log_degree) == pytest.approx(fwd)
        assert float(layer.bwd.pna.avg_log_degree) == pytest.approx(bwd)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("avg_log_degree")}
    fresh = GraphMetanetwork(hidden=8, layers=2)
    fresh.load_state_dict(state)  # checkpoints saved before the statistic existed load with the former 2.0
    assert float(fresh.layers[0].fwd.pna.avg_log_degree) == 2.0
    with pytest.raises(ValueError, match="routing"):
        GraphMetanetwork(hidden=8, layers=1, routing="csr")
