"""p-diff's zoo recipe: train a model, then keep training only the chosen layers and save a checkpoint every step.

Wang et al. 2024 ("Neural Network Diffusion", p-diff) collect their training data this way: a
model is trained, then only a chosen subset of its parameters (the last BatchNorm layers in the
paper) keeps training for a few hundred more iterations, and each iteration's checkpoint is
saved. Every tensor outside the subset keeps the base model's values exactly (running statistics
included). Here each run is one seed of a fixed architecture; a run's checkpoints of the second
phase carry the metric ``finetuning = 1`` (``0`` for the first phase, saved every ``save_every``).
The subset is a selection of :mod:`weightspace.generate.subset`, read from the traced space.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import build, example_input
from .train import Callback, TrainResult, _record, evaluate_classifier, make_optimizer, train_classifier
from .zoo import RECIPES, Recipe, ZooSize, _digits


@dataclass(frozen=True)
class PDiffSize(ZooSize):
    """A p-diff zoo size: ``steps`` of ordinary training (saved every ``save_every``), then ``tail`` steps of
    training the chosen layers only, each saved."""

    tail: int = 200

    def saved_steps(self) -> list[int]:
        return super().saved_steps() + list(range(self.steps + 1, self.steps + self.tail + 1))


PDIFF_MLP = {"family": "mlp", "in_features": 64, "widths": [16, 16], "out_features": 10, "activation": "relu",
             "layers": "last:2"}
PDIFF_CNN = {"family": "cnn", "channels": [8, 8, 8], "batchnorm": True, "in_channels": 1, "num_classes": 10,
             "activation": "relu", "layers": "norm"}
PDIFF_SIZES = {"tiny": PDiffSize(2, 20, 10, tail=5), "small": PDiffSize(12, 300, 100, tail=64),
               "medium": PDiffSize(128, 1000, 250, tail=200), "large": PDiffSize(512, 1000, 250, tail=200)}


def _sampler(arch: Mapping[str, Any]):
    def sample(rng: random.Random) -> dict[str, Any]:
        return {**arch, "lr": 3e-3, "weight_decay": 1e-3, "optimizer": "adamw", "batch_size": 64,
                "finetune_lr": 1e-3, "seed": rng.randrange(10_000)}
    return sample


def _model(c: Mapping[str, Any]) -> nn.Module:
    kwargs = {k: v for k, v in c.items() if k in ("in_features", "out_features", "activation", "in_channels",
                                                  "num_classes", "batchnorm")}
    if c["family"] == "mlp":
        kwargs["widths"] = list(c["widths"])
    else:
        kwargs["channels"] = tuple(c["channels"])
    return build(c["family"], seed=c["seed"], **kwargs)


def _train(model: nn.Module, c: Mapping[str, Any], size: ZooSize, callback: Callback) -> TrainResult:
    from ..generate.subset import select_keys
    from ..space import WeightSpace

    flat = c["family"] == "mlp"
    data = _digits(flat)
    tail = getattr(size, "tail", 0)

    def base_callback(step: int, m: nn.Module, metrics: dict[str, float]) -> None:
        callback(step, m, {**metrics, "finetuning": 0.0})

    result = train_classifier(model, data, size.steps, lr=c["lr"], weight_decay=c["weight_decay"],
                              batch_size=c["batch_size"], seed=c["seed"], optimizer=c["optimizer"],
                              eval_every=size.save_every, callback=base_callback)
    if result.diverged or not tail:
        return result
    space = WeightSpace.from_module(model, example_input(model))
    chosen = set(select_keys(space, c["layers"]))
    params = [p for k, p in model.named_parameters() if k in chosen]
    frozen = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in chosen}
    opt = make_optimizer(c["optimizer"], params, c["finetune_lr"], 0.0)
    g = torch.Generator().manual_seed(c["seed"] + 1)
    n = len(data.y_train)
    model.train()
    for i in range(1, tail + 1):
        idx = torch.randint(n, (c["batch_size"],), generator=g)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            sd = model.state_dict()
            for k, v in frozen.items():
                sd[k].copy_(v)
        train_loss, train_acc = evaluate_classifier(model, data.x_train, data.y_train)
        test_loss, test_acc = evaluate_classifier(model, data.x_val, data.y_val)
        _record(result, {"step": size.steps + i, "train_loss": train_loss, "train_acc": train_acc,
                         "test_loss": test_loss, "test_acc": test_acc, "finetuning": 1.0}, model, callback)
    model.eval()
    return result


_DIGITS = "scikit-learn digits (1,437/360 split)"
PDIFF_RECIPES = {
    "pdiff-mlp": Recipe(
        name="pdiff-mlp", prefix="pmlp",
        description=f"p-diff's data (Wang et al. 2024) for a fixed MLP 64-16-16-10 (ReLU) on {_DIGITS}: each run "
                    "(one seed) trains the whole model, then trains only its last two layers for `tail` more "
                    "steps, saving every step (metric finetuning=1).",
        grid={"seed": tuple(range(10_000))}, sizes=PDIFF_SIZES, sample=_sampler(PDIFF_MLP), model=_model,
        train=_train, metrics=("train_loss", "train_acc", "test_loss", "test_acc", "finetuning")),
    "pdiff-cnn": Recipe(
        name="pdiff-cnn", prefix="pcnn",
        description=f"p-diff's data (Wang et al. 2024) for a fixed CNN (3 conv 8-8-8 with BatchNorm, ReLU) on "
                    f"{_DIGITS}: each run (one seed) trains the whole model, then trains only the BatchNorm "
                    "layers (scales, shifts, running statistics) for `tail` more steps, saving every step "
                    "(metric finetuning=1).",
        grid={"seed": tuple(range(10_000))}, sizes=PDIFF_SIZES, sample=_sampler(PDIFF_CNN), model=_model,
        train=_train, metrics=("train_loss", "train_acc", "test_loss", "test_acc", "finetuning")),
}

RECIPES.update(PDIFF_RECIPES)
