"""The `weightspace` command: graph inspection of spaces, checkpoints and collections."""
import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from weightspace import WeightSpace
from weightspace.cli import main
from weightspace.collections import CheckpointCollection


def tiny_collection(path):
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    space = WeightSpace.from_module(model, torch.randn(2, 4))
    coll = CheckpointCollection.create(path)
    with coll.run_writer("run-0", space=space, hparams={"lr": 0.1}) as w:
        for step in (0, 10):
            w.append(step, model.state_dict(), {"test_acc": 0.5})
    return coll, space


def test_graph_inspect_collection_json_and_checkpoint(tmp_path, capsys):
    coll, space = tiny_collection(tmp_path / "zoo")
    assert main(["graph", "inspect", str(tmp_path / "zoo")]) == 0
    out = capsys.readouterr().out
    assert "0.weight" in out and "permutable" in out and f"{space.layout.num_edges} edges" in out
    json_path = space.save(tmp_path / "space.json")
    assert main(["graph", "inspect", str(json_path)]) == 0
    assert space.fingerprint in capsys.readouterr().out
    assert main(["graph", "inspect", str(coll.weights_path("run-0", 10))]) == 0
    assert "2.bias" in capsys.readouterr().out


def test_graph_inspect_reports_bad_input(tmp_path, capsys):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert main(["graph", "inspect", str(bad)]) == 2
    assert "broken.safetensors" in capsys.readouterr().err


def test_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "weightspace.cli", "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "graph" in r.stdout and "zoo" in r.stdout


@pytest.mark.slow
def test_demo_runs_the_whole_mission(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert list(summary) == ["zoo", "graphs", "predict", "nowcast", "align", "hyper", "generate"]
    assert summary["generate"]["verdict"] in ("copies", "interpolates", "novel")
    assert summary["nowcast"]["AdamW final acc"] > 0.5
    for png in ("predict.png", "nowcast.png", "align.png"):
        assert (tmp_path / "demo" / png).stat().st_size > 1000
    assert "Summary (" in capsys.readouterr().out


def test_demo_core_steps_report_real_figures(tmp_path, capsys):
    """Zoo, graphs, alignment and the packaged hypernetwork: the figures the demo prints are measured."""
    assert main(["demo", "--out", str(tmp_path / "demo"), "--steps", "1,2,5,6", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "round trip bit-exact: True" in out and "only relabels nodes: True" in out
    s = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert s["zoo"]["runs"] >= 2 and s["graphs"]["graphs"] == s["zoo"]["checkpoints"]
    assert s["align"]["barrier aligned"] < 0.5 * s["align"]["barrier naive"]
    assert s["align"]["merged acc"] > 0.8
    assert s["hyper"]["predicted acc"] > s["hyper"]["default-init acc"]


def test_demo_refuses_unknown_steps(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--steps", "1,9"]) != 0
    assert "no step [9]" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "d"), "--steps", "3"]) != 0
    assert "add 1 to --steps" in capsys.readouterr().err


def test_zoo_build_command_builds_and_resumes(tmp_path, capsys):
    from weightspace.tasks.zoo import RECIPES

    out = tmp_path / "zoo"
    assert main(["zoo", "build", "digits-cnn", "--out", str(out), "--size", "tiny", "--seed", "3"]) == 0
    coll = CheckpointCollection.open(out)
    size = RECIPES["digits-cnn"].sizes["tiny"]
    assert len(coll.runs()) == size.runs and all(coll.is_finished(r) for r in coll.runs())
    assert all(coll.row(r, size.steps)["hp.steps"] == size.steps for r in coll.runs())
    assert repr(coll) in capsys.readouterr().out
    before = {r: coll.weights_path(r, size.steps).stat().st_mtime_ns for r in coll.runs()}
    assert main(["zoo", "build", "digits-cnn", "--out", str(out), "--size", "tiny", "--seed", "3"]) == 0
    assert {r: coll.weights_path(r, size.steps).stat().st_mtime_ns for r in coll.runs()} == before


def test_merge_command_runs_a_config_and_refuses_typos(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from weightspace.merge import merge

    sds = [nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).state_dict() for _ in range(3)]
    for i, sd in enumerate(sds):
        save_file(sd, tmp_path / f"m{i}.safetensors")
    cfg = tmp_path / "merge.yml"
    cfg.write_text("merge_method: task_arithmetic\nbase_model: m0.safetensors\nparameters: {lambda: 0.5}\n"
                   "models:\n  - model: m1.safetensors\n    parameters: {weight: 2.0}\n  - model: m2.safetensors\n")
    assert main(["merge", str(cfg), str(tmp_path / "out"), "--quiet"]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    got = load_file(tmp_path / "out" / "model.safetensors")
    want = merge(sds[1:], "task_arithmetic", base=sds[0], parameters={"lambda": 0.5},
                 model_parameters=[{"weight": 2.0}, {}])
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    torch.testing.assert_close(got["0.bias"], sds[0]["0.bias"] + 0.5 * (2 * (sds[1]["0.bias"] - sds[0]["0.bias"])
                                                                         + sds[2]["0.bias"] - sds[0]["0.bias"]))
    cfg.write_text(cfg.read_text().replace("{weight: 2.0}", "{wieght: 2.0}"))
    assert main(["merge", str(cfg), str(tmp_path / "typo"), "--quiet"]) == 2
    assert "did you mean 'weight'" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()
