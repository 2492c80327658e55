"""Small model families for zoos, tests and demos: MLP, Small-CNN-Zoo CNN, ResNet and a GPT decoder.

All are plain ``nn.Module``s built from standard layers, so :meth:`WeightSpace.from_module`
can trace them; constructor arguments vary the architecture.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}
ATTENTION_KINDS = ("separate", "fused", "mha")


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (relu, gelu, tanh, silu)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}") from None


class MLP(nn.Module):
    """A multi-layer perceptron: ``nn.Linear`` layers of the given hidden ``widths`` with an activation between."""

    def __init__(self, in_features: int = 64, widths: Sequence[int] = (32,), out_features: int = 10,
                 activation: str = "relu", bias: bool = True) -> None:
        super().__init__()
        sizes = [in_features, *widths, out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b, bias=bias))
            if i < len(sizes) - 2:
                layers.append(make_activation(activation))
        self.net = nn.Sequential(*layers)
        self.in_features = in_features

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


class SmallCNN(nn.Module):
    """Three 3x3 convolutions, optional BatchNorm, max-pool after the first, global average pooling, a linear head.

    In the style of the Small CNN Zoo (Unterthiner et al., 2020); ``channels=(16, 32, 32)`` without
    BatchNorm has about 14k parameters, close to NiNo's FM-16 CNN. Works on 8x8 digits (padding 1).
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 32), batchnorm: bool = False, in_channels: int = 1,
                 num_classes: int = 10, activation: str = "relu") -> None:
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"SmallCNN has exactly 3 conv layers; got channels={tuple(channels)}")
        layers: list[nn.Module] = []
        cin = in_channels
        for i, c in enumerate(channels):
            layers.append(nn.Conv2d(cin, c, 3, padding=1))
            if batchnorm:
                layers.append(nn.BatchNorm2d(c))
            layers.append(make_activation(activation))
            if i == 0:
                layers.append(nn.MaxPool2d(2))
            cin = c
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        self.in_channels = in_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class BasicBlock(nn.Module):
    """conv3x3-BN-relu-conv3x3-BN plus a shortcut (1x1 conv + BN where stride or width changes), then relu."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet: conv stem, one stage of BasicBlocks per width (stride 2 from the second), pooling, linear head."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64), blocks_per_stage: int = 1, in_channels: int = 1,
                 num_classes: int = 10) -> None:
        super().__init__()
        if not widths or blocks_per_stage < 1:
            raise ValueError(f"ResNet needs at least one stage and block; got widths={tuple(widths)}, "
                             f"blocks_per_stage={blocks_per_stage}")
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        blocks: list[nn.Module] = []
        cin = widths[0]
        for s, w in enumerate(widths):
            for b in range(blocks_per_stage):
                blocks.append(BasicBlock(cin, w, 2 if s > 0 and b == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)
        self.in_channels = in_channels

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = self.blocks(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention: separate q/k/v projections, one fused qkv projection, or nn.MultiheadAttention."""

    def __init__(self, d_model: int, n_head: int, kind: str = "separate") -> None:
        super().__init__()
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"unknown attention {kind!r}; choose one of {', '.join(ATTENTION_KINDS)}")
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        self.kind, self.n_head = kind, n_head
        if kind == "separate":
            self.q_proj = nn.Linear(d_model, d_model)
            self.k_proj = nn.Linear(d_model, d_model)
            self.v_proj = nn.Linear(d_model, d_model)
        elif kind == "fused":
            self.c_attn = nn.Linear(d_model, 3 * d_model)
        else:
            self.mha = nn.MultiheadAttention(d_model, n_head, batch_first=True)
        if kind != "mha":
            self.c_proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.size()
        if self.kind == "mha":
            mask = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=1)
            return self.mha(x, x, x, attn_mask=mask, need_weights=False)[0]
        if self.kind == "fused":
            q, k, v = self.c_attn(x).split(C, dim=2)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class GPTBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)) with a GELU MLP."""

    def __init__(self, d_model: int, n_head: int, attention: str = "separate", mlp_ratio: int = 4) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head, attention)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    """A GPT-style decoder: token + learned position embeddings, pre-LN blocks, final LayerNorm, LM head.

    The LM head shares its weight with the token embedding when ``tie_embeddings``. Weights are
    initialised nanoGPT-style (normal, std 0.02). ``forward(idx)`` maps ``[B, T]`` token ids to
    ``[B, T, vocab_size]`` logits.
    """

    def __init__(self, vocab_size: int = 97, block_size: int = 32, n_layer: int = 2, n_head: int = 2,
                 d_model: int = 32, attention: str = "separate", tie_embeddings: bool = True,
                 mlp_ratio: int = 4) -> None:
        super().__init__()
        self.vocab_size, self.block_size = vocab_size, block_size
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(block_size, d_model)
        self.blocks = nn.ModuleList(GPTBlock(d_model, n_head, attention, mlp_ratio) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(self._init_weights)
        if tie_embeddings:
            self.lm_head.weight = self.wte.weight

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx: Tensor) -> Tensor:
        B, T = idx.size()
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size={self.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


FAMILIES: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    "resnet": ResNet,
    "gpt": TinyGPT,
}


def build(family: str, seed: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a model of ``family`` (mlp, cnn, resnet, gpt) from its constructor arguments.

    With ``seed``, the initial weights come from ``torch.manual_seed(seed)`` without touching the
    global random state, so the same (family, kwargs, seed) always gives the same weights.
    """
    try:
        cls = FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}") from None
    if seed is None:
        return cls(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(**kwargs)


def example_input(model_or_family: nn.Module | str, batch_size: int = 2, **kwargs: Any) -> Tensor:
    """A valid input for tracing or a smoke test: ``[B, in_features]`` floats for an MLP,
    ``[B, C, 8, 8]`` images for CNNs and ResNets, ``[B, block_size]`` token ids for TinyGPT.

    Given a family name, ``kwargs`` are the constructor arguments (in_features, in_channels,
    vocab_size, block_size) where they differ from the defaults.
    """
    model = build(model_or_family, seed=0, **kwargs) if isinstance(model_or_family, str) else model_or_family
    g = torch.Generator().manual_seed(0)
    if isinstance(model, MLP):
        return torch.rand(batch_size, model.in_features, generator=g)
    if isinstance(model, (SmallCNN, ResNet)):
        return torch.rand(batch_size, model.in_channels, 8, 8, generator=g)
    if isinstance(model, TinyGPT):
        return torch.randint(0, model.vocab_size, (batch_size, model.block_size), generator=g)
    raise TypeError(f"no example input known for {type(model).__name__}; pass one of "
                    f"{', '.join(c.__name__ for c in FAMILIES.values())}")
