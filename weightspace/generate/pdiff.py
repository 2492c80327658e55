"""p-diff: latent diffusion over flattened parameters (Wang et al. 2024, "Neural Network Diffusion").

p-diff flattens the chosen parameters of each training checkpoint, trains an autoencoder on
them with noise added to its input and to its latent code (so that the decoder maps a
neighbourhood of each code to working parameters), then trains a DDPM in the latent space.
Sampling draws latent codes with the DDPM, decodes them, and places the values into the base
checkpoint. Differences from the paper's code, chosen for the small models here: the encoder
and decoder are MLPs (the paper uses 1-D convolutions), each value is standardised first (minus
its mean over the training models, divided by its tensor's spread), and the latent codes are
divided by their standard deviation before diffusion (as latent diffusion does).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor

from ..space import WeightSpace
from ..training import TrainConfig, Trainer, is_main_process
from ..utils import atomic_write_text
from .base import RowSource, WeightGenerator, load_models, make_evaluator, sample_accuracy
from .ddpm import Schedule, timestep_features
from .subset import Selection, select_keys

MODEL_DIR = "model"


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.LayerNorm(b), nn.SiLU()]
    return nn.Sequential(*layers)


class ParameterAutoencoder(nn.Module):
    """p-diff's autoencoder: ``dim`` standardised values -> ``latent`` code -> values, with noise augmentation
    (``input_noise`` on the values and ``latent_noise`` on the code, in training mode only)."""

    def __init__(self, dim: int, latent: int, hidden: int, input_noise: float, latent_noise: float) -> None:
        super().__init__()
        self.encoder = _mlp([dim, hidden, hidden, latent])
        self.decoder = _mlp([latent, hidden, hidden, dim])
        self.input_noise, self.latent_noise = input_noise, latent_noise

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            x = x + self.input_noise * torch.randn_like(x)
        z = self.encoder(x)
        if self.training:
            z = z + self.latent_noise * torch.randn_like(z)
        return self.decoder(z)


class LatentDenoiser(nn.Module):
    """The DDPM's noise predictor in latent space: an MLP of the noisy code and the step's sinusoidal features."""

    def __init__(self, latent: int, hidden: int, time_dim: int, steps: int) -> None:
        super().__init__()
        self.time_dim, self.steps = time_dim, steps
        self.time = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(latent, hidden)
        self.blocks = nn.ModuleList(_mlp([hidden, hidden, hidden]) for _ in range(2))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(2))
        self.out = nn.Linear(hidden, latent)

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        h = self.inp(z) + self.time(timestep_features(t, self.time_dim, self.steps).to(z.dtype))
        for norm, block in zip(self.norms, self.blocks):
            h = h + block(norm(h))
        return self.out(h)


def _ae_loss(model: nn.Module, x: Tensor, _y: Tensor) -> Tensor:
    return (model(x).float() - x.float()).square().mean()


class PDiff(WeightGenerator, PyTorchModelHubMixin, library_name="weightspace",
            tags=["weightspace", "weight-generation", "p-diff", "diffusion"]):
    """p-diff-style latent diffusion over a model's chosen parameters (Wang et al. 2024, "Neural Network Diffusion").

    Build it with :meth:`fit`; :meth:`sample` gives complete state_dicts. ``space`` is the traced
    :class:`WeightSpace` as JSON and ``keys`` the generated tensors (:func:`~.subset.select_keys`).
    ``input_noise``/``latent_noise`` are the paper's augmentation (0.001 and 0.1, here in
    standardised units); ``diffusion_steps`` the DDPM's length.
    """

    def __init__(self, space: dict[str, Any], keys: list[str], latent: int = 64, hidden: int = 256,
                 denoiser_hidden: int = 256, time_dim: int = 64, diffusion_steps: int = 1000,
                 input_noise: float = 0.001, latent_noise: float = 0.1) -> None:
        super().__init__()
        self._init_space(space, keys)
        self.schedule = Schedule(diffusion_steps)
        self.autoencoder = ParameterAutoencoder(self.dim, latent, hidden, input_noise, latent_noise)
        self.denoiser = LatentDenoiser(latent, denoiser_hidden, time_dim, diffusion_steps)
        self.latent = latent
        self.register_buffer("mean", torch.zeros(self.dim))
        self.register_buffer("scale", torch.ones(self.dim))
        self.register_buffer("latent_scale", torch.ones(()))

    # ------------------------------------------------------------------ normalisation
    def _fit_normaliser(self, values: Tensor) -> None:
        """Per-value mean; per-tensor spread of the deviations (a floor keeps constant tensors finite)."""
        mean = values.mean(0)
        dev = values - mean
        scale = torch.empty(self.dim)
        for sl in self.key_slices():
            scale[sl] = float(dev[:, sl].square().mean().sqrt())
        self._set_normaliser(mean, scale)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def encode(self, values: Tensor) -> Tensor:
        """Latent codes (diffusion units) of raw values ``[N, dim]``."""
        return self.autoencoder.encode(self.normalise(values)) / self.latent_scale

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Raw values of latent codes in diffusion units."""
        return self.denormalise(self.autoencoder.decode(z * self.latent_scale))

    def sample_values(self, n: int, seed: int = 0) -> Tensor:
        dev = self.mean.device
        g = torch.Generator().manual_seed(int(seed))
        z = self.schedule.sample(self.denoiser, (n, self.latent), g, device=dev)
        return self.decode(z).float().cpu()

    # ------------------------------------------------------------------ training
    @classmethod
    def fit(cls, training, *, space: WeightSpace | None = None, keys: Selection = "all", steps: str = "last",
            align: bool = False, autoencoder: TrainConfig | None = None, diffusion: TrainConfig | None = None,
            out: str | Path | None = None, data=None, model: nn.Module | None = None, eval_samples: int = 8,
            progress: bool = False, **options: Any) -> "PDiff":
        """Train p-diff on ``training`` (state_dicts, or a ``CheckpointCollection``: its runs' last checkpoints,
        every checkpoint with ``steps="all"``) and return the generator.

        ``keys`` selects the generated tensors (:mod:`.subset`); the rest come from the first usable
        training model. ``align`` weight-matches every training model to that one first. The two stages
        (``autoencoder``, then ``diffusion``: :class:`TrainConfig`) run on :class:`~weightspace.training.Trainer`
        (bf16 autocast on GPU, DDP under torchrun, progress, resumable checkpoints and ``loss.png`` in
        ``out/autoencoder`` and ``out/diffusion``); ``out/model`` gets :meth:`save_pretrained`. With ``data``
        (and ``model``, an ``nn.Module`` of the architecture) the diffusion stage logs the test accuracy of
        ``eval_samples`` samples at each evaluation. ``options`` are the constructor's sizes.
        """
        models = load_models(training, space, steps=steps, align=align, progress=progress)
        chosen = select_keys(models.space, keys)
        evaluator = make_evaluator(models.space, data, model, models.base)
        ae_cfg = autoencoder or TrainConfig(steps=2000, batch_size=64, lr=1e-3, warmup=50)
        dm_cfg = diffusion or TrainConfig(steps=4000, batch_size=64, lr=1e-3, warmup=50)
        if not progress:
            ae_cfg, dm_cfg = replace(ae_cfg, progress=False), replace(dm_cfg, progress=False)
        torch.manual_seed(ae_cfg.seed)
        gen = cls(models.space.to_json(), chosen, **options)
        gen._set_base(models.base)
        values = gen.training_values(models)
        gen._fit_normaliser(values)
        x = gen.normalise(values)
        out = Path(out) if out is not None else None
        ae_hist = Trainer(gen.autoencoder, _ae_loss, RowSource(x), ae_cfg, out / "autoencoder" if out else None
                          ).fit().history
        gen.to("cpu")
        gen.autoencoder.eval()
        with torch.no_grad():
            z = gen.autoencoder.encode(x)
            gen.latent_scale.fill_(float(z.std()) or 1.0)
            z = z / gen.latent_scale
        eval_fn = None
        if evaluator is not None:
            def eval_fn(m: nn.Module) -> dict[str, float]:
                gen.to(next(m.parameters()).device)
                return sample_accuracy(gen, evaluator, eval_samples)
        trainer = Trainer(gen.denoiser, lambda m, z_, _y: gen.schedule.loss(m, z_), RowSource(z), dm_cfg,
                          out / "diffusion" if out else None, eval_fn=eval_fn)
        gen.history = {"autoencoder": ae_hist, "diffusion": trainer.fit().history}
        gen.to("cpu").eval()
        gen.excluded = dict(models.excluded)
        if out is not None and is_main_process():
            gen.save_pretrained(out / MODEL_DIR)
            atomic_write_text(out / "fit.json", json.dumps(
                {"training_models": int(models.rows.shape[0]) + len(models.excluded),
                 "excluded": {str(k): v for k, v in models.excluded.items()}, "keys": chosen,
                 "generated_values": gen.dim, "source": models.source}, indent=1))
        return gen
