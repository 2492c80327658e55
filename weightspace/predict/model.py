"""Property predictor: a graph metanetwork with an invariant head mapping a checkpoint's weights to its metrics."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor

from ..nn import GraphHead, GraphMetanetwork, MetanetConfig
from ..nn.layers import AGGREGATORS, DEFAULT_SCALERS
from ..nn.routes import MIN_BLOCK_EDGES


class PropertyPredictor(nn.Module, PyTorchModelHubMixin, library_name="weightspace",
                        tags=["weightspace", "metanetwork", "graph-neural-network"]):
    """Predicts metrics (e.g. test accuracy, generalisation gap) of checkpoints from their neural graphs.

    The backbone is an equivariant :class:`~weightspace.nn.GraphMetanetwork` (NG-GNN, Kofinas et
    al. 2024; PNA aggregation, Corso et al. 2020) and the head pools invariantly, so the prediction
    does not change under any weight-space permutation. Edge states and messages are ``edge_hidden``
    wide (16 by default; ``None`` makes them as wide as nodes): on MLP graphs this trains several
    times faster than edges as wide as nodes at no loss of held-out quality (BENCHMARKS.md,
    metanet). ``log_node_features`` also feeds node values (biases, norm statistics) on a log scale
    (:class:`~weightspace.nn.MetanetConfig`). Outputs are standardised with the training targets'
    ``target_mean``/``target_std``; :meth:`predict` returns them in the original units.
    ``arch_ids`` records the architectures it was trained on. ``save_pretrained``/``from_pretrained``/
    ``push_to_hub`` come from ``huggingface_hub.PyTorchModelHubMixin`` (safetensors + config.json).
    """

    def __init__(self, targets: Sequence[str] = ("test_acc",), hidden: int = 64, layers: int = 4,
                 edge_features: int = 9, node_features: int = 4, max_positions: int = 128,
                 positional: str = "fixed", aggregators: Sequence[str] = AGGREGATORS,
                 scalers: Sequence[str] = DEFAULT_SCALERS, update_edges: bool = True, conv: str = "pna",
                 heads: int = 4, edge_hidden: int | None = 16, routing: str = "segment",
                 log_node_features: bool = False, min_block_edges: int | None = MIN_BLOCK_EDGES,
                 target_mean: Sequence[float] | None = None, target_std: Sequence[float] | None = None,
                 arch_ids: Sequence[str] = ()) -> None:
        super().__init__()
        self.targets = list(targets)
        K = len(self.targets)
        self.arch_ids = list(arch_ids)
        self.backbone = GraphMetanetwork(MetanetConfig(hidden=hidden, layers=layers, states=1,
                                                       edge_features=edge_features, node_features=node_features,
                                                       max_positions=max_positions, positional=positional,
                                                       aggregators=list(aggregators), scalers=list(scalers),
                                                       update_edges=update_edges, conv=conv, heads=heads,
                                                       edge_hidden=edge_hidden, routing=routing,
                                                       log_node_features=log_node_features,
                                                       min_block_edges=min_block_edges))
        self.head = GraphHead(hidden, K, edge_hidden)
        self.register_buffer("target_mean", torch.tensor(list(target_mean) if target_mean is not None else [0.0] * K))
        self.register_buffer("target_std", torch.tensor(list(target_std) if target_std is not None else [1.0] * K))

    @classmethod
    def _from_pretrained(cls, *, model_id: str, **kwargs: Any) -> "PropertyPredictor":
        kwargs.setdefault("edge_hidden", None)  # saved before edge_hidden existed: edges as wide as nodes
        return super()._from_pretrained(model_id=model_id, **kwargs)

    def forward(self, data: Any) -> Tensor:
        """Standardised predictions ``[B, K]``."""
        return self.head(self.backbone(data))

    def normalize(self, y: Tensor) -> Tensor:
        return (y - self.target_mean) / self.target_std

    @torch.no_grad()
    def predict(self, data: Any) -> Tensor:
        """Predictions ``[B, K]`` in the targets' units."""
        return self.forward(data).float() * self.target_std + self.target_mean
