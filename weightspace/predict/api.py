"""Train and evaluate property predictors on checkpoint collections."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from ..errors import WeightSpaceError
from ..nn import IncompatibleGraph
from ..training import TrainConfig, Trainer, TrainResult, gather_batch
from ..utils import atomic_write_text
from .data import PropertyGraphs
from .model import PropertyPredictor

SPLIT_FILE = "split.json"
MODEL_DIR = "model"


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
                  device: torch.device | str | None = None) -> np.ndarray:
    """Predictions ``[M, K]`` for every item of ``store``, in item order."""
    if list(model.targets) != list(store.target_names):
        raise WeightSpaceError(f"the model predicts {model.targets}, the data has targets {store.target_names}")
    device = device or next(model.parameters()).device
    model.eval()
    out = torch.empty(len(store), len(model.targets))
    for s in range(0, len(store), batch_size):
        idx = torch.arange(s, min(s + batch_size, len(store)))
        batch, _ = store.batch(idx, device)
        order = torch.cat([idx[store.block_of[idx] == b] for b in store.block_of[idx].unique()])
        out[order] = model.predict(batch).cpu()
    return out.numpy()


def evaluate_predictor(model: PropertyPredictor, store: PropertyGraphs, **kw: Any) -> dict[str, dict[str, float]]:
    """Kendall tau and R^2 per target on ``store``."""
    return regression_metrics(predict_store(model, store, **kw), store.targets.numpy(), store.target_names)


def check_compatible(model: PropertyPredictor, store: PropertyGraphs, allow_new_architectures: bool = True) -> None:
    """Raise :class:`IncompatibleGraph` if the model cannot read the store's graphs (or, when
    ``allow_new_architectures`` is false, if an architecture was not among those it was trained on)."""
    cfg = model.backbone.config
    for b in store.blocks:
        lay = b.space.layout
        problems = []
        if lay.edge_features > cfg.edge_features:
            problems.append(f"{lay.edge_features} values per edge > {cfg.edge_features}")
        if lay.node_features > cfg.node_features:
            problems.append(f"{lay.node_features} values per node > {cfg.node_features}")
        if int(lay.pos_id.max()) >= cfg.max_positions:
            problems.append(f"fixed units up to position {int(lay.pos_id.max())} >= {cfg.max_positions}")
        if not allow_new_architectures and model.arch_ids and b.arch_id not in model.arch_ids:
            problems.append("not among the architectures it was trained on")
        if problems:
            raise IncompatibleGraph(f"architecture {b.arch_id} ({b.space.name}) does not fit this predictor: "
                                    + "; ".join(problems))


@dataclass
class PredictorRun:
    """What :func:`train_predictor` produced."""

    model: PropertyPredictor
    train: PropertyGraphs
    test: PropertyGraphs
    result: TrainResult
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def train_predictor(data: PropertyGraphs, out_dir: str | Path | None = None, *, model_config: dict[str, Any] | None = None,
                    train_config: TrainConfig | None = None, test_fraction: float = 0.2, split_seed: int = 0,
                    test: PropertyGraphs | None = None, resume: bool = True, rank_weight: float = 1.0,
                    fit_degrees: bool = True) -> PredictorRun:
    """Split ``data`` by run (no run in both parts), train a :class:`PropertyPredictor`, evaluate it on held-out runs.

    The loss is MSE on standardised targets plus ``rank_weight`` times a pairwise ranking loss
    (:class:`PredictionLoss`); ``rank_weight=0`` is plain regression. Every target of ``data`` is
    predicted by one shared network, so extra targets (e.g. ``test_loss``) act as auxiliary tasks.

    With ``fit_degrees``, PNA's degree scalers are normalised by the training architectures' mean
    log-degree (:meth:`~weightspace.nn.GraphMetanetwork.fit_degrees`) rather than a fixed 2.0.

    ``out_dir`` receives resumable checkpoints, ``split.json`` (held-out runs), the final model
    (``model/``, loadable with ``PropertyPredictor.from_pretrained``), ``metrics.json`` and ``loss.png``.
    """
    cfg = train_config or TrainConfig()
    if test is None:
        train, test = data.split_by_run(test_fraction, split_seed)
    else:
        train = data
    mean = train.targets.mean(0)
    std = train.targets.std(0).clamp(min=1e-6) if len(train) > 1 else torch.ones_like(mean)
    both = PropertyGraphs.concat([train, test]) if len(test) else train
    mc = {"edge_features": max(9, both.edge_features), "node_features": max(4, both.node_features),
          "max_positions": max(128, both.max_position + 1), **(model_config or {})}
    torch.manual_seed(cfg.seed)
    model = PropertyPredictor(targets=data.target_names, target_mean=mean.tolist(), target_std=std.tolist(),
                              arch_ids=sorted(set(train.arch_ids)), **mc)
    check_compatible(model, both)
    if fit_degrees and len(train):
        first = [int((train.block_of == b).nonzero()[0]) for b in train.block_of.unique().tolist()]
        model.backbone.fit_degrees([train.batch(first)[0]])

    def eval_fn(m: nn.Module) -> dict[str, float]:
        res = evaluate_predictor(m, test)
        return {f"eval_{t}_{k}": v for t, d in res.items() for k, v in d.items()}

    out = Path(out_dir) if out_dir is not None else None
    trainer = Trainer(model, PredictionLoss(rank_weight), train, cfg, out, eval_fn=eval_fn, resume=resume)
    if out is not None and trainer.rank == 0:
        split = {"test_runs": sorted(set(zip(test.sources, test.run_ids))),
                 "train_runs": sorted(set(zip(train.sources, train.run_ids)))}
        atomic_write_text(out / SPLIT_FILE, json.dumps(split, indent=1))
    result = trainer.fit()
    metrics = evaluate_predictor(model, test) if len(test) else {}
    if out is not None and trainer.rank == 0:
        model.save_pretrained(out / MODEL_DIR)
        atomic_write_text(out / "metrics.json", json.dumps(
            {"test": metrics, "graphs_per_second": result.graphs_per_second, "seconds": result.seconds,
             "train_checkpoints": len(train), "test_checkpoints": len(test), "train_config": asdict(cfg),
             "rank_weight": rank_weight},
            indent=1))
    return PredictorRun(model, train, test, result, metrics)
