"""`graph inspect` and `memorization report` refuse NaN checkpoints with NonFiniteWeights unless --allow-nonfinite."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from weightspace.cli import build_parser, main
from weightspace.collections import CheckpointCollection
from weightspace.errors import ConfigError, NonFiniteWeights
from weightspace.space import WeightSpace


def sd_of(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).state_dict().items()}


@pytest.fixture()
def coll(tmp_path: Path) -> tuple[CheckpointCollection, WeightSpace]:
    torch.manual_seed(0)
    space = WeightSpace.from_module(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)), torch.randn(2, 4))
    c = CheckpointCollection.create(tmp_path / "c")
    for r in range(3):
        c.append(f"run{r}", 0, sd_of(r), space=space)
    bad = sd_of(9)
    bad["2.weight"][0, 0] = math.nan
    c.append("nan", 0, bad, space=space, allow_nonfinite=True)
    return c, space


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def test_graph_inspect_refuses_a_nan_checkpoint_unless_allowed(coll, capsys) -> None:
    c, _ = coll
    path = str(c.root / c.row("nan", 0)["file"])
    with pytest.raises(NonFiniteWeights, match=r"'2.weight' in .* holds 1 NaN/Inf .*--allow-nonfinite"):
        run(["graph", "inspect", path])
    assert main(["graph", "inspect", path]) == 2
    assert main(["graph", "inspect", path, "--allow-nonfinite"]) == 0
    assert "fingerprint:" in capsys.readouterr().out
    assert main(["graph", "inspect", str(c.root / c.row("run0", 0)["file"])]) == 0
    with pytest.raises(ConfigError, match="applies to a checkpoint"):
        run(["graph", "inspect", str(c.root), "--allow-nonfinite"])


def test_memorization_report_refuses_a_nan_training_checkpoint_unless_allowed(coll, tmp_path: Path) -> None:
    c, space = coll
    gen = tmp_path / "gen"
    gen.mkdir()
    save_file(sd_of(1), str(gen / "a.safetensors"))
    space.save(gen / "weightspace.json")
    argv = ["memorization", "report", "--generated", str(gen), "--train", str(c.root), "--out", str(tmp_path / "r"),
            "--baselines", "", "--quiet", "--device", "cpu"]
    with pytest.raises(NonFiniteWeights, match=r"run 'nan' step 0"):
        run(argv)
    assert not (tmp_path / "r" / "report.json").exists()
    assert main(argv + ["--allow-nonfinite"]) == 0
    assert (tmp_path / "r" / "report.json").exists()
