"""Hugging Face Hub transport for collections: ``hf://datasets/owner/name@revision`` URIs, download, upload."""
from __future__ import annotations

from pathlib import Path

from ..errors import CollectionError, HubRepositoryNotFound

HF_PREFIX = "hf://"
DATASETS_PREFIX = "hf://datasets/"
UPLOAD_IGNORE = [".*", "**/.*", "*.tmp", "**/*.tmp"]


def is_hub_uri(path_or_uri: object) -> bool:
    return isinstance(path_or_uri, str) and path_or_uri.startswith(HF_PREFIX)


def parse_hub_uri(uri: str) -> tuple[str, str | None]:
    """``hf://datasets/owner/name[@revision]`` -> (``owner/name``, revision or None)."""
    if not uri.startswith(DATASETS_PREFIX):
        raise CollectionError(f"unsupported Hub URI {uri!r}: collections are dataset repositories, "
                              f"use 'hf://datasets/<owner>/<name>[@<revision>]'")
    rest = uri[len(DATASETS_PREFIX):]
    repo_id, _, revision = rest.partition("@")
    parts = repo_id.strip("/").split("/")
    if len(parts) != 2 or not all(parts):
        raise CollectionError(f"invalid Hub URI {uri!r}: expected 'hf://datasets/<owner>/<name>[@<revision>]'")
    return "/".join(parts), (revision or None)


def download(repo_id: str, revision: str | None = None, *, cache_dir: str | Path | None = None,
             token: str | bool | None = None) -> Path:
    """Snapshot a dataset repository into the HF cache (or find it there when offline) and return its folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    rev = revision or "main"
    try:
        folder = snapshot_download(repo_id, repo_type="dataset", revision=revision,
                                   cache_dir=str(cache_dir) if cache_dir is not None else None, token=token)
    except RevisionNotFoundError as e:
        raise HubRepositoryNotFound(
            f"revision '{rev}' of dataset repository '{repo_id}' was not found on the Hub. "
            f"Hint: check the branch, tag or commit name.") from e
    except RepositoryNotFoundError as e:
        raise HubRepositoryNotFound(
            f"dataset repository '{repo_id}' (revision '{rev}') was not found on the Hub. Hint: check the id; "
            f"for a private or gated repository log in with `hf auth login` or pass token=.") from e
    except LocalEntryNotFoundError as e:
        raise HubRepositoryNotFound(
            f"dataset repository '{repo_id}' (revision '{rev}') is not in the local Hugging Face cache and the "
            f"Hub cannot be reached. Hint: connect and unset HF_HUB_OFFLINE to download it once, or check "
            f"cache_dir / HF_HUB_CACHE. ({e})") from e
    return Path(folder)


def upload(folder: Path, repo_id: str, *, private: bool = False, token: str | None = None,
           revision: str | None = None, commit_message: str) -> str:
    """Create the dataset repository if needed and upload ``folder`` to it; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset", revision=revision,
                             commit_message=commit_message, ignore_patterns=UPLOAD_IGNORE)
    return str(getattr(info, "commit_url", info))
