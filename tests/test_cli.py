"""The `weightspace` command: graph inspection of spaces, checkpoints and collections."""
import subprocess
import sys

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
    r = subprocess.run([sys.executable, "-m", "weightspace.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "graph" in r.stdout and "zoo" in r.stdout


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "round trip bit-exact: True" in out and "only relabels the graph's nodes: True" in out
    assert "from the weights alone: True" in out
    assert (tmp_path / "demo" / "curves.png").stat().st_size > 1000
