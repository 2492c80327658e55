"""Train the small digits MLPs that the merge examples read: ``python examples/make_models.py``.

Writes ``examples/models/`` (or ``--out``): ``base.safetensors``, trained on every digit; three
fine-tunes of it on parts of the task, ``task-low`` (digits 0-4), ``task-high`` (5-9) and ``task-even``;
two models trained from other random initialisations, ``seed-1`` and ``seed-2`` (to merge them they
must first be aligned, see ``merge/linear-aligned.yml``); and ``weightspace.json``, their WeightSpace,
which ``weightspace merge`` finds beside the models. Everything trains in a few seconds on a CPU.
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from weightspace import WeightSpace
from weightspace.tasks.data import ClassificationData, digits_split
from weightspace.tasks.models import build, example_input
from weightspace.tasks.train import evaluate_classifier, train_classifier

TASKS = {"task-low": (0, 1, 2, 3, 4), "task-high": (5, 6, 7, 8, 9), "task-even": (0, 2, 4, 6, 8)}


def _subset(data: ClassificationData, classes: tuple[int, ...]) -> ClassificationData:
    keep = torch.isin(data.y_train, torch.tensor(classes))
    return replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])


def make_models(out: str | Path, steps: int = 200) -> dict[str, float]:
    """Train and save the example models into ``out``; returns each one's validation accuracy."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = digits_split(0, flat=True)

    def mlp(seed: int) -> torch.nn.Module:
        return build("mlp", seed=seed, in_features=64, widths=[32], out_features=10, activation="relu")

    models: dict[str, torch.nn.Module] = {}
    base = mlp(0)
    train_classifier(base, data, steps, lr=3e-3, seed=0)
    models["base"] = base
    for i, (name, classes) in enumerate(TASKS.items()):
        m = copy.deepcopy(base)
        train_classifier(m, _subset(data, classes), steps, lr=1e-3, seed=10 + i)
        models[name] = m
    for seed in (1, 2):
        m = mlp(seed)
        train_classifier(m, data, steps, lr=3e-3, seed=seed)
        models[f"seed-{seed}"] = m
    WeightSpace.from_module(base, example_input(base)).save(out / "weightspace.json")
    acc = {}
    for name, m in models.items():
        save_file({k: v.detach().clone().contiguous() for k, v in m.state_dict().items()},
                  str(out / f"{name}.safetensors"))
        acc[name] = evaluate_classifier(m, data.x_val, data.y_val)[1]
    return acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).parent / "models"))
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args()
    for name, a in make_models(args.out, args.steps).items():
        print(f"{name:10s} validation accuracy {a:.3f}")


if __name__ == "__main__":
    main()
