"""Merge outputs are written with safetensors.torch.save_file, sharded with an index as mergekit does."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from weightspace.cli import main
from weightspace.errors import MergeError
from weightspace.merge import load_config, merge, merge_files, save_merged
from weightspace.merge.run import parse_size


def models(tmp_path: Path) -> list[Path]:
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
        p = tmp_path / f"m{seed}.safetensors"
        save_file({k: v.detach().clone() for k, v in m.state_dict().items()}, str(p))
        paths.append(p)
    return paths


def test_sharded_output_with_index(tmp_path: Path) -> None:
    a, b = models(tmp_path)
    expected = merge([a, b], "linear")
    out = merge_files([a, b], tmp_path / "out", "linear", max_shard_size=4000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    assert len(shards) == 3, "2,176 bytes | 4,096 (alone: larger than the limit) | 656, at 4,000 bytes"
    assert set(index["weight_map"].values()) == set(shards) and list(index["weight_map"]) == list(expected)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in expected.values())
    got = {}
    for name in shards:
        with safe_open(str(out / name), "pt") as f:
            assert f.metadata()["format"] == "pt" and f.metadata()["merge_method"] == "linear"
            assert all(index["weight_map"][k] == name for k in f.keys())
        got.update(load_file(str(out / name)))
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    again = merge([out, out], "linear")
    assert all(torch.equal(again[k], expected[k]) for k in expected), "a sharded folder is a valid merge input"


def test_single_file_below_the_shard_size_and_tied_tensors(tmp_path: Path) -> None:
    a, b = models(tmp_path)
    out = merge_files([a, b], tmp_path / "out", "linear")
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    w = torch.randn(4, 4)
    tied = save_merged(tmp_path / "tied", {"emb": w, "head": w})
    sd = load_file(str(tied / "model.safetensors"))
    assert torch.equal(sd["emb"], w) and torch.equal(sd["head"], w)


def test_shard_size_option_and_config_field(tmp_path: Path, capsys) -> None:
    a, b = models(tmp_path)
    cfg = tmp_path / "m.yml"
    cfg.write_text(f"merge_method: linear\nmodels:\n  - model: {a.name}\n  - model: {b.name}\nout_shard_size: 4KB\n")
    assert main(["merge", str(cfg), str(tmp_path / "o1"), "--quiet"]) == 0
    assert len(list((tmp_path / "o1").glob("model-*-of-00003.safetensors"))) == 3
    assert main(["merge", str(cfg), str(tmp_path / "o2"), "--quiet", "--max-shard-size", "1GB"]) == 0
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["model.safetensors"]
    assert "model.safetensors" in capsys.readouterr().out
    assert parse_size("5B") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size(300) == 300
    with pytest.raises(MergeError, match="not a size"):
        parse_size("five gigs")
    cfg.write_text(f"merge_method: linear\nmodels:\n  - model: {a.name}\nout_shard_size: lots\n")
    with pytest.raises(MergeError, match="'lots' is not a size"):
        load_config(cfg)


def test_help_says_when_weightspace_json_is_written(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["merge", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "weightspace.json only when the models' WeightSpace is known" in text
    assert "model.safetensors.index.json" in text
