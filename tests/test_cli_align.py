"""The `weightspace align` command: stored architectures, optional data, named errors."""
import json

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from weightspace import CorruptCheckpoint, StateDictMismatch, WeightSpace, WeightSpaceError
from weightspace.cli import build_parser, main
from weightspace.collections import CheckpointCollection
from weightspace.merge import save_merged
from weightspace.tasks import build
from weightspace.tasks.zoo import RECIPES


def _run(argv):
    args = build_parser().parse_args(["align", *argv])
    return args.func(args)


def _save(path, sd):
    save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, str(path))
    return path


def test_align_reads_collection_architecture_and_reports_distances(tmp_path, capsys):
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 7), nn.Tanh(), nn.Linear(7, 2))
    space = WeightSpace.from_module(model, torch.randn(2, 5))
    sd_a = model.state_dict()
    planted = space.random_permutation(torch.Generator().manual_seed(3))
    coll = CheckpointCollection.create(tmp_path / "zoo")
    for run, sd in (("a", sd_a), ("b", space.permute(sd_a, planted))):
        with coll.run_writer(run, space=space) as w:
            w.append(0, sd)
    out = tmp_path / "out"
    assert main(["align", str(coll.weights_path("a", 0)), str(coll.weights_path("b", 0)), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["distance"]["naive"] > 0.1 and report["distance"]["aligned"] == 0.0
    assert "architectures" in report["architecture"] and "barriers" not in report
    perm = {k: torch.tensor(v) for k, v in json.loads((out / "permutation.json").read_text()).items()}
    assert all(torch.equal(perm[k], v) for k, v in space.inverse(planted).items())
    aligned = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(aligned[k], sd_a[k]) for k in sd_a)
    assert WeightSpace.load(out / "weightspace.json") == space
    assert "after" in capsys.readouterr().out


def test_align_reads_weightspace_json_and_evaluates_a_zoo_run(tmp_path):
    recipe = RECIPES["digits-mlp"]
    config = {**recipe.config(0), "steps": 1, "save_every": 1}
    a, b = recipe.model(config), recipe.model({**config, "seed": config["seed"] + 1})
    space = WeightSpace.from_module(a, torch.randn(2, 64))
    coll = CheckpointCollection.create(tmp_path / "zoo")
    for run, m in (("mlp-a", a), ("mlp-b", b)):
        with coll.run_writer(run, space=space, hparams=config) as w:
            w.append(0, m.state_dict())
    out = tmp_path / "out"
    _run([str(coll.weights_path("mlp-a", 0)), str(coll.weights_path("mlp-b", 0)), "--out", str(out),
          "--data", "digits-flat", "--lambdas", "3"])
    report = json.loads((out / "report.json").read_text())
    assert report["data"] == "digits-flat" and set(report["barriers"]) == {"naive", "aligned"}
    assert len(report["barriers"]["aligned"]["accs"]) == 3
    assert report["distance"]["aligned"] < report["distance"]["naive"]
    assert (out / "lmc.png").read_bytes()[:4] == b"\x89PNG"
    _run([str(coll.weights_path("mlp-a", 0)), str(coll.weights_path("mlp-b", 0)), "--out", str(tmp_path / "act"),
          "--data", "digits-flat", "--lambdas", "3", "--method", "activation", "--bn", "repair"])
    report = json.loads((tmp_path / "act" / "report.json").read_text())
    assert report["method"] == "activation" and report["bn"] == "repair"
    assert report["distance"]["aligned"] < report["distance"]["naive"]
    # a merge output folder: weightspace.json beside the weights
    save_merged(tmp_path / "merged", a.state_dict(), space)
    _save(tmp_path / "merged" / "b.safetensors", b.state_dict())
    _run([str(tmp_path / "merged" / "model.safetensors"), str(tmp_path / "merged" / "b.safetensors"),
          "--out", str(tmp_path / "out2")])
    report = json.loads((tmp_path / "out2" / "report.json").read_text())
    assert report["architecture"].endswith("weightspace.json")


def test_align_gpt_family_without_data_and_with_wrong_data(tmp_path):
    pa = _save(tmp_path / "a.safetensors", build("gpt", seed=0).state_dict())
    pb = _save(tmp_path / "b.safetensors", build("gpt", seed=1).state_dict())
    _run([str(pa), str(pb), "--out", str(tmp_path / "out"), "--family", "gpt"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["distance"]["aligned"] < report["distance"]["naive"]
    with pytest.raises(StateDictMismatch, match="architectures don't match.*digits"):
        _run([str(pa), str(pb), "--out", str(tmp_path / "out2"), "--family", "gpt", "--data", "digits"])


def test_align_refuses_truncated_checkpoint(tmp_path, capsys):
    model = build("mlp", seed=0, widths=[8])
    pa = _save(tmp_path / "a.safetensors", model.state_dict())
    raw = _save(tmp_path / "b.safetensors", build("mlp", seed=1, widths=[8]).state_dict()).read_bytes()
    (tmp_path / "b.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptCheckpoint, match="b.safetensors"):
        _run([str(pa), str(tmp_path / "b.safetensors"), "--out", str(tmp_path / "out"), "--family", "mlp",
              "--model-args", '{"widths": [8]}'])
    assert main(["align", str(pa), str(tmp_path / "b.safetensors"), "--out", str(tmp_path / "out"),
                 "--family", "mlp", "--model-args", '{"widths": [8]}']) == 2
    assert "b.safetensors" in capsys.readouterr().err


def test_align_refuses_models_of_another_input_size(tmp_path):
    small = dict(in_features=32, widths=[8])
    pa = _save(tmp_path / "a.safetensors", build("mlp", seed=0, **small).state_dict())
    pb = _save(tmp_path / "b.safetensors", build("mlp", seed=1, **small).state_dict())
    args = ["--family", "mlp", "--model-args", json.dumps(small)]
    with pytest.raises(StateDictMismatch, match="architectures don't match.*digits"):
        _run([str(pa), str(pb), "--out", str(tmp_path / "out"), "--data", "digits", *args])
    p64 = _save(tmp_path / "c.safetensors", build("mlp", seed=1, widths=[8]).state_dict())
    with pytest.raises(StateDictMismatch, match="architectures don't match.*c.safetensors"):
        _run([str(pa), str(p64), "--out", str(tmp_path / "out"), *args])


def test_align_options_that_need_data_are_refused_without_it(tmp_path):
    pa = _save(tmp_path / "a.safetensors", build("mlp", seed=0, widths=[8]).state_dict())
    for extra in (["--method", "activation"], ["--bn", "repair"], ["--lambdas", "5"], ["--fallback", "weight"]):
        with pytest.raises(WeightSpaceError, match="needs evaluation data"):
            _run([str(pa), str(pa), "--out", str(tmp_path / "out"), "--family", "mlp",
                  "--model-args", '{"widths": [8]}', *extra])
    with pytest.raises(WeightSpaceError, match="no architecture is stored"):
        _run([str(pa), str(pa), "--out", str(tmp_path / "out")])


def test_align_refuses_nan_weights_naming_the_file(tmp_path):
    """NaN weights cannot be aligned, so align refuses them (no --allow-nonfinite) before writing anything."""
    from weightspace.errors import NonFiniteWeights

    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2))
    space = WeightSpace.from_module(model, torch.randn(2, 5))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["0.weight"][0, 0] = float("nan")
    coll = CheckpointCollection.create(tmp_path / "zoo")
    coll.append("a", 0, model.state_dict(), space=space)
    coll.append("b", 0, sd, space=space, allow_nonfinite=True)
    argv = [str(coll.weights_path("a", 0)), str(coll.weights_path("b", 0)), "--out", str(tmp_path / "out")]
    with pytest.raises(NonFiniteWeights, match=r"'0.weight' in .*b.*holds 1 NaN"):
        _run(argv)
    assert not (tmp_path / "out").exists()
