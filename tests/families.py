"""Tiny models of every family the tracer must handle, shared by the tests."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    def __init__(self, sizes=(6, 8, 7, 3), act=nn.GELU):
        super().__init__()
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), act()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    """Conv-BN-ReLU stack with max pooling, global pooling and a linear head."""

    def __init__(self, c=(4, 6, 5), flatten=False):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, c[0], 3, padding=1), nn.BatchNorm2d(c[0])
        self.c2, self.b2 = nn.Conv2d(c[0], c[1], 3, padding=1), nn.BatchNorm2d(c[1])
        self.c3 = nn.Conv2d(c[1], c[2], 3, bias=False)
        self.flatten = flatten
        self.fc = nn.Linear(c[2] * (4 if flatten else 1), 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)
        x = F.relu(self.b2(self.c2(x)))
        x = F.relu(self.c3(x))
        if self.flatten:
            x = torch.flatten(x, 1)
        else:
            x = x.mean((2, 3))
        return self.fc(x)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.short(x))


class ResNet(nn.Module):
    def __init__(self, widths=(4, 6)):
        super().__init__()
        self.stem = nn.Conv2d(1, widths[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        self.layer1 = Block(widths[0], widths[0], 1)
        self.layer2 = Block(widths[0], widths[1], 2)
        self.head = nn.Linear(widths[1], 3)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.layer2(self.layer1(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Attention(nn.Module):
    def __init__(self, d, heads, kind):
        super().__init__()
        self.h, self.kind = heads, kind
        if kind == "fused":
            self.qkv = nn.Linear(d, 3 * d)
        elif kind == "separate":
            self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        if kind == "mha":
            self.mha = nn.MultiheadAttention(d, heads, batch_first=True)
        else:
            self.proj = nn.Linear(d, d)

    def forward(self, x):
        B, T, C = x.size()
        if self.kind == "mha":
            mask = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), 1)
            return self.mha(x, x, x, attn_mask=mask, need_weights=False)[0]
        if self.kind == "fused":
            q, k, v = self.qkv(x).split(C, dim=2)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        if self.kind == "manual":
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
            y = F.softmax(att, dim=-1) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class GPT(nn.Module):
    def __init__(self, vocab=11, block=6, d=8, heads=2, layers=2, kind="separate", tied=True):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            b = nn.Module()
            b.ln1, b.attn, b.ln2 = nn.LayerNorm(d), Attention(d, heads, kind if kind != "manual" else "separate"), nn.LayerNorm(d)
            if kind == "manual":
                b.attn.kind = "manual"
            b.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
            self.blocks.append(b)
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.head.weight = self.wte.weight

    def forward(self, idx):
        b, t = idx.size()
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for blk in self.blocks:
            x = x + blk.attn(blk.ln1(x))
            x = x + blk.mlp(blk.ln2(x))
        return self.head(self.ln_f(x))


class Handwritten(nn.Module):
    """Raw parameters: x @ W + b, a hand-written LayerNorm, and W.t()."""

    def __init__(self):
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(6, 8)), nn.Parameter(torch.randn(8))
        self.gain, self.shift = nn.Parameter(torch.rand(8) + 0.5), nn.Parameter(torch.randn(8))
        self.w2 = nn.Parameter(torch.randn(3, 8))

    def forward(self, x):
        h = x @ self.w1 + self.b1
        mu, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
        h = (h - mu) / torch.sqrt(var + 1e-5) * self.gain + self.shift
        return torch.relu(h) @ self.w2.t()


def randomize(model: nn.Module, seed: int = 3) -> nn.Module:
    """Give BatchNorm non-trivial statistics and affine parameters, so that permuting buffers matters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


def families():
    """(name, model factory, example input factory) for every supported family."""
    g = torch.Generator().manual_seed(0)
    return [
        ("mlp", lambda: MLP(), lambda: torch.randn(5, 6, generator=g)),
        ("handwritten", lambda: Handwritten(), lambda: torch.randn(5, 6, generator=g)),
        ("cnn", lambda: CNN(), lambda: torch.randn(3, 1, 8, 8, generator=g)),
        ("cnn_flatten", lambda: CNN(flatten=True), lambda: torch.randn(3, 1, 8, 8, generator=g)),
        ("resnet", lambda: ResNet(), lambda: torch.randn(3, 1, 8, 8, generator=g)),
        ("gpt_separate", lambda: GPT(kind="separate"), lambda: torch.randint(0, 11, (2, 6), generator=g)),
        ("gpt_fused", lambda: GPT(kind="fused"), lambda: torch.randint(0, 11, (2, 6), generator=g)),
        ("gpt_mha", lambda: GPT(kind="mha"), lambda: torch.randint(0, 11, (2, 6), generator=g)),
        ("gpt_manual_untied", lambda: GPT(kind="manual", tied=False), lambda: torch.randint(0, 11, (2, 6), generator=g)),
    ]
