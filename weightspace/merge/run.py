"""Running merges: inputs of any kind, alignment into one basin, streaming over safetensors, YAML configs."""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import CorruptCheckpoint, MergeError, NonFiniteWeights, StateDictMismatch
from ..space import WeightSpace
from ..utils import atomic_write, closest, did_you_mean, fsync_dir, read_safetensors, umask_mode
from .methods import MergeMethod, check_parameters, get_method

ModelLike = Union[Mapping[str, Tensor], nn.Module, str, Path]
SPACE_FILE = "weightspace.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


# ---------------------------------------------------------------------------- inputs
def _files(path: Path) -> list[Path]:
    if not path.exists():
        raise MergeError(f"model file {path} does not exist")
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise MergeError(f"folder {path} holds no .safetensors file")
        return files
    if path.suffix != ".safetensors":
        raise MergeError(f"{path}: only .safetensors files (or folders of them) can be merged")
    return [path]


def load_state_dict(model: ModelLike) -> dict[str, Tensor]:
    """A state_dict from a mapping, a module, a safetensors file or a folder of safetensors shards."""
    if isinstance(model, nn.Module):
        return {k: v.detach() for k, v in model.state_dict().items()}
    if isinstance(model, Mapping):
        return dict(model)
    out: dict[str, Tensor] = {}
    for f in _files(Path(model)):
        out.update(read_safetensors(f)[0])
    return out


def space_for(model: ModelLike) -> WeightSpace | None:
    """The WeightSpace stored beside a checkpoint (``weightspace.json`` in its folder), if any."""
    if isinstance(model, (str, Path)):
        p = Path(model)
        folder = p if p.is_dir() else p.parent
        if (folder / SPACE_FILE).exists():
            return WeightSpace.load(folder / SPACE_FILE)
    return None


def _name(model: ModelLike, i: int) -> str:
    return str(model) if isinstance(model, (str, Path)) else f"model {i}"


def _check_models(sds: Sequence[Mapping[str, Tensor]], names: Sequence[str], space: WeightSpace | None) -> None:
    ref, ref_name = sds[0], names[0]
    for sd, name in zip(sds, names):
        if space is not None:
            space.check(sd, source=name)
        if set(sd) != set(ref):
            diff = sorted(set(sd) ^ set(ref))
            raise StateDictMismatch(f"{name} and {ref_name} are different architectures: keys differ "
                                    f"({diff[:6]}{' ...' if len(diff) > 6 else ''})")
        for k, t in sd.items():
            r = ref[k]
            if t.shape != r.shape:
                raise StateDictMismatch(f"{name} and {ref_name} are different architectures: '{k}' has shape "
                                        f"{tuple(t.shape)} vs {tuple(r.shape)}")
            if t.dtype != r.dtype:
                raise StateDictMismatch(f"'{k}' is {t.dtype} in {name} but {r.dtype} in {ref_name}; cast them first")
            if t.device != r.device:
                raise StateDictMismatch(f"'{k}' is on {t.device} in {name} but on {r.device} in {ref_name}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise NonFiniteWeights(f"'{k}' in {name} holds {int((~torch.isfinite(t)).sum())} NaN/Inf values")


# ---------------------------------------------------------------------------- parameters
def param_for(value: Any, key: str) -> Any:
    """Resolve a parameter for one tensor: a scalar, or a list of ``{filter: regex, value: v}`` entries
    where the first whose filter matches ``key`` (``re.search``) wins and one without filter is the default."""
    if isinstance(value, list) and value and all(isinstance(v, Mapping) and "value" in v for v in value):
        default = None
        for entry in value:
            f = entry.get("filter")
            if f is None:
                default = entry["value"] if default is None else default
            elif re.search(str(f), key):
                return entry["value"]
        return default
    return value


def _tensor_params(method: MergeMethod, key: str, parameters: Mapping[str, Any],
                   model_parameters: Sequence[Mapping[str, Any]]) -> tuple[list[float], dict[str, Any]]:
    params = {k: param_for(v, key) for k, v in parameters.items()}
    per_model: dict[str, list] = {}
    for name in method.per_model:
        vals = []
        for mp in model_parameters:
            v = param_for(mp.get(name), key) if name in mp else None
            vals.append(v)
        if any(v is not None for v in vals):
            default = params.get(name, 1.0 if name == "weight" else None)
            per_model[name] = [default if v is None else v for v in vals]
    weights = [float(w) for w in per_model.pop("weight", [params.pop("weight", 1.0)] * len(model_parameters))]
    params.pop("weight", None)
    params.update(per_model)
    return weights, {method.argument(k): v for k, v in params.items()}


def merge_tensor(method: MergeMethod, key: str, tensors: Sequence[Tensor], base: Tensor | None,
                 parameters: Mapping[str, Any], model_parameters: Sequence[Mapping[str, Any]]) -> Tensor:
    """Merge one key's tensors (computed in float32, returned in the inputs' dtype)."""
    ref = base if base is not None else tensors[0]
    if not ref.is_floating_point():
        return ref.clone()
    weights, params = _tensor_params(method, key, parameters, model_parameters)
    out = method.fn([t.float() for t in tensors], weights, None if base is None else base.float(), key=key, **params)
    return out.to(ref.dtype)


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """An output dtype: ``None`` (keep the inputs'), a floating torch.dtype, or its name (``"bfloat16"``)."""
    if dtype is None or isinstance(dtype, torch.dtype) and dtype.is_floating_point and dtype in _ST_DTYPES:
        return dtype
    names = sorted(str(d).removeprefix("torch.") for d in _ST_DTYPES if d.is_floating_point)
    if isinstance(dtype, str):
        d = getattr(torch, dtype.removeprefix("torch."), None)
        if isinstance(d, torch.dtype) and d.is_floating_point and d in _ST_DTYPES:
            return d
        raise MergeError(f"dtype: unknown output dtype {dtype!r}{did_you_mean(dtype, names)}; choose one of "
                         f"{', '.join(names)}")
    raise MergeError(f"dtype: {dtype!r} is not a floating safetensors dtype; choose one of {', '.join(names)}")


def _prepare(method: str | MergeMethod, n: int, base: Any, parameters: Mapping[str, Any] | None,
             model_parameters: Sequence[Mapping[str, Any]] | None) -> tuple[MergeMethod, list]:
    """The one validation path of :func:`merge` and :func:`merge_files`: method, model count, base model,
    and every parameter name and value."""
    if not isinstance(method, (str, MergeMethod)):
        raise MergeError(f"merge method must be a name, got {method!r}")
    m = get_method(method) if isinstance(method, str) else method
    if n < m.min_models or (m.max_models is not None and n > m.max_models):
        want = f"exactly {m.min_models}" if m.min_models == m.max_models else f"at least {m.min_models}"
        raise MergeError(f"merge method {m.name} needs {want} models, got {n}")
    if m.needs_base and base is None:
        raise MergeError(f"merge method {m.name} needs a base model (base_model)")
    mp = list(model_parameters) if model_parameters is not None else [{} for _ in range(n)]
    if len(mp) != n:
        raise MergeError(f"{len(mp)} per-model parameter sets for {n} models")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise MergeError(f"parameters must be a mapping, got {parameters!r}")
    check_parameters(m, parameters or {}, mp)
    return m, mp


def _space(space: WeightSpace | str | Path | None, inputs: Sequence[ModelLike]) -> WeightSpace | None:
    if isinstance(space, (str, Path)):
        if not Path(space).exists():
            raise MergeError(f"weight space file {space} does not exist")
        return WeightSpace.load(space)
    if space is not None:
        return space
    for m in inputs:
        s = space_for(m)
        if s is not None:
            return s
    return None


def _align_all(space: WeightSpace | None, sds: list[dict[str, Tensor]], ref: Mapping[str, Tensor],
               progress: bool) -> list[dict]:
    """Permutations bringing every model into the basin of ``ref`` (Git Re-Basin weight matching)."""
    from ..align import weight_matching
    if space is None:
        raise MergeError("align needs the models' WeightSpace: pass space= (a WeightSpace or its JSON) or keep "
                         f"{SPACE_FILE} beside the checkpoints")
    return [weight_matching(space, ref, sd) if sd is not ref else {} for sd in sds]


# ---------------------------------------------------------------------------- in memory
def merge(models: Sequence[ModelLike], method: str = "linear", *, base: ModelLike | None = None,
          parameters: Mapping[str, Any] | None = None, model_parameters: Sequence[Mapping[str, Any]] | None = None,
          align: str | None = None, space: WeightSpace | str | Path | None = None,
          progress: bool = False) -> dict[str, Tensor]:
    """Merge models in memory; each of ``models`` (and ``base``) is a state_dict, a module, a safetensors
    file or a folder of them.

    ``parameters`` are the method's (``t``, ``lambda``, ``density``, ``normalize``, ``seed``...),
    each a scalar or a list of per-tensor filters (see :func:`param_for`); ``model_parameters`` one
    mapping per model (``weight``, ``density``). ``align="weight"`` first brings every model into the
    basin of the base model (or of the first model) with weight matching; it needs ``space``.
    """
    m, mp = _prepare(method, len(models), base, parameters, model_parameters)
    sds = [load_state_dict(x) for x in models]
    names = [_name(x, i) for i, x in enumerate(models)]
    base_sd = load_state_dict(base) if base is not None else None
    sp = _space(space, [*models, *([base] if base is not None else [])])
    _check_models(sds + ([base_sd] if base_sd is not None else []), names + (["base model"] if base_sd else []), sp)
    if align:
        if align != "weight":
            raise MergeError(f"align must be 'weight' (or empty), got {align!r}")
        ref = base_sd if base_sd is not None else sds[0]
        perms = _align_all(sp, sds, ref, progress)
        sds = [sp.permute(sd, p) if p else sd for sd, p in zip(sds, perms)]  # type: ignore[union-attr]
    keys = list(base_sd if base_sd is not None else sds[0])
    it: Iterable[str] = keys
    if progress:
        from ..utils import progress_bar
        it = progress_bar(keys, desc=f"merge ({m.name})", unit="tensor")
    return {k: merge_tensor(m, k, [sd[k] for sd in sds], None if base_sd is None else base_sd[k],
                            parameters or {}, mp) for k in it}


# ---------------------------------------------------------------------------- output folder
class _Staged:
    """Write an output folder's files into a hidden temp folder beside it, and move them in only when
    every file is complete: a failed merge leaves no partial folder (and a user's existing folder, with
    its other files, as it was)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out = Path(out_dir)
        if self.out.exists() and not self.out.is_dir():
            raise MergeError(f"output {self.out} exists and is not a folder")
        self.out.parent.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Path:
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".tmp", dir=self.out.parent))
        os.chmod(self.tmp, umask_mode(directory=True))  # it becomes the output folder
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                if not self.out.exists():
                    os.replace(self.tmp, self.out)
                    fsync_dir(self.out.parent)
                    return
                for f in self.tmp.iterdir():
                    os.replace(f, self.out / f.name)
                fsync_dir(self.out)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------- safetensors writer
def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as ``"5GB"``, ``"500MB"``, ``"2GiB"`` or mergekit's ``"5B"`` (billions)."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B|M|K)?\s*", str(size), re.I)
        if not m:
            raise MergeError(f"shard size {size!r} is not a size such as 5GB, 500MB or 2GiB")
        unit = (m.group(2) or "").upper()
        mult = {"": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "B": 10**9, "GB": 10**9, "TB": 10**12,
                "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
        value = int(float(m.group(1)) * mult)
    if value < 1:
        raise MergeError(f"shard size must be positive, got {size!r}")
    return value


DEFAULT_SHARD_SIZE = 5 * 10**9
"""mergekit's default ``--out-shard-size`` (5B bytes)."""


def plan_shards(specs: Mapping[str, tuple[torch.dtype, tuple[int, ...]]], max_shard_size: int | str) -> list[list[str]]:
    """Keys split, in order, into shards of at most ``max_shard_size`` bytes (a larger tensor gets its own)."""
    limit = parse_size(max_shard_size)
    shards: list[list[str]] = [[]]
    used = 0
    for k, (dtype, shape) in specs.items():
        if dtype not in _ST_DTYPES:
            raise MergeError(f"'{k}': dtype {dtype} cannot be stored in safetensors")
        n = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        if shards[-1] and used + n > limit:
            shards.append([])
            used = 0
        shards[-1].append(k)
        used += n
    return shards


def write_model(folder: Path, specs: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
                tensors: Iterator[tuple[str, Tensor]], metadata: Mapping[str, str] | None = None,
                max_shard_size: int | str = DEFAULT_SHARD_SIZE) -> list[Path]:
    """Write tensors (in ``specs`` order) with ``safetensors.torch.save_file``, one shard at a time.

    One shard is ``model.safetensors``; several are ``model-00001-of-0000N.safetensors`` plus
    ``model.safetensors.index.json`` (``metadata.total_size`` and ``weight_map``), the convention of
    mergekit and transformers. Memory holds one shard's tensors at most.
    """
    from safetensors.torch import save_file

    shards = plan_shards(specs, max_shard_size)
    n = len(shards)
    names = [WEIGHTS_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    meta = {"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    it = iter(tensors)
    total, weight_map, paths = 0, {}, []
    for keys, name in zip(shards, names):
        part: dict[str, Tensor] = {}
        seen: set[int] = set()
        for key in keys:
            k, t = next(it)
            dtype, shape = specs[key]
            if k != key or t.dtype != dtype or tuple(t.shape) != tuple(shape):
                raise MergeError(f"tensor '{k}' {t.dtype} {tuple(t.shape)} does not match the header entry "
                                 f"'{key}' {dtype} {tuple(shape)}")
            t = t.detach().to("cpu").contiguous()
            if t.numel() and t.untyped_storage().data_ptr() in seen:
                t = t.clone()  # tied tensors: safetensors stores each key on its own
            seen.add(t.untyped_storage().data_ptr())
            part[k] = t
            total += t.numel() * t.element_size()
            weight_map[k] = name
        paths.append(atomic_write(folder / name, lambda tmp, part=part: save_file(part, str(tmp), metadata=meta)))
        del part
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        paths.append(atomic_write(folder / INDEX_FILE, lambda tmp: tmp.write_text(json.dumps(index, indent=2) + "\n")))
    return paths


def save_merged(out_dir: str | Path, state_dict: Mapping[str, Tensor], space: WeightSpace | None = None,
                metadata: Mapping[str, str] | None = None, *, max_shard_size: int | str = DEFAULT_SHARD_SIZE) -> Path:
    """Write ``OUT_DIR/model.safetensors`` (sharded with an index above ``max_shard_size``), and
    ``weightspace.json`` when the space is known."""
    specs = {k: (t.dtype, tuple(t.shape)) for k, t in state_dict.items()}
    staged = _Staged(out_dir)
    with staged as tmp:
        write_model(tmp, specs, iter(state_dict.items()), metadata, max_shard_size)
        if space is not None:
            space.save(tmp / SPACE_FILE)
    return staged.out


# ---------------------------------------------------------------------------- streaming
class _Reader:
    """Lazy access to one model's tensors over its safetensors files (``safe_open``)."""

    def __init__(self, path: str | Path, stack: ExitStack) -> None:
        from safetensors import safe_open
        self.path = Path(path)
        self.where: dict[str, Any] = {}
        for f in _files(self.path):
            try:
                h = stack.enter_context(safe_open(str(f), framework="pt"))
            except Exception as e:
                raise CorruptCheckpoint(f"cannot read {f}: {e}") from e
            for k in h.keys():
                self.where[k] = h

    def spec(self, key: str) -> tuple[torch.dtype, tuple[int, ...]]:
        sl = self.where[key].get_slice(key)
        return _ST_NAMES[sl.get_dtype()], tuple(sl.get_shape())

    def get(self, key: str) -> Tensor:
        return self.where[key].get_tensor(key)


def merge_files(models: Sequence[str | Path], out_dir: str | Path, method: str = "linear", *,
                base: str | Path | None = None, parameters: Mapping[str, Any] | None = None,
                model_parameters: Sequence[Mapping[str, Any]] | None = None, align: str | None = None,
                space: WeightSpace | str | Path | None = None, dtype: torch.dtype | str | None = None,
                progress: bool = False, max_shard_size: int | str = DEFAULT_SHARD_SIZE) -> Path:
    """Merge safetensors checkpoints tensor by tensor into ``OUT_DIR/model.safetensors``, or into
    ``model-0000i-of-0000N.safetensors`` shards plus ``model.safetensors.index.json`` above ``max_shard_size``.

    Memory stays around one tensor per input plus one output shard: tensors are read with
    ``safe_open`` and each shard is written with ``safetensors.torch.save_file`` once it is merged. With ``align="weight"`` the permutations are computed first
    (weight matching needs every tensor once), then applied per tensor while streaming.
    The WeightSpace (``space`` or a ``weightspace.json`` beside an input) is written beside it.
    """
    m, mp = _prepare(method, len(models), base, parameters, model_parameters)
    dtype = _dtype(dtype)
    sp = _space(space, [*models, *([base] if base is not None else [])])
    perms: list[dict] = [{} for _ in models]
    if align:
        if align != "weight":
            raise MergeError(f"align must be 'weight' (or empty), got {align!r}")
        sds = [load_state_dict(x) for x in models]
        ref = load_state_dict(base) if base is not None else sds[0]
        _check_models(sds + [ref], [str(x) for x in models] + ["reference"], sp)
        perms = _align_all(sp, sds, ref, progress)
        del sds, ref
    staged = _Staged(out_dir)
    with ExitStack() as stack:
        tmp = stack.enter_context(staged)
        readers = [_Reader(x, stack) for x in models]
        breader = _Reader(base, stack) if base is not None else None
        ref = breader or readers[0]
        keys = list(ref.where)
        for r in readers + ([breader] if breader else []):
            if set(r.where) != set(keys):
                diff = sorted(set(r.where) ^ set(keys))
                raise StateDictMismatch(f"{r.path} and {ref.path} are different architectures: keys differ "
                                        f"({diff[:6]})")
            for k in keys:
                if r.spec(k) != ref.spec(k):
                    raise StateDictMismatch(f"'{k}' is {r.spec(k)} in {r.path} but {ref.spec(k)} in {ref.path}")
        specs = {k: (dtype if dtype is not None and ref.spec(k)[0].is_floating_point else ref.spec(k)[0],
                     ref.spec(k)[1]) for k in keys}

        def permuted(t: Tensor, k: str, perm: dict) -> Tensor:
            if not perm:
                return t
            spec = sp.params[sp.aliases.get(k, k)]  # type: ignore[union-attr]
            for axis, d in enumerate(spec.axes):
                t = t.index_select(axis, sp.axis_index(d, perm))  # type: ignore[union-attr]
            return t

        def produce() -> Iterator[tuple[str, Tensor]]:
            it: Iterable[str] = keys
            if progress:
                from ..utils import progress_bar
                it = progress_bar(keys, desc=f"merge ({m.name}, streaming)", unit="tensor")
            for k in it:
                ts = [permuted(r.get(k), k, p) for r, p in zip(readers, perms)]
                for t, r in zip(ts, readers):
                    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                        raise NonFiniteWeights(f"'{k}' in {r.path} holds NaN/Inf values")
                if sp is not None:
                    want = sp.params[sp.aliases.get(k, k)].shape if (k in sp.params or k in sp.aliases) else None
                    if want is None or tuple(ts[0].shape) != tuple(want):
                        raise StateDictMismatch(f"'{k}' does not fit the weight space {sp.name}")
                b = breader.get(k) if breader is not None else None
                out = merge_tensor(m, k, ts, b, parameters or {}, mp)
                yield k, out.to(specs[k][0])

        write_model(tmp, specs, produce(), {"merge_method": m.name, "models": json.dumps([str(x) for x in models])},
                    max_shard_size)
        if sp is not None:
            sp.save(tmp / SPACE_FILE)
    return staged.out


# ---------------------------------------------------------------------------- configs
def load_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a merge config (YAML), resolving model paths relative to the config file."""
    import yaml
    path = Path(path)
    if not path.exists():
        raise MergeError(f"merge config {path} does not exist")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise MergeError(f"cannot parse merge config {path}: {e}") from e
    if not isinstance(cfg, dict):
        raise MergeError(f"merge config {path} must be a mapping")
    valid = ["models", "merge_method", "base_model", "parameters", "align", "space", "dtype", "out_shard_size"]
    unknown = set(cfg) - set(valid)
    if unknown:
        hints = "".join(f"; {u!r}: did you mean {c!r}?" for u in sorted(unknown) if (c := closest(u, valid)))
        raise MergeError(f"merge config {path}: unknown fields {sorted(unknown)}{hints}")
    root = path.parent

    def resolve(p: Any, what: str) -> Path:
        q = Path(str(p))
        q = q if q.is_absolute() else root / q
        if not q.exists():
            raise MergeError(f"merge config {path}: {what} {p} does not exist (looked for {q})")
        return q

    models = cfg.get("models")
    if not models or not isinstance(models, list):
        raise MergeError(f"merge config {path}: 'models' must be a non-empty list")
    entries = []
    for i, e in enumerate(models):
        if isinstance(e, (str, Path)):
            e = {"model": e}
        if not isinstance(e, dict) or "model" not in e:
            raise MergeError(f"merge config {path}: models[{i}] needs a 'model' path")
        extra = set(e) - {"model", "parameters"}
        if extra:
            raise MergeError(f"merge config {path}: models[{i}] has unknown fields {sorted(extra)}; an entry is "
                             "{model: path, parameters: {...}}")
        entries.append({"model": resolve(e["model"], f"models[{i}]"), "parameters": dict(e.get("parameters") or {})})
    out = {
        "models": [e["model"] for e in entries],
        "model_parameters": [e["parameters"] for e in entries],
        "method": cfg.get("merge_method", "linear"),
        "base": resolve(cfg["base_model"], "base_model") if cfg.get("base_model") else None,
        "parameters": dict(cfg.get("parameters") or {}),
        "align": cfg.get("align") or None,
        "space": resolve(cfg["space"], "space") if cfg.get("space") else None,
        "dtype": _dtype(str(cfg["dtype"])) if cfg.get("dtype") else None,
        "max_shard_size": parse_size(cfg["out_shard_size"]) if cfg.get("out_shard_size") else DEFAULT_SHARD_SIZE,
    }
    _prepare(out["method"], len(out["models"]), out["base"], out["parameters"], out["model_parameters"])
    return out


def run_config(config: str | Path, out_dir: str | Path, *, progress: bool = False,
               max_shard_size: int | str | None = None) -> Path:
    """Run a mergekit-style YAML config: ``weightspace merge config.yml OUT_DIR``.

    ``max_shard_size`` (bytes or ``"5GB"``) overrides the config's ``out_shard_size``."""
    c = load_config(config)
    return merge_files(c["models"], out_dir, c["method"], base=c["base"], parameters=c["parameters"],
                       model_parameters=c["model_parameters"], align=c["align"], space=c["space"],
                       dtype=c["dtype"], progress=progress,
                       max_shard_size=c["max_shard_size"] if max_shard_size is None else max_shard_size)
