"""CheckpointCollection: round trips, laziness, crash safety, validation, dataset card and the offline Hub path."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

from weightspace.collections import CheckpointCollection
from weightspace.errors import (CollectionError, CorruptCheckpoint, HubRepositoryNotFound, NonFiniteWeights,
                                StateDictMismatch)
from weightspace.space import WeightSpace

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.fixture(scope="module")
def space() -> WeightSpace:
    torch.manual_seed(0)
    return WeightSpace.from_module(make_model(), torch.randn(2, 4))


def state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in make_model().state_dict().items()}


def sd_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


RUNS = {"lr0.1-s0": 0.1, "lr0.1-s1": 0.1, "lr0.01-s0": 0.01}
STEPS = [0, 5, 10]


def expected(run: str, step: int) -> dict[str, torch.Tensor]:
    return state(1000 * list(RUNS).index(run) + step)


@pytest.fixture
def filled(tmp_path: Path, space: WeightSpace) -> CheckpointCollection:
    coll = CheckpointCollection.create(tmp_path / "zoo", name="toy-zoo", description="A toy zoo.")
    for run, lr in RUNS.items():
        with coll.run_writer(run, space=space, hparams={"lr": lr, "optim": {"name": "sgd"}}) as w:
            for step in reversed(STEPS):
                w.append(step, expected(run, step), {"train_loss": 1.0 / (step + 1), "test_acc": 0.1 * step})
    return coll


def hard_tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- round trip
def test_roundtrip_reopen_bit_exact(filled: CheckpointCollection, space: WeightSpace) -> None:
    coll = CheckpointCollection.open(filled.root)
    assert coll.runs() == sorted(RUNS)
    assert len(coll) == len(RUNS) * len(STEPS)
    for run in RUNS:
        assert coll.steps(run) == STEPS
        assert coll.is_finished(run)
        for step in STEPS:
            assert sd_equal(coll.load(run, step), expected(run, step))
        traj = coll.trajectory(run)
        assert len(traj) == len(STEPS)
        assert all(sd_equal(t, expected(run, s)) for t, s in zip(traj, STEPS))
        assert [sd_equal(t, expected(run, s)) for t, s in zip(coll.trajectory(run, steps=[10, 0]), [0, 10])] == [True, True]
    assert coll.space(space.fingerprint).fingerprint == space.fingerprint
    assert coll.space(coll.rows()[0]) is coll.space(space.fingerprint)
    assert "3 runs" in repr(coll) and "9 checkpoints" in repr(coll)

    row = coll.rows()[0]
    assert row["run_id"] == "lr0.01-s0" and row["step"] == 0 and row["arch_id"] == space.fingerprint
    assert row["file"] == "weights/lr0.01-s0/step-00000000.safetensors"
    assert row["hp.lr"] == 0.01 and row["hp.optim.name"] == "sgd" and row["finished"] is True
    assert row["train_loss"] == 1.0
    assert coll.metadata == coll.rows()


def test_safetensors_header_and_layout(filled: CheckpointCollection, space: WeightSpace) -> None:
    from safetensors import safe_open

    path = filled.root / "weights" / "lr0.1-s0" / "step-00000005.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == set(space.keys)
    assert meta["weightspace.arch_id"] == space.fingerprint
    assert meta["weightspace.run_id"] == "lr0.1-s0" and meta["weightspace.step"] == "5"
    assert (filled.root / "architectures" / f"{space.fingerprint}.json").is_file()
    lines = (filled.root / "metadata" / "lr0.1-s0.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == STEPS
    assert len({tuple(json.loads(x)) for x in lines}) == 1, "every row of a shard has the same columns"


def test_select(filled: CheckpointCollection) -> None:
    assert {r["run_id"] for r in filled.select(lr=0.1)} == {"lr0.1-s0", "lr0.1-s1"}
    assert len(filled.select(**{"hp.lr": 0.01})) == 3
    rows = filled.select(run_id="lr0.1-s1", where=lambda r: r["step"] >= 5)
    assert [(r["run_id"], r["step"]) for r in rows] == [("lr0.1-s1", 5), ("lr0.1-s1", 10)]
    assert filled.select(lr=0.5) == []
    assert filled.select(where=lambda r: r["test_acc"] > 0.9 and r["hp.lr"] == 0.01)[0]["step"] == 10


def test_to_graphs(filled: CheckpointCollection, space: WeightSpace) -> None:
    graphs = filled.to_graphs(filled.select(run_id="lr0.1-s0"))
    assert len(graphs) == 3
    g = graphs[1]
    assert g.run_id == "lr0.1-s0" and int(g.step) == 5 and g.edge_attr.shape[1] == 1
    assert torch.allclose(g.y_test_acc, torch.tensor([0.5])) and torch.allclose(g.hp_lr, torch.tensor([0.1]))
    assert sd_equal(space.from_graph(g), expected("lr0.1-s0", 5))

    windows = filled.to_graphs(trajectory_length=2)
    assert len(windows) == len(RUNS) * (len(STEPS) - 1)
    w = windows[0]
    assert w.edge_attr.shape[1] == 2 and w.steps.tolist() == [0, 5]
    assert torch.allclose(w.y_train_loss, torch.tensor([1.0 / 6]))
    back = space.from_graph(w)
    assert sd_equal(back[0], expected(w.run_id, 0)) and sd_equal(back[1], expected(w.run_id, 5))

    from torch_geometric.data import Batch
    batch = Batch.from_data_list(graphs)
    assert batch.y_train_loss.shape == (3,)


def test_dataset_card(filled: CheckpointCollection, space: WeightSpace) -> None:
    filled.update_card()
    text = (filled.root / "README.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["license"] and set(front["tags"]) >= {"weightspace", "model-zoo"}
    assert front["configs"][0]["data_files"][0]["path"] == "metadata/*.jsonl"
    body = text.split("---\n", 2)[2]
    assert "toy-zoo" in body and "A toy zoo." in body
    assert "**runs:** 3 (3 finished)" in body and "**checkpoints:** 9" in body
    assert space.fingerprint in body and "train_loss" in body and "hp.lr" in body


# ---------------------------------------------------------------- laziness
def test_open_is_lazy(filled: CheckpointCollection) -> None:
    root = filled.root
    (root / "weights" / "lr0.1-s0" / "step-00000005.safetensors").unlink()
    (root / "metadata" / "lr0.1-s1.jsonl").write_text("{not json\n")
    coll = CheckpointCollection.open(root)  # parses no metadata and reads no weights
    assert coll.runs() == sorted(RUNS)
    assert coll.steps("lr0.01-s0") == STEPS
    assert sd_equal(coll.load("lr0.01-s0", 10), expected("lr0.01-s0", 10))
    assert sd_equal(coll.load("lr0.1-s0", 0), expected("lr0.1-s0", 0))
    with pytest.raises(CorruptCheckpoint, match="step-00000005.safetensors"):
        coll.load("lr0.1-s0", 5)
    with pytest.raises(CollectionError, match="lr0.1-s1.jsonl"):
        coll.rows()


def test_external_shard_change_is_seen(filled: CheckpointCollection, space: WeightSpace) -> None:
    other = CheckpointCollection.open(filled.root)
    assert other.steps("lr0.1-s0") == STEPS
    filled.append("new-run", 3, state(7), space=space)
    assert "new-run" in other.runs() and other.steps("new-run") == [3]
    assert sd_equal(other.load("new-run", 3), state(7))


# ---------------------------------------------------------------- validation
def test_nan_refused_and_nothing_written(tmp_path: Path, space: WeightSpace) -> None:
    coll = CheckpointCollection.create(tmp_path / "z")
    bad = state(1)
    bad["2.bias"][0] = float("nan")
    with pytest.raises(NonFiniteWeights, match="2.bias"):
        coll.append("r", 0, bad, space=space)
    assert coll.runs() == [] and not (tmp_path / "z" / "weights" / "r").exists()
    assert list((tmp_path / "z" / "metadata").iterdir()) == []
    row = coll.append("r", 0, bad, space=space, allow_nonfinite=True, metrics={"loss": float("nan")})
    assert row["loss"] is None
    assert torch.isnan(coll.load("r", 0)["2.bias"][0])


def test_wrong_keys_and_shapes_refused(tmp_path: Path, space: WeightSpace) -> None:
    coll = CheckpointCollection.create(tmp_path / "z")
    sd = state(1)
    sd.pop("0.bias")
    with pytest.raises(StateDictMismatch, match="0.bias"):
        coll.append("r", 0, sd, space=space)
    sd = state(1)
    sd["0.weight"] = torch.zeros(8, 5)
    with pytest.raises(StateDictMismatch, match="0.weight"):
        coll.append("r", 0, sd, space=space)
    assert len(coll) == 0 and not (tmp_path / "z" / "weights" / "r").exists()


def test_duplicate_and_finished_runs(filled: CheckpointCollection, space: WeightSpace) -> None:
    with pytest.raises(CollectionError, match="already exists"):
        filled.append("lr0.1-s0", 5, state(9), space=space)
    with pytest.raises(CollectionError, match="finished"):
        filled.append("lr0.1-s0", 99, state(9), space=space)
    with pytest.raises(CollectionError, match="finished"):
        filled.run_writer("lr0.1-s0", space=space)
    assert sd_equal(filled.load("lr0.1-s0", 5), expected("lr0.1-s0", 5))
    filled.append("lr0.1-s0", 5, state(9), space=space, overwrite=True)
    assert sd_equal(CheckpointCollection.open(filled.root).load("lr0.1-s0", 5), state(9))
    assert filled.steps("lr0.1-s0") == STEPS
    with pytest.raises(CollectionError, match="invalid run_id"):
        filled.append("../evil", 0, state(1), space=space)
    with pytest.raises(CollectionError, match="no checkpoint"):
        filled.load("lr0.1-s0", 6)


def test_run_writer_not_finished_on_exception(tmp_path: Path, space: WeightSpace) -> None:
    coll = CheckpointCollection.create(tmp_path / "z")
    with pytest.raises(RuntimeError):
        with coll.run_writer("r", space=space, hparams={"lr": 0.1}) as w:
            w.append(0, state(0))
            raise RuntimeError("training crashed")
    assert not coll.is_finished("r") and coll.steps("r") == [0]
    with coll.run_writer("r", space=space, hparams={"lr": 0.1}) as w:
        assert w.steps == [0]
        w.append(1, state(1))
    assert coll.is_finished("r") and coll.steps("r") == [0, 1]


def test_create_refuses_existing(filled: CheckpointCollection, tmp_path: Path) -> None:
    with pytest.raises(CollectionError, match="already exists"):
        CheckpointCollection.create(filled.root)
    assert len(CheckpointCollection.create(filled.root, exist_ok=True)) == 9
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(CollectionError):
        CheckpointCollection.create(tmp_path / "junk")
    with pytest.raises(CollectionError, match="not a weightspace collection"):
        CheckpointCollection.open(tmp_path / "junk")


# ---------------------------------------------------------------- corruption and crashes
def test_truncated_or_corrupt_file(filled: CheckpointCollection) -> None:
    path = filled.root / "weights" / "lr0.1-s1" / "step-00000010.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpoint, match=str(path)):
        filled.load("lr0.1-s1", 10)
    path.write_bytes(b"\xff" * len(data))
    with pytest.raises(CorruptCheckpoint, match=str(path)):
        filled.load("lr0.1-s1", 10)
    assert sd_equal(filled.load("lr0.1-s1", 5), expected("lr0.1-s1", 5))


def test_interrupted_metadata_write(filled: CheckpointCollection, space: WeightSpace,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace
    shard = filled.root / "metadata" / "lr0.01-s0.jsonl"
    before = shard.read_bytes()

    def crash_on_shard(src, dst):
        if Path(dst).name.endswith(".jsonl"):
            raise OSError("disk full (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_shard)
    with pytest.raises(OSError, match="simulated"):
        filled.append("lr0.01-s0", 99, state(5), space=space, overwrite=True)
    monkeypatch.setattr(os, "replace", real_replace)

    assert shard.read_bytes() == before
    assert hard_tmp_files(filled.root) == []
    coll = CheckpointCollection.open(filled.root)
    assert coll.steps("lr0.01-s0") == STEPS
    assert all(sd_equal(coll.load("lr0.01-s0", s), expected("lr0.01-s0", s)) for s in STEPS)
    with pytest.raises(CollectionError, match="no checkpoint"):
        coll.load("lr0.01-s0", 99)


def test_interrupted_weights_write(tmp_path: Path, space: WeightSpace, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    coll = CheckpointCollection.create(tmp_path / "z")
    coll.append("r", 0, state(0), space=space)

    def half_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    with pytest.raises(KeyboardInterrupt):
        coll.append("r", 1, state(1), space=space)
    monkeypatch.undo()

    assert sorted(p.name for p in (tmp_path / "z" / "weights" / "r").iterdir()) == ["step-00000000.safetensors"]
    assert hard_tmp_files(tmp_path / "z") == []
    reopened = CheckpointCollection.open(tmp_path / "z")
    assert reopened.steps("r") == [0] and sd_equal(reopened.load("r", 0), state(0))
    reopened.append("r", 1, state(1), space=space)
    assert sd_equal(reopened.load("r", 1), state(1))


def test_hard_kill_mid_append(tmp_path: Path) -> None:
    """A process killed (os._exit) between the weights rename and the metadata rename loses nothing."""
    script = textwrap.dedent(f"""
        import os, torch, torch.nn as nn
        from weightspace.space import WeightSpace
        from weightspace.collections import CheckpointCollection
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        space = WeightSpace.from_module(model, torch.randn(2, 4))
        coll = CheckpointCollection.create({str(tmp_path / 'z')!r})
        for step in (0, 1):
            coll.append("r", step, {{k: v + step for k, v in model.state_dict().items()}}, space=space)
        real = os.replace
        def die(src, dst):
            if str(dst).endswith(".jsonl"):
                os._exit(17)
            real(src, dst)
        os.replace = die
        coll.append("r", 2, model.state_dict(), space=space)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 17, proc.stderr
    coll = CheckpointCollection.open(tmp_path / "z")
    assert coll.steps("r") == [0, 1] and len(coll) == 2
    w0, w1 = coll.load("r", 0), coll.load("r", 1)
    assert all(torch.equal(w1[k], w0[k] + 1) for k in w0)
    assert (tmp_path / "z" / "weights" / "r" / "step-00000002.safetensors").exists()  # orphan, invisible
    assert hard_tmp_files(tmp_path / "z"), "the killed process leaves its temp shard behind"
    assert coll.runs() == ["r"]


# ---------------------------------------------------------------- Hugging Face Hub, offline
def write_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str, refs: tuple[str, ...] = ("main",)) -> None:
    """Lay out ``folder`` as huggingface_hub caches a dataset repo: blobs, snapshot symlinks, refs."""
    repo_dir = cache / ("datasets--" + repo_id.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    for src in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = src.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        data = src.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (repo_dir / "refs" / ref).write_text(commit)


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_open_from_offline_hub_cache(filled: CheckpointCollection, offline_hub: Path) -> None:
    commit = "a" * 40
    write_hub_cache(offline_hub, "someone/toy-zoo", filled.root, commit, refs=("main", "v1"))
    for uri in ("hf://datasets/someone/toy-zoo", "hf://datasets/someone/toy-zoo@v1",
                f"hf://datasets/someone/toy-zoo@{commit}"):
        coll = CheckpointCollection.open(uri)
        assert coll.read_only and coll.root.parts[-2:] == ("snapshots", commit)
        assert coll.runs() == sorted(RUNS) and len(coll) == 9
        assert sd_equal(coll.load("lr0.1-s1", 10), expected("lr0.1-s1", 10))
        assert len(coll.to_graphs(coll.select(step=0))) == 3
    with pytest.raises(CollectionError, match="read-only"):
        coll.append("x", 0, state(0), space=coll.space(coll.rows()[0]))


def test_open_with_explicit_cache_dir(filled: CheckpointCollection, offline_hub: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    write_hub_cache(other, "someone/toy-zoo", filled.root, "b" * 40)
    coll = CheckpointCollection.open("hf://datasets/someone/toy-zoo", cache_dir=other)
    assert sd_equal(coll.load("lr0.01-s0", 5), expected("lr0.01-s0", 5))


def test_missing_hub_repo(offline_hub: Path, filled: CheckpointCollection) -> None:
    with pytest.raises(HubRepositoryNotFound, match=r"someone/absent.*revision 'main'.*Hint"):
        CheckpointCollection.open("hf://datasets/someone/absent")
    write_hub_cache(offline_hub, "someone/toy-zoo", filled.root, "c" * 40)
    with pytest.raises(HubRepositoryNotFound, match=r"someone/toy-zoo.*revision 'v9'"):
        CheckpointCollection.open("hf://datasets/someone/toy-zoo@v9")
    with pytest.raises(CollectionError, match="hf://datasets/"):
        CheckpointCollection.open("hf://models/someone/toy-zoo")


def test_push_to_hub_roundtrip(filled: CheckpointCollection, offline_hub: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """push_to_hub drives HfApi as documented; a stand-in Hub stores the upload in the cache layout."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    calls = []

    class RecordingHub:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False, **kw):
            calls.append(("create_repo", repo_id, repo_type, private, exist_ok))

        def create_branch(self, repo_id, *, branch, repo_type=None, exist_ok=False, **kw):
            calls.append(("create_branch", repo_id, branch, repo_type))

        def upload_folder(self, *, folder_path, repo_id, repo_type=None, revision=None, commit_message=None,
                          ignore_patterns=None, **kw):
            calls.append(("upload_folder", repo_id, repo_type, revision, commit_message))
            staged = offline_hub.parent / "staged"
            files = [p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()]
            for rel in filter_repo_objects(files, ignore_patterns=ignore_patterns):
                (staged / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(Path(folder_path) / rel, staged / rel)
            write_hub_cache(offline_hub, repo_id, staged, "d" * 40, refs=(revision or "main",))
            return huggingface_hub.CommitInfo(commit_url=f"https://hf.co/datasets/{repo_id}/commit/{'d' * 40}",
                                              commit_message=commit_message, commit_description="",
                                              oid="d" * 40)

    (filled.root / "weights" / "lr0.1-s0" / ".step-00000099.safetensors.x.tmp").write_bytes(b"junk")
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHub)
    url = filled.push_to_hub("me/zoo", private=True, token="tok", revision="v2", commit_message="zoo v2")
    assert url.endswith("d" * 40)
    assert ("create_repo", "me/zoo", "dataset", True, True) in calls
    assert ("create_branch", "me/zoo", "v2", "dataset") in calls
    assert ("upload_folder", "me/zoo", "dataset", "v2", "zoo v2") in calls
    assert not list((offline_hub.parent / "staged").rglob("*.tmp"))

    coll = CheckpointCollection.open("hf://datasets/me/zoo@v2")
    assert coll.name == "toy-zoo" and len(coll) == 9
    assert all(sd_equal(coll.load(r, s), expected(r, s)) for r in RUNS for s in STEPS)


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.lin = nn.Linear(6, 6)
        self.out = nn.Linear(6, 10, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.lin(self.emb(x))))


def test_tied_weights_and_metric_types(tmp_path: Path) -> None:
    """Tied tensors share storage, which safetensors refuses; every key is still stored and loads back."""
    torch.manual_seed(0)
    model = TiedLM()
    space = WeightSpace.from_module(model, torch.randint(0, 10, (2, 3)))
    coll = CheckpointCollection.create(tmp_path / "z")
    row = coll.append("tied", 0, model.state_dict(), space=space,
                      metrics={"loss": torch.tensor(0.5), "ok": True}, hparams={"layers": [1, 2]})
    assert row["loss"] == 0.5 and row["hp.layers"] == [1, 2]
    sd = coll.load("tied", 0)
    assert list(sd) == list(model.state_dict())
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    model2 = TiedLM()
    model2.load_state_dict(sd)
    with pytest.raises(CollectionError, match="metric name"):
        coll.append("tied", 1, model.state_dict(), space=space, metrics={"step": 1})
    with pytest.raises(CollectionError, match="opt"):
        coll.append("tied", 1, model.state_dict(), space=space, hparams={"opt": object()})
    assert coll.steps("tied") == [0]
