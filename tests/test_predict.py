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


@pytest.mark.parametrize("log_nodes", [False, True])
def test_pretrained_round_trip_gives_same_predictions(tmp_path, store, log_nodes):
    torch.manual_seed(0)
    model = PropertyPredictor(targets=store.target_names, hidden=8, layers=1, target_mean=[0.5, 0.1],
                              target_std=[0.2, 0.05], arch_ids=store.arch_ids, log_node_features=log_nodes)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists() and (tmp_path / "m" / "config.json").exists()
    back = PropertyPredictor.from_pretrained(tmp_path / "m")
    assert back.targets == model.targets and back.arch_ids == store.arch_ids
    assert back.backbone.config.log_node_features is log_nodes
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


# ----------------------------------------------------------------------------- defaults for a user

class _Regression:
    """A BatchSource of a linear regression task."""

    def __init__(self, n: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, generator=g)
        self.y = self.x.sum(1, keepdim=True)

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, idx, device="cpu"):
        return self.x[idx].to(device), self.y[idx].to(device)


def _scripted_eval(values):
    """An eval_fn reporting the given scores in turn, recording the weights it saw."""
    it, seen = iter(values), []

    def fn(model):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"eval_score": next(it)}
    return fn, seen


def _mse(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


def test_trainer_early_stopping_keeps_the_best_weights_and_resumes(tmp_path):
    from weightspace.training import EarlyStopping, Trainer

    cfg = TrainConfig(steps=200, batch_size=8, lr=1e-2, warmup=1, eval_every=10, log_every=10, checkpoint_every=10,
                      progress=False, plot=False, device="cpu")
    scores = [5.0, 3.0, 4.0, 4.0, 4.0, 0.0, 0.0]
    torch.manual_seed(0)
    fn, seen = _scripted_eval(scores)
    full = Trainer(torch.nn.Linear(3, 1), _mse, _Regression(), cfg, tmp_path / "full", eval_fn=fn,
                   early_stopping=EarlyStopping("eval_score", patience=3))
    res = full.fit()
    assert (res.step, res.best_step, res.stopped_early) == (50, 20, True)
    best = seen[1]
    assert all(torch.equal(full.model.state_dict()[k], best[k]) for k in best)
    assert not torch.equal(seen[-1]["weight"], best["weight"])

    torch.manual_seed(0)
    fn, _ = _scripted_eval(scores)
    part = Trainer(torch.nn.Linear(3, 1), _mse, _Regression(), cfg, tmp_path / "resumed", eval_fn=fn,
                   early_stopping=EarlyStopping("eval_score", patience=3))
    part.fit(stop_at=40)
    fn, _ = _scripted_eval(scores[4:])
    again = Trainer(torch.nn.Linear(3, 1), _mse, _Regression(), cfg, tmp_path / "resumed", eval_fn=fn,
                    early_stopping=EarlyStopping("eval_score", patience=3))
    assert again.step == 40
    res2 = again.fit()
    assert (res2.step, res2.best_step, res2.stopped_early) == (50, 20, True)
    assert all(torch.equal(again.model.state_dict()[k], best[k]) for k in best)
    fn, _ = _scripted_eval([])
    done = Trainer(torch.nn.Linear(3, 1), _mse, _Regression(), cfg, tmp_path / "resumed", eval_fn=fn,
                   early_stopping=EarlyStopping("eval_score", patience=3))
    assert done.fit().step == 50, "a stopped run stays stopped when resumed"
    assert all(torch.equal(done.model.state_dict()[k], best[k]) for k in best)


def test_default_training_stops_early_on_validation_runs(tmp_path, store):
    import warnings

    from weightspace.predict.api import _validation_loss

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = train_predictor(store, tmp_path / "p", model_config={"hidden": 8, "layers": 1},
                              train_config=TrainConfig(steps=None, batch_size=8, lr=1e-2, warmup=5, progress=False,
                                                       checkpoint_every=0, plot=False),
                              test_fraction=0.2, patience=2)
    s = run.schedule
    assert s["early_stopping"] and s["sized_to_data"] and s["steps"] >= 300 and s["batch_size"] == 8
    train, val, test = (set(x.runs()) for x in (run.train, run.val, run.test))
    assert len(val) == s["validation_runs"] == 3 and not (train & val or train & test or val & test)
    assert len(train | val | test) == 22
    evals = [h for h in run.result.history if "eval_val_loss" in h]
    assert len(evals) >= 3 and all(h["step"] % s["eval_every"] == 0 for h in evals)
    best = min(evals, key=lambda h: h["eval_val_loss"])
    assert s["best_step"] == best["step"]
    assert _validation_loss(run.val, 1.0)(run.model) == pytest.approx(best["eval_val_loss"], rel=1e-5)
    saved = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert saved["schedule"]["trained_steps"] == run.result.step
    split = json.loads((tmp_path / "p" / "split.json").read_text())
    assert {tuple(r) for r in split["validation_runs"]} == val


def test_few_training_runs_warn_and_one_run_is_refused(store, caplog):
    from weightspace.predict import FewRunsWarning, TooFewRuns

    cfg = tiny_config(steps=2)
    mc = {"hidden": 8, "layers": 1}
    four = store.select_runs(["mlp00", "mlp01", "mlp02", "mlp03", "mlp04"])
    with caplog.at_level("WARNING", logger="weightspace.predict"), \
            pytest.warns(FewRunsWarning, match="only 4 runs \\(12 checkpoints\\) are left for training"):
        train_predictor(four, model_config=mc, train_config=cfg, test_fraction=0.2)
    assert any("only 4 runs" in r.message for r in caplog.records)
    with pytest.raises(TooFewRuns, match="the training split has 1 run \\(3 checkpoints\\)"):
        train_predictor(store.select_runs(["mlp00", "mlp01"]), model_config=mc, train_config=cfg, test_fraction=0.5)
    with pytest.raises(TooFewRuns, match="the data has 1 run"):
        train_predictor(store.select_runs(["mlp00"]), model_config=mc, train_config=cfg)
    with pytest.raises(TooFewRuns, match="the training split has 0 runs"):
        train_predictor(store.subset([]), model_config=mc, train_config=cfg, test=store)


def test_progress_stays_readable_when_piped(tmp_path, coll, capsys):
    """Piped (not a TTY), the training bar writes a few plain lines, not carriage-return redraws."""
    assert main(["predict", "train", "--collection", str(coll.root), "--out", str(tmp_path / "run"),
                 "--steps", "40", "--batch-size", "4", "--hidden", "8", "--layers", "1", "--device", "cpu",
                 "--checkpoint-every", "0"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    train_lines = [line for line in err.splitlines() if line.startswith("train")]
    assert 1 <= len(train_lines) <= 3, err


def test_cli_train_reports_the_chosen_schedule(tmp_path, coll, capsys):
    out = tmp_path / "run"
    assert main(["predict", "train", "--collection", str(coll.root), "--out", str(out), "--batch-size", "8",
                 "--patience", "2", "--hidden", "8", "--layers", "1", "--no-progress", "--device", "cpu",
                 "--lr", "1e-2", "--checkpoint-every", "0"]) == 0
    captured = capsys.readouterr()
    assert "early stopping on the loss of 3 validation runs" in captured.out
    assert "(sized to the data)" in captured.err and "at most" in captured.err
    schedule = json.loads((out / "metrics.json").read_text())["schedule"]
    assert schedule["early_stopping"] and schedule["trained_steps"] <= schedule["steps"]


# ----------------------------------------------------------------------------- bad input, named

def test_graph_beyond_the_configured_positions_names_the_checkpoints(store):
    mlps = store.select_runs(["mlp03"])
    model = PropertyPredictor(targets=store.target_names, hidden=8, layers=1, max_positions=4)
    with pytest.raises(IncompatibleGraph, match=r"3 checkpoints \(run 'mlp03' \(3 steps, 0..2\)\) of .*beyond the "
                                                r"4 positions"):
        predict_store(model, mlps)
    with pytest.raises(IncompatibleGraph, match=r"run 'mlp03' step 1 of .*beyond the 4 positions"):
        predict_store(model, mlps.subset([1]))


def test_new_architectures_are_allowed_unless_refused(store):
    cnn_only = PropertyPredictor(targets=store.target_names, hidden=8, layers=1, arch_ids=store.arch_ids[:1])
    assert predict_store(cnn_only, store).shape == (len(store), 2)
    with pytest.raises(IncompatibleGraph, match=r"48 checkpoints \(run 'mlp00' .*not among the architectures it was "
                                                r"trained on"):
        predict_store(cnn_only, store, allow_new_architectures=False)
    predict_store(cnn_only, store.select_runs(["cnn00"]), allow_new_architectures=False)


def test_nan_weights_in_a_batch_name_the_checkpoint(store):
    from weightspace import NonFiniteWeights

    bad = PropertyGraphs(list(store.blocks), store.block_of, store.row_of, store.targets, store.target_names,
                         store.run_ids, store.steps, store.sources)
    i = store.run_ids.index("mlp05") + 2
    block = store.blocks[int(store.block_of[i])]
    flat = block.flat.clone()
    flat[store.row_of[i], 3] = float("nan")
    bad.blocks[int(store.block_of[i])] = type(block)(block.arch_id, block.space, flat)
    model = PropertyPredictor(targets=store.target_names, hidden=8, layers=1)
    with pytest.raises(NonFiniteWeights, match=r"1 checkpoint\(s\) hold NaN/Inf weights: run 'mlp05' step 2 of"):
        predict_store(model, bad)
    with pytest.raises(NonFiniteWeights, match="run 'mlp05' step 2"):
        train_predictor(bad, model_config={"hidden": 8, "layers": 1}, train_config=tiny_config(steps=2))
    assert np.isfinite(predict_store(model, store)).all()


# ----------------------------------------------------------------------------- predict checkpoint

def test_cli_predict_checkpoint(tmp_path, coll, store, capsys):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = PropertyPredictor(targets=["test_acc"], hidden=8, layers=1, target_mean=[0.5], target_std=[0.1],
                              arch_ids=[store.arch_ids[0]])
    model.save_pretrained(tmp_path / "m")
    one = PropertyGraphs.from_collections(coll, ["test_acc"], progress=False)
    i = [k for k, (r, s) in enumerate(zip(one.run_ids, one.steps)) if (r, s) == ("mlp03", 1)][0]
    want = float(predict_store(model, one.subset([i]))[0, 0])
    recorded = one.targets[i, 0].item()

    def run(*argv):
        assert main(["predict", "checkpoint", *map(str, argv), "--model", str(tmp_path / "m"), "--json"]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    got = run(coll.root, "--run", "mlp03", "--step", 1)
    assert got["predictions"]["test_acc"] == pytest.approx(want, abs=1e-6)
    assert got["recorded"]["test_acc"] == pytest.approx(recorded) and got["checkpoint"].startswith("run 'mlp03' step 1")
    assert got["seen_in_training"] is False
    file_in_collection = coll.weights_path("mlp03", 1)
    assert run(file_in_collection)["predictions"] == got["predictions"]
    loose = tmp_path / "loose"
    loose.mkdir()
    sd = coll.load("mlp03", 1)
    save_file(sd, str(loose / "model.safetensors"))
    coll.space(coll.row("mlp03", 1)).save(loose / "weightspace.json")
    standalone = run(loose / "model.safetensors")
    assert standalone["predictions"]["test_acc"] == pytest.approx(want, abs=1e-6)
    assert standalone["checkpoint"] == f"checkpoint {loose / 'model.safetensors'}" and standalone["recorded"] == {}
    assert main(["predict", "checkpoint", str(coll.root), "--run", "mlp03", "--model", str(tmp_path / "m")]) == 0
    assert "test_acc:" in capsys.readouterr().out

    assert main(["predict", "checkpoint", str(loose / "model.safetensors"), "--model", str(tmp_path / "m"),
                 "--strict-architectures"]) == 2
    assert f"checkpoint {loose / 'model.safetensors'}" in capsys.readouterr().err
    save_file({**sd, next(iter(sd)): torch.full_like(next(iter(sd.values())), float("nan"))},
              str(loose / "model.safetensors"))
    assert main(["predict", "checkpoint", str(loose / "model.safetensors"), "--model", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "NaN/Inf" in err and str(loose / "model.safetensors") in err
    assert main(["predict", "checkpoint", str(coll.root), "--model", str(tmp_path / "m")]) == 2
    assert "has 22 runs; choose one with --run" in capsys.readouterr().err


def test_cli_early_stopping_options_are_not_ignored(tmp_path, coll, capsys):
    assert main(["predict", "train", "--collection", str(coll.root), "--out", str(tmp_path / "r"), "--steps", "5",
                 "--patience", "3", "--no-progress"]) == 2
    assert "--patience applies to early stopping, which is off (--steps was given)" in capsys.readouterr().err
    assert main(["predict", "train", "--collection", str(coll.root), "--out", str(tmp_path / "r"),
                 "--no-early-stopping", "--val-fraction", "0.3", "--no-progress"]) == 2
    assert "--val-fraction applies to early stopping" in capsys.readouterr().err


def _early_stop_worker(rank: int, world: int, init: str, out: str) -> None:
    from process_group import process_group
    from weightspace.training import EarlyStopping, Trainer

    with process_group(rank, world, init):
        scores = [5.0, 3.0, 4.0, 4.0, 4.0] if rank == 0 else [5.0 - k for k in range(20)]
        fn, _ = _scripted_eval(scores)
        torch.manual_seed(0)
        cfg = TrainConfig(steps=200, batch_size=8, lr=1e-2, warmup=1, eval_every=10, log_every=10,
                          checkpoint_every=0, progress=False, plot=False, device="cpu")
        res = Trainer(torch.nn.Linear(3, 1), _mse, _Regression(), cfg, eval_fn=fn,
                      early_stopping=EarlyStopping("eval_score", patience=3)).fit()
        torch.save(torch.tensor([res.step, res.best_step]), f"{out}.{rank}")


@pytest.mark.slow
def test_processes_stop_together_on_rank_0s_metric(tmp_path):
    """Each process would decide otherwise on its own evaluation; all follow rank 0's."""
    from process_group import run_processes

    out = str(tmp_path / "r")
    run_processes(_early_stop_worker, (out,), tmp_path)
    for rank in range(2):
        assert torch.load(f"{out}.{rank}", weights_only=True).tolist() == [50, 20]


def test_predictor_saved_before_edge_hidden_loads_with_edges_as_wide_as_nodes(tmp_path):
    torch.manual_seed(0)
    old = PropertyPredictor(hidden=8, layers=1, edge_hidden=None)
    old.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for key in ("edge_hidden", "routing"):
        cfg.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = PropertyPredictor.from_pretrained(tmp_path)
    assert loaded.backbone.config.edge_hidden is None
    for k, v in old.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert PropertyPredictor(hidden=8, layers=1).backbone.config.edge_hidden == 16
