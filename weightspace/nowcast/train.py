"""Meta-training nowcasters (NiNo, NodeNiNo or WNN) on trajectory windows with the shared :class:`Trainer`."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from ..training import TrainConfig, Trainer, TrainResult, is_main_process
from ..utils import atomic_write_text
from .baselines import LineFit
from .model import WNN, NiNo, NodeNiNo
from .windows import TrajectoryWindows, Window, split_runs

MODEL_DIR = "model"


def nowcast_loss(model: nn.Module, windows: Sequence[Window], _y: Tensor | None = None) -> Tensor:
    """L1 on scaled residuals over every available horizon, averaged over windows."""
    preds = model(windows)
    losses = []
    for pred, w in zip(preds, windows):
        target, _, _ = w.targets()
        losses.append((pred.float() - target)[w.mask].abs().mean())
    return torch.stack(losses).mean()


@torch.no_grad()
def heldout_metrics(model: nn.Module, windows: Sequence[Window]) -> dict[str, float]:
    """Held-out scaled L1 of the model, of linefit and of "no change" on the same windows."""
    lf = LineFit(windows[0].context.shape[0])
    m, l, z = [], [], []
    preds = model(windows)
    for pred, w in zip(preds, windows):
        target, _, std = w.targets()
        K = target.shape[0]
        line = torch.stack([(lf.nowcast(w.context, k) - w.context[-1]) / std for k in range(1, K + 1)])
        m.append((pred.float() - target)[w.mask].abs().mean())
        l.append((line - target)[w.mask].abs().mean())
        z.append(target[w.mask].abs().mean())
    return {"eval_loss": float(torch.stack(m).mean()), "eval_linefit": float(torch.stack(l).mean()),
            "eval_zero": float(torch.stack(z).mean())}


@dataclass
class NowcastTrainSpec:
    """What to meta-train: the model kind and size, and the windows."""

    model: str = "nino"
    context: int = 5
    horizons: int = 16
    stride: int = 1
    hidden: int = 32
    layers: int = 3
    decoder_hidden: int = 64
    weighting: str = "collection"
    held_out: float = 0.1
    eval_windows: int = 32
    allow_nonfinite: bool = False


NOWCASTER_KINDS = ("nino", "wnn", "node")
"""``NowcastTrainSpec.model``: NiNo (hidden, layers, decoder_hidden), WNN (decoder_hidden) or NodeNiNo (hidden is
its node width)."""


def build_nowcaster(spec: NowcastTrainSpec, windows: TrajectoryWindows | None = None) -> nn.Module:
    if spec.model not in NOWCASTER_KINDS:
        raise ValueError(f"model must be one of {NOWCASTER_KINDS}, got {spec.model!r}")
    if spec.model == "wnn":
        return WNN(context=spec.context, horizons=spec.horizons, hidden=spec.decoder_hidden, layers=3)
    kwargs: dict[str, Any] = {}
    if windows is not None:
        from ..graph.layout import EDGE_TYPES, NODE_TYPES

        lays = {r.arch_id: windows.layout(r) for r in windows.runs}
        e = sorted({int(t) for lay in lays.values() for t in lay.space.layout.edge_type.unique()})
        n = sorted({int(t) for lay in lays.values() for t in lay.space.layout.node_type.unique()})
        kwargs = {"edge_types": [EDGE_TYPES[i] for i in e], "node_types": [NODE_TYPES[i] for i in n]}
    if spec.model == "node":
        return NodeNiNo(context=spec.context, horizons=spec.horizons, node_hidden=spec.hidden, layers=spec.layers,
                        decoder_hidden=spec.decoder_hidden, **kwargs)
    return NiNo(context=spec.context, horizons=spec.horizons, hidden=spec.hidden, layers=spec.layers,
                decoder_hidden=spec.decoder_hidden, **kwargs)


def train_nowcaster(collections: Sequence[Any], out: str | Path, spec: NowcastTrainSpec,
                    config: TrainConfig) -> tuple[nn.Module, TrainResult]:
    """Meta-train a nowcaster on windows of ``collections``; ``out/model`` gets ``save_pretrained`` output.

    Runs under torchrun (DDP), resumes from ``out``'s last checkpoint, shows progress and writes
    ``out/loss.png`` (train loss and held-out L1) through :class:`weightspace.training.Trainer`.
    """
    out = Path(out)
    train_runs, test_runs = split_runs(collections, spec.held_out, seed=config.seed)
    windows = TrajectoryWindows(collections, spec.context, spec.horizons, spec.stride, spec.weighting,
                                runs=train_runs, allow_nonfinite=spec.allow_nonfinite)
    eval_fn = None
    if any(test_runs):
        held = TrajectoryWindows(collections, spec.context, spec.horizons, spec.stride, spec.weighting,
                                 runs=test_runs, allow_nonfinite=spec.allow_nonfinite)
        eval_set = [held.sample(10_000_019 + i) for i in range(spec.eval_windows)]
        eval_fn = lambda m: heldout_metrics(m, [w.to(next(m.parameters()).device) for w in eval_set])  # noqa: E731
    torch.manual_seed(config.seed)
    model = build_nowcaster(spec, windows)
    trainer = Trainer(model, nowcast_loss, windows, config, out, eval_fn=eval_fn)
    result = trainer.fit()
    if is_main_process():
        trainer.model.save_pretrained(out / MODEL_DIR)
        info = {"spec": spec.__dict__, "windows": windows.summary(), "held_out_runs": test_runs,
                "final": result.history[-1] if result.history else {}}
        atomic_write_text(out / "nowcast_train.json", json.dumps(info, indent=1))
    return trainer.model, result
