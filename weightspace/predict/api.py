"""Train and evaluate property predictors on checkpoint collections."""
from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from ..errors import WeightSpaceError
from ..nn import IncompatibleGraph
from ..training import EarlyStopping, TrainConfig, Trainer, TrainResult, gather_batch
from ..utils import atomic_write_text
from .data import FewRunsWarning, PropertyGraphs, TooFewRuns
from .model import PropertyPredictor

SPLIT_FILE = "split.json"
MODEL_DIR = "model"
FEW_RUNS = 10
"""Below this many training runs, :func:`train_predictor` warns: its held-out scores are unreliable."""
MIN_VALIDATION_RUNS = 5
"""Early stopping carves a validation split only from at least this many training runs."""
VAL_METRIC = "eval_val_loss"

_log = logging.getLogger(__name__)


def regression_metrics(pred: np.ndarray, true: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Kendall tau (scipy) and R^2 (scikit-learn) per target."""
    from scipy.stats import kendalltau
    from sklearn.metrics import r2_score

    out = {}
    for k, name in enumerate(names):
        p, t = np.asarray(pred)[:, k], np.asarray(true)[:, k]
        tau = kendalltau(p, t).statistic if len(t) > 1 else math.nan
        out[name] = {"tau": float(tau), "r2": float(r2_score(t, p)) if len(t) > 1 else math.nan}
    return out


def ranking_loss(pred: Tensor, target: Tensor, sharpness: float = 4.0) -> Tensor:
    """Pairwise logistic ranking loss over every pair of the batch, per target column.

    For each pair whose targets differ, ``softplus(-sign(t_i - t_j) * (p_i - p_j) * sharpness)``:
    RankNet's loss (Burges et al., "Learning to Rank using Gradient Descent", ICML 2005). It rewards
    getting the order right, which is what Kendall tau measures, where MSE spends its effort on
    the scale of the largest errors.
    """
    d = pred.unsqueeze(1) - pred.unsqueeze(0)
    s = torch.sign(target.unsqueeze(1) - target.unsqueeze(0))
    w = s.abs()
    return (torch.nn.functional.softplus(-s * d * sharpness) * w).sum() / w.sum().clamp(min=1)


@dataclass(frozen=True)
class PredictionLoss:
    """Mean squared error of standardised predictions, plus ``rank_weight`` times :func:`ranking_loss`.

    Under DDP the ranking loss covers every pair of the global batch (predictions are gathered
    from all processes), so N processes train exactly like one with the same global batch.
    """

    rank_weight: float = 0.0

    def __call__(self, model: nn.Module, batch: Any, y: Tensor) -> Tensor:
        m = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        pred = model(batch)
        if pred.dtype in (torch.bfloat16, torch.float16):
            pred = pred.float()
        target = m.normalize(y.to(pred.dtype))
        loss = torch.nn.functional.mse_loss(pred, target)
        if self.rank_weight:
            loss = loss + self.rank_weight * ranking_loss(gather_batch(pred), gather_batch(target))
        return loss


mse_loss = PredictionLoss(0.0)


@torch.no_grad()
def predict_store(model: PropertyPredictor, store: PropertyGraphs, batch_size: int = 128,
                  device: torch.device | str | None = None, *, allow_new_architectures: bool = True) -> np.ndarray:
    """Predictions ``[M, K]`` for every item of ``store``, in item order.

    Checkpoints the model cannot read (:func:`check_compatible`; with ``allow_new_architectures=False``
    also architectures it was not trained on) raise :class:`IncompatibleGraph`, and checkpoints with
    NaN/Inf weights raise :class:`~weightspace.errors.NonFiniteWeights`; both name the checkpoints.
    """
    if list(model.targets) != list(store.target_names):
        raise WeightSpaceError(f"the model predicts {model.targets}, the data has targets {store.target_names}")
    check_compatible(model, store, allow_new_architectures=allow_new_architectures)
    device = device or next(model.parameters()).device
    model.eval()
    out = torch.empty(len(store), len(model.targets))
    for s in range(0, len(store), batch_size):
        idx = torch.arange(s, min(s + batch_size, len(store)))
        store.check_finite(idx)
        batch, _ = store.batch(idx, device)
        order = torch.cat([idx[store.block_of[idx] == b] for b in store.block_of[idx].unique()])
        try:
            out[order] = model.predict(batch).cpu()
        except IncompatibleGraph as e:
            raise IncompatibleGraph(f"{e} (in a batch of {store.names(order)})") from e
    return out.numpy()


def evaluate_predictor(model: PropertyPredictor, store: PropertyGraphs, **kw: Any) -> dict[str, dict[str, float]]:
    """Kendall tau and R^2 per target on ``store``."""
    return regression_metrics(predict_store(model, store, **kw), store.targets.numpy(), store.target_names)


def check_compatible(model: PropertyPredictor, store: PropertyGraphs, allow_new_architectures: bool = True) -> None:
    """Raise :class:`IncompatibleGraph` if the model cannot read the store's graphs (or, when
    ``allow_new_architectures`` is false, if an architecture was not among those it was trained on)."""
    cfg = model.backbone.config
    for i, b in enumerate(store.blocks):
        items = torch.nonzero(store.block_of == i).flatten()
        if not len(items):
            continue
        lay = b.space.layout
        problems = []
        if lay.edge_features > cfg.edge_features:
            problems.append(f"{lay.edge_features} values per edge > {cfg.edge_features}")
        if lay.node_features > cfg.node_features:
            problems.append(f"{lay.node_features} values per node > {cfg.node_features}")
        if int(lay.pos_id.max()) >= cfg.max_positions:
            problems.append(f"fixed units (inputs, outputs, vocabulary) up to position {int(lay.pos_id.max())}, "
                            f"beyond the {cfg.max_positions} positions the predictor was configured with")
        if not allow_new_architectures and model.arch_ids and b.arch_id not in model.arch_ids:
            problems.append(f"not among the architectures it was trained on ({', '.join(model.arch_ids)}); new "
                            "architectures were refused (allow_new_architectures=False)")
        if problems:
            raise IncompatibleGraph(f"{store.names(items)}: architecture {b.arch_id} ({b.space.name or 'model'}) "
                                    "does not fit this predictor: " + "; ".join(problems))


def auto_train_config(n_items: int, base: TrainConfig | None = None) -> TrainConfig:
    """``base`` with steps and batch sized to a training set of ``n_items`` checkpoints, for early stopping.

    Only what ``base`` leaves open is sized: ``steps``/``batch_size`` when they are ``None``, and
    ``warmup``/``eval_every`` when they are at :class:`TrainConfig`'s defaults. The batch is 32, or
    less for small data (a multiple of 4 near a 32nd of the checkpoints, at least 4, so that 2 or 4
    processes can share it); the step budget is 100 epochs, between 300 and 4,000 steps; evaluations
    come about 40 times over the budget (on log steps); warm-up is a tenth of the budget, at most 50.
    """
    base = base or TrainConfig(steps=None, batch_size=None)  # type: ignore[arg-type]
    default = TrainConfig()
    batch = base.batch_size or 4 * max(1, min(8, n_items // 32))
    steps = base.steps or int(min(4000, max(300, 100 * math.ceil(n_items / batch))))
    fields_ = {"steps": steps, "batch_size": batch}
    if base.warmup == default.warmup:
        fields_["warmup"] = min(default.warmup, steps // 10)
    if base.eval_every == default.eval_every:
        fields_["eval_every"] = base.log_every * max(1, round(steps / 40 / base.log_every))
    return TrainConfig(**{**asdict(base), **fields_})


def _check_runs(train: PropertyGraphs, what: str) -> None:
    n = len(train.runs())
    if n < 2:
        raise TooFewRuns(f"{what} has {n} run{'s' if n != 1 else ''} ({len(train)} checkpoints); a predictor needs at "
                         f"least 2 runs, and about {FEW_RUNS} or more to generalise to unseen runs: give it a larger "
                         "collection or a smaller test/validation fraction")
    if n < FEW_RUNS:
        msg = (f"only {n} runs ({len(train)} checkpoints) are left for training the predictor; with fewer than "
               f"about {FEW_RUNS}, its predictions on unseen runs are unreliable (a 1-run training set can rank "
               "held-out checkpoints backwards)")
        _log.warning(msg)
        warnings.warn(msg, FewRunsWarning, stacklevel=3)


def _validation_loss(store: PropertyGraphs, rank_weight: float) -> Callable[[PropertyPredictor], float]:
    """The training objective (:class:`PredictionLoss`) over the whole of ``store``, for early stopping."""
    def metric(model: PropertyPredictor) -> float:
        mean, std = model.target_mean.cpu(), model.target_std.cpu()
        p = (torch.from_numpy(predict_store(model, store)) - mean) / std
        t = (store.targets - mean) / std
        loss = torch.nn.functional.mse_loss(p, t)
        if rank_weight:
            loss = loss + rank_weight * ranking_loss(p, t)
        return float(loss)
    return metric


def describe_schedule(schedule: dict[str, Any]) -> str:
    """One line saying how a predictor is (or was) trained, from ``PredictorRun.schedule``."""
    s = schedule
    text = (f"training on {s['training_runs']} runs ({s['training_checkpoints']} checkpoints): "
            + ("at most " if s["early_stopping"] else "") + f"{s['steps']} steps of batch {s['batch_size']}"
            + (" (sized to the data)" if s.get("sized_to_data") else ""))
    if s["early_stopping"]:
        text += (f", early stopping on the loss of {s['validation_runs']} validation runs "
                 f"({s['validation_checkpoints']} checkpoints) evaluated every {s['eval_every']} steps, "
                 f"patience {s['patience']} evaluations")
    elif s.get("note"):
        text += f"; {s['note']}"
    if "trained_steps" in s:
        text += f"; trained {s['trained_steps']} steps"
        if s.get("stopped_early"):
            text += " (stopped early)"
        if s.get("best_step") is not None:
            text += f", kept the weights of step {s['best_step']} (lowest validation loss)"
    return text


@dataclass
class PredictorRun:
    """What :func:`train_predictor` produced."""

    model: PropertyPredictor
    train: PropertyGraphs
    test: PropertyGraphs
    result: TrainResult
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    val: PropertyGraphs | None = None
    schedule: dict[str, Any] = field(default_factory=dict)
    """What was chosen: steps, batch size, evaluation interval, early stopping, and where it stopped."""


def train_predictor(data: PropertyGraphs, out_dir: str | Path | None = None, *, model_config: dict[str, Any] | None = None,
                    train_config: TrainConfig | None = None, test_fraction: float = 0.2, split_seed: int = 0,
                    test: PropertyGraphs | None = None, resume: bool = True, rank_weight: float = 1.0,
                    early_stopping: bool | None = None, val_fraction: float = 0.15,
                    patience: int = 8, fit_degrees: bool = False) -> PredictorRun:
    """Split ``data`` by run (no run in both parts), train a :class:`PropertyPredictor`, evaluate it on held-out runs.

    The loss is MSE on standardised targets plus ``rank_weight`` times a pairwise ranking loss
    (:class:`PredictionLoss`); ``rank_weight=0`` is plain regression. Every target of ``data`` is
    predicted by one shared network, so extra targets (e.g. ``test_loss``) act as auxiliary tasks.

    Without ``train_config`` (or with ``steps``/``batch_size`` left ``None`` in it), steps and batch are
    sized to the data (:func:`auto_train_config`) and training stops early: ``val_fraction`` of the
    training runs (by run, never by checkpoint) become a validation split, the loss on it is measured
    every ``eval_every`` steps, training stops after ``patience`` evaluations without improvement, and
    the model ends with its best weights.
    ``early_stopping`` forces this on or off (``None``: on exactly when ``steps`` is not given);
    with fewer than :data:`MIN_VALIDATION_RUNS` training runs there is no validation split and the
    full budget is trained. What was chosen is in ``PredictorRun.schedule`` and ``metrics.json``.

    Training on fewer than 2 runs raises :class:`TooFewRuns`; on fewer than :data:`FEW_RUNS` it warns.

    With ``fit_degrees``, PNA's degree scalers are normalised by the training architectures' mean
    log-degree (:meth:`~weightspace.nn.GraphMetanetwork.fit_degrees`) rather than a fixed 2.0. It is
    off by default: on the small digits-MLP zoo it did not help (BENCHMARKS.md, metanet).

    ``out_dir`` receives resumable checkpoints, ``split.json`` (held-out and validation runs), the
    final model (``model/``, loadable with ``PropertyPredictor.from_pretrained``), ``metrics.json``
    and ``loss.png``.
    """
    sized = train_config is None or train_config.steps is None or train_config.batch_size is None
    if early_stopping is None:
        early_stopping = train_config is None or train_config.steps is None
    if test is None:
        if len(data.runs()) < 2:
            _check_runs(data, "the data")
        train, test = data.split_by_run(test_fraction, split_seed)
    else:
        train = data
    val: PropertyGraphs | None = None
    schedule: dict[str, Any] = {"early_stopping": False}
    if early_stopping:
        n_runs = len(train.runs())
        if n_runs >= MIN_VALIDATION_RUNS:
            train, val = train.split_by_run(val_fraction, split_seed + 1)
            schedule.update(early_stopping=True, patience=patience, validation_runs=len(val.runs()),
                            validation_checkpoints=len(val))
        else:
            schedule["note"] = (f"no early stopping: {n_runs} training runs are too few to carve a validation split "
                                f"from (it needs {MIN_VALIDATION_RUNS}); the full step budget is trained")
            _log.warning(schedule["note"])
    _check_runs(train, "the training split")
    train.check_finite()
    cfg = auto_train_config(len(train), train_config) if sized else train_config
    schedule.update(steps=cfg.steps, batch_size=cfg.batch_size, eval_every=cfg.eval_every,
                    training_runs=len(train.runs()), training_checkpoints=len(train), sized_to_data=sized)
    _log.info(describe_schedule(schedule))
    mean = train.targets.mean(0)
    std = train.targets.std(0).clamp(min=1e-6) if len(train) > 1 else torch.ones_like(mean)
    both = PropertyGraphs.concat([s for s in (train, val, test) if s is not None and len(s)])
    mc = {"edge_features": max(9, both.edge_features), "node_features": max(4, both.node_features),
          "max_positions": max(128, both.max_position + 1), **(model_config or {})}
    torch.manual_seed(cfg.seed)
    model = PropertyPredictor(targets=data.target_names, target_mean=mean.tolist(), target_std=std.tolist(),
                              arch_ids=sorted(set(train.arch_ids)), **mc)
    check_compatible(model, both)
    if fit_degrees and len(train):
        first = [int((train.block_of == b).nonzero()[0]) for b in train.block_of.unique().tolist()]
        model.backbone.fit_degrees([train.batch(first)[0]])
    val_metric = _validation_loss(val, rank_weight) if val is not None else None

    def eval_fn(m: nn.Module) -> dict[str, float]:
        res = evaluate_predictor(m, test) if len(test) else {}
        out = {f"eval_{t}_{k}": v for t, d in res.items() for k, v in d.items()}
        if val_metric is not None:
            out[VAL_METRIC] = val_metric(m)
        return out

    out = Path(out_dir) if out_dir is not None else None
    stopper = EarlyStopping(VAL_METRIC, patience) if val is not None else None
    trainer = Trainer(model, PredictionLoss(rank_weight), train, cfg, out, eval_fn=eval_fn, resume=resume,
                      early_stopping=stopper)
    if out is not None and trainer.rank == 0:
        split = {"test_runs": test.runs(), "train_runs": train.runs(),
                 "validation_runs": val.runs() if val is not None else []}
        atomic_write_text(out / SPLIT_FILE, json.dumps(split, indent=1))
    result = trainer.fit()
    schedule.update(trained_steps=result.step, stopped_early=result.stopped_early, best_step=result.best_step)
    metrics = evaluate_predictor(model, test) if len(test) else {}
    if out is not None and trainer.rank == 0:
        model.save_pretrained(out / MODEL_DIR)
        atomic_write_text(out / "metrics.json", json.dumps(
            {"test": metrics, "graphs_per_second": result.graphs_per_second, "seconds": result.seconds,
             "train_checkpoints": len(train), "test_checkpoints": len(test), "train_config": asdict(cfg),
             "rank_weight": rank_weight, "schedule": schedule},
            indent=1))
    return PredictorRun(model, train, test, result, metrics, val, schedule)
