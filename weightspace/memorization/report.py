"""A memorization report: nearest distances, behaviour, baselines and a verdict per generator.

The verdict follows Zeng et al. 2025 ("Generative Modeling of Weights: Generalization or
Memorization?"), with distances taken modulo the permutation symmetry. Its rule is stated in
:data:`RULE` and in every report.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from ..space import WeightSpace
from ..utils import atomic_write_text
from .baselines import BASELINES, Pool, make_baseline
from .behaviour import Evaluator, accuracy, agreement, behaviour, max_similarity
from .flat import MemorizationError, ModelSet
from .nearest import NearestIndex, NearestResult
from .training import load_training, recipe_model

DEFAULT_SWEEPS: dict[str, list[dict[str, Any]]] = {
    "noise": [{"scale": s} for s in (0.01, 0.05, 0.2, 0.5, 1.0)],
    "average": [{"k": 2, "aligned": False}, {"k": 2, "aligned": True}],
    "gaussian": [{"aligned": True}],
}
"""The variants each baseline contributes by default. ``noise`` takes ``scale``: the expected norm of
the noise vector as a fraction of the training set's median aligned spread (``sigma = scale *
spread / sqrt(P)``), so the sweep means the same for every architecture; ``sigma`` sets it directly."""

RULE = ("copies: median nearest aligned distance < {copy_fraction} x the training set's median aligned spread "
        "(each training model's distance to its nearest other training model); otherwise, with test data, "
        "interpolates: some baseline variant is at least as accurate AND at least as novel "
        "(novelty = 1 - median maximum similarity; accuracy = median), i.e. the generator is inside the "
        "baselines' accuracy-novelty front; novel: no baseline variant dominates it (beyond the front); "
        "without data only 'copies' or 'undetermined' can be decided")


def _median(t: Tensor) -> float:
    t = t[~torch.isnan(t)]
    return float(t.median()) if len(t) else float("nan")


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def _list(t: Tensor) -> list:
    return [_num(v) if isinstance(v, float) else v for v in t.tolist()]


@dataclass
class GroupResult:
    """One generator, one baseline variant, or the training set (its spread): per-model values and summary."""

    name: str
    kind: str
    n: int
    excluded: dict[int, str]
    aligned: NearestResult
    raw: NearestResult
    params: dict[str, Any] = field(default_factory=dict)
    behaviour: dict[str, Tensor] = field(default_factory=dict)
    verdict: str = ""

    def summary(self, spread: float, copy_fraction: float) -> dict[str, Any]:
        """Medians, the verdict, and ``copies``: how many models lie within ``copy_fraction`` x ``spread`` of a
        training model (aligned), which the median-based verdict alone would hide."""
        s = {"name": self.name, "kind": self.kind, "n": self.n, "excluded": len(self.excluded),
             "copies": int((self.aligned.distances < copy_fraction * spread).sum()),
             "median_aligned": _num(self.aligned.median()), "median_raw": _num(self.raw.median()),
             "relative_aligned": _num(self.aligned.median() / spread) if spread > 0 else None}
        for key in ("accuracy", "max_similarity", "agreement"):
            s[f"median_{key}"] = _num(_median(self.behaviour[key])) if key in self.behaviour else None
        s["verdict"] = self.verdict
        return s

    def to_json(self, spread: float, copy_fraction: float) -> dict[str, Any]:
        out = {"summary": self.summary(spread, copy_fraction), "params": self.params,
               "excluded": {str(k): v for k, v in self.excluded.items()},
               "aligned": {"distances": _list(self.aligned.distances), "indices": self.aligned.indices.tolist(),
                           "seconds": self.aligned.seconds},
               "raw": {"distances": _list(self.raw.distances), "indices": self.raw.indices.tolist()}}
        for key, t in self.behaviour.items():
            if key != "predictions":
                out[key] = _list(t)
        return out


@dataclass
class MemorizationReport:
    """Everything :func:`report` measured; :meth:`save` writes report.json, report.md and the PNG plots."""

    groups: list[GroupResult]
    spread_aligned: float
    spread_raw: float
    config: dict[str, Any]
    seconds: dict[str, float]

    def group(self, name: str) -> GroupResult:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    @property
    def verdicts(self) -> dict[str, str]:
        """The verdict of each generator."""
        return {g.name: g.verdict for g in self.groups if g.kind == "generated"}

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.config["rule"], "config": self.config, "verdicts": self.verdicts,
                "spread": {"median_aligned": _num(self.spread_aligned), "median_raw": _num(self.spread_raw)},
                "seconds": self.seconds, "groups": [g.to_json(self.spread_aligned, self.config["copy_fraction"]) for g in self.groups]}

    def markdown(self) -> str:
        cols = ["name", "kind", "n", "excluded", "copies", "median_aligned", "median_raw", "relative_aligned",
                "median_accuracy", "median_max_similarity", "median_agreement", "verdict"]
        head = ["model set", "kind", "n", "NaN excluded", "copies", "nearest aligned", "nearest raw", "aligned / spread",
                "accuracy", "max similarity", "agreement", "verdict"]

        def fmt(v: Any) -> str:
            return "–" if v is None or v == "" else f"{v:.4g}" if isinstance(v, float) else str(v)

        lines = ["# Memorization report", "",
                 f"Training set: {self.config['training_models']} models ({self.config['training_excluded']} "
                 f"excluded for NaN/Inf), median nearest-other distance {self.spread_aligned:.4g} aligned, "
                 f"{self.spread_raw:.4g} raw.", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for g in self.groups:
            s = g.summary(self.spread_aligned, self.config["copy_fraction"])
            lines.append("| " + " | ".join(fmt(s[c]) for c in cols) + " |")
        lines += ["", f"**Rule.** {self.config['rule']}", ""]
        for name, v in self.verdicts.items():
            lines.append(f"- **{name}**: {v}")
        return "\n".join(lines) + "\n"

    def save(self, out: str | Path) -> Path:
        """Write ``report.json``, ``report.md``, ``scatter.png`` (with data) and ``distances.png`` atomically."""
        from .plots import plot_distances, plot_scatter
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "report.json", json.dumps(self.to_json(), indent=1))
        atomic_write_text(out / "report.md", self.markdown())
        plot_distances(self, out / "distances.png")
        if any(g.behaviour for g in self.groups):
            plot_scatter(self, out / "scatter.png")
        return out


def _sets(space: WeightSpace, generated) -> dict[str, ModelSet]:
    if isinstance(generated, Mapping):
        items = list(generated.items())
    else:
        items = [("generated", generated)]
    if not items:
        raise MemorizationError("no generated models were given")
    return {name: m if isinstance(m, ModelSet) else ModelSet.build(space, list(m), f"generated model ({name})")
            for name, m in items}


def _variants(baselines) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(baselines, Mapping):
        items = [(name, list(v)) for name, v in baselines.items()]
    else:
        items = [(name, DEFAULT_SWEEPS.get(name, [{}])) for name in baselines]
    for name, _ in items:
        if name not in BASELINES:
            raise MemorizationError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    return [(name, dict(p)) for name, params in items for p in params]


def _label(name: str, params: Mapping[str, Any]) -> str:
    return name + ("(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")


def decide(group: GroupResult, spread: float, front: Sequence[tuple[float, float]], copy_fraction: float,
           has_data: bool) -> str:
    """The verdict of :data:`RULE` for one model set, given the baselines' (accuracy, novelty) points."""
    med = group.aligned.median()
    if math.isnan(med):
        return "undetermined (every model excluded)"
    if med < copy_fraction * spread:
        return "copies"
    if not has_data:
        return "undetermined (no data: the accuracy-novelty front needs accuracy)"
    acc = _median(group.behaviour["accuracy"])
    nov = 1.0 - _median(group.behaviour["max_similarity"])
    if any(a >= acc and n >= nov for a, n in front):
        return "interpolates"
    return "novel"


def report(space: WeightSpace | None, generated, training, *, data=None, model: nn.Module | None = None,
           model_fn: Callable[[], nn.Module] | None = None,
           baselines: Sequence[str] | Mapping[str, Sequence[Mapping[str, Any]]] = ("noise", "average", "gaussian"),
           samples: int | None = None, k: int = 5, copy_fraction: float = 0.1, exclude_same_run: bool = False,
           groups: Sequence[Hashable] | None = None, device: str | torch.device = "auto", seed: int = 0,
           progress: bool = False) -> MemorizationReport:
    """Measure how much ``generated`` models memorize ``training`` ones, against baselines from the same training set.

    ``generated`` is a list of state_dicts (one generator) or a dict name -> list (several);
    ``training`` a list of state_dicts or a ``CheckpointCollection``. Nearest distances are measured
    aligned (weight matching) and raw; the training set's spread is each training model's distance to
    its nearest other one (not of its run with ``exclude_same_run``). With ``data`` (a name of
    :data:`~weightspace.memorization.behaviour.DATA_SETS`, ``(x, y)`` or a callable, see
    :class:`~weightspace.memorization.behaviour.Evaluator`) and ``model``/``model_fn`` (for a collection
    built by a zoo recipe, the recipe's model by default), accuracy, maximum similarity and agreement
    with the nearest training model are measured too.
    ``baselines`` names baselines (default variants in :data:`DEFAULT_SWEEPS`) or maps names to lists of
    parameter dicts; each variant draws ``samples`` models (default: the largest generator's count).
    Every verdict follows :data:`RULE` with ``copy_fraction``.
    """
    t_start = time.perf_counter()
    train = load_training(training, space, groups=groups, progress=progress)
    space = train.space
    gens = _sets(space, generated)
    variants = _variants(baselines)
    if exclude_same_run and train.groups is None:
        raise MemorizationError("exclude_same_run needs run ids: a collection, or groups= one label per training model")
    from ..collections import CheckpointCollection

    if data is not None and not callable(data) and model is None and model_fn is None \
            and isinstance(training, CheckpointCollection):
        model = recipe_model(training, space)
    evaluator = Evaluator(space, data, model=model, model_fn=model_fn) if data is not None else None
    if data is None and (model is not None or model_fn is not None):
        raise MemorizationError("model/model_fn given without data: pass data= to evaluate the models")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    index = NearestIndex(train.models, aligned=True, k=k, device=device, progress=progress)
    raw_index = NearestIndex(train.models, aligned=False, k=k, device=device, progress=progress)
    seconds["canonicalise_training"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    spread_al = index.spread(train.groups, exclude_same_run)
    spread_raw = raw_index.spread(train.groups, exclude_same_run)
    seconds["training_spread"] = time.perf_counter() - t0
    spread = spread_al.median()
    results = [GroupResult("training", "training", len(train.models), dict(train.models.excluded), spread_al,
                           spread_raw)]

    pool = Pool(train.models, index.base)
    n_samples = samples or max(len(m) for m in gens.values())
    sets: list[tuple[str, str, ModelSet, dict[str, Any]]] = [(name, "generated", m, {}) for name, m in gens.items()]
    dim = train.models.flat.shape[1]
    for i, (name, params) in enumerate(variants):
        call = dict(params)
        if name == "noise" and "scale" in call:
            call["sigma"] = float(call.pop("scale")) * spread / math.sqrt(dim)
        sds = make_baseline(name, pool, n_samples, seed=seed + 1000 * i, **call)
        sets.append((_label(name, params), "baseline", ModelSet.build(space, sds, f"{name} baseline model"),
                     {"baseline": name, **params, **({"sigma": call["sigma"]} if "sigma" in call else {})}))
    t0 = time.perf_counter()
    for label, kind, models, params in sets:
        res_al = index.query(models, desc=label)
        res_raw = raw_index.query(models, desc=label)
        results.append(GroupResult(label, kind, len(models), dict(models.excluded), res_al, res_raw, params))
    seconds["nearest"] = time.perf_counter() - t0

    if evaluator is not None:
        t0 = time.perf_counter()
        train_preds, y = evaluator.predict_set(train.models)
        n = len(train.models)
        mask = torch.eye(n, dtype=torch.bool)
        if exclude_same_run:
            ids: dict[Hashable, int] = {}
            codes = torch.tensor([ids.setdefault(g, len(ids)) for g in train.groups])
            mask |= codes.unsqueeze(1) == codes.unsqueeze(0)
        sim, sim_idx = max_similarity(train_preds, y, train_preds, mask=mask)
        results[0].behaviour = {"accuracy": accuracy(train_preds, y), "max_similarity": sim,
                                "max_similarity_index": sim_idx,
                                "agreement": agreement(train_preds, train_preds, spread_al.indices)}
        for g, (_, _, models, _) in zip(results[1:], sets):
            b = dict(behaviour(evaluator, models, train_preds, g.aligned.indices))
            b.pop("predictions")
            g.behaviour = b
        seconds["behaviour"] = time.perf_counter() - t0

    front = [(_median(g.behaviour["accuracy"]), 1.0 - _median(g.behaviour["max_similarity"]))
             for g in results if g.kind == "baseline" and g.behaviour]
    for g in results:
        if g.kind == "generated":
            g.verdict = decide(g, spread, front, copy_fraction, evaluator is not None)
        elif g.kind == "baseline":
            g.verdict = "copies" if g.aligned.median() < copy_fraction * spread else "front point"
    seconds["total"] = time.perf_counter() - t_start
    config = {"rule": RULE.format(copy_fraction=copy_fraction), "copy_fraction": copy_fraction, "k": k,
              "exclude_same_run": exclude_same_run, "seed": seed, "samples_per_baseline": n_samples,
              "data": evaluator.name if evaluator is not None else None, "training_source": train.source,
              "training_models": len(train.models), "training_excluded": len(train.models.excluded),
              "architecture": space.fingerprint, "device": str(index.device),
              "baselines": [{"name": _label(n, p), "baseline": n, **p} for n, p in variants]}
    return MemorizationReport(results, spread, spread_raw.median(), config, seconds)
