"""CheckpointCollection: checkpoints of many training runs in a folder that is also a Hugging Face dataset repo.

Layout (all paths relative to the collection root)::

    README.md                                   dataset card (YAML front matter + summary)
    collection.json                             name, description, license, format version
    architectures/<arch_id>.json                WeightSpace JSON, arch_id = space.fingerprint
    weights/<run_id>/step-<step:08d>.safetensors one checkpoint, while its run is being written
    weights/<run_id>/run-<token>.safetensors      a finished run: every tensor stacked along a leading step axis
    metadata/<run_id>.jsonl                     one row per checkpoint of the run, sorted by step

A checkpoint exists when its metadata row exists; the row names its file and, for a packed run, its
``slot`` on the step axis. Writes go weights file first, then the run's metadata shard, each atomically,
so an interrupted append (or an interrupted packing) leaves at most an invisible orphan weights file.
In a collection created with ``pack_runs=True``, finishing a run packs its checkpoints into one file,
so a zoo has two files per run rather than one per checkpoint (the Hub recommends at most 100k files
per repository); :meth:`CheckpointCollection.pack` packs any run. Collections holding no packed run
are format version 1, which older weightspace versions read; a packed run makes it version 2.
"""
from __future__ import annotations

import json
import math
import os
import re
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import torch

from ..errors import CollectionError, CorruptCheckpoint, NonFiniteWeights, StateDictMismatch, WeightSpaceError
from . import hub
from ._io import TMP_SUFFIX, atomic_write, atomic_write_text, write_jsonl
from .card import HP_PREFIX, RESERVED_COLUMNS, render_card

if TYPE_CHECKING:
    from torch_geometric.data import Data

    from ..space import WeightSpace
    from .verify import Problem

FORMAT = "weightspace-collection"
FORMAT_VERSION = 2
PACKED_PREFIX = "run-"
_OWN_FILE = re.compile(r"(step-\d{8}|run-[0-9a-f]{12})\.safetensors")
INFO_FILE = "collection.json"
CARD_FILE = "README.md"
ARCH_DIR = "architectures"
WEIGHTS_DIR = "weights"
META_DIR = "metadata"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,199}")

StateDict = Mapping[str, torch.Tensor]


def _check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or run_id.endswith(TMP_SUFFIX):
        raise CollectionError(f"invalid run_id {run_id!r}: use letters, digits and . _ + = - "
                              f"(it names a file and a folder), starting with a letter or digit")
    return run_id


def _check_step(step: int) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CollectionError(f"invalid step {step!r}: must be a non-negative int")
    return step


def _scalar(name: str, v: Any) -> Any:
    """A JSON value for a metric/hyperparameter; tensors and numpy scalars become Python numbers, NaN -> null."""
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise CollectionError(f"'{name}' is a tensor of shape {tuple(v.shape)}, expected a scalar")
        v = v.item()
    elif hasattr(v, "item") and callable(v.item) and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [_scalar(name, x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise CollectionError(f"'{name}' has type {type(v).__name__}; metrics and hyperparameters must be "
                          f"numbers, strings, booleans, None or lists of them")


def _flatten_hparams(hparams: Mapping[str, Any] | None, prefix: str = HP_PREFIX) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (hparams or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten_hparams(v, key + "."))
        else:
            out[key] = _scalar(key, v)
    return out


def _metric_columns(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (metrics or {}).items():
        if not isinstance(k, str) or not k or k in RESERVED_COLUMNS or k.startswith(HP_PREFIX):
            raise CollectionError(f"invalid metric name {k!r}: must be a non-empty string, not one of "
                                  f"{list(RESERVED_COLUMNS)} and not starting with {HP_PREFIX!r}")
        out[k] = _scalar(k, v)
    return out


def _attr_name(prefix: str, column: str) -> str:
    return prefix + re.sub(r"\W", "_", column)


def _to_saveable(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors; tensors that share storage (tied weights) are copied so each key is stored."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, t in state_dict.items():
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel() > 0:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


class _Shard:
    """Parsed metadata of one run, keyed by the shard file's identity so external rewrites are noticed."""

    __slots__ = ("stamp", "rows", "by_step")

    def __init__(self, stamp: tuple[int, int, int] | None, rows: list[dict[str, Any]]) -> None:
        self.stamp = stamp
        self.rows = sorted(rows, key=lambda r: r["step"])
        self.by_step = {r["step"]: r for r in self.rows}

    @property
    def finished(self) -> bool:
        return bool(self.rows) and all(r.get("finished", False) for r in self.rows)


class RunWriter:
    """Appends the checkpoints of one run; returned by :meth:`CheckpointCollection.run_writer`.

    Leaving the ``with`` block normally marks the run finished; leaving it through an exception does not,
    so a re-run of the recipe resumes it.
    """

    def __init__(self, collection: "CheckpointCollection", run_id: str, *, space: "WeightSpace",
                 hparams: Mapping[str, Any] | None, allow_nonfinite: bool, overwrite: bool) -> None:
        self.collection = collection
        self.run_id = run_id
        self.space = space
        self.hparams = dict(hparams or {})
        self.allow_nonfinite = allow_nonfinite
        self.overwrite = overwrite

    def append(self, step: int, state_dict: StateDict, metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Add checkpoint ``step`` of this run; returns its metadata row."""
        return self.collection.append(self.run_id, step, state_dict, space=self.space, metrics=metrics,
                                      hparams=self.hparams, allow_nonfinite=self.allow_nonfinite,
                                      overwrite=self.overwrite)

    @property
    def steps(self) -> list[int]:
        """Steps already stored for this run (to resume an interrupted run)."""
        return [r["step"] for r in self.collection._shard(self.run_id).rows]

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self.steps:
            self.collection.finish(self.run_id)


class CheckpointCollection:
    """Checkpoints of many training runs, stored as safetensors plus per-run JSONL metadata.

    The folder is a valid Hugging Face dataset repository (``push_to_hub`` / ``open("hf://datasets/...")``).
    Opening is lazy: no weights are read, and a run's metadata is parsed on first use.
    """

    def __init__(self, root: str | Path, *, read_only: bool = False, source: str | None = None) -> None:
        self.root = Path(root)
        self.read_only = read_only
        self.source = source or str(self.root)
        info_path = self.root / INFO_FILE
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CollectionError(f"{self.root} is not a weightspace collection (no {INFO_FILE}); "
                                  f"create one with CheckpointCollection.create()") from None
        except (OSError, json.JSONDecodeError) as e:
            raise CollectionError(f"cannot read {info_path}: {e}") from e
        if info.get("format") != FORMAT:
            raise CollectionError(f"{info_path} has format {info.get('format')!r}, expected {FORMAT!r}")
        if int(info.get("version", 0)) > FORMAT_VERSION:
            raise CollectionError(f"{info_path} is format version {info['version']}; this weightspace reads "
                                  f"up to {FORMAT_VERSION}, please upgrade")
        self.name: str = info.get("name") or self.root.name
        self.description: str = info.get("description", "")
        self.license: str = info.get("license", "other")
        self.version: int = int(info.get("version", 1))
        self._info = info
        self._shards: dict[str, _Shard] = {}
        self._spaces: dict[str, "WeightSpace"] = {}

    # ------------------------------------------------------------------ create / open
    @property
    def pack_runs(self) -> bool:
        """Whether finishing a run packs its checkpoints into one file with a step axis (see :meth:`pack`)."""
        return bool(self._info.get("pack_runs", False))

    def set_pack_runs(self, pack_runs: bool) -> None:
        """Pack runs finished from now on (True) or keep one file per checkpoint (False)."""
        self._writable()
        if bool(pack_runs) != self.pack_runs:
            self._write_info({**self._info, "pack_runs": bool(pack_runs)})

    def _write_info(self, info: dict[str, Any]) -> None:
        atomic_write_text(self.root / INFO_FILE, json.dumps(info, indent=2) + "\n")
        self._info = info
        self.version = int(info.get("version", 1))

    @classmethod
    def create(cls, path: str | Path, *, name: str | None = None, description: str = "",
               license: str = "apache-2.0", exist_ok: bool = False,
               pack_runs: bool = False) -> "CheckpointCollection":
        """Create an empty collection at ``path`` (with its dataset card); ``exist_ok`` opens an existing one.

        With ``pack_runs`` every finished run is stored as one safetensors file with a step axis
        (two files per run instead of one per checkpoint: for large zoos and the Hub's 100k-file
        limit); otherwise each checkpoint stays its own file, which tools taking a checkpoint file
        (``weightspace align``, ``graph inspect``) can read directly.
        """
        root = Path(path)
        if (root / INFO_FILE).exists():
            if not exist_ok:
                raise CollectionError(f"a collection already exists at {root} (pass exist_ok=True to open it)")
            return cls(root)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise CollectionError(f"cannot create a collection at {root}: it exists and is not an empty folder")
        for sub in (ARCH_DIR, WEIGHTS_DIR, META_DIR):
            (root / sub).mkdir(parents=True, exist_ok=True)
        info = {"format": FORMAT, "version": FORMAT_VERSION if pack_runs else 1, "name": name or root.name,
                "description": description, "license": license, "pack_runs": bool(pack_runs)}
        atomic_write_text(root / INFO_FILE, json.dumps(info, indent=2) + "\n")
        coll = cls(root)
        coll.update_card()
        return coll

    @classmethod
    def open(cls, path_or_uri: str | Path, *, cache_dir: str | Path | None = None,
             token: str | bool | None = None) -> "CheckpointCollection":
        """Open a local collection folder, or ``hf://datasets/owner/name[@revision]`` via the HF cache.

        ``hf://`` paths are resolved with ``HfFileSystem.resolve_path`` (a path inside the repository
        names a collection in a subfolder). Hub collections are downloaded with ``snapshot_download``
        (or found in the cache when offline or when the Hub cannot be reached) and opened read-only.
        A missing repository raises :class:`~weightspace.errors.HubRepositoryNotFound`; an unreachable
        Hub, offline mode or a refused request :class:`~weightspace.errors.HubUnavailable`.
        """
        if hub.is_hub_uri(path_or_uri):
            where = hub.resolve_hub_uri(str(path_or_uri), token=token)
            folder = hub.download(where.repo_id, where.revision, cache_dir=cache_dir, token=token)
            root = folder / where.path_in_repo if where.path_in_repo else folder
            return cls(root, read_only=True, source=str(path_or_uri))
        root = Path(path_or_uri)
        if not root.is_dir():
            raise CollectionError(f"no collection folder at {root}")
        return cls(root)

    # ------------------------------------------------------------------ paths
    def weights_path(self, run_id: str, step: int) -> Path:
        """Where checkpoint ``(run_id, step)`` lives (deterministic, so loading is O(1))."""
        return self.root / WEIGHTS_DIR / _check_run_id(run_id) / f"step-{_check_step(step):08d}.safetensors"

    def _shard_path(self, run_id: str) -> Path:
        return self.root / META_DIR / f"{_check_run_id(run_id)}.jsonl"

    # ------------------------------------------------------------------ metadata (lazy)
    def _shard(self, run_id: str) -> _Shard:
        """The run's parsed metadata, re-read only when the shard file changed on disk."""
        path = self._shard_path(run_id)
        try:
            st = path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            self._shards.pop(run_id, None)
            return _Shard(None, [])
        cached = self._shards.get(run_id)
        if cached is not None and cached.stamp == stamp:
            return cached
        rows = []
        try:
            text = path.read_text(encoding="utf-8")
            for i, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict) or not {"run_id", "step", "arch_id", "file"} <= row.keys():
                        raise ValueError(f"line {i} is not a checkpoint row")
                    rows.append(row)
        except (OSError, ValueError) as e:
            raise CollectionError(f"corrupt metadata shard {path}: {e}") from e
        shard = _Shard(stamp, rows)
        self._shards[run_id] = shard
        return shard

    def runs(self) -> list[str]:
        """Ids of all runs with at least one checkpoint, sorted."""
        meta = self.root / META_DIR
        if not meta.is_dir():
            return []
        return sorted(p.name[:-len(".jsonl")] for p in meta.iterdir()
                      if p.name.endswith(".jsonl") and not p.name.startswith("."))

    def steps(self, run_id: str) -> list[int]:
        """The stored steps of ``run_id``, ascending."""
        shard = self._shard(run_id)
        if not shard.rows:
            raise CollectionError(f"no run {run_id!r} in collection {self.source}")
        return [r["step"] for r in shard.rows]

    def rows(self) -> list[dict[str, Any]]:
        """All metadata rows (copies), ordered by run then step."""
        return [dict(r) for run in self.runs() for r in self._shard(run).rows]

    @property
    def metadata(self) -> list[dict[str, Any]]:
        """All metadata rows; same as :meth:`rows`."""
        return self.rows()

    def row(self, run_id: str, step: int) -> dict[str, Any]:
        """The metadata row of checkpoint ``(run_id, step)``."""
        shard = self._shard(run_id)
        r = shard.by_step.get(_check_step(step))
        if r is None:
            have = [x["step"] for x in shard.rows]
            raise CollectionError(f"no checkpoint (run {run_id!r}, step {step}) in collection {self.source}"
                                  + (f"; the run has steps {have[:20]}{' ...' if len(have) > 20 else ''}"
                                     if have else f"; there is no run {run_id!r}"))
        return dict(r)

    def select(self, where: Callable[[dict[str, Any]], bool] | None = None, **equals: Any) -> list[dict[str, Any]]:
        """Rows whose columns equal ``equals`` and for which ``where(row)`` is true.

        A keyword that is not a column matches the hyperparameter ``hp.<keyword>``, so
        ``select(lr=0.1)`` and ``select(**{"hp.lr": 0.1})`` are the same.
        """
        if isinstance(equals.get("run_id"), str):
            rows = [dict(r) for r in self._shard(equals["run_id"]).rows]
        else:
            rows = self.rows()
        out = []
        for r in rows:
            ok = True
            for k, v in equals.items():
                col = k if k in r or f"{HP_PREFIX}{k}" not in r else f"{HP_PREFIX}{k}"
                if col not in r or r[col] != v:
                    ok = False
                    break
            if ok and (where is None or where(r)):
                out.append(r)
        return out

    def is_finished(self, run_id: str) -> bool:
        """Whether ``run_id`` was marked finished (recipes skip such runs on re-run)."""
        return self._shard(run_id).finished

    def __len__(self) -> int:
        return sum(len(self._shard(run).rows) for run in self.runs())

    def __repr__(self) -> str:
        runs = self.runs()
        shards = [self._shard(r) for r in runs]
        n = sum(len(s.rows) for s in shards)
        done = sum(s.finished for s in shards)
        archs = {r["arch_id"] for s in shards for r in s.rows}
        ro = ", read-only" if self.read_only else ""
        return (f"CheckpointCollection({self.name!r} at {self.source}: {len(runs)} runs ({done} finished), "
                f"{n} checkpoints, {len(archs)} architectures{ro})")

    # ------------------------------------------------------------------ architectures
    def space(self, arch_id_or_row: str | Mapping[str, Any]) -> "WeightSpace":
        """The WeightSpace of an architecture id (or of a metadata row), loaded once and cached."""
        from ..space import WeightSpace

        arch_id = arch_id_or_row["arch_id"] if isinstance(arch_id_or_row, Mapping) else arch_id_or_row
        sp = self._spaces.get(arch_id)
        if sp is None:
            path = self.root / ARCH_DIR / f"{arch_id}.json"
            if not path.is_file():
                raise CollectionError(f"no architecture {arch_id!r} in collection {self.source} (missing {path})")
            sp = WeightSpace.load(path)
            self._spaces[arch_id] = sp
        return sp

    def architectures(self) -> list[str]:
        """Fingerprints of the architectures stored in the collection."""
        d = self.root / ARCH_DIR
        return sorted(p.stem for p in d.glob("*.json") if not p.name.startswith(".")) if d.is_dir() else []

    # ------------------------------------------------------------------ writing
    def _writable(self) -> None:
        if self.read_only:
            raise CollectionError(f"collection {self.source} is read-only (opened from the Hub cache); "
                                  f"create a local collection to write to")

    def append(self, run_id: str, step: int, state_dict: StateDict, *, space: "WeightSpace",
               metrics: Mapping[str, Any] | None = None, hparams: Mapping[str, Any] | None = None,
               allow_nonfinite: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """Store checkpoint ``step`` of ``run_id`` and return its metadata row.

        The state_dict is validated against ``space`` first (shapes, keys, NaN/Inf unless
        ``allow_nonfinite``), then written atomically: weights file, then the run's metadata shard.
        An existing ``(run_id, step)`` or a finished run raises CollectionError unless ``overwrite``.
        """
        self._writable()
        _check_run_id(run_id)
        _check_step(step)
        source = f"run {run_id!r} step {step}"
        space.check(state_dict, allow_nonfinite=allow_nonfinite, source=source)
        metric_cols = _metric_columns(metrics)
        hp_cols = _flatten_hparams(hparams)
        arch_id = space.fingerprint

        shard = self._shard(run_id)
        if not overwrite:
            if step in shard.by_step:
                raise CollectionError(f"checkpoint (run {run_id!r}, step {step}) already exists in "
                                      f"{self.source}; pass overwrite=True to replace it")
            if shard.finished:
                raise CollectionError(f"run {run_id!r} is finished; pass overwrite=True to add checkpoints to it")
        if shard.rows and shard.rows[0]["arch_id"] != arch_id:
            raise CollectionError(f"run {run_id!r} holds architecture {shard.rows[0]['arch_id']}, but the "
                                  f"checkpoint of step {step} has architecture {arch_id}")

        self._write_space(space)

        from safetensors.torch import save_file

        wpath = self.weights_path(run_id, step)
        header = {"format": "pt", "weightspace.arch_id": arch_id, "weightspace.run_id": run_id,
                  "weightspace.step": str(step)}
        tensors = _to_saveable(state_dict)
        atomic_write(wpath, lambda tmp: save_file(tensors, str(tmp), metadata=header))

        row: dict[str, Any] = {"run_id": run_id, "step": step, "arch_id": arch_id,
                               "file": wpath.relative_to(self.root).as_posix(), "num_bytes": wpath.stat().st_size,
                               "finished": shard.finished, **hp_cols, **metric_cols}
        rows = [r for r in shard.rows if r["step"] != step] + [row]
        self._write_shard(run_id, rows)
        return dict(row)

    def _write_space(self, space: "WeightSpace") -> None:
        arch_path = self.root / ARCH_DIR / f"{space.fingerprint}.json"
        if not arch_path.exists():
            atomic_write_text(arch_path, json.dumps(space.to_json(), separators=(",", ":")))
        self._spaces.setdefault(space.fingerprint, space)

    def _write_shard(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        """Rewrite a run's shard atomically, every row with the same columns (the Hub viewer wants a fixed schema)."""
        rows = sorted(rows, key=lambda r: r["step"])
        columns: dict[str, None] = {}
        for r in rows:
            columns.update(dict.fromkeys(r))
        full = [{c: r.get(c) for c in columns} for r in rows]
        path = self._shard_path(run_id)
        write_jsonl(path, full)
        st = path.stat()
        self._shards[run_id] = _Shard((st.st_ino, st.st_mtime_ns, st.st_size), full)

    def finish(self, run_id: str, *, pack: bool | None = None) -> None:
        """Mark ``run_id`` finished and, when ``pack`` (default: the collection's :attr:`pack_runs`),
        store its checkpoints as one file with a step axis.

        The dataset card summarises every row, so it is refreshed by :meth:`update_card`,
        :meth:`push_to_hub` and the zoo builder once at the end, not per run (which would be quadratic).
        """
        self._writable()
        shard = self._shard(run_id)
        if not shard.rows:
            raise CollectionError(f"cannot finish run {run_id!r}: it has no checkpoints in {self.source}")
        if self.pack_runs if pack is None else pack:
            self.pack(run_id, finished=True)
        elif not shard.finished:
            self._write_shard(run_id, [{**r, "finished": True} for r in shard.rows])

    def pack(self, run_id: str, *, finished: bool | None = None) -> None:
        """Rewrite ``run_id``'s checkpoints as one safetensors file, each tensor stacked along a step axis.

        Loading a checkpoint then reads its slice only. The packed file is written first, then the
        metadata points at it, then the files it replaces are removed: an interruption at any point
        leaves every checkpoint readable. A run already packed into one file is left as it is.
        """
        self._writable()
        shard = self._shard(run_id)
        rows = shard.rows
        if not rows:
            raise CollectionError(f"cannot pack run {run_id!r}: it has no checkpoints in {self.source}")
        finished = shard.finished if finished is None else finished
        files = {r["file"] for r in rows}
        if len(files) == 1 and all(r.get("slot") == i for i, r in enumerate(rows)):
            if finished != shard.finished:
                self._write_shard(run_id, [{**r, "finished": finished} for r in rows])
            return
        sds = [self._read(r) for r in rows]
        keys = list(sds[0])
        for r, sd in zip(rows, sds):
            if list(sd) != keys:
                raise CollectionError(f"cannot pack run {run_id!r}: step {r['step']} has other tensors than "
                                      f"step {rows[0]['step']}")
        rel, size = self._write_packed(run_id, rows[0]["arch_id"], [r["step"] for r in rows], sds)
        del sds
        self._write_shard(run_id, [{**r, "file": rel, "num_bytes": size, "slot": i, "finished": finished}
                                   for i, r in enumerate(rows)])
        for old in files - {rel}:
            (self.root / old).unlink(missing_ok=True)
        for orphan in (self.root / WEIGHTS_DIR / run_id).iterdir():
            if _OWN_FILE.fullmatch(orphan.name) and orphan.relative_to(self.root).as_posix() != rel:
                orphan.unlink(missing_ok=True)  # left by an interrupted append, or a damaged run since retrained

    def _write_packed(self, run_id: str, arch_id: str, steps: list[int],
                      sds: Sequence[Mapping[str, torch.Tensor]]) -> tuple[str, int]:
        """Write one run's checkpoints as one safetensors file (tensors stacked on a leading step axis, the
        steps in its header) under a fresh name, so no reader's file changes; returns its path and size."""
        from safetensors.torch import save_file

        stacked = {k: torch.stack([sd[k] for sd in sds]).contiguous() for k in sds[0]}
        header = {"format": "pt", "weightspace.arch_id": arch_id, "weightspace.run_id": run_id,
                  "weightspace.steps": json.dumps(steps)}
        path = self.root / WEIGHTS_DIR / run_id / f"{PACKED_PREFIX}{uuid.uuid4().hex[:12]}.safetensors"
        atomic_write(path, lambda tmp: save_file(stacked, str(tmp), metadata=header))
        self._bump_version()
        return path.relative_to(self.root).as_posix(), path.stat().st_size

    def _bump_version(self) -> None:
        """Packed runs need format version 2; an older collection is upgraded when it first gets one."""
        if self.version < 2:
            self._write_info({**self._info, "version": 2})

    def reopen(self, run_id: str) -> None:
        """Mark a finished run unfinished again, so that it can be retrained over its checkpoints.

        A run whose metadata shard cannot be parsed is moved aside to a hidden
        ``metadata/.<run_id>.jsonl.corrupt`` file (kept, never uploaded) and the run starts afresh.
        """
        self._writable()
        try:
            shard = self._shard(run_id)
        except CollectionError:
            path = self._shard_path(run_id)
            os.replace(path, path.with_name(f".{path.name}.corrupt"))
            self._shards.pop(run_id, None)
            return
        if shard.rows and shard.finished:
            self._write_shard(run_id, [{**r, "finished": False} for r in shard.rows])

    def append_run(self, run_id: str, steps: Sequence[int], state_dicts: Sequence[StateDict], *,
                   space: "WeightSpace", metrics: Sequence[Mapping[str, Any] | None] | None = None,
                   hparams: Mapping[str, Any] | None = None, allow_nonfinite: bool = False) -> list[dict[str, Any]]:
        """Store a whole finished trajectory at once, packed into one file (one write per run)."""
        self._writable()
        _check_run_id(run_id)
        steps = [_check_step(s) for s in steps]
        metrics = list(metrics) if metrics is not None else [None] * len(steps)
        if not steps or len(steps) != len(state_dicts) or len(metrics) != len(steps):
            raise CollectionError(f"append_run({run_id!r}) needs one state_dict (and metrics entry) per step: got "
                                  f"{len(steps)} steps, {len(state_dicts)} state_dicts, {len(metrics)} metrics")
        if len(set(steps)) != len(steps):
            raise CollectionError(f"append_run({run_id!r}): steps are not unique: {steps}")
        if self._shard(run_id).rows:
            raise CollectionError(f"run {run_id!r} already exists in {self.source}")
        for s, sd in zip(steps, state_dicts):
            space.check(sd, allow_nonfinite=allow_nonfinite, source=f"run {run_id!r} step {s}")
        order = sorted(range(len(steps)), key=lambda i: steps[i])
        self._write_space(space)
        rel, size = self._write_packed(run_id, space.fingerprint, [steps[i] for i in order],
                                       [_to_saveable(state_dicts[i]) for i in order])
        hp = _flatten_hparams(hparams)
        rows = [{"run_id": run_id, "step": steps[i], "arch_id": space.fingerprint, "file": rel, "num_bytes": size,
                 "finished": True, **hp, **_metric_columns(metrics[i]), "slot": j} for j, i in enumerate(order)]
        self._write_shard(run_id, rows)
        return [dict(r) for r in rows]

    def run_writer(self, run_id: str, *, space: "WeightSpace", hparams: Mapping[str, Any] | None = None,
                   allow_nonfinite: bool = False, overwrite: bool = False) -> RunWriter:
        """Context manager appending one run's checkpoints; a clean exit marks the run finished.

        ``with coll.run_writer("seed0", space=space, hparams={"lr": 0.1}) as w: w.append(step, sd, metrics)``
        """
        self._writable()
        _check_run_id(run_id)
        if not overwrite and self.is_finished(run_id):
            raise CollectionError(f"run {run_id!r} is already finished in {self.source}; skip it "
                                  f"(check is_finished) or pass overwrite=True")
        return RunWriter(self, run_id, space=space, hparams=hparams, allow_nonfinite=allow_nonfinite,
                         overwrite=overwrite)

    def update_card(self) -> Path:
        """Regenerate README.md (YAML front matter + summary of runs, architectures and metrics)."""
        self._writable()
        rows = self.rows()
        finished = {run: self._shard(run).finished for run in {r["run_id"] for r in rows}}
        spaces = {}
        for a in set(self.architectures()) | {r["arch_id"] for r in rows}:
            try:
                spaces[a] = self.space(a)
            except WeightSpaceError:
                pass
        text = render_card(name=self.name, description=self.description, license=self.license, rows=rows,
                           finished=finished, spaces=spaces)
        return atomic_write_text(self.root / CARD_FILE, text)

    # ------------------------------------------------------------------ reading weights
    def load(self, run_id: str, step: int, *, device: str | torch.device = "cpu",
             allow_nonfinite: bool = True) -> dict[str, torch.Tensor]:
        """The state_dict of checkpoint ``(run_id, step)``, keys in the architecture's order.

        Reads one memory-mapped safetensors file (only this checkpoint's slice of a packed run);
        raises CorruptCheckpoint naming the file, run and step if it is missing, truncated or not
        safetensors, and NonFiniteWeights naming them when ``allow_nonfinite`` is False and a tensor
        holds NaN/Inf.
        """
        try:
            tensors = self._read(self.row(run_id, step), device)
        except CorruptCheckpoint:
            self._shards.pop(run_id, None)  # the run may have been packed since its metadata was read
            tensors = self._read(self.row(run_id, step), device)
        if not allow_nonfinite:
            for k, t in tensors.items():
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise NonFiniteWeights(f"'{k}' of run {run_id!r} step {step} in {self.source} holds "
                                           f"{int((~torch.isfinite(t)).sum())} NaN/Inf values (pass "
                                           f"allow_nonfinite=True to accept them, or skip_bad=True to skip them)")
        try:
            order = self.space(self.row(run_id, step)["arch_id"]).keys
        except CollectionError:
            return tensors
        ordered = {k: tensors[k] for k in order if k in tensors}
        ordered.update((k, v) for k, v in tensors.items() if k not in ordered)
        return ordered

    def _read(self, row: Mapping[str, Any], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The tensors of one metadata row, checked against the file's size and header."""
        from safetensors import SafetensorError, safe_open

        run_id, step = row["run_id"], row["step"]
        path = self.root / row["file"]
        where = f"(run {run_id!r}, step {step})"
        try:
            size = path.stat().st_size
        except OSError as e:
            raise CorruptCheckpoint(f"weights file {path} of {where} cannot be read: {e}") from e
        expected = row.get("num_bytes")
        if expected is not None and size != expected:
            raise CorruptCheckpoint(f"weights file {path} of {where} has {size} bytes, expected {expected} "
                                    f"(truncated or overwritten outside the collection)")
        slot = row.get("slot")
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                header = f.metadata() or {}
                if slot is None:
                    tensors = {k: f.get_tensor(k) for k in f.keys()}
                else:
                    tensors = {k: f.get_slice(k)[slot] for k in f.keys()}
        except (SafetensorError, OSError, ValueError, IndexError) as e:
            raise CorruptCheckpoint(f"weights file {path} of {where} is corrupt or not safetensors: {e}") from e
        if slot is None:
            holds = (header.get("weightspace.run_id", run_id), header.get("weightspace.step", str(step)))
            ok = holds == (run_id, str(step))
        else:
            try:
                steps = json.loads(header.get("weightspace.steps", "[]"))
                holds = (header.get("weightspace.run_id"), steps[slot] if 0 <= slot < len(steps) else None)
            except (ValueError, TypeError):
                holds = (header.get("weightspace.run_id"), None)
            ok = holds == (run_id, step)
        if not ok:
            raise CorruptCheckpoint(f"weights file {path} holds run {holds[0]!r} step {holds[1]}, "
                                    f"expected run {run_id!r} step {step}")
        return tensors

    def trajectory(self, run_id: str, steps: Iterable[int] | None = None, *,
                   device: str | torch.device = "cpu") -> list[dict[str, torch.Tensor]]:
        """State_dicts of ``run_id`` in step order (all steps, or the given ones)."""
        chosen = self.steps(run_id) if steps is None else sorted(steps)
        return [self.load(run_id, s, device=device) for s in chosen]

    def windows(self, rows: Sequence[Mapping[str, Any]] | None = None,
                trajectory_length: int = 1) -> list[tuple[dict[str, Any], list[int]]]:
        """``(row, steps)`` for each row that starts a window of ``trajectory_length`` consecutive checkpoints."""
        if isinstance(trajectory_length, bool) or not isinstance(trajectory_length, int) or trajectory_length < 1:
            raise CollectionError(f"trajectory_length must be an int >= 1, got {trajectory_length!r}")
        rows = self.rows() if rows is None else [dict(r) for r in rows]
        out = []
        for r in rows:
            if trajectory_length == 1:
                out.append((r, [r["step"]]))
                continue
            run_steps = self.steps(r["run_id"])
            i = run_steps.index(r["step"])
            window = run_steps[i:i + trajectory_length]
            if len(window) == trajectory_length:
                out.append((r, window))
        return out

    def graph(self, run_id: str, steps: Sequence[int], *, allow_nonfinite: bool = False,
              load: Callable[[str, int], StateDict] | None = None) -> "Data":
        """The neural graph of checkpoints ``steps`` of ``run_id`` (one, or a window of T), with its metadata.

        The graph gets ``run_id``, ``arch_id``, ``step`` (first step), ``steps`` ([T]), metrics of the
        last checkpoint as ``y_<metric>`` and numeric hyperparameters as ``hp_<name>`` (float tensors of
        shape [1], NaN where missing). A checkpoint with NaN/Inf raises NonFiniteWeights naming its run
        and step unless ``allow_nonfinite``.
        """
        steps = list(steps)
        first, last = self.row(run_id, steps[0]), self.row(run_id, steps[-1])
        sp = self.space(first["arch_id"])
        load = load or self.load
        sds = []
        for s in steps:
            sd = load(run_id, s)
            sp.check(sd, allow_nonfinite=allow_nonfinite, source=f"run {run_id!r} step {s} of {self.source}")
            sds.append(sd)
        data = sp.to_graph(sds[0] if len(sds) == 1 else sds, check=False)
        data.run_id = run_id
        data.arch_id = first["arch_id"]
        data.step = torch.tensor([steps[0]])
        data.steps = torch.tensor(steps)
        for col, v in last.items():
            if col in RESERVED_COLUMNS:
                continue
            if col.startswith(HP_PREFIX):
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    setattr(data, _attr_name("hp_", col[len(HP_PREFIX):]), torch.tensor([float(v)]))
            elif v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
                setattr(data, _attr_name("y_", col), torch.tensor([math.nan if v is None else float(v)]))
        return data

    def to_graphs(self, rows: Sequence[Mapping[str, Any]] | None = None, trajectory_length: int = 1, *,
                  progress: bool = True, allow_nonfinite: bool = False, skip_bad: bool = False) -> list["Data"]:
        """Neural graphs (torch_geometric ``Data``) of checkpoints, via :meth:`graph` (eager; see
        :class:`~weightspace.collections.GraphDataset` for a lazy dataset).

        With ``trajectory_length`` T > 1 each row starts a window of T consecutive checkpoints of its run
        (``edge_attr`` is ``[E, T, F]``); rows without T-1 later checkpoints are skipped. With
        ``skip_bad`` a window holding a damaged checkpoint (corrupt, truncated, missing, not fitting its
        architecture, or NaN/Inf unless ``allow_nonfinite``) is skipped with a warning naming it,
        instead of raising.
        """
        import warnings

        from ..utils import progress_bar

        windows = self.windows(rows, trajectory_length)
        cache: OrderedDict[tuple[str, int], dict[str, torch.Tensor]] = OrderedDict()
        cache_size = max(2 * trajectory_length, 4)

        def get(run_id: str, step: int) -> dict[str, torch.Tensor]:
            key = (run_id, step)
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
            sd = self.load(run_id, step)
            cache[key] = sd
            if len(cache) > cache_size:
                cache.popitem(last=False)
            return sd

        graphs, skipped = [], []
        for r, window in progress_bar(windows, desc="to_graphs", unit="ckpt",
                                      disable=not progress or len(windows) < 100):
            try:
                graphs.append(self.graph(r["run_id"], window, allow_nonfinite=allow_nonfinite, load=get))
            except (CorruptCheckpoint, NonFiniteWeights, StateDictMismatch) as e:
                if not skip_bad:
                    raise
                skipped.append(str(e))
        if skipped:
            warnings.warn(f"to_graphs skipped {len(skipped)} damaged checkpoint window(s) of {self.source}: "
                          + "; ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""), stacklevel=2)
        return graphs

    def verify(self, runs: Iterable[str] | None = None, *, deep: bool = True,
               allow_nonfinite: bool = False) -> list["Problem"]:
        """Problems of the stored checkpoints, each naming run, step and file (empty when all are healthy).

        Finds unparsable metadata, rows whose weights file is missing, truncated or corrupt files,
        files holding another checkpoint, tensors not fitting the architecture and (unless
        ``allow_nonfinite``) NaN/Inf values. ``deep=False`` checks sizes and headers only.
        """
        from .verify import verify

        return verify(self, runs, deep=deep, allow_nonfinite=allow_nonfinite)

    # ------------------------------------------------------------------ hub
    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None,
                    revision: str | None = None,
                    commit_message: str = "Upload weightspace checkpoint collection") -> str:
        """Upload the collection as a Hugging Face dataset repository (created if needed); returns the commit URL.

        Temp files left by interrupted writes are not uploaded. Open it back with
        ``CheckpointCollection.open(f"hf://datasets/{repo_id}")``.
        """
        if not self.read_only:
            self.update_card()
        return hub.upload(self.root, repo_id, private=private, token=token, revision=revision,
                          commit_message=commit_message)
