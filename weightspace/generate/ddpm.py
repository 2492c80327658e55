"""Denoising diffusion (DDPM) over vectors: noise schedule, training loss and ancestral sampling.

Ho et al. 2020, "Denoising Diffusion Probabilistic Models": a schedule of ``beta_t`` over
``steps`` steps, a denoiser trained at a random step on ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``,
and ancestral sampling from pure noise with variance ``beta_t``. p-diff runs it in an
autoencoder's latent space, the graph diffusion directly on normalised weights; the denoiser is
any callable ``denoiser(x_t, t)``. Options that matter for short schedules and hard denoisers:

- ``kind="cosine"`` (Nichol & Dhariwal 2021, "Improved DDPM") lowers ``abar`` evenly over the steps
  instead of leaving most of them at almost pure noise; ``scaled=True`` stretches the linear
  betas by ``1000 / steps`` (as they do) so that ``x_T`` is pure noise for any length (the unscaled
  100-step schedule keeps ``sqrt(abar_T) = 0.6`` of the signal, while sampling starts from noise);
- ``prediction="v"`` (Salimans & Ho 2022, "Progressive Distillation") trains the denoiser on
  ``v = sqrt(abar) eps - sqrt(1 - abar) x_0``, a target of unit variance at every step whose
  error weighs the ``x_0`` error by ``1 / (1 - abar)`` where the noise's weighs it by
  ``abar / (1 - abar)``, so the noisy steps where a sample takes its shape are trained too.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .errors import GeneratorError

Denoiser = Callable[[Tensor, Tensor], Tensor]
PREDICTIONS = ("eps", "v")
KINDS = ("linear", "cosine")


class Schedule:
    """A DDPM noise schedule of ``steps`` steps for a denoiser that predicts ``prediction``: ``"eps"`` (the noise)
    or ``"v"``. ``kind="linear"`` runs from ``beta_start`` to ``beta_end`` (times ``1000 / steps`` with
    ``scaled``); ``kind="cosine"`` is Nichol & Dhariwal's ``abar_t = cos^2((t/T + s)/(1 + s) pi/2)``."""

    def __init__(self, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2, scaled: bool = False,
                 prediction: str = "eps", kind: str = "linear") -> None:
        if prediction not in PREDICTIONS:
            raise GeneratorError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if kind not in KINDS:
            raise GeneratorError(f"schedule must be one of {KINDS}, got {kind!r}")
        self.steps, self.prediction = steps, prediction
        if kind == "cosine":
            s = 0.008
            f = torch.cos((torch.arange(steps + 1, dtype=torch.float64) / steps + s) / (1 + s) * math.pi / 2) ** 2
            self.betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        else:
            k = 1000.0 / steps if scaled else 1.0
            self.betas = torch.linspace(beta_start * k, min(beta_end * k, 0.999), steps, dtype=torch.float64)
        self.alpha_bar = torch.cumprod(1 - self.betas, 0)

    def _ab(self, t: Tensor, like: Tensor) -> Tensor:
        return self.alpha_bar.to(like.device)[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def eps(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The noise a denoiser's output ``out`` at ``x_t`` stands for (``out`` itself for eps-prediction)."""
        if self.prediction == "eps":
            return out
        ab = self._ab(t, x_t)
        return (1 - ab).sqrt() * x_t + ab.sqrt() * out

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t`` of ``x0`` at steps ``t [B]`` with the given ``noise``."""
        ab = self._ab(t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def target(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """What the denoiser learns to output at step ``t``: ``noise``, or ``v``."""
        if self.prediction == "eps":
            return noise
        ab = self._ab(t, x0)
        return ab.sqrt() * noise - (1 - ab).sqrt() * x0

    def loss(self, denoiser: Denoiser, x0: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mean squared error of the prediction (:meth:`target`) at uniformly random steps (over ``mask``'s columns)."""
        t = torch.randint(self.steps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        err = (denoiser(self.q_sample(x0, t, noise), t).float() - self.target(x0, t, noise).float()).square()
        return err[:, mask].mean() if mask is not None else err.mean()

    @torch.no_grad()
    def sample(self, denoiser: Denoiser, shape: tuple[int, ...], generator: torch.Generator,
               device: torch.device | str = "cpu", progress: bool = False) -> Tensor:
        """Ancestral sampling of ``shape`` from noise drawn with ``generator`` (on the CPU, so devices agree)."""
        from ..utils import progress_bar

        x = torch.randn(shape, generator=generator).to(device)
        for t in progress_bar(range(self.steps - 1, -1, -1), desc="denoise", unit="step", disable=not progress):
            tt = torch.full((shape[0],), t, dtype=torch.long, device=device)
            eps = self.eps(denoiser(x, tt).float(), x, tt)
            beta, ab = float(self.betas[t]), float(self.alpha_bar[t])
            x = (x - beta / math.sqrt(1 - ab) * eps) / math.sqrt(1 - beta)
            if t > 0:
                var = beta * (1 - float(self.alpha_bar[t - 1])) / (1 - ab)
                x = x + math.sqrt(var) * torch.randn(shape, generator=generator).to(device)
        return x


def timestep_features(t: Tensor, dim: int, steps: int) -> Tensor:
    """Sinusoidal features ``[B, dim]`` of diffusion steps ``t`` (Vaswani et al. 2017's position encoding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half, 1))
    ang = (t.float() * (1000.0 / steps)).unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat([ang.sin(), ang.cos()], 1)
