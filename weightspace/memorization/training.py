"""The training set of a memorization measurement: state_dicts, or the end-of-training checkpoints of a collection."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

from ..space import WeightSpace
from ..utils import progress_bar
from .flat import MemorizationError, ModelSet


@dataclass
class TrainingSet:
    """Flattened training models, with a run id (group) per model and, for a collection, its metadata rows."""

    models: ModelSet
    groups: list[Hashable] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    source: str = "state_dicts"

    @property
    def space(self) -> WeightSpace:
        return self.models.space


def recipe_model(collection, space: WeightSpace):
    """A model of architecture ``space`` built by the zoo recipe that ``collection`` records for it, or None.

    Collections built by ``weightspace zoo build`` keep each run's recipe and its hyperparameters, so
    the model that their checkpoints load into can be rebuilt without the caller naming it.
    """
    from ..collections.card import HP_PREFIX
    from ..tasks.zoo import RECIPES

    for row in collection.rows():
        if row["arch_id"] == space.fingerprint:
            config = {k[len(HP_PREFIX):]: v for k, v in row.items() if k.startswith(HP_PREFIX)}
            recipe = RECIPES.get(config.get("recipe"))
            return recipe.model(config) if recipe is not None else None
    return None


STEPS = ("last", "all", "tail")
"""Which checkpoints of each run :func:`load_training` takes from a collection."""


def load_training(training, space: WeightSpace | None = None, *, groups: Sequence[Hashable] | None = None,
                  steps: str = "last", progress: bool = False, allow_nonfinite: bool = True) -> TrainingSet:
    """Flatten a training set given as state_dicts, a :class:`TrainingSet`, or a ``CheckpointCollection``.

    From a collection it takes, of every run of the architecture of ``space`` (or of the collection's
    only architecture when ``space`` is None), the last checkpoint (``steps="last"``), every checkpoint
    (``steps="all"``) or the checkpoints of the run's last phase (``steps="tail"``: the metric
    ``finetuning == 1`` that the ``pdiff-*`` recipes write, p-diff's training data); the run ids become the groups. A checkpoint holding NaN/Inf is kept as an excluded
    row (see :class:`ModelSet`), or, with ``allow_nonfinite=False``, raises NonFiniteWeights naming its run and step.
    """
    from ..collections import CheckpointCollection

    if isinstance(training, TrainingSet):
        if groups is not None:
            training = TrainingSet(training.models, list(groups), training.rows, training.source)
        return training
    if isinstance(training, CheckpointCollection):
        if steps not in STEPS:
            raise MemorizationError(f"steps must be one of {', '.join(map(repr, STEPS))}, got {steps!r}")
        rows = training.rows()
        archs = sorted({r["arch_id"] for r in rows})
        if space is None:
            if len(archs) != 1:
                raise MemorizationError(f"collection {training.source} holds {len(archs)} architectures {archs[:6]}; "
                                        f"pass the space of the one to measure against")
            space = training.space(archs[0])
        rows = [r for r in rows if r["arch_id"] == space.fingerprint]
        if not rows:
            raise MemorizationError(f"collection {training.source} holds no checkpoint of architecture "
                                    f"{space.fingerprint} ({space.name}); it has {archs[:6]}")
        if steps == "tail":
            rows = [r for r in rows if r.get("finetuning") == 1.0]
            if not rows:
                raise MemorizationError(f"collection {training.source} has no last-phase checkpoints (metric "
                                        "finetuning = 1, written by the pdiff-mlp and pdiff-cnn recipes); use "
                                        "steps='last' or 'all'")
        if steps == "last":
            last: dict[str, dict[str, Any]] = {}
            for r in rows:
                if r["run_id"] not in last or r["step"] > last[r["run_id"]]["step"]:
                    last[r["run_id"]] = r
            rows = list(last.values())
        sds = (training.load(r["run_id"], r["step"], allow_nonfinite=allow_nonfinite)
               for r in progress_bar(rows, desc="load training", unit="ckpt", disable=not progress))
        models = ModelSet.build(space, sds, "training model")
        run_ids = [r["run_id"] for r in rows]
        return TrainingSet(models, list(groups) if groups is not None else run_ids, rows, training.source)
    if space is None:
        raise MemorizationError("pass the WeightSpace of the models (it can only be read from a collection)")
    models = training if isinstance(training, ModelSet) else ModelSet.build(space, list(training), "training model")
    if groups is not None and len(groups) != len(models):
        raise MemorizationError(f"groups has {len(groups)} entries for {len(models)} training models")
    return TrainingSet(models, list(groups) if groups is not None else None)
