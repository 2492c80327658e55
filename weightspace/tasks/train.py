"""Small, fast, deterministic training loops for the task models.

Batches come from a ``torch.Generator`` seeded with ``seed``; together with a seeded model
(:func:`weightspace.tasks.models.build` with ``seed=``) a run is reproducible bit for bit on
the same machine and thread count. At step 0, every ``eval_every`` steps and at the last step,
the loop evaluates the model and calls ``callback(step, model, metrics)``, which is where zoo
recipes save checkpoints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .data import CharCorpus, ClassificationData, char_batch

Callback = Callable[[int, nn.Module, dict[str, float]], None]
OPTIMIZERS = ("adamw", "adam", "sgd")
LM_EVAL_SEED = 1234


@dataclass
class TrainResult:
    """The metrics of every evaluation (each with its ``step``), and whether training stopped on a non-finite loss."""

    history: list[dict[str, float]] = field(default_factory=list)
    diverged: bool = False

    @property
    def final(self) -> dict[str, float]:
        """The metrics of the last evaluation."""
        return self.history[-1]


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, Adam (L2 weight decay) or SGD with momentum 0.9, by name."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def _check_schedule(steps: int, eval_every: int | None) -> None:
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if eval_every is not None and eval_every <= 0:
        raise ValueError(f"eval_every must be positive or None, got {eval_every}")


def _is_eval_step(step: int, steps: int, eval_every: int | None) -> bool:
    return step == 0 or step == steps or (eval_every is not None and step % eval_every == 0)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 16384) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) on ``(x, y)``, in chunks of ``batch_size``
    (the default covers every set of the zoos, e.g. synth-mlp's 8,000 test points, in one forward pass)."""
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(y), batch_size):
        logits = model(x[i:i + batch_size])
        loss += F.cross_entropy(logits, y[i:i + batch_size], reduction="sum").item()
        correct += int((logits.argmax(1) == y[i:i + batch_size]).sum())
    model.train(was_training)
    return loss / len(y), correct / len(y)


def _record(result: "TrainResult", metrics: dict, model: nn.Module, callback) -> None:
    """Append one evaluation to the history and hand it to the callback with the model in eval mode."""
    result.history.append(metrics)
    if callback is not None:
        model.eval()
        callback(metrics["step"], model, {k: v for k, v in metrics.items() if k != "step"})
        model.train()


def train_classifier(model: nn.Module, data: ClassificationData, steps: int, lr: float = 1e-3,
                     weight_decay: float = 0.0, batch_size: int = 64, seed: int = 0, optimizer: str = "adamw",
                     eval_every: int | None = None, callback: Callback | None = None,
                     device: torch.device | str = "cpu") -> TrainResult:
    """Train a classifier with cross-entropy for ``steps`` minibatch steps (shuffled epochs, last partial batch dropped).

    Each evaluation measures, in eval mode on the full sets, ``train_loss``, ``train_acc``,
    ``test_loss`` and ``test_acc`` (on the validation split). Training stops early, with
    ``diverged=True``, if a minibatch loss is not finite; the non-finite state is never passed to
    ``callback``.
    """
    _check_schedule(steps, eval_every)
    n = len(data.y_train)
    batch_size = min(batch_size, n)
    data = data.to(device)
    model.to(device).train()
    opt = make_optimizer(optimizer, model.parameters(), lr, weight_decay)
    g = torch.Generator().manual_seed(seed)
    result = TrainResult()

    def evaluate(step: int) -> None:
        train_loss, train_acc = evaluate_classifier(model, data.x_train, data.y_train)
        test_loss, test_acc = evaluate_classifier(model, data.x_val, data.y_val)
        metrics = {"step": step, "train_loss": train_loss, "train_acc": train_acc,
                   "test_loss": test_loss, "test_acc": test_acc}
        _record(result, metrics, model, callback)

    evaluate(0)
    order, pos = torch.randperm(n, generator=g), 0
    for step in range(1, steps + 1):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + batch_size].to(device)
        pos += batch_size
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        if not math.isfinite(loss.item()):
            result.diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if _is_eval_step(step, steps, eval_every):
            evaluate(step)
    model.eval()
    return result


@torch.no_grad()
def evaluate_lm(model: nn.Module, ids: Tensor, block_size: int, batch_size: int, num_batches: int,
                seed: int = LM_EVAL_SEED) -> float:
    """Mean next-token cross-entropy over ``num_batches`` fixed random windows (the same ones for every call)."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(num_batches):
        x, y = char_batch(ids, block_size, batch_size, g)
        logits = model(x)
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).item()
    model.train(was_training)
    return total / num_batches


def train_lm(model: nn.Module, corpus: CharCorpus, steps: int, lr: float = 3e-3, weight_decay: float = 0.0,
             batch_size: int = 16, block_size: int | None = None, seed: int = 0, optimizer: str = "adamw",
             eval_every: int | None = None, eval_batches: int = 8, grad_clip: float | None = 1.0,
             callback: Callback | None = None, device: torch.device | str = "cpu") -> TrainResult:
    """Train a character-level language model (e.g. :class:`TinyGPT`) on ``corpus`` for ``steps`` steps.

    Each evaluation measures ``train_loss`` and ``val_loss``: mean next-character cross-entropy
    on ``eval_batches`` fixed windows of the train and validation parts, so that values are
    comparable across steps, runs and seeds. ``block_size`` defaults to ``model.block_size``.
    """
    _check_schedule(steps, eval_every)
    block_size = block_size or getattr(model, "block_size", None)
    if block_size is None:
        raise ValueError("block_size is required for a model without a block_size attribute")
    if corpus.vocab_size > getattr(model, "vocab_size", corpus.vocab_size):
        raise ValueError(f"corpus vocabulary ({corpus.vocab_size}) is larger than the model's ({model.vocab_size})")
    train_ids, val_ids = corpus.train_ids.to(device), corpus.val_ids.to(device)
    model.to(device).train()
    opt = make_optimizer(optimizer, model.parameters(), lr, weight_decay)
    g = torch.Generator().manual_seed(seed)
    result = TrainResult()

    def evaluate(step: int) -> None:
        metrics = {"step": step,
                   "train_loss": evaluate_lm(model, train_ids, block_size, batch_size, eval_batches),
                   "val_loss": evaluate_lm(model, val_ids, block_size, batch_size, eval_batches)}
        _record(result, metrics, model, callback)

    evaluate(0)
    for step in range(1, steps + 1):
        x, y = char_batch(train_ids, block_size, batch_size, g)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        if not math.isfinite(loss.item()):
            result.diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        if _is_eval_step(step, steps, eval_every):
            evaluate(step)
    model.eval()
    return result
