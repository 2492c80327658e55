"""Equivariant graph metanetworks over neural graphs (NG-GNN / NiNo style, PNA aggregation)."""
from .batch import collate
from .layers import AGGREGATORS, SCALERS, FiLMMessages, NeuralGraphLayer, PNAAggregation
from .model import (EdgeHead, GraphEncoding, GraphHead, GraphMetanetwork, IncompatibleGraph, MetanetConfig,
                    NodeHead)
from .neuron import NeuronLayer, NeuronNetwork, ScaledSum

__all__ = ["GraphMetanetwork", "MetanetConfig", "GraphEncoding", "GraphHead", "NodeHead", "EdgeHead",
           "NeuralGraphLayer", "FiLMMessages", "PNAAggregation", "IncompatibleGraph", "collate", "AGGREGATORS",
           "SCALERS", "NeuronNetwork", "NeuronLayer", "ScaledSum"]
