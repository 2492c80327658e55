"""``WeightSpace``: a model's parameters, their neuron groups and its neural-graph layout, derived once."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from ..errors import InvalidPermutation, NonFiniteWeights, StateDictMismatch, WeightSpaceError
from ..utils import atomic_write_text
from .axes import Cat, Desc, Prod, axis_index
from .records import ActivationSite
from .trace import EdgePlacement, Link, NodePlacement, Site, trace_module

FORMAT = "weightspace/1"
Permutation = dict[str, torch.Tensor]
StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Group:
    """A set of units that move together: permutable (hidden units, channels, heads) or fixed."""

    name: str
    size: int
    permutable: bool
    label: str
    parent: str | None = None


@dataclass(frozen=True)
class ParamSpec:
    """One state_dict entry: its shape, dtype and, per axis, the group structure it moves with."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    axes: tuple[Desc, ...]


def _desc_to_json(d: Desc) -> Any:
    if isinstance(d, int):
        return d
    return {"prod" if isinstance(d, Prod) else "cat": [_desc_to_json(p) for p in d.parts]}


def _desc_from_json(j: Any) -> Desc:
    if isinstance(j, int):
        return j
    (kind, parts), = j.items()
    return (Prod if kind == "prod" else Cat)(tuple(_desc_from_json(p) for p in parts))


def _desc_str(d: Desc, groups: Sequence[Group]) -> str:
    if isinstance(d, int):
        g = groups[d]
        return f"{g.name}({g.size}{'' if g.permutable else ',fixed'})"
    sep = " x " if isinstance(d, Prod) else " | "
    return "[" + sep.join(_desc_str(p, groups) for p in d.parts) + "]"


def _desc_leaves(d: Desc) -> list[int]:
    return [d] if isinstance(d, int) else [leaf for p in d.parts for leaf in _desc_leaves(p)]


def _group_nodes(op_of: Mapping[int, str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for node, op in op_of.items():
        out.setdefault(op, []).append(node)
    return out


def _shape(t: Any) -> tuple[int, ...] | str:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else f"not a tensor: {type(t).__name__}"


def _nested_groups(groups: list[Group], descs: list[Desc], leafsets: list[frozenset[int]]) -> dict[int, int]:
    """Groups that may be permuted independently per unit of another group (units within attention heads).

    A group ``g`` is nested in ``h`` when every tensor of the traced computation that indexes ``g``
    also indexes ``h`` (so nothing mixes ``g`` across different ``h``), and ``g`` always directly
    follows ``h`` in the parameter and node layouts.
    """
    follows: dict[int, set[int | None]] = {}

    def visit(d: Desc, prev: Desc | None) -> None:
        if isinstance(d, int):
            follows.setdefault(d, set()).add(prev if isinstance(prev, int) else None)
            return
        for k, part in enumerate(d.parts):
            visit(part, d.parts[k - 1] if isinstance(d, Prod) and k > 0 else None)

    for d in descs:
        visit(d, None)
    nested: dict[int, int] = {}
    for g, prevs in follows.items():
        if len(prevs) != 1 or None in prevs or not groups[g].permutable:
            continue
        (h,) = prevs
        if not groups[h].permutable or h in nested:
            continue
        if all(h in ls for ls in leafsets if g in ls):
            nested[g] = h
    return nested


class WeightSpace:
    """The structure of a model's weights, traced once from the module.

    It holds the neuron groups, the axes of every state_dict entry (buffers included),
    and the neural-graph layout. Permutations, graphs, alignment and collections are
    all views of it.
    """

    def __init__(self, *, keys: list[str], aliases: dict[str, str], params: dict[str, ParamSpec],
                 groups: list[Group], sites: list[Site], edges: list[EdgePlacement],
                 node_params: list[NodePlacement], links: list[Link], output_nodes: list[int],
                 notes: list[str] | None = None, name: str = "",
                 activation_sites: list[ActivationSite] | None = None,
                 nonlinearities: Mapping[str, Sequence[int]] | None = None) -> None:
        self.keys = keys
        self.aliases = aliases
        self.params = params
        self.groups = groups
        self.sites = sites
        self.edges = edges
        self.node_params = node_params
        self.links = links
        self.output_nodes = output_nodes
        self.notes = notes or []
        self.name = name
        self.activation_sites = activation_sites or []
        self.nonlinearities = {op: sorted(int(n) for n in nodes)
                               for op, nodes in sorted((nonlinearities or {}).items())}
        """The nodes each traced nonlinearity (``relu``, ``gelu``, ``tanh``...) acts on, by its name."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_module(cls, model: nn.Module, example_input: Any) -> "WeightSpace":
        """Trace ``model`` on ``example_input`` and derive its weight space.

        Raises :class:`~weightspace.errors.UnsupportedOperation` naming the module and
        operation when some part of the model cannot be described.
        """
        r = trace_module(model, example_input)
        s = r.solver
        leaf_group: dict[int, int] = {}
        groups: list[Group] = []

        def convert(d: Desc, label: str) -> Desc:
            d = s.resolve(d)
            if isinstance(d, int):
                if d not in leaf_group:
                    leaf_group[d] = len(groups)
                    groups.append(Group(f"g{len(groups)}", s.size[d], not s.fixed[d] and s.size[d] > 1, label))
                return leaf_group[d]
            return type(d)(tuple(convert(p, label) for p in d.parts))

        params: dict[str, ParamSpec] = {}
        for key in r.keys:
            if key in r.aliases:
                continue
            axes = tuple(convert(a, f"{key}[{i}]") for i, a in enumerate(r.param_axes[key]))
            params[key] = ParamSpec(key, r.shapes[key], r.dtypes[key], axes)
        sites = [Site(st.kind, convert(st.desc, f"site {i} ({st.kind})"), st.offset, st.count)
                 for i, st in enumerate(r.sites)]
        act_sites = []
        for a in r.activation_sites:
            d = convert(a.desc, f"{a.op} output of '{a.module or '<root>'}'")
            if any(groups[g].permutable for g in _desc_leaves(d)):
                act_sites.append(replace(a, desc=d))
        leafsets = [frozenset(leaf_group[v] for v in ls if v in leaf_group) for ls in r.tensor_leaves]
        descs = [a for p in params.values() for a in p.axes] + [st.desc for st in sites]
        for child, par in _nested_groups(groups, descs, leafsets).items():
            groups[child] = replace(groups[child], parent=groups[par].name)
        return cls(keys=r.keys, aliases=r.aliases, params=params, groups=groups, sites=sites, edges=r.edges,
                   node_params=r.nodes, links=r.links, output_nodes=r.output_nodes, notes=r.notes,
                   name=type(model).__name__, activation_sites=act_sites,
                   nonlinearities=_group_nodes(r.nonlinearities))

    # ------------------------------------------------------------------ facts
    @property
    def canonical_keys(self) -> list[str]:
        return [k for k in self.keys if k not in self.aliases]

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: self.params[self.aliases.get(k, k)].shape for k in self.keys}

    @property
    def num_params(self) -> int:
        return sum(torch.Size(p.shape).numel() for p in self.params.values())

    @property
    def permutable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.permutable]

    @property
    def num_nodes(self) -> int:
        return sum(s.count for s in self.sites)

    @cached_property
    def fingerprint(self) -> str:
        """A short stable hash of the architecture (its JSON without notes, name and activation sites).

        The nonlinearities are part of it: networks of the same shapes with ReLU and with tanh are
        different architectures. A space without recorded nonlinearities (a linear model, or JSON saved
        before they were traced) hashes as before, so existing collections keep their architecture ids.
        """
        j = self.to_json()
        j.pop("notes", None)
        j.pop("name", None)
        j.pop("activation_sites", None)
        if not j.get("nonlinearities"):
            j.pop("nonlinearities", None)
        return hashlib.sha256(json.dumps(j, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self, d: Desc) -> str:
        return _desc_str(d, self.groups)

    def __repr__(self) -> str:
        return (f"WeightSpace({self.name or 'model'}: {len(self.keys)} tensors, {self.num_params:,} values, "
                f"{len(self.permutable_groups)} permutable groups, {self.num_nodes} nodes)")

    def summary(self) -> str:
        """A human-readable table of groups and parameter axes."""
        lines = [repr(self), "groups:"]
        for g in self.groups:
            kind = ("permutable" if g.permutable else "fixed") + (f" per unit of {g.parent}" if g.parent else "")
            lines.append(f"  {g.name:>5}  size {g.size:<6} {kind:<24}  first: {g.label}")
        lines.append("parameters:")
        for k in self.keys:
            if k in self.aliases:
                lines.append(f"  {k}  (tied to {self.aliases[k]})")
                continue
            p = self.params[k]
            axes = ", ".join(self.describe(a) for a in p.axes) or "scalar"
            lines.append(f"  {k}  {tuple(p.shape)}  {str(p.dtype).replace('torch.', '')}  axes: {axes}")
        if self.nonlinearities:
            lines.append("nonlinearities: " + ", ".join(f"{op} on {len(nodes)} nodes"
                                                        for op, nodes in self.nonlinearities.items()))
        for n in self.notes:
            lines.append(f"note: {n}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ validation
    def check(self, state_dict: StateDict, *, allow_nonfinite: bool = False, source: str | None = None) -> None:
        """Raise a clear error if ``state_dict`` does not fit this space or holds NaN/Inf.

        :class:`~weightspace.errors.StateDictMismatch` names each missing or unexpected key, or the
        key of a wrong shape, with the shape expected and the shape found.
        """
        where = f" in {source}" if source else ""
        missing = [k for k in self.canonical_keys if k not in state_dict]
        extra = [k for k in state_dict if k not in self.params and k not in self.aliases]
        if missing or extra:
            def listed(keys: list[str], shape_of) -> str:
                return ", ".join(f"'{k}' {shape_of(k)}" for k in keys[:8]) + (" ..." if len(keys) > 8 else "")

            parts = []
            if missing:
                parts.append("missing keys " + listed(missing, lambda k: f"(expected shape {self.params[k].shape})"))
            if extra:
                parts.append("unexpected keys " + listed(extra, lambda k: f"(shape {_shape(state_dict[k])})"))
            raise StateDictMismatch(f"state_dict{where} does not match {self.name or 'the weight space'}: "
                                    + "; ".join(parts))
        for k, t in state_dict.items():
            spec = self.params[self.aliases.get(k, k)]
            if not isinstance(t, torch.Tensor):
                raise StateDictMismatch(f"'{k}'{where} is a {type(t).__name__}, not a tensor")
            if tuple(t.shape) != spec.shape:
                raise StateDictMismatch(f"'{k}'{where} has shape {tuple(t.shape)}, expected {spec.shape}")
            if k in self.aliases and self.aliases[k] in state_dict and \
                    not torch.equal(t, state_dict[self.aliases[k]]):
                raise StateDictMismatch(f"'{k}'{where} is tied to '{self.aliases[k]}' in the model but holds "
                                        f"different values")
            if not allow_nonfinite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise NonFiniteWeights(f"'{k}'{where} holds {bad} NaN/Inf values "
                                       f"(pass allow_nonfinite=True to accept them)")

    # ------------------------------------------------------------------ permutations
    @cached_property
    def _group_index(self) -> dict[str, int]:
        return {g.name: i for i, g in enumerate(self.groups)}

    def group(self, name: str) -> Group:
        if name not in self._group_index:
            raise WeightSpaceError(f"unknown group '{name}'")
        return self.groups[self._group_index[name]]

    def _shape_of_perm(self, g: Group) -> tuple[int, ...]:
        return (self.group(g.parent).size, g.size) if g.parent else (g.size,)

    def random_permutation(self, generator: torch.Generator | None = None) -> Permutation:
        """A uniformly random permutation of every permutable group.

        A nested group (units within an attention head) gets an independent permutation per
        parent unit: a ``[parent size, size]`` tensor indexed by the parent's new position.
        """
        out: Permutation = {}
        for g in self.permutable_groups:
            rows = self._shape_of_perm(g)[0] if g.parent else 1
            p = torch.stack([torch.randperm(g.size, generator=generator) for _ in range(rows)])
            out[g.name] = p if g.parent else p[0]
        return out

    def identity_permutation(self) -> Permutation:
        return {g.name: torch.arange(g.size).expand(self._shape_of_perm(g)).clone() for g in self.permutable_groups}

    def inverse(self, perm: Permutation) -> Permutation:
        """The permutation undoing ``perm``: ``permute(permute(sd, p), inverse(p)) == sd``."""
        self._perm_by_index(perm)
        out: Permutation = {}
        for name, p in perm.items():
            g = self.group(name)
            if g.parent is None:
                out[name] = torch.argsort(p)
            else:
                parent = perm.get(g.parent)
                inv_parent = torch.argsort(parent) if parent is not None else torch.arange(p.shape[0])
                out[name] = torch.argsort(p[inv_parent], dim=1)
        return out

    def compose(self, first: Permutation, then: Permutation) -> Permutation:
        """The permutation equal to applying ``first`` and then ``then``."""
        self._perm_by_index(first)
        self._perm_by_index(then)
        out = dict(first)
        for name, q in then.items():
            g = self.group(name)
            if name not in first:
                out[name] = q
            elif g.parent is None:
                out[name] = first[name][q]
            else:
                qp = then.get(g.parent)
                rows = first[name][qp] if qp is not None else first[name]
                out[name] = rows.gather(1, q)
        return out

    def _perm_by_index(self, perm: Permutation) -> dict[int, torch.Tensor]:
        """``perm`` keyed by group index, after checking it; raises :class:`InvalidPermutation`."""
        if not isinstance(perm, Mapping):
            raise InvalidPermutation(f"a permutation is a dict from group name to index tensor, "
                                     f"not a {type(perm).__name__}")
        out: dict[int, torch.Tensor] = {}
        for name, p in perm.items():
            if name not in self._group_index:
                names = ", ".join(g.name for g in self.permutable_groups) or "none"
                raise InvalidPermutation(f"permutation names unknown group '{name}' (permutable groups of "
                                         f"{self.name or 'this space'}: {names})")
            g = self.group(name)
            if not g.permutable:
                raise InvalidPermutation(f"group '{name}' ({g.label}) is fixed and cannot be permuted")
            shape = self._shape_of_perm(g)
            what = f"permutation of group '{name}' must be {'rows of ' if g.parent else ''}" \
                   f"a permutation of {g.size} units, shaped {shape}"
            try:
                t = torch.as_tensor(p)
            except (TypeError, ValueError, RuntimeError) as e:
                raise InvalidPermutation(f"{what}; got {type(p).__name__} ({e})") from e
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise InvalidPermutation(f"{what}; got a {t.dtype} tensor, not integers")
            if tuple(t.shape) != shape:
                raise InvalidPermutation(f"{what}; got shape {tuple(t.shape)}")
            t = t.to(device="cpu", dtype=torch.long)
            if not torch.equal(torch.sort(t, dim=-1).values, torch.arange(g.size).expand(shape)):
                raise InvalidPermutation(f"{what}; got values that repeat or leave the range 0..{g.size - 1}")
            out[self._group_index[name]] = t
        return out

    @cached_property
    def _parents(self) -> dict[int, int]:
        return {i: self._group_index[g.parent] for i, g in enumerate(self.groups) if g.parent}

    def axis_index(self, d: Desc, perm: Permutation | dict[int, torch.Tensor]) -> torch.Tensor:
        """Gather index of an axis with structure ``d`` under ``perm`` (``new[j] = old[idx[j]]``)."""
        byi = perm if all(isinstance(k, int) for k in perm) else self._perm_by_index(perm)  # type: ignore[arg-type]
        return axis_index(lambda g: self.groups[g].size, d, byi, self._parents)  # type: ignore[arg-type]

    def permute(self, state_dict: StateDict, perm: Permutation) -> dict[str, torch.Tensor]:
        """Apply a permutation of the groups to a state_dict; the model's function is unchanged.

        Groups that ``perm`` does not name keep their order. A malformed ``perm`` raises
        :class:`~weightspace.errors.InvalidPermutation`; a state_dict that does not fit the space
        (missing, unexpected or wrongly shaped keys) raises
        :class:`~weightspace.errors.StateDictMismatch`, as :meth:`check` and :meth:`to_graph` do.
        """
        byi = self._perm_by_index(perm)
        self.check(state_dict, allow_nonfinite=True)
        out: dict[str, torch.Tensor] = {}
        for k, t in state_dict.items():
            spec = self.params[self.aliases.get(k, k)]
            for axis, d in enumerate(spec.axes):
                idx = self.axis_index(d, byi)
                if not torch.equal(idx, torch.arange(len(idx))):
                    t = t.index_select(axis, idx.to(t.device))
            out[k] = t
        return out

    def node_permutation(self, perm: Permutation) -> torch.Tensor:
        """How ``perm`` relabels graph nodes: node ``j`` of the permuted graph is node ``idx[j]`` of the original."""
        byi = self._perm_by_index(perm)
        return torch.cat([self.axis_index(s.desc, byi) + s.offset for s in self.sites]) if self.sites \
            else torch.zeros(0, dtype=torch.long)

    # ------------------------------------------------------------------ graphs
    @cached_property
    def layout(self):
        from ..graph.layout import GraphLayout
        return GraphLayout(self)

    def to_graph(self, state_dicts: StateDict | Sequence[StateDict], *, check: bool = True,
                 allow_nonfinite: bool = False):
        """Neural graph of one checkpoint or a stack of T checkpoints (``edge_attr`` is ``[E, T, F]``).

        Features are float64 when any tensor is float64, else float32, so every value (float16,
        bfloat16, integer buffers such as BatchNorm's ``num_batches_tracked``) is exact in them; the
        graph records each tensor's dtype in ``param_dtypes`` for :meth:`from_graph`. A state_dict may
        mix dtypes; the checkpoints of a stack must agree on them.
        """
        return self.layout.to_graph(state_dicts, check=check, allow_nonfinite=allow_nonfinite)

    def from_graph(self, data, *, as_list: bool | None = None):
        """Inverse of :meth:`to_graph`: the state_dict (or list of them, one per stacked state).

        Bit-exact, dtypes included: each tensor is cast back to the dtype ``to_graph`` recorded. A graph
        without that record (one a metanetwork wrote) gives the dtypes the space was traced with.
        """
        return self.layout.from_graph(data, as_list=as_list)

    # ------------------------------------------------------------------ activations
    def capture_activations(self, model: nn.Module, inputs: Any,
                            sites: Sequence[ActivationSite] | None = None) -> dict[int, torch.Tensor]:
        """Outputs at the activation sites (all of :attr:`activation_sites` by default), keyed by ``site.call``.

        Runs ``model`` once on ``inputs`` (same convention as :meth:`from_module`), in eval mode
        without gradients. The unit axis of each tensor is ``site.dim``. Raises
        :class:`~weightspace.errors.WeightSpaceError` when the forward takes another path than when traced.
        """
        from .capture import capture_activations
        return capture_activations(model, inputs, self.activation_sites if sites is None else sites)

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "keys": self.keys,
            "aliases": self.aliases,
            "params": {k: {"shape": list(p.shape), "dtype": str(p.dtype).replace("torch.", ""),
                           "axes": [_desc_to_json(a) for a in p.axes]} for k, p in self.params.items()},
            "groups": [{"name": g.name, "size": g.size, "permutable": g.permutable, "label": g.label,
                        "parent": g.parent} for g in self.groups],
            "sites": [{"kind": s.kind, "desc": _desc_to_json(s.desc), "offset": s.offset, "count": s.count}
                      for s in self.sites],
            "edges": [{"key": e.key, "kind": e.kind, "out_axis": e.out_axis, "in_axis": e.in_axis,
                       "out_nodes": e.out_nodes, "in_nodes": e.in_nodes, "primary": e.primary} for e in self.edges],
            "node_params": [{"key": n.key, "nodes": n.nodes} for n in self.node_params],
            "links": [{"kind": link.kind, "src": link.src, "dst": link.dst} for link in self.links],
            "output_nodes": self.output_nodes,
            "notes": self.notes,
            "activation_sites": [{**asdict(a), "desc": _desc_to_json(a.desc)} for a in self.activation_sites],
            "nonlinearities": self.nonlinearities,
        }

    @classmethod
    def from_json(cls, j: Mapping[str, Any]) -> "WeightSpace":
        if j.get("format") != FORMAT:
            raise WeightSpaceError(f"not a weightspace JSON (format {j.get('format')!r}, expected {FORMAT!r})")
        params = {k: ParamSpec(k, tuple(p["shape"]), getattr(torch, p["dtype"]),
                               tuple(_desc_from_json(a) for a in p["axes"])) for k, p in j["params"].items()}
        return cls(
            keys=list(j["keys"]), aliases=dict(j["aliases"]), params=params,
            groups=[Group(g["name"], g["size"], g["permutable"], g["label"], g.get("parent")) for g in j["groups"]],
            sites=[Site(s["kind"], _desc_from_json(s["desc"]), s["offset"], s["count"]) for s in j["sites"]],
            edges=[EdgePlacement(**e) for e in j["edges"]],
            node_params=[NodePlacement(**n) for n in j["node_params"]],
            links=[Link(**link) for link in j["links"]],
            output_nodes=list(j["output_nodes"]), notes=list(j.get("notes", [])), name=j.get("name", ""),
            activation_sites=[ActivationSite(**{**a, "desc": _desc_from_json(a["desc"])})
                              for a in j.get("activation_sites", [])],
            nonlinearities=j.get("nonlinearities", {}))

    def save(self, path: str | Path) -> Path:
        """Write the space as JSON (atomically)."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_json(), separators=(",", ":")))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "WeightSpace":
        path = Path(path)
        try:
            j = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise WeightSpaceError(f"cannot read weight space JSON {path}: {e}") from e
        return cls.from_json(j)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WeightSpace) and self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)
