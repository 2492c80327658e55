"""Baselines for property prediction that do not pass messages over the neural graph.

- StatNN (Unterthiner et al., "Predicting Neural Network Accuracy from Weights", 2020): per-tensor
  weight statistics (mean, variance and quantiles) fed to gradient-boosted trees.
- An MLP on the flat weight vector.

Both match tensors by state_dict name, so they apply to zoos of one family with varying widths
(the flat vector zero-pads each tensor to its widest shape); :class:`NotApplicable` says when
they cannot apply (e.g. a flat layout across MLPs and CNNs). A DeepSets-style invariant baseline is a
:class:`~weightspace.predict.PropertyPredictor` with ``layers=0`` (per-unit and per-weight
embeddings, pooled, then an MLP).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import WeightSpaceError
from .data import PropertyGraphs

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


class NotApplicable(WeightSpaceError):
    """A baseline cannot be applied to this data (e.g. a flat-vector model on several architectures)."""


def _flat_key(k: str, shape: tuple[int, ...], layout: dict[str, tuple[int, ...]]) -> str:
    return k if k in layout and len(layout[k]) == len(shape) else f"{k}[{len(shape)}d]"


def flat_matrix(store: PropertyGraphs, layout: dict[str, tuple[int, ...]] | None = None) -> tuple[dict, np.ndarray]:
    """``[M, D]`` flat weight vectors in item order, every tensor zero-padded to its largest shape in the data.

    Tensors are matched by state_dict name (and rank: a name that is a conv in one architecture
    and a BatchNorm vector in another gives two slots), so CNNs of different widths share one
    layout, each tensor in the corner of the widest one's. ``layout`` (slot -> padded shape)
    reuses a fitted layout; a tensor that does not fit it raises :class:`NotApplicable`.
    """
    used = store.block_of.unique().tolist()
    spaces = {b: store.blocks[b].space for b in used}
    if layout is None:
        layout = {}
        for sp in spaces.values():
            for k in sp.canonical_keys:
                shape = tuple(sp.params[k].shape)
                if sp.params[k].dtype.is_floating_point:
                    key = k if k not in layout else _flat_key(k, shape, layout)
                    layout[key] = tuple(max(a, b) for a, b in zip(layout.get(key, shape), shape))
    offsets, D = {}, 0
    for k, shape in layout.items():
        offsets[k] = D
        D += int(np.prod(shape))
    out = np.zeros((len(store), D), dtype=np.float32)
    for b, sp in spaces.items():
        src, dst, off = [], [], 0
        for k in sp.canonical_keys:
            shape = tuple(sp.params[k].shape)
            n = int(np.prod(shape))
            if sp.params[k].dtype.is_floating_point:
                key = _flat_key(k, shape, layout)
                if key not in layout or any(a > c for a, c in zip(shape, layout[key])):
                    raise NotApplicable(f"tensor {k!r} {shape} of architecture {store.blocks[b].arch_id} does not fit "
                                        f"the flat layout fitted on the training data")
                grid = np.indices(shape).reshape(len(shape), -1)
                dst.append(offsets[key] + (np.ravel_multi_index(grid, layout[key]) if shape else np.zeros(1, int)))
                src.append(off + np.arange(n))
            off += n
        flat, items = store.flat(b)
        s_idx, d_idx = np.concatenate(src), np.concatenate(dst)
        out[np.ix_(items.numpy(), d_idx)] = flat.numpy()[:, s_idx]
    return layout, out


def statnn_features(store: PropertyGraphs) -> tuple[list[str], np.ndarray]:
    """StatNN features: for every parameter tensor, its mean, variance and the 0/25/50/75/100% quantiles.

    Columns are named ``<key>:<stat>``. Architectures that share parameter names (e.g. CNNs of
    different widths) share columns; a tensor an architecture lacks gives NaN, which the
    gradient-boosted trees handle natively.
    """
    q = torch.tensor(QUANTILES, dtype=torch.float64)
    stat_names = ["mean", "var"] + [f"q{int(100 * x)}" for x in QUANTILES]
    names: dict[str, int] = {}
    per_block: list[tuple[torch.Tensor, list[str], torch.Tensor]] = []
    for b in store.block_of.unique().tolist():
        space = store.blocks[b].space
        flat, items = store.flat(b)
        cols, feats, off = [], [], 0
        for k in space.canonical_keys:
            n = torch.Size(space.params[k].shape).numel()
            t = flat[:, off:off + n].double()
            off += n
            if not space.params[k].dtype.is_floating_point or n == 0:
                continue
            feats += [t.mean(1, keepdim=True), t.var(1, keepdim=True, unbiased=False), torch.quantile(t, q, dim=1).T]
            cols += [f"{k}:{s}" for s in stat_names]
        for c in cols:
            names.setdefault(c, len(names))
        per_block.append((items, cols, torch.cat(feats, 1)))
    X = np.full((len(store), len(names)), np.nan, dtype=np.float32)
    for items, cols, f in per_block:
        X[np.ix_(items.numpy(), [names[c] for c in cols])] = f.float().numpy()
    return list(names), X


def _align(names: list[str], got: tuple[list[str], np.ndarray]) -> np.ndarray:
    cols, X = got
    index = {c: i for i, c in enumerate(cols)}
    out = np.full((X.shape[0], len(names)), np.nan, dtype=np.float32)
    for j, c in enumerate(names):
        if c in index:
            out[:, j] = X[:, index[c]]
    return out


class StatNN:
    """StatNN (Unterthiner et al. 2020): gradient-boosted trees on per-tensor weight statistics, one per target."""

    def __init__(self, seed: int = 0, max_iter: int = 300) -> None:
        self.seed, self.max_iter = seed, max_iter
        self.models: list = []
        self.columns: list[str] = []

    def fit(self, store: PropertyGraphs) -> "StatNN":
        from sklearn.ensemble import HistGradientBoostingRegressor

        self.columns, X = statnn_features(store)
        Y = store.targets.numpy()
        self.models = [HistGradientBoostingRegressor(max_iter=self.max_iter, learning_rate=0.05,
                                                     random_state=self.seed).fit(X, Y[:, k])
                       for k in range(Y.shape[1])]
        return self

    def predict(self, store: PropertyGraphs) -> np.ndarray:
        X = _align(self.columns, statnn_features(store))
        return np.stack([m.predict(X) for m in self.models], 1)


class FlatMLP:
    """An MLP on the standardised flat weight vector (scikit-learn, early stopping)."""

    def __init__(self, seed: int = 0, hidden: tuple[int, ...] = (128,), max_iter: int = 60) -> None:
        self.seed, self.hidden, self.max_iter = seed, hidden, max_iter

    def fit(self, store: PropertyGraphs) -> "FlatMLP":
        from sklearn.neural_network import MLPRegressor
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.layout, X = flat_matrix(store)
        Y = store.targets.numpy()
        self.y_mean, self.y_std = Y.mean(0), Y.std(0) + 1e-8
        self.model = make_pipeline(StandardScaler(), MLPRegressor(
            hidden_layer_sizes=self.hidden, max_iter=self.max_iter, early_stopping=True, random_state=self.seed,
            alpha=1e-3, learning_rate_init=1e-3, n_iter_no_change=5))
        self.model.fit(X, (Y - self.y_mean) / self.y_std)
        return self

    def predict(self, store: PropertyGraphs) -> np.ndarray:
        p = self.model.predict(flat_matrix(store, self.layout)[1])
        return p.reshape(len(store), -1) * self.y_std + self.y_mean
