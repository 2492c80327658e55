"""Small real tasks (offline data), model families and training loops used by zoos, tests and demos."""
from .data import (CHAR_VOCAB, CharCorpus, ClassificationData, char_batch, char_batches, digits_flat_split,
                   digits_split, stdlib_corpus, stdlib_files, synthetic_split, tabular_split)
from .models import (ACTIVATIONS, ATTENTION_KINDS, FAMILIES, MLP, BasicBlock, CausalSelfAttention, ResNet,
                     SmallCNN, TinyGPT, build, example_input)
from .train import TrainResult, evaluate_classifier, evaluate_lm, train_classifier, train_lm

__all__ = [
    "CHAR_VOCAB", "CharCorpus", "ClassificationData", "char_batch", "char_batches", "digits_flat_split",
    "digits_split", "stdlib_corpus", "stdlib_files", "synthetic_split", "tabular_split",
    "ACTIVATIONS", "ATTENTION_KINDS", "FAMILIES", "MLP", "BasicBlock", "CausalSelfAttention", "ResNet",
    "SmallCNN", "TinyGPT", "build", "example_input",
    "TrainResult", "evaluate_classifier", "evaluate_lm", "train_classifier", "train_lm",
]
