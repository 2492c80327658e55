"""Training a graph hypernetwork on a distribution of architectures and a real task (GHN-2's meta-training loop).

Each step samples architectures, predicts their parameters, runs each predicted model with
``torch.func.functional_call`` on a batch of real data, and backpropagates the mean task loss
into the hypernetwork. It runs on :class:`weightspace.training.Trainer` (torchrun/DDP, resumable
safetensors checkpoints, progress bars, a loss plot, bf16 autocast on GPU): a batch index names one
(architecture, data batch, unit-feature seed) task, drawn from a generator seeded by the index.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from ..errors import ConfigError
from ..space import WeightSpace
from ..tasks.data import CHAR_VOCAB, CharCorpus, ClassificationData, char_batch, digits_split, stdlib_corpus
from ..tasks.models import build, example_input
from ..tasks.zoo import CNN_GRID, GPT_CORPUS_CHARS, MLP_GRID
from ..training import TrainConfig, Trainer, TrainResult, is_main_process
from ..utils import atomic_write_text
from .layout import HyperLayout, model_constants
from .model import GraphHyperNetwork

MODEL_DIR = "model"
TASK_POOL = 100_000
"""Number of distinct (architecture, batch, seed) tasks a batch index can name; the Trainer shuffles them."""


FAMILIES = ("mlp", "cnn", "gpt")


@dataclass(frozen=True)
class ArchDistribution:
    """The digits MLP and CNN families of the zoo recipes (``tasks.zoo``'s grids) and tiny GPTs on stdlib text,
    drawn per task.

    MLPs have ``depth`` hidden layers of one ``width``; CNNs have three conv layers whose channels are
    drawn independently, with or without BatchNorm; GPTs (character-level, tied embeddings, the
    vocabulary of :func:`~weightspace.tasks.data.stdlib_corpus`) draw width, depth, heads and attention style.
    """

    families: tuple[str, ...] = ("mlp", "cnn")
    mlp_widths: tuple[int, ...] = tuple(MLP_GRID["width"])
    mlp_depths: tuple[int, ...] = tuple(MLP_GRID["depth"])
    cnn_channels: tuple[int, ...] = tuple(CNN_GRID["channels"])
    cnn_batchnorm: tuple[bool, ...] = tuple(CNN_GRID["batchnorm"])
    activations: tuple[str, ...] = ("relu", "gelu", "tanh")
    gpt_widths: tuple[int, ...] = (32, 48)
    gpt_depths: tuple[int, ...] = (1, 2)
    gpt_heads: tuple[int, ...] = (2, 4)
    gpt_attention: tuple[str, ...] = ("separate", "fused", "mha")
    gpt_block_size: int = 16

    def __post_init__(self) -> None:
        bad = [f for f in self.families if f not in FAMILIES]
        if bad or not self.families:
            raise ConfigError(f"families must be drawn from {FAMILIES}, got {self.families}")

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """Constructor arguments of one architecture, ``{"family": ..., **kwargs}`` for :func:`tasks.build`."""
        fam = rng.choice(self.families)
        if fam == "gpt":
            return self.gpt(rng.choice(self.gpt_widths), rng.choice(self.gpt_depths), rng.choice(self.gpt_heads),
                            rng.choice(self.gpt_attention))
        act = rng.choice(self.activations)
        if fam == "mlp":
            return {"family": "mlp", "in_features": 64, "widths": [rng.choice(self.mlp_widths)] *
                    rng.choice(self.mlp_depths), "out_features": 10, "activation": act}
        return {"family": "cnn", "channels": [rng.choice(self.cnn_channels) for _ in range(3)],
                "batchnorm": rng.choice(self.cnn_batchnorm), "in_channels": 1, "num_classes": 10,
                "activation": act}

    def gpt(self, width: int, depth: int, heads: int, attention: str) -> dict[str, Any]:
        """Constructor arguments of a tiny GPT of this distribution's vocabulary and block size."""
        return {"family": "gpt", "vocab_size": len(CHAR_VOCAB), "block_size": self.gpt_block_size, "n_layer": depth,
                "n_head": heads, "d_model": width, "attention": attention, "tie_embeddings": True, "mlp_ratio": 4}

    def representatives(self) -> list[dict[str, Any]]:
        """One architecture per (family, BatchNorm or not) the distribution draws: together they hold every
        edge and node type it can produce."""
        out: list[dict[str, Any]] = []
        if "mlp" in self.families:
            out.append({"family": "mlp", "in_features": 64, "widths": [self.mlp_widths[0]] * max(self.mlp_depths),
                        "out_features": 10, "activation": self.activations[0]})
        if "cnn" in self.families:
            out += [{"family": "cnn", "channels": [self.cnn_channels[0]] * 3, "batchnorm": bn, "in_channels": 1,
                     "num_classes": 10, "activation": self.activations[0]} for bn in sorted(set(self.cnn_batchnorm))]
        if "gpt" in self.families:
            out += [self.gpt(self.gpt_widths[0], 1, self.gpt_heads[0], a) for a in self.gpt_attention]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def arch_key(arch: Mapping[str, Any]) -> str:
    return json.dumps(dict(arch), sort_keys=True)


@dataclass
class Architecture:
    """One built, traced architecture: its module (for ``functional_call``), layout and constants."""

    key: str
    arch: dict[str, Any]
    model: nn.Module
    layout: HyperLayout
    constants: tuple[Tensor, Tensor]
    flat_input: bool


class ArchitectureCache:
    """Builds each architecture once (keyed by its constructor arguments) and traces each weight space once:
    architectures that differ only in their parameter-free activation share one traced layout."""

    def __init__(self, hyper: GraphHyperNetwork) -> None:
        self.hyper = hyper
        self._cache: dict[str, Architecture] = {}
        self._layouts: dict[str, HyperLayout] = {}

    def get(self, arch: Mapping[str, Any]) -> Architecture:
        key = arch_key(arch)
        a = self._cache.get(key)
        if a is None:
            kwargs = {k: v for k, v in arch.items() if k != "family"}
            model = build(arch["family"], seed=0, **kwargs)
            shape_key = arch_key({k: v for k, v in arch.items() if k != "activation"})
            lay = self._layouts.get(shape_key)
            if lay is None:
                lay = self.hyper.layout(WeightSpace.from_module(model, example_input(model)))
                self._layouts[shape_key] = lay
            a = Architecture(key, dict(arch), model, lay, model_constants(lay, model.state_dict()),
                             arch["family"] == "mlp")
            self._cache[key] = a
        return a

    def __len__(self) -> int:
        return len(self._cache)


@dataclass
class Task:
    arch: dict[str, Any]
    x: Tensor
    y: Tensor
    seed: int


class ArchitectureTasks:
    """A batch source for :class:`~weightspace.training.Trainer`: index ``i`` is one task, a fixed function of
    ``(seed, i)``: an architecture from ``distribution``, a batch of ``data_batch`` training examples (digits
    images, or windows of ``corpus`` for GPTs) and the seed of the unit features."""

    def __init__(self, distribution: ArchDistribution, data: ClassificationData, data_batch: int = 64,
                 seed: int = 0, corpus: CharCorpus | None = None) -> None:
        if "gpt" in distribution.families and corpus is None:
            raise ConfigError("a distribution with GPTs needs a text corpus")
        self.distribution, self.data, self.data_batch, self.seed = distribution, data, data_batch, seed
        self.corpus = corpus
        self.images = data.x_train.reshape(-1, 1, 8, 8)

    def __len__(self) -> int:
        return TASK_POOL

    def task(self, index: int, device: torch.device | str = "cpu") -> Task:
        rng = random.Random(f"hyper/{self.seed}/{index}")
        arch = self.distribution.sample(rng)
        g = torch.Generator().manual_seed(rng.randrange(2**62))
        if arch["family"] == "gpt":
            x, y = char_batch(self.corpus.train_ids, arch["block_size"], max(1, self.data_batch // 4), g)
            return Task(arch, x.to(device), y.to(device), rng.randrange(2**31))
        rows = torch.randint(len(self.data.y_train), (self.data_batch,), generator=g)
        x = self.images[rows]
        x = x.flatten(1) if arch["family"] == "mlp" else x
        return Task(arch, x.to(device), self.data.y_train[rows].to(device), rng.randrange(2**31))

    def batch(self, indices: Tensor, device: torch.device | str = "cpu") -> tuple[list[Task], Tensor]:
        tasks = [self.task(int(i), device) for i in indices]
        return tasks, torch.zeros(len(tasks), device=device)


def state_from_flat(arch: Architecture, flat: Tensor) -> dict[str, Tensor]:
    """The canonical state_dict of a predicted flat vector, differentiable (buffers detached, their dtypes)."""
    space = arch.layout.space
    lay = space.layout
    buffers = {name for name, _ in arch.model.named_buffers()}
    sd = {}
    for k, p in zip(lay.keys, torch.split(flat, lay.numels)):
        p = p.view(space.params[k].shape)
        sd[k] = p.detach().to(space.params[k].dtype, copy=True) if k in buffers else p
    return sd


class HyperLoss:
    """Mean cross-entropy of the predicted models on their tasks' batches (models run in train mode).

    It calls the (possibly DDP-wrapped) hypernetwork's ``forward``, so DDP synchronises its gradients.
    """

    def __init__(self, cache: ArchitectureCache) -> None:
        self.cache = cache

    def __call__(self, model: nn.Module, tasks: list[Task], _y: Tensor) -> Tensor:
        hyper = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        archs = [self.cache.get(t.arch) for t in tasks]
        flats = model([a.layout for a in archs], [hyper.draw(a.layout, t.seed) for a, t in zip(archs, tasks)],
                      [a.constants for a in archs])
        losses = []
        for a, flat, t in zip(archs, flats, tasks):
            a.model.to(t.x.device).train()
            logits = functional_call(a.model, state_from_flat(a, flat), (t.x,))
            losses.append(F.cross_entropy(logits.flatten(0, -2).float(), t.y.flatten()))
        return torch.stack(losses).mean()


@torch.no_grad()
def evaluate_architectures(hyper: GraphHyperNetwork, archs: Sequence[Mapping[str, Any]], data: ClassificationData,
                           seeds: Sequence[int] = (0,)) -> dict[str, float]:
    """Mean validation accuracy and loss of the models ``hyper`` predicts for ``archs`` (eval mode, with
    running statistics calibrated on 256 training examples)."""
    device = next(hyper.parameters()).device
    accs, losses = [], []
    for arch in archs:
        kwargs = {k: v for k, v in arch.items() if k != "family"}
        model = build(arch["family"], seed=0, **kwargs).to(device)
        flat = arch["family"] == "mlp"
        x_cal = data.x_train[:256].reshape(-1, 1, 8, 8)
        x_val = data.x_val.reshape(-1, 1, 8, 8)
        if flat:
            x_cal, x_val = x_cal.flatten(1), x_val.flatten(1)
        for s in seeds:
            hyper.init_(model, x_cal.to(device), seed=s)
            logits = model.eval()(x_val.to(device))
            accs.append(float((logits.argmax(1).cpu() == data.y_val).float().mean()))
            losses.append(float(F.cross_entropy(logits.float().cpu(), data.y_val)))
    return {"eval_acc": sum(accs) / len(accs), "eval_loss": sum(losses) / len(losses)}


@dataclass
class HyperTrainSpec:
    """What :func:`train_hypernetwork` trains on: the architecture distribution, the data batch per
    architecture, and held-out architectures evaluated every ``eval_every`` steps."""

    distribution: ArchDistribution = field(default_factory=ArchDistribution)
    data_batch: int = 64
    held_out: tuple[dict[str, Any], ...] = ()


def train_hypernetwork(out: str | Path | None, config: TrainConfig, spec: HyperTrainSpec | None = None,
                       hyper: GraphHyperNetwork | None = None, *, stop_at: int | None = None,
                       cache: ArchitectureCache | None = None, **model_kwargs: Any) -> tuple[GraphHyperNetwork, TrainResult]:
    """Meta-train a :class:`GraphHyperNetwork` on digits, and on stdlib text for GPTs (``config.batch_size``
    architectures per step; a GPT task has ``data_batch // 4`` windows of its block size).

    ``out/model`` gets ``save_pretrained`` output and ``out/hyper_train.json`` the spec and final
    metrics; re-running on the same ``out`` resumes. ``hyper`` (else one built from ``model_kwargs``
    after seeding with ``config.seed``) is trained in place; unless it already records them, it records the
    edge and node types of ``spec.distribution`` as the ones it was trained on (:meth:`GraphHyperNetwork.check_seen`).
    ``cache`` shares built architectures with the caller.
    """
    spec = spec or HyperTrainSpec()
    if hyper is None:
        torch.manual_seed(config.seed)
        hyper = GraphHyperNetwork(**model_kwargs)
    elif model_kwargs:
        raise ConfigError(f"pass either a hypernetwork or its options, not both ({sorted(model_kwargs)})")
    data = digits_split(0)
    corpus = stdlib_corpus(max_chars=GPT_CORPUS_CHARS) if "gpt" in spec.distribution.families else None
    tasks = ArchitectureTasks(spec.distribution, data, spec.data_batch, config.seed, corpus)
    cache = cache or ArchitectureCache(hyper)
    if hyper.edge_types is None and hyper.node_types is None:
        types = [hyper.types_of(cache.get(a).layout.space) for a in spec.distribution.representatives()]
        hyper.record_seen(set().union(*(e for e, _ in types)), set().union(*(n for _, n in types)))
    eval_fn = (lambda m: evaluate_architectures(m, spec.held_out, data)) if spec.held_out else None  # noqa: E731
    trainer = Trainer(hyper, HyperLoss(cache), tasks, config, out, eval_fn=eval_fn)
    result = trainer.fit(stop_at=stop_at)
    if out is not None and is_main_process() and trainer.step >= config.steps:
        out = Path(out)
        hyper.save_pretrained(out / MODEL_DIR)
        info = {"spec": {"distribution": spec.distribution.to_dict(), "data_batch": spec.data_batch,
                         "held_out": list(spec.held_out)},
                "architectures_seen": len(cache), "final": result.history[-1] if result.history else {},
                "graphs_per_second": result.graphs_per_second}
        atomic_write_text(out / "hyper_train.json", json.dumps(info, indent=1))
    return hyper, result
