"""The node and edge types the tracer emits, shared by the neural-graph layout and the metanetworks.

The order of ``NODE_TYPES`` and ``EDGE_TYPES`` is part of the format: a graph stores type
indices into them, and trained metanetworks embed those indices. Append new kinds; never
reorder.
"""
from __future__ import annotations

from enum import Enum


class NodeKind(str, Enum):
    """What the units of a node set are."""

    INPUT = "input"                      # the model's input features
    HIDDEN = "hidden"                    # units read by a layer but produced by no layer the tracer saw
    LINEAR = "linear"                    # outputs of a linear map (nn.Linear, F.linear, x @ W, attention out-projection)
    CONV = "conv"                        # output channels of a convolution
    EMBEDDING_INDEX = "embedding_index"  # rows of an embedding table (tokens, positions)
    EMBEDDING = "embedding"              # embedding vectors' features
    NORM = "norm"                        # outputs of a normalisation layer
    RESIDUAL = "residual"                # a sum of two unit sets (residual stream)
    PRODUCT = "product"                  # any other elementwise combination (gates, products)
    ATTENTION_QKV = "attention_qkv"      # packed q/k/v projections of nn.MultiheadAttention
    ATTENTION = "attention"              # attention context vectors
    OUTPUT = "output"                    # units of the model's output


class EdgeKind(str, Enum):
    """What an edge stands for: a weight of some layer kind, or an identity wiring."""

    LINEAR = "linear"
    CONV = "conv"
    EMBEDDING = "embedding"
    ATTN_IN = "attn_in"
    ATTN_OUT = "attn_out"
    RESIDUAL = "residual"   # identity: summand unit -> sum unit
    GATE = "gate"           # identity: factor unit -> product unit
    NORM = "norm"           # identity: unit -> normalised unit
    ATTN_QK = "attn_qk"     # identity: query unit -> key unit it is compared with
    ATTN_V = "attn_v"       # identity: value unit -> context unit


NODE_TYPES: tuple[str, ...] = tuple(k.value for k in NodeKind)
EDGE_TYPES: tuple[str, ...] = tuple(k.value for k in EdgeKind)
