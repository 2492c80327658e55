"""Hugging Face Hub transport for collections: ``hf://datasets/owner/name@revision`` URIs, download, upload.

Every failure of the Hub client surfaces as a named error: :class:`~weightspace.errors.HubRepositoryNotFound`
for a missing repository or revision, :class:`~weightspace.errors.HubUnavailable` for offline mode, an
unreachable Hub or a refused request, each with a hint that matches the situation.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

from ..errors import CollectionError, HubRepositoryNotFound, HubUnavailable

HF_PREFIX = "hf://"
DATASETS_PREFIX = "hf://datasets/"
UPLOAD_IGNORE = [".*", "**/.*", "*.tmp", "**/*.tmp"]


class HubPath(NamedTuple):
    repo_id: str
    revision: str | None
    path_in_repo: str


def is_hub_uri(path_or_uri: object) -> bool:
    return isinstance(path_or_uri, str) and path_or_uri.startswith(HF_PREFIX)


def offline() -> bool:
    """Whether huggingface_hub is in offline mode (``HF_HUB_OFFLINE``)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def unreachable_hint() -> str:
    """Why the Hub could not be reached and what to do, naming HF_HUB_OFFLINE only when it is set."""
    if offline():
        return "HF_HUB_OFFLINE is set, so huggingface_hub does not contact the Hub: unset it and connect"
    return ("check the network connection (and HTTPS_PROXY / HF_ENDPOINT if you use them), or retry later "
            "if the Hub is down")


def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for name in ("httpx2", "httpx"):
        try:
            errors.append(__import__(name).TransportError)
        except (ImportError, AttributeError):
            pass
    try:
        import requests
        errors += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    except ImportError:
        pass
    return tuple(errors)


@contextmanager
def _hub_errors(action: str, repo_id: str) -> Iterator[None]:
    """Turn the Hub client's offline, network and HTTP failures of ``action`` into our named errors."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    try:
        yield
    except OfflineModeIsEnabled as e:
        raise HubUnavailable(f"cannot {action} dataset repository '{repo_id}': offline mode is on. "
                             f"Hint: {unreachable_hint()}.") from e
    except RepositoryNotFoundError:
        raise
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = ("log in with `hf auth login` or pass token= with write access to the namespace"
                if status in (401, 403) else "see the Hub's message above")
        raise HubUnavailable(f"the Hub refused to {action} dataset repository '{repo_id}' "
                             f"(HTTP {status}): {e}. Hint: {hint}.") from e
    except _transport_errors() as e:
        raise HubUnavailable(f"cannot {action} dataset repository '{repo_id}': the Hub cannot be reached "
                             f"({type(e).__name__}: {e}). Hint: {unreachable_hint()}.") from e


def parse_hub_uri(uri: str) -> tuple[str, str | None]:
    """``hf://datasets/owner/name[@revision]`` -> (``owner/name``, revision or None), without network access."""
    p = _parse(uri)
    return p.repo_id, p.revision


def _parse(uri: str) -> HubPath:
    from huggingface_hub.utils import parse_hf_uri

    try:
        parsed = parse_hf_uri(uri)
    except ValueError as e:
        raise CollectionError(f"invalid Hub URI {uri!r}: {e}; expected 'hf://datasets/<owner>/<name>[@<revision>]'") from e
    if parsed.type != "dataset" or not uri.startswith(DATASETS_PREFIX):
        raise CollectionError(f"unsupported Hub URI {uri!r}: collections are dataset repositories, "
                              f"use 'hf://datasets/<owner>/<name>[@<revision>]'")
    parts = parsed.id.split("/")
    if len(parts) != 2 or not all(parts):
        raise CollectionError(f"invalid Hub URI {uri!r}: expected 'hf://datasets/<owner>/<name>[@<revision>]'")
    return HubPath(parsed.id, parsed.revision, parsed.path_in_repo.strip("/"))


def resolve_hub_uri(uri: str, *, token: str | bool | None = None) -> HubPath:
    """Resolve ``hf://datasets/owner/name[@revision][/path]`` with ``HfFileSystem.resolve_path``.

    Online, this checks that the repository and revision exist (a missing one raises
    :class:`HubRepositoryNotFound`). In offline mode, or when the Hub cannot be reached, the URI is
    parsed locally with the same parser and the local cache decides.
    """
    parsed = _parse(uri)
    if offline():
        return parsed
    from huggingface_hub import HfFileSystem

    try:
        resolved = HfFileSystem(token=token).resolve_path(uri)
    except FileNotFoundError as e:
        rev = parsed.revision or "main"
        raise HubRepositoryNotFound(
            f"dataset repository '{parsed.repo_id}' (revision '{rev}') was not found on the Hub. Hint: check the "
            f"id and revision; for a private or gated repository log in with `hf auth login` or pass token=.") from e
    except _transport_errors():
        return parsed
    return HubPath(resolved.repo_id, resolved.revision, resolved.path_in_repo.strip("/"))


def download(repo_id: str, revision: str | None = None, *, cache_dir: str | Path | None = None,
             token: str | bool | None = None) -> Path:
    """Snapshot a dataset repository into the HF cache (or find it there when offline) and return its folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    rev = revision or "main"
    try:
        with _hub_errors("download", repo_id):
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
            f"Hub cannot be reached. Hint: {unreachable_hint()} to download it once, or check "
            f"cache_dir / HF_HUB_CACHE. ({e})") from e
    return Path(folder)


def upload(folder: Path, repo_id: str, *, private: bool = False, token: str | None = None,
           revision: str | None = None, commit_message: str) -> str:
    """Create the dataset repository if needed and upload ``folder`` to it; returns the commit URL."""
    import huggingface_hub

    with _hub_errors("push to", repo_id):
        api = huggingface_hub.HfApi(token=token)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if revision is not None and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset", revision=revision,
                                 commit_message=commit_message, ignore_patterns=UPLOAD_IGNORE)
    return str(getattr(info, "commit_url", info))
