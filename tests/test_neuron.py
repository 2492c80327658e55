"""NeuronNetwork: node-state message passing whose grids of edges run as matrix products."""
import torch

from families import families, randomize
from test_nn import permuted_pair  # noqa: F401 (a fixture)
from weightspace import WeightSpace
from weightspace.nn import NeuronNetwork, collate
from weightspace.nn.routes import dense_blocks

FAMILIES = families()


def _noisy_batch(states: int = 2):
    """The test families' graphs with one value per edge (no conv kernels), T noisy states each: their grids have
    more rows and columns than features per edge, so they take the matrix-product path."""
    graphs = []
    for name, make, example in FAMILIES:
        torch.manual_seed(0)
        model = randomize(make())
        g = WeightSpace.from_module(model, example()).to_graph(model.state_dict())
        if g.edge_attr.shape[-1] == 1:
            graphs.append(g)
    batch = collate(graphs)
    torch.manual_seed(5)
    batch.x = (batch.x.repeat(1, states, 1) + 0.1 * torch.randn(batch.x.shape[0], states, batch.x.shape[2])).double()
    ea = batch.edge_attr.repeat(1, states, 1)
    batch.edge_attr = (ea + 0.1 * torch.randn_like(ea)).double()
    return batch


def test_grid_products_compute_the_per_edge_function_and_gradients():
    """Grids of >= 4 edges (so the tiny test models have grids and edges outside them) as matrix products, against
    every edge through per-edge messages: the same outputs and gradients."""
    batch = _noisy_batch()
    blocks, rest = dense_blocks(batch.edge_index, 4, None)
    assert blocks and rest.numel()
    net = NeuronNetwork(hidden=8, layers=1, states=2, max_positions=64, min_block_edges=4).double()
    assert len(net.edge_terms(batch).groups) > 1
    outs, grads = {}, {}
    for min_edges in (None, 4):
        torch.manual_seed(0)
        net = NeuronNetwork(hidden=8, layers=2, states=2, max_positions=64, min_block_edges=min_edges).double()
        for p in net.parameters():
            p.data.normal_(0, 0.3)
        out = net(batch)
        torch.manual_seed(1)
        (out * torch.randn_like(out)).sum().backward()
        outs[min_edges] = out.detach()
        grads[min_edges] = torch.cat([p.grad.flatten() for p in net.parameters()])
    torch.testing.assert_close(outs[4], outs[None], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(grads[4], grads[None], atol=1e-9, rtol=1e-9)


def test_grid_of_mixed_edge_types_takes_the_per_edge_path():
    batch = _noisy_batch()
    blocks, _ = dense_blocks(batch.edge_index, 4, None)
    blk = max(blocks, key=lambda b: b.rows * b.cols)
    batch.edge_type = batch.edge_type.clone()
    batch.edge_type[blk.start] = (batch.edge_type[blk.start] + 1) % 3
    torch.manual_seed(0)
    net = NeuronNetwork(hidden=8, layers=1, states=2, max_positions=64, min_block_edges=4).double()
    for p in net.parameters():
        p.data.normal_(0, 0.3)
    terms = net.edge_terms(batch)
    whole = NeuronNetwork(hidden=8, layers=1, states=2, max_positions=64, min_block_edges=4).edge_terms(_noisy_batch())
    assert terms.rest_index.shape[1] == whole.rest_index.shape[1] + blk.rows * blk.cols
    ref = NeuronNetwork(hidden=8, layers=1, states=2, max_positions=64, min_block_edges=None).double()
    ref.load_state_dict(net.state_dict())
    torch.testing.assert_close(net(batch), ref(batch), atol=1e-10, rtol=1e-10)


@torch.no_grad()
def test_node_states_are_permuted_with_the_units(permuted_pair):
    name, g0, g1, idx = permuted_pair
    torch.manual_seed(0)
    net = NeuronNetwork(hidden=8, layers=2, states=2, max_positions=16, min_block_edges=4).eval()
    torch.testing.assert_close(net(g1), net(g0)[idx], atol=1e-4, rtol=1e-4)
