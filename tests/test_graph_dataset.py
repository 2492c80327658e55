"""GraphDataset: a lazy PyG dataset over a collection that DataLoader batches across architectures."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch_geometric.loader import DataLoader

from weightspace import WeightSpace
from weightspace.collections import CheckpointCollection, GraphDataset
from weightspace.errors import CollectionError, NonFiniteWeights
from weightspace.tasks.models import build, example_input

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCHS = [("cnn", {"channels": (4, 4, 4), "batchnorm": True}),
         ("cnn", {"channels": (4, 8, 4), "batchnorm": False}),
         ("mlp", {"in_features": 64, "widths": [8], "out_features": 10})]
STEPS = [0, 5, 10]


def model_state(i: int, step: int) -> tuple[WeightSpace, dict[str, torch.Tensor]]:
    family, kw = ARCHS[i % len(ARCHS)]
    m = build(family, seed=100 * i + step, **kw)
    return WeightSpace.from_module(m, example_input(m)), m.state_dict()


def make_mixed(root: Path, runs: int = 3, pack_runs: bool = False) -> CheckpointCollection:
    """Runs of a CNN with BatchNorm, a CNN without and an MLP, with test_acc = run + step / 100."""
    coll = CheckpointCollection.create(root, pack_runs=pack_runs)
    for i in range(runs):
        with coll.run_writer(f"r{i}", space=model_state(i, 0)[0], hparams={"lr": 0.1 * (i + 1)}) as w:
            for s in STEPS:
                w.append(s, model_state(i, s)[1], {"test_acc": i + s / 100, "train_loss": 1.0})
    return coll


@pytest.fixture
def coll(tmp_path: Path) -> CheckpointCollection:
    return make_mixed(tmp_path / "zoo")


def test_dataloader_batches_mixed_architectures_with_padding(coll: CheckpointCollection) -> None:
    ds = GraphDataset(coll, targets=["test_acc"])
    assert len(ds) == 9 and len({r["arch_id"] for r, _ in ds.windows}) == 3
    widths = [coll.space(a).layout for a in coll.architectures()]
    assert ds.edge_features == max(lay.edge_features for lay in widths) == 9
    assert ds.node_features == max(lay.node_features for lay in widths) > min(lay.node_features for lay in widths)
    batches = list(DataLoader(ds, batch_size=4, shuffle=False))
    assert [b.num_graphs for b in batches] == [4, 4, 1]
    b = batches[0]
    assert b.edge_attr.shape[1:] == (1, 9) and b.x.shape[1:] == (1, ds.node_features)
    assert b.y.shape == (4, 1)
    assert b.y[:, 0].tolist() == pytest.approx([0.0, 0.05, 0.10, 1.0])
    assert b.run_id == ["r0", "r0", "r0", "r1"]


@pytest.mark.parametrize("pack_runs", [False, True])
def test_items_are_the_collections_graphs_zero_padded(tmp_path: Path, pack_runs: bool) -> None:
    coll = make_mixed(tmp_path / "zoo", pack_runs=pack_runs)
    ds = GraphDataset(coll, targets=["test_acc"])
    for i in range(len(ds)):
        item = ds[i]
        row, steps = ds.windows[i]
        space = coll.space(row["arch_id"])
        ref = space.to_graph(model_state(int(row["run_id"][1:]), steps[0])[1])
        F, Fn = ref.edge_attr.shape[-1], ref.x.shape[-1]
        assert torch.equal(item.edge_attr[..., :F], ref.edge_attr) and not item.edge_attr[..., F:].any()
        assert torch.equal(item.x[..., :Fn], ref.x) and not item.x[..., Fn:].any()
        assert torch.equal(item.edge_index, ref.edge_index) and torch.equal(item.edge_type, ref.edge_type)
        unpadded = item.clone()
        unpadded.edge_attr, unpadded.x, unpadded.aux = item.edge_attr[..., :F], item.x[..., :Fn], ref.aux
        sd = space.from_graph(unpadded)
        assert all(torch.equal(sd[k], v) for k, v in model_state(int(row["run_id"][1:]), steps[0])[1].items())


def test_lazy_and_cached(coll: CheckpointCollection, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []
    real = CheckpointCollection._read
    monkeypatch.setattr(CheckpointCollection, "_read", lambda self, row, device="cpu": reads.append(row["step"])
                        or real(self, row, device))
    ds = GraphDataset(coll, targets=["test_acc"])
    assert reads == [], "building the dataset reads no weights"
    ds[4]
    assert reads == [5]
    ds[4]
    assert reads == [5, 5], "without cache every access reads again"
    cached = GraphDataset(coll, targets=["test_acc"], cache=True)
    a, b = cached[4], cached[4]
    assert a is b and reads == [5, 5, 5]


def test_trajectory_windows_where_and_targets(coll: CheckpointCollection) -> None:
    ds = GraphDataset(coll, targets=["test_acc", "train_loss"], trajectory_length=2,
                      where=lambda r: r["run_id"] != "r2")
    assert [(r["run_id"], w) for r, w in ds.windows] == [("r0", [0, 5]), ("r0", [5, 10]), ("r1", [0, 5]),
                                                        ("r1", [5, 10])]
    b = next(iter(DataLoader(ds, batch_size=4)))
    assert b.edge_attr.shape[1:] == (2, 9) and b.y.shape == (4, 2)
    assert b.y[:, 0].tolist() == pytest.approx([0.05, 0.10, 1.05, 1.10]), "targets of the window's last step"
    with pytest.raises(CollectionError, match=r"'test_accuracy'.*available metrics: \['test_acc', 'train_loss'\]"):
        GraphDataset(coll, targets=["test_accuracy"])
    with pytest.raises(CollectionError, match="trajectory_length"):
        GraphDataset(coll, trajectory_length=0)
    with pytest.raises(CollectionError, match="skip_bad"):
        GraphDataset(coll, skip_bad="yes")


def test_damaged_and_nonfinite_checkpoints(coll: CheckpointCollection) -> None:
    space, sd = model_state(0, 0)
    bad = {k: v.clone() for k, v in sd.items()}
    next(t for t in bad.values() if t.is_floating_point()).view(-1)[0] = math.nan
    coll.append("r9", 0, bad, space=space, metrics={"test_acc": 0.5}, allow_nonfinite=True)
    path = coll.root / coll.row("r1", 5)["file"]
    path.write_bytes(path.read_bytes()[:100])

    ds = GraphDataset(coll, targets=["test_acc"])
    r9 = next(i for i, (r, _) in enumerate(ds.windows) if r["run_id"] == "r9")
    with pytest.raises(NonFiniteWeights, match="run 'r9' step 0"):
        ds[r9]
    assert torch.isnan(GraphDataset(coll, targets=["test_acc"], allow_nonfinite=True)[r9].x).any() or \
        torch.isnan(GraphDataset(coll, targets=["test_acc"], allow_nonfinite=True)[r9].edge_attr).any()

    healthy = GraphDataset(coll, targets=["test_acc"], skip_bad=True)
    assert len(healthy) == len(ds) - 2
    assert {(p.run_id, p.step, p.kind) for p in healthy.problems} == {("r1", 5, "truncated"), ("r9", 0, "nonfinite")}
    assert len(list(DataLoader(healthy, batch_size=3))) == 3
    fast = GraphDataset(coll, targets=["test_acc"], skip_bad="fast")
    assert {(p.run_id, p.step) for p in fast.problems} == {("r1", 5)}, "fast checks sizes and headers only"


def test_readme_quickstart_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index("## PyTorch Geometric"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'CheckpointCollection.open("zoo/digits-cnn")' in code
    make_mixed(tmp_path / "zoo" / "digits-cnn", runs=6)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    batch, ds = ns["batch"], ns["ds"]
    assert batch.num_graphs == 18 and len(set(batch.arch_id)) == 3
    assert tuple(batch.edge_attr.shape[1:]) == (1, ds.edge_features) and batch.y.shape == (18, 1)
    assert f", {ds.edge_features}]" in capsys.readouterr().out
