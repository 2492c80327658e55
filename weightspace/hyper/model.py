"""Graph hypernetwork: predicts every parameter of a model from its traced neural graph."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor
from torch_geometric.data import Batch, Data

from ..errors import WeightSpaceError
from ..nn import EdgeHead, GraphMetanetwork, IncompatibleGraph, MetanetConfig, NodeHead
from ..nn.layers import mlp
from ..space import WeightSpace
from ..space.vocabulary import EDGE_TYPES, NODE_TYPES
from .calibrate import calibrate_statistics
from .errors import BadExampleInput, NonFinitePrediction, UnseenArchitecture
from .layout import (EDGE_INPUTS, KIND_AUX, KIND_EDGE, NODE_INPUTS, HyperLayout, graph_node_types, model_constants,
                     position_code)

PRETRAINED = Path(__file__).parent / "pretrained" / "digits"
"""The packaged hypernetwork (digits MLPs and CNNs; see its README.md model card)."""
PARAMETRIZATIONS = ("mip", "ghn2")
DECODERS = ("edge", "tile")


@dataclass
class Draw:
    """The random inputs of one prediction: features ``units [N, R]`` of the graph's nodes (zero on fixed
    units) and ``theta0 [P]``, the base values of MIP's parametrisation (uniform in [-1, 1], scaled by
    ``1/sqrt(fan_in)`` when used)."""

    units: Tensor
    theta0: Tensor

    def permuted(self, layout: HyperLayout, perm: Mapping[str, Tensor]) -> "Draw":
        """The draw relabelled by a weight-space permutation, as the graph's units are."""
        space = layout.space
        units = self.units[space.node_permutation(perm).to(self.units.device)]
        sd = space.layout.unflatten(self.theta0[None], [torch.float32] * len(space.layout.keys))[0]
        sd = space.permute({k: sd[k] for k in space.canonical_keys}, perm)
        theta0 = torch.cat([sd[k].reshape(-1) for k in space.layout.keys])
        return Draw(units, theta0)


class GraphHyperNetwork(nn.Module, PyTorchModelHubMixin, library_name="weightspace",
                        tags=["weightspace", "hypernetwork", "parameter-prediction", "graph-neural-network"]):
    """Predicts a complete state_dict for any architecture the tracer describes (GHN-2/GHN-3-style).

    Parameter prediction for unseen architectures follows Knyazev et al., "Parameter Prediction
    for Unseen Deep Architectures" (NeurIPS 2021, GHN-2) and "Can We Scale Transformers to
    Predict Parameters of Diverse ImageNet Models?" (ICML 2023, GHN-3). Instead of decoding a
    fixed-size tensor and tiling it, it reads the model's neural graph (:class:`WeightSpace`
    layout: units as nodes, weights as edges) with an equivariant
    :class:`~weightspace.nn.GraphMetanetwork` and decodes one value per edge slot (a conv edge has
    ``k*k``) and per node column (biases, norm parameters), which ``from_graph`` turns into the
    state_dict. Any width or depth is predicted natively.

    **What it reads.** Per node and edge, layout features only (fan-in, depth, kernel size:
    :class:`HyperLayout`), plus the draw's ``theta0`` placed on the graph as if it were a checkpoint,
    and for each unit a linear summary of its incoming ``theta0`` values against learned embeddings of
    the units they come from (so a hidden unit knows its random receptive field). **How it decodes.**
    Each edge value is an MLP of the backbone's edge embedding plus a learned linear readout of
    products of its two endpoints' codes (``rank`` of them), i.e. each weight is predicted from the two
    units it connects. A unit's code is its own embedding (learned for a fixed unit such as an input
    pixel or a class, a linear map of a permutable unit's features) and its incoming summary,
    *not* the backbone's node embedding: with the backbone's embedding there, meta-training on digits
    MLPs fell 2.31 -> 1.89 in 100 steps (held-out accuracy 19%); with these codes, 2.31 -> 1.75 (39-43%),
    because a first-layer weight is then a learned pixel vector times a map of the unit's features, which
    Adam moves like a layer of an ordinary network. Weight tensors are decoded centred (their mean over the
    tensor is removed): under Adam a shift shared by a whole layer is the easiest output to move, and it
    silenced every ReLU unit at once. ``decoder="tile"`` replaces the per-edge decoder with GHN-2's
    (one tensor per pair of layers, tiled: an ablation).

    **Telling units apart.** A permutation-equivariant network gives interchangeable units identical
    outputs, so every permutable unit (hidden unit, channel, head) gets ``unit_features`` features; fixed
    units (inputs, outputs, vocabulary, positions) keep learned positional embeddings. By default
    (``positional=True``) a unit's features are Fourier features of its *relative* position ``(i + 0.5) / width``
    in its layer (:func:`~weightspace.hyper.layout.position_code`), plus ``unit_noise`` times Gaussian noise drawn
    from ``seed``. Relative positions make one network a continuous field of units: a layer of any width samples
    it at its own positions, so a width never seen in training interpolates between trained units instead of
    repeating them (GHN-2's tiling duplicates channels). With ``positional=False`` the features are Gaussian noise
    alone (GHN-style random features); meta-training then fell far slower (digits CNNs, 1,000 steps: training
    loss 1.97 against 0.35, held-out accuracy 25% against 67%), because the prediction must then suit every draw
    of the units. Either way ``seed`` also draws MIP's ``theta0``, so different seeds give different models: the
    same network is a weight *generator*. Permuting the unit features permutes the prediction.

    **Mean-field pair term.** The low-rank pair term of an edge is divided by its unit's fan-in (``1/fan_in``
    overall, where the edge MLP's term gets ``1/sqrt(fan_in)``): a structured weight pattern then contributes an
    average over the incoming units, the same at any width, where ``1/sqrt(fan_in)`` would let it grow like
    ``sqrt(width)``. ``mean_field=False`` gives it ``1/sqrt(fan_in)`` like the rest (an ablation).

    **Output scaling** (``parametrization``):

    - ``"ghn2"``: GHN-2's fan-in-aware normalisation: weights ``w * sqrt(beta / fan_in)``; per-unit
      tensors a model initialises to 1 (norm scales) ``2 * sigmoid(w)``, others (biases, shifts)
      ``bias_scale * tanh(w)``.
    - ``"mip"``: the additive parametrisation of MIP (Ortiz et al., "Magnitude Invariant
      Parametrizations Improve Hypernetwork Learning", ICLR 2024): ``theta = theta0 + delta / sqrt(fan_in)``
      where ``theta0`` is drawn like PyTorch's default init, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
      (per-unit tensors the model initialises to a constant start at it), and scalar inputs such
      as fan-in and depth are given constant-norm encodings ``[cos(pi z/2), sin(pi z/2)]``. The
      output layers start at zero, so an untrained hypernetwork gives an ordinary random init.

    ``fan_in_scaling=False`` drops the ``1/sqrt(fan_in)`` factor of the delta (MIP) or weight (GHN-2), an
    ablation. fan-in is read from the graph (:mod:`weightspace.hyper.layout`). Running statistics are
    measured on a calibration batch (:mod:`weightspace.hyper.calibrate`); tensors the graph
    does not place (``num_batches_tracked``) keep the model's own values.
    """

    def __init__(self, hidden: int = 32, layers: int = 0, edge_hidden: int | None = None, unit_features: int = 16,
                 parametrization: str = "mip", ghn_beta: float = 2.0, bias_scale: float = 0.1,
                 max_positions: int = 128, max_kernel: int = 9, max_node_features: int = 4, max_fan_in: int = 4096,
                 conv: str = "pna", heads: int = 4, routing: str = "segment", rank: int = 32,
                 fan_in_scaling: bool = True, decoder: str = "edge", tile: int = 16,
                 positional: bool = True, unit_noise: float = 0.0, mean_field: bool = True,
                 edge_types: Sequence[str] | None = None, node_types: Sequence[str] | None = None) -> None:
        super().__init__()
        if unit_noise < 0 or (not positional and unit_noise == 0 and unit_features):
            raise WeightSpaceError(f"unit_noise must be >= 0, and > 0 without positional unit features (identical "
                                   f"units would get identical weights); got {unit_noise}")
        self.positional, self.unit_noise, self.mean_field = positional, float(unit_noise), mean_field
        if parametrization not in PARAMETRIZATIONS:
            raise WeightSpaceError(f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")
        if decoder not in DECODERS:
            raise WeightSpaceError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.unit_features, self.parametrization = unit_features, parametrization
        self.fan_in_scaling, self.decoder, self.tile = fan_in_scaling, decoder, tile
        self.edge_types = None if edge_types is None else sorted(edge_types)
        self.node_types = None if node_types is None else sorted(node_types)
        self.ghn_beta, self.bias_scale = ghn_beta, bias_scale
        self.max_kernel, self.max_node_features, self.max_fan_in = max_kernel, max_node_features, max_fan_in
        self.backbone = GraphMetanetwork(MetanetConfig(
            hidden=hidden, layers=layers, states=1, edge_features=EDGE_INPUTS + max_kernel,
            node_features=NODE_INPUTS + max_node_features + unit_features + hidden, max_positions=max_positions,
            positional="fixed", conv=conv, heads=heads, routing=routing, edge_hidden=edge_hidden))
        nn.init.normal_(self.backbone.pos_emb.weight, std=1.0)
        self.edge_head = EdgeHead(edge_hidden or hidden, 1, max_kernel)
        self.node_head = NodeHead(hidden, max_node_features)
        self.rank = rank
        self.source_pos = nn.Embedding(max_positions + 1, hidden)
        self.source_units = nn.Linear(unit_features, hidden)
        self.incoming = nn.Linear(max_kernel * hidden, hidden)
        self.src_factor = nn.Linear(2 * hidden + unit_features, max_kernel * rank)
        self.dst_factor = nn.Linear(2 * hidden + unit_features, max_kernel * rank)
        self.pair_readout = nn.Parameter(torch.randn(max_kernel, rank) / math.sqrt(rank))
        self.tile_decoder = mlp([2 * hidden, hidden, tile * tile * max_kernel]) if decoder == "tile" else None
        if parametrization == "mip":
            nn.init.zeros_(self.pair_readout)
            heads = [self.edge_head.mlp, self.node_head.mlp] + ([self.tile_decoder] if self.tile_decoder else [])
            for head in heads:
                nn.init.zeros_(head[-1].weight)
                nn.init.zeros_(head[-1].bias)
        self._layouts: dict[str, HyperLayout] = {}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path | None = None, **kwargs: Any
                        ) -> "GraphHyperNetwork":
        """Load ``save_pretrained`` output (a folder or Hub id); with no argument, the packaged digits model
        (scikit-learn digits, pixels in [0, 1]: flat 64-vectors for MLPs, ``1x8x8`` images for CNNs)."""
        path = pretrained_model_name_or_path
        if path is None:
            path = PRETRAINED
            if not (path / "config.json").is_file():
                raise WeightSpaceError(f"no packaged hypernetwork at {path}; train one with `weightspace hyper "
                                       f"train` (or scripts/pretrain_hyper.py) and pass its model folder")
        return super().from_pretrained(str(path), **kwargs)

    # ------------------------------------------------------------------ architectures
    def layout(self, space: WeightSpace) -> HyperLayout:
        """The cached :class:`HyperLayout` of ``space``, after checking that this network can predict it."""
        lay = self._layouts.get(space.fingerprint)
        if lay is None:
            g = space.layout
            problems = []
            if g.edge_features > self.max_kernel:
                problems.append(f"{g.edge_features} values per edge (kernel) > {self.max_kernel}")
            if g.node_features > self.max_node_features:
                problems.append(f"{g.node_features} per-unit tensors on one unit > {self.max_node_features}")
            if g.num_nodes and int(g.pos_id.max()) >= self.backbone.config.max_positions:
                problems.append(f"fixed units up to position {int(g.pos_id.max())} >= "
                                f"{self.backbone.config.max_positions}")
            if problems:
                raise IncompatibleGraph(f"{space.name or 'the model'} does not fit this hypernetwork: "
                                        + "; ".join(problems))
            lay = HyperLayout.from_space(space)
            self._layouts[space.fingerprint] = lay
        return lay

    def types_of(self, space: WeightSpace) -> tuple[set[str], set[str]]:
        """The edge and node types (names from :mod:`weightspace.space.vocabulary`) of ``space``'s graph, node types
        as :func:`~weightspace.hyper.layout.graph_node_types` reads them."""
        return ({EDGE_TYPES[t] for t in space.layout.edge_type.unique().tolist()},
                {NODE_TYPES[t] for t in graph_node_types(space).unique().tolist()})

    def record_seen(self, edge_types: Sequence[str], node_types: Sequence[str]) -> None:
        """Record the edge and node types training covers (saved with the config)."""
        self.edge_types, self.node_types = sorted(edge_types), sorted(node_types)
        if isinstance(self._hub_mixin_config, dict):
            self._hub_mixin_config.update(edge_types=self.edge_types, node_types=self.node_types)

    def check_seen(self, space: WeightSpace) -> None:
        """Raise :class:`UnseenArchitecture` naming the edge/node types of ``space`` that training never saw
        (recorded in ``edge_types``/``node_types``; ``None`` records nothing and accepts every type)."""
        if self.edge_types is None and self.node_types is None:
            return
        edges, nodes = self.types_of(space)
        new_e = sorted(edges - set(self.edge_types or ()))
        new_n = sorted(nodes - set(self.node_types or ()))
        if new_e or new_n:
            missing = ([f"edge types {new_e}"] if new_e else []) + ([f"node types {new_n}"] if new_n else [])
            raise UnseenArchitecture(
                f"{space.name or 'the model'} has {' and '.join(missing)} this hypernetwork was never trained on "
                f"(it saw edges {self.edge_types}, nodes {self.node_types}); its predictions for them would be "
                f"untrained. Pass allow_unseen=True to predict anyway, or train on such architectures")

    def draw(self, layout: HyperLayout, seed: int) -> Draw:
        """The unit features (relative positions plus noise) and ``theta0`` of ``seed`` (drawn on the CPU, so every
        device agrees)."""
        g = torch.Generator().manual_seed(int(seed))
        units = torch.randn(layout.num_nodes, self.unit_features, generator=g) * self.unit_noise
        if self.positional:
            units = units + position_code(layout.unit_position, self.unit_features)
        units[~layout.permutable_nodes] = 0
        theta0 = torch.rand(layout.num_values, generator=g) * 2 - 1
        return Draw(units, theta0)

    # ------------------------------------------------------------------ prediction
    def forward(self, layouts: Sequence[HyperLayout], draws: Sequence[Draw],
                constants: Sequence[tuple[Tensor, Tensor]]) -> list[Tensor]:
        """Flat parameter vectors ``[P]`` (float32, differentiable), one per architecture.

        ``constants`` are :func:`~weightspace.hyper.layout.model_constants` of each model as built.
        """
        dev = self.node_head.mlp[0].weight.device
        constant_norm = self.parametrization == "mip"
        graphs = [lay.graph(d.units.to(dev), torch.where(torch.isnan(c[0]), d.theta0, c[0]),
                            max_fan_in=self.max_fan_in, max_kernel=self.max_kernel,
                            max_node_features=self.max_node_features, constant_norm=constant_norm)
                  for lay, d, c in zip(layouts, draws, constants)]
        batch = Batch.from_data_list(graphs)
        incoming, direct = self._incoming(batch)
        batch.x = torch.cat([batch.x, incoming.unsqueeze(1)], -1)
        enc = self.backbone(batch)
        units = torch.cat([d.units.to(dev, enc.node.dtype) for d in draws])
        z = torch.cat([incoming, units, direct], -1).to(enc.node.dtype)
        if self.tile_decoder is None:
            edge_out = self.edge_head(enc)[:, 0].float()
            src_code = (self.src_factor(z).view(-1, self.max_kernel, self.rank) * self.pair_readout).float()
            dst_code = self.dst_factor(z).view(-1, self.max_kernel, self.rank).float()
        else:
            edge_out = self._tiled(enc.node, layouts, batch.edge_index).float()
        node_out = self.node_head(enc).float()
        out = []
        e0 = n0 = 0
        for lay, d, (const, own) in zip(layouts, draws, constants):
            g = lay.space.layout
            E, N, F = lay.num_edges, lay.num_nodes, g.edge_features
            ea = edge_out[e0:e0 + E, :F]
            if self.tile_decoder is None:
                src, dst = batch.edge_index[:, e0:e0 + E]
                pair = (src_code[src, :F] * dst_code[dst, :F]).sum(-1)
                if self.mean_field:
                    pair = pair * lay.fan_in_edge.to(pair.device).float().rsqrt().unsqueeze(-1)
                ea = ea + pair
            ea = ea.unsqueeze(1)
            x = node_out[n0:n0 + N, :g.node_features].unsqueeze(1)
            e0, n0 = e0 + E, n0 + N
            aux = ea.new_zeros(1, 1, len(g.aux_gather))
            raw = g.flat_from_graph(Data(edge_attr=ea, x=x, aux=aux))[0]
            out.append(self._scale(raw, lay, d.theta0.to(dev), const.to(dev), own.to(dev)))
        return out

    def _tiled(self, node: Tensor, layouts: Sequence[HyperLayout], edge_index: Tensor) -> Tensor:
        """GHN-2's decoder (the ``"tile"`` ablation): each pair of connected layers (node sites) decodes one
        ``[tile, tile, max_kernel]`` tensor from the two sites' mean embeddings, and the weight between units
        ``i -> j`` is its entry ``[j mod tile, i mod tile]``: wider layers repeat channels."""
        dev = node.device
        offsets = [0]
        for lay in layouts:
            offsets.append(offsets[-1] + lay.num_sites)
        site = torch.cat([lay.node_site + o for lay, o in zip(layouts, offsets)]).to(dev)
        local = torch.cat([lay.node_local for lay in layouts]).to(dev)
        S = offsets[-1]
        sums = node.new_zeros(S, node.shape[1]).index_add_(0, site, node)
        mean = sums / torch.bincount(site, minlength=S).clamp(min=1).unsqueeze(1).to(node.dtype)
        src, dst = edge_index
        pairs, inv = torch.unique(site[dst] * S + site[src], return_inverse=True)
        tiles = self.tile_decoder(torch.cat([mean[pairs // S], mean[pairs % S]], -1))
        tiles = tiles.view(-1, self.tile, self.tile, self.max_kernel)
        return tiles[inv, local[dst] % self.tile, local[src] % self.tile]

    def _incoming(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Each unit's view of its incoming values, ``sum_j theta0_ij (x) emb(j) / sqrt(fan_in)``, and its own
        ``emb``: a learned position embedding of a fixed unit, a map of a permutable one's features.

        The view is a linear message, so a hidden unit knows its (random) receptive field from the first layer
        on. ``emb`` also reaches the edge decoder directly (not through the backbone): a weight between an input
        pixel and a hidden unit is then a learned pixel vector times a map of the unit's features, which Adam
        moves as fast as a layer of an ordinary network."""
        K, R = self.max_kernel, self.unit_features
        x = batch.x[:, 0]
        values = batch.edge_attr[:, 0, EDGE_INPUTS:EDGE_INPUTS + K]
        units = x[:, -R:] if R else x[:, :0]
        emb = self.source_pos(batch.pos_id + 1) * (batch.pos_id >= 0).unsqueeze(-1) + self.source_units(units)
        src, dst = batch.edge_index
        msg = (values.unsqueeze(-1) * emb[src].unsqueeze(1)).flatten(1)
        agg = torch.zeros(x.shape[0], msg.shape[1], dtype=msg.dtype, device=msg.device).index_add_(0, dst, msg)
        deg = torch.zeros(x.shape[0], dtype=msg.dtype, device=msg.device).index_add_(
            0, dst, (values != 0).sum(1).to(msg.dtype))
        return self.incoming(agg * deg.clamp(min=1).rsqrt().unsqueeze(-1)), emb

    def _scale(self, raw: Tensor, lay: HyperLayout, theta0: Tensor, const: Tensor, own: Tensor) -> Tensor:
        kind = lay.value_kind.to(raw.device)
        raw = raw - self._tensor_means(raw, lay).where(kind == KIND_EDGE, torch.zeros((), device=raw.device))
        inv_sqrt = lay.value_fan_in.to(raw.device).float().rsqrt()
        scale = inv_sqrt if self.fan_in_scaling else torch.ones_like(inv_sqrt)
        is_const = ~torch.isnan(const)
        if self.parametrization == "mip":
            base = torch.where(is_const, torch.nan_to_num(const), theta0 * inv_sqrt)
            theta = base + raw * scale
        else:
            weight = raw * math.sqrt(self.ghn_beta) * scale
            scale = 2 * torch.sigmoid(raw) * torch.nan_to_num(const, nan=1.0)
            shift = self.bias_scale * torch.tanh(raw) + torch.nan_to_num(const)
            node = torch.where(is_const & (const != 0), scale, shift)
            theta = torch.where(kind == KIND_EDGE, weight, node)
        return torch.where(kind == KIND_AUX, own, theta)

    @staticmethod
    def _tensor_means(raw: Tensor, lay: HyperLayout) -> Tensor:
        """Each value's tensor mean, so weights are decoded centred: a shift shared by a whole layer (which
        kills every ReLU unit at once) is not one output the optimiser can move."""
        numels = lay.space.layout.numels
        sizes = torch.tensor(numels, device=raw.device)
        seg = torch.repeat_interleave(torch.arange(len(numels), device=raw.device), sizes)
        sums = torch.zeros(len(numels), dtype=raw.dtype, device=raw.device).index_add_(0, seg, raw)
        return (sums / sizes.clamp(min=1))[seg]

    def _prepare(self, model: nn.Module, example_input: Any, allow_unseen: bool = False
                 ) -> tuple[WeightSpace, HyperLayout]:
        try:
            space = WeightSpace.from_module(model, example_input)
        except WeightSpaceError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            shape = tuple(example_input.shape) if isinstance(example_input, Tensor) else type(example_input).__name__
            raise BadExampleInput(f"example input {shape} does not fit {type(model).__name__}: {e}") from e
        if not allow_unseen:
            self.check_seen(space)
        return space, self.layout(space)

    @torch.no_grad()
    def predict(self, model: nn.Module, example_input: Any, *, seed: int = 0, calibration: Any = None,
                draw: Draw | None = None, allow_unseen: bool = False) -> dict[str, Tensor]:
        """A complete state_dict for ``model`` (every parameter and buffer, its keys, shapes and dtypes).

        ``example_input`` is traced (:meth:`WeightSpace.from_module`); ``seed`` draws the random unit
        features (another seed, another model). Running statistics are measured on ``calibration``
        (default: ``example_input``, so pass a batch of real data). ``draw`` overrides ``seed`` with
        given random inputs. Raises the tracer's error for a model it cannot describe,
        :class:`UnseenArchitecture` for layer kinds training never saw (unless ``allow_unseen``),
        :class:`BadExampleInput` when the model's forward fails on the input, and
        :class:`NonFinitePrediction` naming the tensors if a prediction is NaN or Inf.
        """
        space, lay = self._prepare(model, example_input, allow_unseen)
        sd_model = model.state_dict()
        const, own = model_constants(lay, sd_model)
        d = draw if draw is not None else self.draw(lay, seed)
        flat = self.forward([lay], [d], [(const, own)])[0]
        bad = ~torch.isfinite(flat)
        if bool(bad.any()):
            keys = sorted({lay.value_key[i] for i in torch.nonzero(bad.cpu()).flatten().tolist()})
            raise NonFinitePrediction(f"the hypernetwork predicted {int(bad.sum())} NaN/Inf values for "
                                      f"{space.name or 'the model'} in {', '.join(keys[:8])}"
                                      f"{' ...' if len(keys) > 8 else ''}")
        sd = space.layout.unflatten(flat[None].cpu())[0]
        device = next(iter(sd_model.values())).device if sd_model else torch.device("cpu")
        canon = {k: sd[k].to(device) for k in space.canonical_keys}
        canon = calibrate_statistics(model, canon, example_input if calibration is None else calibration)
        return {k: canon[space.aliases.get(k, k)].clone() if k in space.aliases else canon[k] for k in space.keys}

    def init_(self, model: nn.Module, example_input: Any, seed: int = 0, calibration: Any = None,
              allow_unseen: bool = False) -> nn.Module:
        """Load :meth:`predict`'s state_dict into ``model`` in place and return it."""
        model.load_state_dict(self.predict(model, example_input, seed=seed, calibration=calibration,
                                           allow_unseen=allow_unseen))
        return model
