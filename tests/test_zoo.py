"""Zoo recipes: every recipe at size tiny builds a collection that reopens with the expected runs, steps and metrics."""
import json

import pytest
import torch

from weightspace import CollectionError
from weightspace.collections import CheckpointCollection
from weightspace.tasks.zoo import RECIPES, build_zoo


@pytest.fixture(scope="module")
def zoos(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoos")
    return {name: (root / name, build_zoo(name, root / name, size="tiny", progress=False)) for name in RECIPES}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_tiny_zoo_reopens(zoos, name):
    path, _ = zoos[name]
    recipe, size = RECIPES[name], RECIPES[name].sizes["tiny"]
    coll = CheckpointCollection.open(path)
    assert coll.runs() == [recipe.run_id(i) for i in range(size.runs)]
    want_steps = size.saved_steps()
    for run in coll.runs():
        assert coll.is_finished(run)
        assert coll.steps(run) == want_steps
        for step in want_steps:
            row = coll.row(run, step)
            assert set(recipe.metrics) <= row.keys()
            assert all(isinstance(row[m], float) for m in recipe.metrics)
            assert row["hp.recipe"] == name and row["hp.steps"] == size.steps
            assert row["hp.lr"] > 0 and isinstance(row["hp.seed"], int)
    assert len(coll) == size.runs * len(want_steps)
    json.dumps(coll.rows(), allow_nan=False)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_checkpoints_load_into_the_model(zoos, name):
    path, _ = zoos[name]
    recipe = RECIPES[name]
    coll = CheckpointCollection.open(path)
    run = coll.runs()[-1]
    last = coll.steps(run)[-1]
    row = coll.row(run, last)
    config = {k[3:]: v for k, v in row.items() if k.startswith("hp.")}
    model = recipe.model(config)
    sd = coll.load(run, last)
    model.load_state_dict(sd)
    first = coll.load(run, 0)
    fresh = recipe.model(config).state_dict()
    assert all(torch.equal(first[k], fresh[k]) for k in fresh)
    assert any(not torch.equal(first[k], sd[k]) for k in sd)
    assert coll.space(row).num_params > 0


def test_classifier_metrics_are_consistent(zoos):
    coll = CheckpointCollection.open(zoos["digits-mlp"][0])
    for row in coll.rows():
        assert 0.0 <= row["train_acc"] <= 1.0 and 0.0 <= row["test_acc"] <= 1.0
        assert row["train_loss"] > 0


def test_rerun_skips_finished_runs(zoos, tmp_path):
    path, _ = zoos["digits-mlp"]
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*.safetensors")}
    build_zoo("digits-mlp", path, size="tiny", progress=False)
    after = {p: p.stat().st_mtime_ns for p in path.rglob("*.safetensors")}
    assert before == after


def test_rerun_resumes_an_interrupted_run(tmp_path):
    path = tmp_path / "zoo"
    coll = build_zoo("digits-cnn", path, size="tiny", progress=False)
    run = coll.runs()[0]
    reference = {s: coll.load(run, s) for s in coll.steps(run)}
    shard = path / "metadata" / f"{run}.jsonl"
    rows = [json.loads(line) for line in shard.read_text().splitlines()]
    shard.write_text("".join(json.dumps({**r, "finished": False}) + "\n" for r in rows[:1]))
    assert not CheckpointCollection.open(path).is_finished(run)
    coll = build_zoo("digits-cnn", path, size="tiny", progress=False)
    assert coll.is_finished(run) and list(reference) == coll.steps(run)
    for step, sd in reference.items():
        again = coll.load(run, step)
        assert all(torch.equal(sd[k], again[k]) for k in sd), step


def test_other_size_into_same_folder_is_refused(zoos):
    with pytest.raises(CollectionError, match="other hyperparameters"):
        build_zoo("digits-mlp", zoos["digits-mlp"][0], size="small", progress=False)


def test_configs_are_deterministic_and_seeded():
    r = RECIPES["digits-mlp"]
    assert r.config(3) == r.config(3)
    assert r.config(3, seed=1) != r.config(3)
    assert r.run_id(7) == "mlp-0007" and r.run_id(7, seed=2) == "mlp-s2-0007"
    assert len({json.dumps(r.config(i)) for i in range(20)}) == 20


def test_unknown_recipe_and_size(tmp_path):
    with pytest.raises(ValueError, match="digits-mlp"):
        build_zoo("imagenet", tmp_path / "z")
    with pytest.raises(ValueError, match="tiny"):
        build_zoo("digits-mlp", tmp_path / "z", size="huge")


def test_threads_restored(tmp_path):
    n = torch.get_num_threads()
    build_zoo("tiny-gpt", tmp_path / "z", size="tiny", progress=False)
    assert torch.get_num_threads() == n


def run_dataset_script(name: str, out) -> None:
    """Run ``datasets/<name>`` as a script building a tiny zoo into ``out``."""
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "datasets" / name
    argv = sys.argv
    sys.argv = [str(script), "--out", str(out), "--size", "tiny", "--quiet"]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv


def test_scripts_run(tmp_path):
    run_dataset_script("digits_mlp.py", tmp_path / "z")
    expected = RECIPES["digits-mlp"].sizes["tiny"].runs
    assert len(CheckpointCollection.open(tmp_path / "z").runs()) == expected


def test_synthetic_task_has_a_large_fixed_test_set():
    from weightspace.tasks import synthetic_split

    a, b = synthetic_split(), synthetic_split()
    assert len(a.y_val) >= 5000 and len(a.y_train) == 2000 and a.num_classes == 5 and a.input_shape == (32,)
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_val, b.y_val)
    assert torch.allclose(a.x_train.mean(0), torch.zeros(32), atol=1e-5)
    assert set(a.y_val.unique().tolist()) == set(range(5))
    assert not torch.equal(synthetic_split(1).x_train, a.x_train)


def test_synth_zoo_measures_accuracy_on_the_whole_test_set(zoos):
    from weightspace.tasks import evaluate_classifier, synthetic_split

    data = synthetic_split()
    coll = CheckpointCollection.open(zoos["synth-mlp"][0])
    recipe = RECIPES["synth-mlp"]
    for run in coll.runs():
        step = coll.steps(run)[-1]
        row = coll.row(run, step)
        assert row["hp.widths"][0] in recipe.grid["width"] and row["hp.in_features"] == 32
        model = recipe.model({k[3:]: v for k, v in row.items() if k.startswith("hp.")})
        model.load_state_dict(coll.load(run, step))
        loss, acc = evaluate_classifier(model, data.x_val, data.y_val)
        assert row["test_acc"] == acc and row["test_loss"] == pytest.approx(loss, rel=1e-5)
        assert float(row["test_acc"] * len(data.y_val)).is_integer()
    assert RECIPES["synth-mlp"].config(5) == RECIPES["synth-mlp"].config(5)


def test_synth_script_and_cli_build(tmp_path):
    from weightspace.cli import main

    run_dataset_script("synth_mlp.py", tmp_path / "z")
    assert main(["zoo", "build", "synth-mlp", "--out", str(tmp_path / "cli"), "--size", "tiny"]) == 0
    a, b = CheckpointCollection.open(tmp_path / "z"), CheckpointCollection.open(tmp_path / "cli")
    assert a.runs() == b.runs() == ["smlp-0000", "smlp-0001"]
    for run in a.runs():
        assert [r["test_acc"] for r in a.select(run_id=run)] == [r["test_acc"] for r in b.select(run_id=run)]
        last = a.steps(run)[-1]
        assert all(torch.equal(x, y) for x, y in zip(a.load(run, last).values(), b.load(run, last).values()))
