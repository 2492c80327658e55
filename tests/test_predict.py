"""Property prediction from weights: data loading, splits, learning, baselines, errors and the CLI."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from families import CNN, MLP
from weightspace import WeightSpace
from weightspace.cli import main
from weightspace.collections import CheckpointCollection
from weightspace.nn import IncompatibleGraph, collate
from weightspace.predict import (FlatMLP, PropertyGraphs, MissingMetric, NotApplicable, PropertyPredictor, StatNN,
                                 check_compatible, evaluate_predictor, predict_store, regression_metrics,
                                 train_predictor)
from weightspace.training import TrainConfig


def make_collection(root: Path, mlp_runs: int = 16, cnn_runs: int = 0, steps: int = 3) -> CheckpointCollection:
    """Runs whose accuracy is a smooth function of their weights' scale (so it is learnable from weights)."""
    coll = CheckpointCollection.create(root)
    for kind, n in (("mlp", mlp_runs), ("cnn", cnn_runs)):
        for r in range(n):
            torch.manual_seed(r)
            model, x = (MLP(), torch.randn(2, 6)) if kind == "mlp" else (CNN(), torch.randn(2, 1, 8, 8))
            space = WeightSpace.from_module(model, x)
            scale = 0.5 + r / max(1, n - 1)
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(scale)
            with coll.run_writer(f"{kind}{r:02d}", space=space, hparams={"scale": scale}) as w:
                for s in range(steps):
                    with torch.no_grad():
                        for p in model.parameters():
                            p.add_(0.01 * torch.randn_like(p))
                    acc = 0.3 + 0.4 * (scale - 0.5) + 0.02 * s
                    w.append(s, model.state_dict(), {"test_acc": acc, "train_acc": acc + 0.1 * scale})
    return coll


@pytest.fixture(scope="module")
def coll(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("zoo") / "c", mlp_runs=16, cnn_runs=6)


@pytest.fixture(scope="module")
def store(coll):
    return PropertyGraphs.from_collections(coll, ["test_acc", "gap"], progress=False)


def tiny_config(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 60, "batch_size": 8, "lr": 3e-3, "warmup": 5, "progress": False,
                          "checkpoint_every": 0, "log_every": 10, **kw})


def test_store_batches_equal_collated_graphs(coll, store):
    assert len(store) == 22 * 3 and len(store.blocks) == 2
    idx = torch.tensor([0, 50, 3, 60, 7])
    batch, y = store.batch(idx)
    order = torch.cat([idx[store.block_of[idx] == b] for b in store.block_of[idx].unique()]).tolist()
    graphs = [coll.space(coll.row(store.run_ids[i], store.steps[i])).to_graph(coll.load(store.run_ids[i],
                                                                                        store.steps[i]))
              for i in order]
    ref = collate(graphs)
    for k in ("x", "edge_attr", "edge_index", "edge_type", "node_type", "pos_id", "batch", "ptr"):
        assert torch.equal(batch[k], ref[k]), k
    assert batch.num_graphs == 5
    assert torch.equal(y, store.targets[order])
    rows = {(r["run_id"], r["step"]): r for r in coll.rows()}
    i = order[0]
    r = rows[(store.run_ids[i], store.steps[i])]
    assert y[0].tolist() == pytest.approx([r["test_acc"], r["train_acc"] - r["test_acc"]])


def test_split_is_by_run(store):
    train, test = store.split_by_run(0.25, seed=1)
    assert set(train.run_ids).isdisjoint(test.run_ids)
    assert len(train) + len(test) == len(store)
    assert set(store.split_by_run(0.25, seed=1)[1].run_ids) == set(test.run_ids)


def test_tiny_predictor_beats_constant_baseline_on_held_out_runs(tmp_path, store):
    torch.set_num_threads(1)
    mlp_only = store.subset(torch.nonzero(store.block_of == 0).flatten())
    run = train_predictor(mlp_only, tmp_path / "p", model_config={"hidden": 16, "layers": 2},
                          train_config=tiny_config(steps=80), test_fraction=0.25)
    pred, true = predict_store(run.model, run.test), run.test.targets.numpy()
    mse = ((pred - true) ** 2).mean(0)
    const = ((run.train.targets.numpy().mean(0) - true) ** 2).mean(0)
    assert mse[0] < const[0], (mse, const)
    assert run.metrics["test_acc"]["tau"] > 0.3
    saved = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert saved["test"]["test_acc"]["r2"] == pytest.approx(run.metrics["test_acc"]["r2"])
    assert (tmp_path / "p" / "loss.png").stat().st_size > 1000
    split = json.loads((tmp_path / "p" / "split.json").read_text())
    assert {r for _, r in split["test_runs"]} == set(run.test.run_ids)


def test_pretrained_round_trip_gives_same_predictions(tmp_path, store):
    torch.manual_seed(0)
    model = PropertyPredictor(targets=store.target_names, hidden=8, layers=1, target_mean=[0.5, 0.1],
                              target_std=[0.2, 0.05], arch_ids=store.arch_ids)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists() and (tmp_path / "m" / "config.json").exists()
    back = PropertyPredictor.from_pretrained(tmp_path / "m")
    assert back.targets == model.targets and back.arch_ids == store.arch_ids
    np.testing.assert_array_equal(predict_store(back, store), predict_store(model, store))


def shifted_weights_store(root: Path, runs: int = 40) -> PropertyGraphs:
    """Runs whose weights are drawn around a per-run shift, with the shift as the target: a property that
    a baseline reading weights (statistics or the flat vector) can learn, and the mean cannot."""
    coll = CheckpointCollection.create(root)
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    space = WeightSpace.from_module(model, torch.randn(2, 3))
    for r in range(runs):
        shift = float(torch.rand((), generator=g)) * 2 - 1
        with coll.run_writer(f"r{r:02d}", space=space) as w:
            for step in range(2):
                sd = {k: shift + 0.3 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
                w.append(step, sd, {"test_acc": shift, "train_acc": 2 * shift})
    return PropertyGraphs.from_collections(coll, ["test_acc", "gap"], progress=False)


def test_baselines_learn_a_learnable_target(tmp_path):
    """StatNN and the flat MLP each predict held-out runs far better than the training mean does."""
    toy = shifted_weights_store(tmp_path / "toy")
    train, test = toy.split_by_run(0.25, seed=0)
    true = test.targets.numpy()
    const = ((train.targets.numpy().mean(0) - true) ** 2).mean(0)
    for baseline in (StatNN(max_iter=50), FlatMLP(hidden=(16,), max_iter=200)):
        pred = baseline.fit(train).predict(test)
        assert pred.shape == (len(test), 2)
        mse = ((pred - true) ** 2).mean(0)
        assert (mse < 0.5 * const).all(), (type(baseline).__name__, mse, const)


def test_baselines(store):
    mlp_only = store.subset(torch.nonzero(store.block_of == 0).flatten())
    train, test = mlp_only.split_by_run(0.25)
    for baseline in (StatNN(max_iter=20), FlatMLP(hidden=(16,), max_iter=50)):
        pred = baseline.fit(train).predict(test)
        assert pred.shape == (len(test), 2) and np.isfinite(pred).all()
    statnn = StatNN(max_iter=20).fit(store)
    assert statnn.predict(store).shape == (len(store), 2), "StatNN matches tensors by name across architectures"
    cnn_only = store.subset(torch.nonzero(store.block_of == 1).flatten())
    with pytest.raises(NotApplicable, match="does not fit the flat layout"):
        FlatMLP(hidden=(8,), max_iter=5).fit(train).predict(cnn_only)
    m = regression_metrics(np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [2.0], [3.0]]), ["a"])
    assert m["a"] == {"tau": pytest.approx(1.0), "r2": pytest.approx(1.0)}


def test_missing_metric_is_a_clear_error(coll):
    with pytest.raises(MissingMetric, match=r"no metric 'val_loss'.*available: \['gap', 'test_acc', 'train_acc'\]"):
        PropertyGraphs.from_collections(coll, ["val_loss"], progress=False)


def test_architecture_the_model_was_not_built_for_is_refused(store):
    narrow = PropertyPredictor(targets=store.target_names, hidden=8, layers=1, edge_features=1)
    with pytest.raises(IncompatibleGraph, match="values per edge"):
        check_compatible(narrow, store)
    with pytest.raises(IncompatibleGraph, match=r"18 checkpoints \(run 'cnn00' \(3 steps, 0..2\); .*values per edge"):
        predict_store(narrow, store)
    only_mlp = PropertyPredictor(targets=store.target_names, hidden=8, layers=1, arch_ids=store.arch_ids[:1])
    check_compatible(only_mlp, store)
    with pytest.raises(IncompatibleGraph, match="not among the architectures"):
        check_compatible(only_mlp, store, allow_new_architectures=False)


def test_cli_train_and_eval(tmp_path, coll, capsys):
    out = tmp_path / "run"
    assert main(["predict", "train", "--collection", str(coll.root), "--target", "test_acc", "--out", str(out),
                 "--steps", "6", "--batch-size", "4", "--hidden", "8", "--layers", "1", "--no-progress",
                 "--device", "cpu", "--conv", "transformer"]) == 0
    assert PropertyPredictor.from_pretrained(str(out / "model")).backbone.config.conv == "transformer"
    assert "Kendall tau" in capsys.readouterr().out
    assert main(["predict", "eval", "--model", str(out / "model"), "--collection", str(coll.root),
                 "--split", str(out / "split.json"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(metrics) == {"test_acc"} and set(metrics["test_acc"]) == {"tau", "r2"}
    assert main(["predict", "train", "--collection", str(coll.root), "--target", "nope", "--out",
                 str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "no metric 'nope'" in capsys.readouterr().err


def test_ranking_loss_rewards_the_right_order_and_ignores_ties():
    from weightspace.predict import ranking_loss

    t = torch.tensor([[0.1], [0.5], [0.9], [0.9]])
    right, wrong = 10 * t, -10 * t
    assert float(ranking_loss(right, t)) < 1e-3 < math.log(2) < float(ranking_loss(wrong, t))
    tied = torch.tensor([[3.0], [2.0], [1.0], [0.0]])
    assert float(ranking_loss(tied, torch.ones(4, 1))) == 0.0
    p = torch.zeros(4, 1, requires_grad=True)
    ranking_loss(p, t).backward()
    assert p.grad[0, 0] > 0 > p.grad[2, 0]
