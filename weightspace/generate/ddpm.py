"""Denoising diffusion (DDPM) over vectors: noise schedule, training loss and ancestral sampling.

Ho et al. 2020, "Denoising Diffusion Probabilistic Models": a linear schedule of ``beta_t`` over
``steps`` steps, a denoiser trained to predict the noise ``eps`` added to ``x_0`` at a random
step (``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``), and ancestral sampling from pure noise
with variance ``beta_t``. p-diff runs it in an autoencoder's latent space, the graph diffusion
directly on normalised weights; the denoiser is any callable ``denoiser(x_t, t) -> eps``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

Denoiser = Callable[[Tensor, Tensor], Tensor]


class Schedule:
    """The linear DDPM noise schedule of ``steps`` steps, from ``beta_start`` to ``beta_end``."""

    def __init__(self, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> None:
        self.steps = steps
        self.betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        self.alpha_bar = torch.cumprod(1 - self.betas, 0)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t`` of ``x0`` at steps ``t [B]`` with the given ``noise``."""
        ab = self.alpha_bar.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def loss(self, denoiser: Denoiser, x0: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mean squared error of the predicted noise at uniformly random steps (over ``mask``'s columns)."""
        t = torch.randint(self.steps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        err = (denoiser(self.q_sample(x0, t, noise), t).float() - noise.float()).square()
        return err[:, mask].mean() if mask is not None else err.mean()

    @torch.no_grad()
    def sample(self, denoiser: Denoiser, shape: tuple[int, ...], generator: torch.Generator,
               device: torch.device | str = "cpu", progress: bool = False) -> Tensor:
        """Ancestral sampling of ``shape`` from noise drawn with ``generator`` (on the CPU, so devices agree)."""
        from ..utils import progress_bar

        x = torch.randn(shape, generator=generator).to(device)
        for t in progress_bar(range(self.steps - 1, -1, -1), desc="denoise", unit="step", disable=not progress):
            tt = torch.full((shape[0],), t, dtype=torch.long, device=device)
            eps = denoiser(x, tt).float()
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
