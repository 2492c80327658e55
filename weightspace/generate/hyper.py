"""The stochastic graph hypernetwork as a weight generator: each seed of its random draws is one model.

:class:`~weightspace.hyper.GraphHyperNetwork` (GHN-2/GHN-3-style parameter prediction, Knyazev
et al. 2021, 2023) adds MIP's ``theta0`` (and any unit-feature noise) drawn from a seed, so one
trained network predicts a different model per seed. :class:`HyperGenerator` wraps it with the
interface of the other generators. Unlike them it never reads the training checkpoints: it is
meta-trained on the task itself (the architecture's loss on digits), so whatever it shares with
the checkpoints it found on its own. ``fit`` takes the training collection for its architecture
and checks it like the other generators do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor

from ..hyper import ArchDistribution, GraphHyperNetwork, HyperTrainSpec, train_hypernetwork
from ..space import WeightSpace
from ..training import TrainConfig, is_main_process
from .base import load_models
from .errors import GeneratorError

ARCH_KEYS = {"mlp": ("in_features", "widths", "out_features", "activation"),
             "cnn": ("channels", "batchnorm", "in_channels", "num_classes", "activation")}


def _arch_of(training, arch: Mapping[str, Any] | None) -> dict[str, Any]:
    """The constructor arguments of the training models: given, or the zoo recipe's hyperparameters."""
    if arch is not None:
        return dict(arch)
    from ..collections import CheckpointCollection
    from ..collections.card import HP_PREFIX
    if isinstance(training, CheckpointCollection):
        row = training.rows()[0]
        hp = {k[len(HP_PREFIX):]: v for k, v in row.items() if k.startswith(HP_PREFIX)}
        fam = hp.get("family")
        if fam in ARCH_KEYS and all(k in hp for k in ARCH_KEYS[fam]):
            return {"family": fam, **{k: hp[k] for k in ARCH_KEYS[fam]}}
    raise GeneratorError("the hypernetwork generator builds the model from its constructor arguments: pass "
                         "arch={'family': 'mlp' | 'cnn', ...} (they are read from a zoo collection's hyperparameters)")


def _distribution(arch: Mapping[str, Any]) -> ArchDistribution:
    """The one-architecture distribution the hypernetwork is meta-trained on; refused when the digits families
    of :class:`~weightspace.hyper.ArchDistribution` cannot express ``arch``."""
    fam = arch["family"]
    if fam == "mlp":
        widths = list(arch["widths"])
        if arch["in_features"] != 64 or arch["out_features"] != 10 or len(set(widths)) != 1:
            raise GeneratorError(f"the hypernetwork trains on digits MLPs 64 -> equal widths -> 10; got {arch}")
        return ArchDistribution(families=("mlp",), mlp_widths=(widths[0],), mlp_depths=(len(widths),),
                                activations=(arch["activation"],))
    if fam == "cnn":
        chans = list(arch["channels"])
        if len(set(chans)) != 1 or arch["in_channels"] != 1 or arch["num_classes"] != 10:
            raise GeneratorError(f"the hypernetwork trains on digits CNNs with equal channels; got {arch}")
        return ArchDistribution(families=("cnn",), cnn_channels=(chans[0],), cnn_batchnorm=(bool(arch["batchnorm"]),),
                                activations=(arch["activation"],))
    raise GeneratorError(f"the hypernetwork generator handles the digits 'mlp' and 'cnn' families, not {fam!r}")


def _build(arch: Mapping[str, Any]) -> nn.Module:
    from ..tasks import build
    kwargs = {k: (tuple(v) if k == "channels" else list(v) if isinstance(v, list) else v)
              for k, v in arch.items() if k != "family"}
    return build(arch["family"], seed=0, **kwargs)


def _calibration(arch: Mapping[str, Any], n: int) -> Tensor:
    from ..tasks import digits_split
    x = digits_split(0).x_train[:n].reshape(-1, 1, 8, 8)
    return x.flatten(1) if arch["family"] == "mlp" else x


class HyperGenerator(nn.Module, PyTorchModelHubMixin, library_name="weightspace",
                     tags=["weightspace", "weight-generation", "hypernetwork"]):
    """A trained :class:`GraphHyperNetwork` and one architecture (``arch``: ``tasks.build`` arguments); sample ``i``
    of seed ``s`` is the prediction for unit-feature seed ``s * 1_000_003 + i``. Running statistics are
    calibrated on the first ``calibration`` digits training images."""

    def __init__(self, arch: dict[str, Any], hyper: dict[str, Any] | None = None, calibration: int = 256) -> None:
        super().__init__()
        self.arch = dict(arch)
        self.hyper = GraphHyperNetwork(**(hyper or {}))
        self.model = _build(self.arch)
        self.register_buffer("calibration_inputs", _calibration(self.arch, calibration), persistent=False)
        self.space = WeightSpace.from_module(self.model, self.calibration_inputs[:2])

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> list[dict[str, Tensor]]:
        """``n`` complete state_dicts; the same ``seed`` gives the same models."""
        if n < 1:
            raise GeneratorError(f"sample needs n >= 1, got {n}")
        dev = next(self.hyper.parameters()).device
        model = self.model.to(dev)
        x = self.calibration_inputs.to(dev)
        return [{k: v.cpu() for k, v in self.hyper.predict(model, x, seed=int(seed) * 1_000_003 + i).items()}
                for i in range(n)]

    @classmethod
    def fit(cls, training, *, space: WeightSpace | None = None, arch: Mapping[str, Any] | None = None,
            config: TrainConfig | None = None, out: str | Path | None = None, data_batch: int = 64,
            progress: bool = False, **hyper_options: Any) -> "HyperGenerator":
        """Meta-train a hypernetwork for the training models' architecture on digits (``config``, on
        :class:`~weightspace.training.Trainer` via :func:`~weightspace.hyper.train_hypernetwork`: bf16 on GPU,
        DDP, resume, progress, ``loss.png`` in ``out``). ``training`` is checked (same architecture, NaN/Inf
        models counted, at least two usable) but not learnt from; ``arch`` defaults to the zoo recipe's."""
        models = load_models(training, space)
        a = _arch_of(training, arch)
        dist = _distribution(a)
        gen = cls(a, hyper_options)
        if gen.space.fingerprint != models.space.fingerprint:
            raise GeneratorError(f"arch {a} traces to another architecture ({gen.space.fingerprint}) than the "
                                 f"training models ({models.space.fingerprint})")
        cfg = config or TrainConfig(steps=500, batch_size=4, lr=1e-3, warmup=20, eval_every=0)
        if not progress:
            from dataclasses import replace
            cfg = replace(cfg, progress=False)
        torch.manual_seed(cfg.seed)
        hyper = GraphHyperNetwork(**hyper_options)
        gen.hyper, result = train_hypernetwork(out, cfg, HyperTrainSpec(distribution=dist, data_batch=data_batch),
                                               hyper=hyper)
        gen.history = {"hyper": result.history}
        gen.excluded = dict(models.excluded)
        gen.to("cpu").eval()
        if out is not None and is_main_process():
            gen.save_pretrained(Path(out) / "generator")
        return gen
