"""What models do on test data: accuracy, the maximum similarity of Zeng et al. 2025, prediction agreement.

*Maximum similarity* of a model (Zeng et al. 2025, "Generative Modeling of Weights:
Generalization or Memorization?") is the largest, over training models, intersection-over-union
of the sets of test examples the two misclassify. A generated model whose mistakes are those of
one training model scores 1.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import StateDictMismatch
from ..space import WeightSpace
from .flat import MemorizationError, ModelSet, StateDict, first_mismatch

DATA_SETS = ("digits", "digits-flat", "wine", "breast_cancer", "iris", "synthetic")


def named_data(name: str) -> tuple[Tensor, Tensor]:
    """The held-out split ``(x, y)`` of a data set of :mod:`weightspace.tasks` by name."""
    from ..tasks import digits_split, synthetic_split, tabular_split
    if name in ("digits", "digits-flat"):
        d = digits_split(flat=name == "digits-flat")
    elif name == "synthetic":
        d = synthetic_split()
    elif name in ("wine", "breast_cancer", "iris"):
        d = tabular_split(name)
    else:
        raise MemorizationError(f"unknown data set {name!r}; choose one of {', '.join(DATA_SETS)}, pass (x, y) "
                                f"tensors, or a callable state_dict -> (predictions, targets)")
    return d.x_val, d.y_val


class Evaluator:
    """Predicted labels of a state_dict on fixed test data.

    ``data`` is a data set name (:data:`DATA_SETS`), a tuple ``(x, y)``, or a callable
    ``predict(state_dict) -> (predictions, targets)``. The first two run ``model`` (an ``nn.Module``
    of the architecture, or ``model_fn()`` building one) with ``torch.func.functional_call``.
    """

    def __init__(self, space: WeightSpace, data, model: nn.Module | None = None,
                 model_fn: Callable[[], nn.Module] | None = None, batch_size: int = 4096) -> None:
        self.space = space
        self.name = data if isinstance(data, str) else getattr(data, "__name__", type(data).__name__)
        self.batch_size = batch_size
        self.predict_fn = None
        if callable(data) and not isinstance(data, nn.Module):
            if model is not None or model_fn is not None:
                raise MemorizationError("data is a callable that predicts from a state_dict itself; model/model_fn "
                                        "would be unused: pass one or the other")
            self.predict_fn = data
            self.x = self.y = None
            return
        if isinstance(data, str):
            self.x, self.y = named_data(data)
        elif isinstance(data, (tuple, list)) and len(data) == 2:
            self.x, self.y = data
        else:
            raise MemorizationError(f"data must be a name ({', '.join(DATA_SETS)}), an (x, y) pair or a callable, "
                                    f"not {type(data).__name__}")
        if model is None and model_fn is not None:
            model = model_fn()
        if model is None:
            raise MemorizationError(f"running models on data {self.name!r} needs the model: pass model= (an nn.Module "
                                    f"of the architecture) or model_fn=")
        bad = first_mismatch(space, model.state_dict())
        if bad is not None:
            raise StateDictMismatch(f"the model given to run on data does not match the architecture: {bad}")
        self.model = model.eval()

    def predict(self, sd: StateDict) -> tuple[Tensor, Tensor]:
        """Predicted labels ``[N]`` and targets ``[N]``."""
        if self.predict_fn is not None:
            out = self.predict_fn(sd)
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise MemorizationError(f"data callable {self.name} must return (predictions, targets)")
            pred, y = (torch.as_tensor(t) for t in out)
            if pred.shape != y.shape or pred.dim() != 1:
                raise MemorizationError(f"data callable {self.name} returned predictions {tuple(pred.shape)} and "
                                        f"targets {tuple(y.shape)}; expected two [N] tensors")
            return pred.long().cpu(), y.long().cpu()
        from torch.func import functional_call
        preds = []
        with torch.no_grad():
            for s in range(0, len(self.y), self.batch_size):
                xb = self.x[s:s + self.batch_size]
                try:
                    logits = functional_call(self.model, dict(sd), (xb,))
                except (RuntimeError, ValueError, IndexError, TypeError) as e:
                    raise MemorizationError(f"the models cannot run on data {self.name!r} (inputs of shape "
                                            f"{tuple(xb.shape)}, {xb.dtype}): {e}") from e
                if logits.dim() != 2 or logits.shape[0] != len(xb):
                    raise MemorizationError(f"on data {self.name!r} the model returns shape {tuple(logits.shape)}, "
                                            f"not [batch, classes] logits")
                preds.append(logits.argmax(1))
        pred = torch.cat(preds).cpu()
        if int(self.y.max()) >= int(logits.shape[1]):
            raise MemorizationError(f"data {self.name!r} has labels up to {int(self.y.max())} but the model has "
                                    f"{logits.shape[1]} outputs")
        return pred, self.y.long().cpu()

    def predict_set(self, models: ModelSet) -> tuple[Tensor, Tensor]:
        """Predictions ``[N_models, N]`` (rows of excluded models are -1) and the targets."""
        preds, y = None, None
        for i in models.valid:
            p, y = self.predict(models.state_dict(i))
            if preds is None:
                preds = torch.full((len(models), len(p)), -1, dtype=torch.long)
            preds[i] = p
        if preds is None:
            raise MemorizationError("no model with finite weights to evaluate")
        return preds, y


def accuracy(preds: Tensor, y: Tensor) -> Tensor:
    """Accuracy of each row of ``preds`` (NaN for rows of -1, the excluded models)."""
    acc = (preds == y).double().mean(1)
    return acc.masked_fill((preds < 0).all(1), float("nan"))


def max_similarity(preds: Tensor, y: Tensor, train_preds: Tensor, *, mask: Tensor | None = None
                   ) -> tuple[Tensor, Tensor]:
    """Per model, the largest IoU of its misclassified set with a training model's, and that model's index.

    ``mask[i, j]`` true leaves training model ``j`` out for model ``i`` (itself, its run). Two models
    that make no mistake have IoU 1. Excluded rows (-1) give NaN and -1.
    """
    wrong = (preds != y).double()
    twrong = (train_preds != y).double()
    inter = wrong @ twrong.T
    union = wrong.sum(1, keepdim=True) + twrong.sum(1) - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))
    iou = iou.masked_fill((train_preds < 0).all(1).unsqueeze(0), float("-inf"))
    if mask is not None:
        iou = iou.masked_fill(mask, float("-inf"))
    best, arg = iou.max(1)
    dead = (preds < 0).all(1) | torch.isinf(best)
    return best.masked_fill(dead, float("nan")), arg.masked_fill(dead, -1)


def agreement(preds: Tensor, train_preds: Tensor, indices: Sequence[int] | Tensor) -> Tensor:
    """Fraction of test examples on which each model predicts as the training model ``indices[i]`` does."""
    idx = torch.as_tensor(indices, dtype=torch.long)
    out = torch.full((len(preds),), float("nan"), dtype=torch.float64)
    ok = (idx >= 0) & ~(preds < 0).all(1)
    out[ok] = (preds[ok] == train_preds[idx[ok]]).double().mean(1)
    return out


def behaviour(evaluator: Evaluator, models: ModelSet, train_preds: Tensor, nearest_indices: Tensor,
              mask: Tensor | None = None) -> Mapping[str, Tensor]:
    """Accuracy, maximum similarity (and its argmax) and agreement with the nearest training model."""
    preds, y = evaluator.predict_set(models)
    sim, sim_idx = max_similarity(preds, y, train_preds, mask=mask)
    return {"accuracy": accuracy(preds, y), "max_similarity": sim, "max_similarity_index": sim_idx,
            "agreement": agreement(preds, train_preds, nearest_indices), "predictions": preds}
