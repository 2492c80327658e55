"""Safe writes and Hub conventions: files follow the umask, Hub failures become named errors with accurate
hints, hf:// paths go through HfFileSystem.resolve_path, and the card is a huggingface_hub DatasetCard."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from weightspace.collections import CheckpointCollection, hub
from weightspace.errors import CollectionError, HubRepositoryNotFound, HubUnavailable
from weightspace.space import WeightSpace


@pytest.fixture
def coll(tmp_path: Path) -> CheckpointCollection:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    space = WeightSpace.from_module(model, torch.randn(1, 3))
    c = CheckpointCollection.create(tmp_path / "zoo", name="toy", description="A toy zoo.")
    c.append_run("r", [0, 1], [model.state_dict(), model.state_dict()], space=space, metrics=[{"acc": 0.1}, None])
    return c


def modes(root: Path) -> set[int]:
    return {stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    from weightspace.merge import save_merged

    old = os.umask(umask)
    try:
        model = nn.Sequential(nn.Linear(3, 4))
        space = WeightSpace.from_module(model, torch.randn(1, 3))
        c = CheckpointCollection.create(tmp_path / "zoo")
        with c.run_writer("r", space=space) as w:
            w.append(0, model.state_dict())
        c.pack("r")
        out = save_merged(tmp_path / "merged", model.state_dict(), space)
    finally:
        os.umask(old)
    assert modes(c.root) == {0o666 & ~umask}
    assert modes(out) == {0o666 & ~umask}
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)


def _connect_error():
    import httpx2
    return httpx2.ConnectError("[Errno 101] Network is unreachable")


def test_push_when_the_hub_is_unreachable(coll: CheckpointCollection, online, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def refuse(self, *a, **kw):
        raise _connect_error()

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refuse)
    with pytest.raises(HubUnavailable, match=r"cannot push to dataset repository 'me/zoo': the Hub cannot be "
                                             r"reached \(ConnectError.*Hint: check the network") as e:
        coll.push_to_hub("me/zoo")
    assert "HF_HUB_OFFLINE" not in str(e.value)


def test_push_in_offline_mode_names_hf_hub_offline(coll: CheckpointCollection, offline) -> None:
    with pytest.raises(HubUnavailable, match=r"push to dataset repository 'me/zoo': offline mode is on.*"
                                             r"HF_HUB_OFFLINE is set"):
        coll.push_to_hub("me/zoo")


def test_push_refused_by_the_hub(coll: CheckpointCollection, online, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    def forbidden(self, *a, **kw):
        response = httpx2.Response(403, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))
        raise HfHubHTTPError("403 Forbidden: you cannot create a repo in this namespace", response=response)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", forbidden)
    with pytest.raises(HubUnavailable, match=r"refused to push to dataset repository 'me/zoo' \(HTTP 403\).*hf auth login"):
        coll.push_to_hub("me/zoo")


def test_download_hint_names_hf_hub_offline_only_when_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    import huggingface_hub.constants as c
    from huggingface_hub.errors import LocalEntryNotFoundError

    def not_cached(*a, **kw):
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_cached)
    for is_offline in (True, False):
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", is_offline)
        with pytest.raises(HubRepositoryNotFound, match="not in the local Hugging Face cache") as e:
            hub.download("me/zoo")
        assert ("HF_HUB_OFFLINE" in str(e.value)) == is_offline
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **kw: (_ for _ in ()).throw(_connect_error()))
    with pytest.raises(HubUnavailable, match="cannot download dataset repository 'me/zoo': the Hub cannot be reached"):
        hub.download("me/zoo")


def test_hf_paths_are_resolved_by_hffilesystem(coll: CheckpointCollection, tmp_path: Path, online,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub.hf_file_system import HfFileSystemResolvedRepositoryPath

    seen, downloads = [], []

    def resolve_path(self, path, revision=None):
        seen.append(path)
        if "absent" in path:
            raise FileNotFoundError(path)
        if "down" in path:
            raise _connect_error()
        return HfFileSystemResolvedRepositoryPath("dataset", "me/zoo", "refs/pr/3", "zoos/toy")

    snapshot = tmp_path / "snapshot"
    (snapshot / "zoos").mkdir(parents=True)
    os.symlink(coll.root, snapshot / "zoos" / "toy")

    def snapshot_download(repo_id, *, repo_type, revision, cache_dir=None, token=None):
        downloads.append((repo_id, repo_type, revision))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub.HfFileSystem, "resolve_path", resolve_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    opened = CheckpointCollection.open("hf://datasets/me/zoo@refs%2Fpr%2F3/zoos/toy")
    assert seen == ["hf://datasets/me/zoo@refs%2Fpr%2F3/zoos/toy"]
    assert downloads == [("me/zoo", "dataset", "refs/pr/3")]
    assert opened.read_only and opened.runs() == ["r"] and opened.source.endswith("/zoos/toy")
    with pytest.raises(HubRepositoryNotFound, match="'me/absent'.*was not found on the Hub"):
        CheckpointCollection.open("hf://datasets/me/absent")
    assert hub.resolve_hub_uri("hf://datasets/me/down@v2") == ("me/down", "v2", ""), "unreachable: parsed locally"
    with pytest.raises(CollectionError, match="collections are dataset repositories"):
        CheckpointCollection.open("hf://models/me/zoo")
    assert len(seen) == 3, "a model URI is refused before any network call"


def test_card_is_a_dataset_card_with_the_recipe_readme_as_body(tmp_path: Path) -> None:
    from huggingface_hub import DatasetCard

    from weightspace.tasks.zoo import build_zoo

    coll = build_zoo("synth-mlp", tmp_path / "zoo", size="tiny", progress=False)
    card = DatasetCard.load(coll.root / "README.md")
    assert card.data.license == "apache-2.0" and card.data.pretty_name == "synth-mlp-tiny"
    assert card.data.configs[0]["data_files"][0]["path"] == "metadata/*.jsonl"
    recipe_md = (Path(__file__).resolve().parents[1] / "datasets" / "synth-mlp.md").read_text()
    assert card.text.lstrip().startswith(recipe_md.strip())
    assert "## This collection" in card.text and "- **runs:** 2 (2 finished)" in card.text
