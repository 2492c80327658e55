"""Permutation-equivariant diffusion in weight space, with a graph metanetwork as the denoiser.

A DDPM (Ho et al. 2020) runs directly on a model's standardised weights. The noise predictor
reads the noisy weights as the model's neural graph (weights on edges, biases and norm
parameters on nodes, the :class:`WeightSpace` layout) and is a
:class:`~weightspace.nn.GraphMetanetwork` with an edge head and a node head, so it predicts one
noise value per weight, bias and norm parameter. Because the metanetwork is equivariant,
relabelling hidden units of the noisy input relabels the predicted noise the same way, and the
model's distribution over weights is invariant under the permutation symmetry: a permuted copy
of a training model is as likely as the model itself, which is the symmetry prior that Zeng et
al. 2025 find current weight generators lack. Each value is standardised by its tensor's mean
and spread over the training models (one pair of numbers per tensor, so standardisation
commutes with permutations). Values the graph does not place (none for MLPs and CNNs) are taken
from the base checkpoint.

By default the DDPM uses the cosine schedule and v-prediction (:mod:`.ddpm`): with the short
linear schedule and noise prediction it had before, the last step kept most of the signal while
sampling started from pure noise, and the noisy steps that shape a sample were barely trained;
with :class:`GraphDenoiser`'s unit views and pair readout it learns a collection of five tiny
digits MLPs in 200 steps, where before its samples stayed at chance.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
from einops import rearrange
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor
from torch_geometric.data import Data

from ..memorization.flat import float_keys
from ..nn import EdgeHead, GraphMetanetwork, MetanetConfig, NodeHead
from ..nn.layers import AGGREGATORS, DEFAULT_SCALERS
from ..space import WeightSpace
from ..training import TrainConfig, Trainer, is_main_process
from ..utils import atomic_write_text
from .base import RowSource, WeightGenerator, load_models, make_evaluator, sample_accuracy
from .ddpm import Schedule, timestep_features

MODEL_DIR = "model"


class GraphDenoiser(nn.Module):
    """Denoiser over a fixed architecture's neural graph: flat noisy values ``[B, P]`` and steps ``[B]`` in, one
    prediction per value ``[B, P]`` out (``P`` = the space's floating-point values; noise or ``v``, as the
    schedule's ``prediction`` says).

    Each edge reads its noisy values plus the step's sinusoidal features, each node likewise; the
    encoding's edge and node heads write one value per edge slot and node column, read back with
    the layout's inverse gather. Three additions let it learn a tiny collection in a few hundred
    steps (the plain metanetwork stayed at the per-tensor Gaussian's error, and its samples at chance):

    - *unit views* (``views`` wide, 0: none): each node also reads ``sum_i x_ij emb(i) / sqrt(degree)``
      over its incoming edges and likewise over its outgoing ones, where ``emb`` is a learned vector per
      fixed unit (input pixel, output class) and one shared vector for permutable units. A hidden unit
      thus sees linear projections of its whole receptive field from the start, which the best linear
      per-unit denoiser consists of and which message passing learns only slowly; it is a sum over
      neighbours, so it stays equivariant (as the hypernetwork's incoming view, :mod:`weightspace.hyper`);
    - a *pair readout* (rank ``pair_rank``, 0: none): each edge's output adds
      ``sum_r a_r(h_src) b_r(h_dst) (1 + c_r(e))``, the product of its two endpoints' embeddings that a
      weight's value depends on and that an additive edge update approximates poorly;
    - position embeddings of fixed units start at scale 1 (the metanetwork's 0.1 leaves the 64 input
      pixels nearly indistinguishable at first).
    """

    def __init__(self, space: WeightSpace, hidden: int, layers: int, edge_hidden: int | None, time_dim: int,
                 steps: int, aggregators: Sequence[str] = AGGREGATORS, scalers: Sequence[str] = DEFAULT_SCALERS,
                 views: int = 32, pair_rank: int = 32) -> None:
        super().__init__()
        self.space, self.time_dim, self.steps = space, time_dim, steps
        lay = space.layout
        self.F, self.Fn = lay.edge_features, lay.node_features
        max_pos = max(128, int(lay.pos_id.max()) + 1 if lay.num_nodes else 128)
        self.metanet = GraphMetanetwork(MetanetConfig(hidden=hidden, layers=layers, edge_features=self.F + time_dim,
                                                      node_features=self.Fn + time_dim + 2 * views,
                                                      edge_hidden=edge_hidden, aggregators=aggregators,
                                                      scalers=scalers, max_positions=max_pos))
        nn.init.normal_(self.metanet.pos_emb.weight, std=1.0)
        self.views, self.pair_rank = views, pair_rank
        if views:
            self.view_pos = nn.Embedding(max_pos + 1, views)
            self.view_in = nn.Linear(self.F * views, views)
            self.view_out = nn.Linear(self.F * views, views)
            for name, side in (("deg_in", 1), ("deg_out", 0)):
                deg = torch.bincount(lay.edge_index[side], minlength=lay.num_nodes).clamp(min=1).float().rsqrt()
                self.register_buffer(name, deg, persistent=False)
        self.edge_head = EdgeHead(edge_hidden or hidden, 1, self.F)
        if pair_rank:
            self.pair_src = nn.Linear(hidden, pair_rank * self.F)
            self.pair_dst = nn.Linear(hidden, pair_rank * self.F)
            self.pair_edge = nn.Linear(edge_hidden or hidden, pair_rank * self.F)
            self.pair_out = nn.Parameter(torch.randn(self.F, pair_rank) / pair_rank ** 0.5)
        self.node_head = NodeHead(hidden, self.Fn)
        keys = float_keys(space)
        pos = torch.cat([lay.offset[k] + torch.arange(torch.Size(space.params[k].shape).numel()) for k in keys])
        self.register_buffer("float_positions", pos, persistent=False)
        placed = lay.inverse[pos] < lay.num_edges * self.F + lay.num_nodes * self.Fn
        self.register_buffer("placed", placed, persistent=False)
        self._batches: dict[tuple[int, torch.device], dict[str, Tensor]] = {}

    def _batch(self, B: int, device: torch.device) -> dict[str, Tensor]:
        key = (B, device)
        if key not in self._batches:
            lay = self.space.layout
            N, E = lay.num_nodes, lay.num_edges
            shift = (torch.arange(B) * N).repeat_interleave(E)
            self._batches[key] = {
                "edge_index": (lay.edge_index.repeat(1, B) + shift).to(device),
                "edge_type": lay.edge_type.repeat(B).to(device), "node_type": lay.node_type.repeat(B).to(device),
                "pos_id": lay.pos_id.repeat(B).to(device),
                "batch": torch.arange(B).repeat_interleave(N).to(device)}
        return self._batches[key]

    def _views(self, values: Tensor) -> Tensor:
        """Each unit's views ``[B, N, 2 * views]`` of its incoming and outgoing edge values ``[E, B, F]``."""
        lay = self.space.layout
        emb = self.view_pos(lay.pos_id.to(values.device) + 1).to(values.dtype)
        src, dst = lay.edge_index.to(values.device)
        out = []
        for this, other, lin, deg in ((dst, src, self.view_in, self.deg_in), (src, dst, self.view_out, self.deg_out)):
            msg = (values.unsqueeze(-1) * emb[other][:, None, None, :]).flatten(2)
            agg = values.new_zeros(lay.num_nodes, values.shape[1], msg.shape[-1]).index_add_(0, this, msg)
            out.append(lin(agg * deg.to(values.dtype)[:, None, None]))
        return rearrange(torch.cat(out, -1), "n b f -> b n f")

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        lay = self.space.layout
        B, N, E = x.shape[0], lay.num_nodes, lay.num_edges
        full = x.new_zeros(B, lay.num_values)
        full[:, self.float_positions] = x
        g = lay.graph_from_flat(full)
        temb = timestep_features(t, self.time_dim, self.steps).to(x.dtype)
        ea = torch.cat([rearrange(g.edge_attr, "e b f -> b e f"), temb[:, None].expand(B, E, -1)], -1)
        nx = torch.cat([rearrange(g.x, "n b f -> b n f"), temb[:, None].expand(B, N, -1)], -1)
        idx = self._batch(B, x.device)
        if self.views:
            nx = torch.cat([nx, self._views(g.edge_attr)], -1)
        data = Data(edge_attr=ea.reshape(B * E, 1, -1), x=nx.reshape(B * N, 1, -1), num_nodes=B * N, **idx)
        enc = self.metanet(data)
        edge_out = self.edge_head(enc)[:, 0]
        if self.pair_rank:
            src, dst = idx["edge_index"]
            pair = self.pair_src(enc.node)[src] * self.pair_dst(enc.node)[dst] * (1 + self.pair_edge(enc.edge))
            edge_out = edge_out + torch.einsum("efr,fr->ef", pair.view(-1, self.F, self.pair_rank), self.pair_out)
        edge_out = rearrange(edge_out.float(), "(b e) f -> e b f", b=B)
        node_out = rearrange(self.node_head(enc).float(), "(b n) f -> n b f", b=B)
        aux = edge_out.new_zeros(1, B, len(lay.aux_gather))
        flat = lay.flat_from_graph(Data(edge_attr=edge_out, x=node_out, aux=aux))
        return flat[:, self.float_positions].to(x.dtype)


class GraphDiffusion(WeightGenerator, PyTorchModelHubMixin, library_name="weightspace",
                     tags=["weightspace", "weight-generation", "diffusion", "equivariant", "graph-neural-network"]):
    """A DDPM on a fixed architecture's weights whose denoiser is an equivariant graph metanetwork.

    Build it with :meth:`fit`; :meth:`sample` gives complete state_dicts. ``space`` is the traced
    :class:`WeightSpace` as JSON; every floating-point tensor is generated. ``aggregators``/``scalers`` are the
    metanetwork's PNA choices (fewer are cheaper; edges outnumber everything else); ``views`` and
    ``pair_rank`` size the denoiser's unit views and pair readout (:class:`GraphDenoiser`, 0: off).
    ``schedule`` is ``"cosine"`` (Nichol & Dhariwal 2021) or ``"linear"`` (betas stretched by
    ``1000 / diffusion_steps``, so that the last step is pure noise), ``prediction`` ``"v"`` or ``"eps"``
    (:class:`~.ddpm.Schedule`); the defaults are what lets a tiny collection be learnt at all.
    """

    def __init__(self, space: dict[str, Any], hidden: int = 64, layers: int = 3, edge_hidden: int | None = None,
                 time_dim: int = 16, diffusion_steps: int = 200, aggregators: list[str] | None = None,
                 scalers: list[str] | None = None, views: int = 32, pair_rank: int = 32, schedule: str = "cosine",
                 prediction: str = "v") -> None:
        super().__init__()
        self._init_space(space, float_keys(WeightSpace.from_json(space)))
        self.schedule = Schedule(diffusion_steps, scaled=True, prediction=prediction, kind=schedule)
        self.denoiser = GraphDenoiser(self.space, hidden, layers, edge_hidden, time_dim, diffusion_steps,
                                      aggregators or AGGREGATORS, scalers or DEFAULT_SCALERS, views, pair_rank)
        self.register_buffer("mean", torch.zeros(self.dim))
        self.register_buffer("scale", torch.ones(self.dim))
        self.register_buffer("positive", torch.zeros(self.dim, dtype=torch.bool))

    def _fit_normaliser(self, values: Tensor) -> None:
        """One mean and one spread per tensor, over its values and the training models (permutation invariant).

        A tensor that is positive in every training model (BatchNorm's running variances) is modelled by
        its logarithm, so that its samples stay positive: a negative variance makes the model's outputs NaN."""
        mean, scale = torch.empty(self.dim), torch.empty(self.dim)
        positive = torch.zeros(self.dim, dtype=torch.bool)
        for sl in self.key_slices():
            block = values[:, sl].double()
            if bool((block > 0).all()):
                positive[sl] = True
                block = block.log()
            mean[sl] = float(block.mean())
            scale[sl] = float(block.std()) if block.numel() > 1 else 0.0
        self.positive.copy_(positive)
        self._set_normaliser(mean, scale)

    def normalise(self, values: Tensor) -> Tensor:
        values = values.to(self.mean.device)
        return super().normalise(torch.where(self.positive, values.clamp(min=1e-30).log(), values))

    def denormalise(self, x: Tensor) -> Tensor:
        values = super().denormalise(x)
        return torch.where(self.positive, values.clamp(max=80.0).exp(), values)

    def sample_values(self, n: int, seed: int = 0) -> Tensor:
        g = torch.Generator().manual_seed(int(seed))
        x = self.schedule.sample(self.denoiser, (n, self.dim), g, device=self.mean.device)
        values = self.denormalise(x)
        placed = self.denoiser.placed
        values[:, ~placed] = self.base_values[self.value_index][~placed]
        return values.float().cpu()

    @classmethod
    def fit(cls, training, *, space: WeightSpace | None = None, steps: str = "last", config: TrainConfig | None = None,
            out: str | Path | None = None, data=None, model: nn.Module | None = None, eval_samples: int = 8,
            progress: bool = False, **options: Any) -> "GraphDiffusion":
        """Train the diffusion model on ``training`` (state_dicts, or a ``CheckpointCollection``: its runs' last
        checkpoints, every checkpoint with ``steps="all"``) and return it.

        Training runs on :class:`~weightspace.training.Trainer` with ``config`` (bf16 autocast on GPU, DDP
        under torchrun, progress, resumable checkpoints and ``loss.png`` in ``out/diffusion``); ``out/model``
        gets :meth:`save_pretrained`. No alignment is needed: the denoiser is equivariant. With ``data``
        (and ``model``) each evaluation logs the test accuracy of ``eval_samples`` samples. ``options``
        are the constructor's sizes.
        """
        models = load_models(training, space, steps=steps, progress=progress)
        evaluator = make_evaluator(models.space, data, model, models.base)
        cfg = config or TrainConfig(steps=2000, batch_size=16, lr=1e-3, warmup=50)
        if not progress:
            cfg = replace(cfg, progress=False)
        torch.manual_seed(cfg.seed)
        gen = cls(models.space.to_json(), **options)
        gen._set_base(models.base)
        values = gen.training_values(models)
        gen._fit_normaliser(values)
        x = gen.normalise(values)
        placed = gen.denoiser.placed
        out = Path(out) if out is not None else None
        eval_fn = None
        if evaluator is not None:
            def eval_fn(m: nn.Module) -> dict[str, float]:
                gen.to(next(m.parameters()).device)
                return sample_accuracy(gen, evaluator, eval_samples)
        trainer = Trainer(gen.denoiser, lambda m, x_, _y: gen.schedule.loss(m, x_, placed.to(x_.device)),
                          RowSource(x), cfg, out / "diffusion" if out is not None else None, eval_fn=eval_fn)
        gen.history = {"diffusion": trainer.fit().history}
        gen.to("cpu").eval()
        gen.excluded = dict(models.excluded)
        if out is not None and is_main_process():
            gen.save_pretrained(out / MODEL_DIR)
            atomic_write_text(out / "fit.json", json.dumps(
                {"training_models": int(models.rows.shape[0]) + len(models.excluded),
                 "excluded": {str(k): v for k, v in models.excluded.items()}, "generated_values": gen.dim,
                 "source": models.source}, indent=1))
        return gen
