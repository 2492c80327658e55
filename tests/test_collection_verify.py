"""Collections that heal: verify(), skipping damaged checkpoints, NaN errors naming run and step, and
`zoo build` retraining damaged runs, refusing another recipe and building slices that merge back."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from weightspace.cli import main
from weightspace.collections import CheckpointCollection, merge_collections
from weightspace.errors import (CollectionError, ConfigError, CorruptCheckpoint, NonFiniteWeights,
                                WeightSpaceError)
from weightspace.space import WeightSpace
from weightspace.tasks.zoo import RECIPES, build_zoo, parse_shard


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


@pytest.fixture(scope="module")
def space() -> WeightSpace:
    return WeightSpace.from_module(make_model(0), torch.randn(2, 4))


def sd_of(seed: int) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in make_model(seed).state_dict().items()}


def equal(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def fill(root: Path, space: WeightSpace, pack_runs: bool = False) -> CheckpointCollection:
    coll = CheckpointCollection.create(root, pack_runs=pack_runs)
    for r in range(4):
        with coll.run_writer(f"run{r}", space=space) as w:
            for s in (0, 1, 2):
                w.append(s, sd_of(10 * r + s), {"acc": 0.1 * s})
    return coll


def nan_state(seed: int) -> dict[str, torch.Tensor]:
    sd = sd_of(seed)
    sd["2.weight"][0, 0] = math.nan
    return sd


@pytest.mark.parametrize("pack_runs", [False, True])
def test_verify_names_every_problem(tmp_path: Path, space: WeightSpace, pack_runs: bool) -> None:
    coll = fill(tmp_path / "c", space, pack_runs)
    assert coll.verify() == []
    f0 = coll.root / coll.row("run0", 1)["file"]
    f0.write_bytes(f0.read_bytes()[:-7])                                  # truncated
    f1 = coll.root / coll.row("run1", 2)["file"]
    f1.write_bytes(b"\x00" * f1.stat().st_size)                           # corrupt, same size
    (coll.root / coll.row("run2", 0)["file"]).unlink()                    # metadata without weights
    (coll.root / "metadata" / "run3.jsonl").write_text("{broken\n")        # unreadable metadata
    coll.append("nan", 0, nan_state(1), space=space, allow_nonfinite=True)  # NaN values
    problems = coll.verify()
    kinds = {(p.run_id, p.step, p.kind) for p in problems}
    per_run = 3 if pack_runs else 1
    assert ("run0", 1, "truncated") in kinds and ("run1", 2, "corrupt") in kinds
    assert ("run2", 0, "missing") in kinds and ("run3", None, "metadata") in kinds
    assert ("nan", 0, "nonfinite") in kinds
    assert len(problems) == 3 * per_run + 2
    nan = next(p for p in problems if p.kind == "nonfinite")
    assert "'2.weight' (1)" in nan.message and str(nan).startswith("run 'nan' step 0: nonfinite")
    assert all(p.file for p in problems)
    assert not any(p.kind == "nonfinite" for p in coll.verify(allow_nonfinite=True))
    fast = {(p.run_id, p.step, p.kind) for p in coll.verify(deep=False)}
    assert ("nan", 0, "nonfinite") not in fast and ("run0", 1, "truncated") in fast and ("run1", 2, "corrupt") in fast
    assert coll.verify(["nan"], allow_nonfinite=True) == []
    with pytest.raises(CollectionError, match="no run 'nope'"):
        coll.verify(["nope"])


def test_verify_cli(tmp_path: Path, space: WeightSpace, capsys) -> None:
    coll = fill(tmp_path / "c", space)
    assert main(["collection", "verify", str(coll.root)]) == 0
    assert "all checkpoints OK" in capsys.readouterr().out
    coll.append("nan", 0, nan_state(1), space=space, allow_nonfinite=True)
    f = coll.root / coll.row("run2", 1)["file"]
    f.write_bytes(f.read_bytes()[:50])
    assert main(["collection", "verify", str(coll.root)]) == 1
    out = capsys.readouterr().out
    assert "run 'run2' step 1: truncated" in out and "run 'nan' step 0: nonfinite" in out
    assert "2 problem(s) in 2 of 5 run(s)" in out
    assert main(["collection", "verify", str(coll.root), "--allow-nonfinite", "--json"]) == 1
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["run_id"], r["step"], r["kind"]) for r in rows] == [("run2", 1, "truncated")]


def test_to_graphs_skip_bad_and_nonfinite(tmp_path: Path, space: WeightSpace) -> None:
    coll = fill(tmp_path / "c", space)
    coll.append("nan", 0, nan_state(1), space=space, allow_nonfinite=True)
    f = coll.root / coll.row("run1", 2)["file"]
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(CorruptCheckpoint, match=r"run 'run1', step 2"):
        coll.to_graphs(coll.select(run_id="run1"), progress=False)
    with pytest.raises(NonFiniteWeights, match=r"run 'nan' step 0"):
        coll.to_graphs(progress=False)
    with pytest.warns(UserWarning, match=r"skipped 2 damaged.*run 'nan' step 0.*run 'run1', step 2"):
        graphs = coll.to_graphs(progress=False, skip_bad=True)
    assert len(graphs) == 11
    assert {(g.run_id, int(g.step)) for g in graphs} == {(f"run{r}", s) for r in range(4) for s in range(3)} - {("run1", 2)}
    with pytest.raises(NonFiniteWeights, match=r"'2.weight' in run 'nan' step 0 of .* allow_nonfinite=True"):
        coll.to_graphs(coll.select(run_id="nan"), progress=False)
    g = coll.to_graphs(coll.select(run_id="nan"), progress=False, allow_nonfinite=True)[0]
    assert torch.isnan(g.edge_attr).sum() == 1
    with pytest.raises(NonFiniteWeights, match="run 'nan' step 0"):
        coll.load("nan", 0, allow_nonfinite=False)
    traj = coll.to_graphs(progress=False, skip_bad=True, trajectory_length=2)
    assert len(traj) == 7 and ("run1", 1) not in {(g.run_id, int(g.step)) for g in traj}, "window holding run1 step 2"


def test_property_graphs_allow_nonfinite_and_skip_bad(tmp_path: Path, space: WeightSpace) -> None:
    from weightspace.predict.data import PropertyGraphs

    coll = fill(tmp_path / "c", space)
    coll.append("nan", 0, nan_state(1), space=space, metrics={"acc": 0.5}, allow_nonfinite=True)
    with pytest.raises(NonFiniteWeights, match="run 'nan' step 0"):
        PropertyGraphs.from_collections(coll, ["acc"], progress=False)
    assert len(PropertyGraphs.from_collections(coll, ["acc"], progress=False, allow_nonfinite=True)) == 13
    f = coll.root / coll.row("run0", 0)["file"]
    f.write_bytes(b"junk")
    with pytest.warns(UserWarning, match="skipped 2 damaged"):
        store = PropertyGraphs.from_collections(coll, ["acc"], progress=False, skip_bad=True)
    assert len(store) == 11


def test_pack_is_exact_and_old_collections_still_open(tmp_path: Path, space: WeightSpace) -> None:
    coll = fill(tmp_path / "c", space)
    info = json.loads((coll.root / "collection.json").read_text())
    assert info["version"] == 1 and not info["pack_runs"], "an unpacked collection stays readable by older versions"
    assert len(list((coll.root / "weights").rglob("*.safetensors"))) == 12
    orphan = coll.root / "weights" / "run1" / "step-00000007.safetensors"   # as an interrupted append leaves it
    orphan.write_bytes(b"partial")
    keep = coll.root / "weights" / "run1" / "notes.txt"
    keep.write_text("not ours")
    coll.pack("run1")
    assert not orphan.exists() and keep.exists()
    keep.unlink()
    reopened = CheckpointCollection.open(coll.root)
    assert json.loads((coll.root / "collection.json").read_text())["version"] == 2
    assert sorted(p.name.split("-")[0] for p in (coll.root / "weights" / "run1").iterdir()) == ["run"]
    assert [r["slot"] for r in reopened.select(run_id="run1")] == [0, 1, 2]
    for r in range(4):
        for s in range(3):
            assert equal(reopened.load(f"run{r}", s), sd_of(10 * r + s))
    assert reopened.verify() == []
    assert main(["collection", "pack", str(coll.root)]) == 0
    assert len(list((coll.root / "weights").rglob("*.safetensors"))) == 4
    assert all(equal(coll.load(f"run{r}", s), sd_of(10 * r + s)) for r in range(4) for s in range(3))


def test_interrupted_pack_keeps_every_checkpoint(tmp_path: Path, space: WeightSpace,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    coll = fill(tmp_path / "c", space)
    real = os.replace

    def crash_on_shard(src, dst):
        if str(dst).endswith(".jsonl"):
            raise OSError("disk full (simulated)")
        real(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_shard)
    with pytest.raises(OSError, match="simulated"):
        coll.pack("run2")
    monkeypatch.undo()
    fresh = CheckpointCollection.open(coll.root)
    assert all(equal(fresh.load("run2", s), sd_of(20 + s)) for s in range(3))
    assert fresh.verify() == []


def test_append_run_writes_one_packed_file(tmp_path: Path, space: WeightSpace) -> None:
    coll = CheckpointCollection.create(tmp_path / "c")
    rows = coll.append_run("r", [10, 0, 5], [sd_of(1), sd_of(2), sd_of(3)], space=space,
                           metrics=[{"acc": 1.0}, {"acc": 0.0}, {"acc": 0.5}], hparams={"lr": 0.1})
    assert [r["step"] for r in rows] == [0, 5, 10] and coll.is_finished("r")
    assert len(list((coll.root / "weights" / "r").iterdir())) == 1
    assert equal(coll.load("r", 10), sd_of(1)) and equal(coll.load("r", 0), sd_of(2))
    assert coll.row("r", 5)["acc"] == 0.5 and coll.row("r", 5)["hp.lr"] == 0.1
    with pytest.raises(CollectionError, match="already exists"):
        coll.append_run("r", [0], [sd_of(1)], space=space)
    with pytest.raises(NonFiniteWeights, match="run 'q' step 0"):
        coll.append_run("q", [0], [nan_state(1)], space=space)
    with pytest.raises(CollectionError, match="one state_dict"):
        coll.append_run("q", [0, 1], [sd_of(1)], space=space)
    assert coll.runs() == ["r"]


# ---------------------------------------------------------------- zoo build heals, refuses, shards
def test_zoo_build_retrains_damaged_runs_only(tmp_path: Path) -> None:
    out = tmp_path / "zoo"
    coll = build_zoo("synth-mlp", out, size="tiny", progress=False)
    runs = coll.runs()
    before = {r: [{k: v.clone() for k, v in coll.load(r, s).items()} for s in coll.steps(r)] for r in runs}
    stamps = {r: (out / coll.row(r, 0)["file"]).stat().st_mtime_ns for r in runs}
    bad = out / coll.row(runs[0], 10)["file"]
    bad.write_bytes(bad.read_bytes()[:-10])
    assert [p.run_id for p in coll.verify()] == [runs[0]]
    healed = build_zoo("synth-mlp", out, size="tiny", progress=False)
    assert healed.verify() == []
    assert all(equal(a, b) for r in runs for a, b in zip(before[r], [healed.load(r, s) for s in healed.steps(r)]))
    assert (out / healed.row(runs[1], 0)["file"]).stat().st_mtime_ns == stamps[runs[1]], "healthy run not retrained"
    (out / "metadata" / f"{runs[1]}.jsonl").write_text("{oops\n")
    healed = build_zoo("synth-mlp", out, size="tiny", progress=False)
    assert healed.verify() == [] and healed.runs() == runs
    assert (out / "metadata" / f".{runs[1]}.jsonl.corrupt").read_text() == "{oops\n", "kept aside, not lost"


def test_zoo_build_refuses_another_recipe(tmp_path: Path) -> None:
    out = tmp_path / "zoo"
    build_zoo("synth-mlp", out, size="tiny", progress=False)
    files = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(CollectionError, match=r"holds run 'smlp-0000' of recipe 'synth-mlp', not 'digits-cnn'"):
        build_zoo("digits-cnn", out, size="tiny", progress=False)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == files
    assert main(["zoo", "build", "digits-mlp", "--out", str(out), "--size", "tiny", "--quiet"]) == 2


def test_shards_are_disjoint_and_merge_into_the_full_zoo(tmp_path: Path, capsys) -> None:
    full = build_zoo("synth-mlp", tmp_path / "full", size="tiny", progress=False)
    parts = [build_zoo("synth-mlp", tmp_path / f"part{k}", size="tiny", progress=False, shard=f"{k}/2")
             for k in range(2)]
    assert [p.runs() for p in parts] == [["smlp-0000"], ["smlp-0001"]]
    assert main(["collection", "merge", *(str(p.root) for p in parts), "--out", str(tmp_path / "joined")]) == 0
    joined = CheckpointCollection.open(tmp_path / "joined")
    assert joined.runs() == full.runs() and joined.name == full.name and joined.verify() == []
    assert joined.rows() == full.rows()
    assert all(equal(joined.load(r, s), full.load(r, s)) for r in full.runs() for s in full.steps(r))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging folder left"
    with pytest.raises(ConfigError, match="0 <= K < N"):
        parse_shard("3/3")
    with pytest.raises(ConfigError, match="not 'K/N'"):
        build_zoo("synth-mlp", tmp_path / "x", size="tiny", shard="half")


def test_merge_refuses_bad_slices_and_writes_nothing(tmp_path: Path, space: WeightSpace,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    a = fill(tmp_path / "a", space)
    b = CheckpointCollection.create(tmp_path / "b", name="a")
    b.append("other", 0, sd_of(5), space=space)                            # unfinished
    with pytest.raises(CollectionError, match="run 'other' of slice .* is not finished"):
        merge_collections([a, b], tmp_path / "out")
    with pytest.raises(CollectionError, match="run 'run0' is in two slices"):
        merge_collections([a, a], tmp_path / "out")
    c = CheckpointCollection.create(tmp_path / "c")
    c.append_run("z", [0], [sd_of(6)], space=space)
    with pytest.raises(CollectionError, match="different names"):
        merge_collections([a, c], tmp_path / "out")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    with pytest.raises(CollectionError, match="not an empty folder"):
        merge_collections([a], tmp_path / "busy")
    import shutil
    real, calls = shutil.copyfile, []

    def fail_late(src, dst, *args, **kw):
        calls.append(src)
        if len(calls) > 5:
            raise OSError("disk full (simulated)")
        return real(src, dst, *args, **kw)

    monkeypatch.setattr(shutil, "copyfile", fail_late)
    with pytest.raises(OSError, match="simulated"):
        merge_collections([a, c], tmp_path / "out", name="joined")
    monkeypatch.undo()
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    merged = merge_collections([a, c], tmp_path / "out", name="joined")
    assert merged.name == "joined" and merged.runs() == ["run0", "run1", "run2", "run3", "z"]
    assert equal(merged.load("z", 0), sd_of(6)) and merged.verify() == []
    assert a.verify() == [] and c.verify() == [], "slices are only read"
