"""Small real data sets that are available offline: scikit-learn's bundled sets and Python's own sources.

Every split here is fixed and deterministic, so that checkpoints trained in different
processes (or on different days) are evaluated on exactly the same examples.
"""
from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

DIGITS_TRAIN = 1437
DIGITS_VAL = 360
SYNTH_TRAIN = 2000
SYNTH_TEST = 8000
TABULAR_SETS = ("wine", "breast_cancer", "iris")

# Tab, newline and printable ASCII: a fixed vocabulary, so models of the char-level corpus have
# the same shape whatever Python version the corpus was read from.
CHAR_VOCAB: str = "\t\n" + "".join(chr(c) for c in range(32, 127))
UNKNOWN_CHAR = "?"


@dataclass(frozen=True)
class ClassificationData:
    """A fixed train/validation split of a classification data set, as float inputs and long labels."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input example (without the batch axis)."""
        return tuple(self.x_train.shape[1:])

    @property
    def in_features(self) -> int:
        """Number of input values per example (for MLPs)."""
        return int(np.prod(self.input_shape))

    def to(self, device: torch.device | str) -> "ClassificationData":
        """The same split with every tensor moved to ``device``."""
        return ClassificationData(self.name, self.x_train.to(device), self.y_train.to(device),
                                  self.x_val.to(device), self.y_val.to(device), self.num_classes)

    def __repr__(self) -> str:
        return (f"ClassificationData({self.name!r}, train={len(self.y_train)}, val={len(self.y_val)}, "
                f"input_shape={self.input_shape}, num_classes={self.num_classes})")


def _split(x: np.ndarray, y: np.ndarray, test_size: int | float, seed: int):
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)


def digits_split(seed: int = 0, flat: bool = False) -> ClassificationData:
    """scikit-learn's 8x8 digits, pixels scaled to [0, 1], split 1,437 train / 360 validation.

    The split is stratified (``train_test_split(test_size=360, stratify=y, random_state=seed)``);
    the default ``seed=0`` is the split every zoo and benchmark uses. Images are ``[N, 1, 8, 8]``,
    or ``[N, 64]`` with ``flat=True``.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    xtr, xva, ytr, yva = _split(x, y, DIGITS_VAL, seed)
    shape = (-1, 64) if flat else (-1, 1, 8, 8)
    return ClassificationData("digits-flat" if flat else "digits",
                              torch.from_numpy(xtr).reshape(shape), torch.from_numpy(ytr),
                              torch.from_numpy(xva).reshape(shape), torch.from_numpy(yva), 10)


def digits_flat_split(seed: int = 0) -> ClassificationData:
    """The digits split of :func:`digits_split` with each image flattened to 64 features (for MLPs)."""
    return digits_split(seed, flat=True)


def tabular_split(name: str, test_size: float = 0.25, seed: int = 0) -> ClassificationData:
    """A scikit-learn tabular classification set (wine, breast_cancer, iris), stratified split.

    Features are standardised with the mean and standard deviation of the training part only.
    """
    import sklearn.datasets as skd

    if name not in TABULAR_SETS:
        raise ValueError(f"unknown tabular data set {name!r}; choose one of {', '.join(TABULAR_SETS)}")
    d = getattr(skd, f"load_{name}")()
    x = d.data.astype(np.float64)
    y = d.target.astype(np.int64)
    xtr, xva, ytr, yva = _split(x, y, test_size, seed)
    mean, std = xtr.mean(0), xtr.std(0)
    std[std == 0] = 1.0
    xtr, xva = ((a - mean) / std for a in (xtr, xva))
    return ClassificationData(name, torch.from_numpy(xtr.astype(np.float32)), torch.from_numpy(ytr),
                              torch.from_numpy(xva.astype(np.float32)), torch.from_numpy(yva),
                              int(y.max()) + 1)


def synthetic_split(seed: int = 0) -> ClassificationData:
    """A fixed synthetic classification task with a large test set: 2,000 train / 8,000 test points.

    ``sklearn.datasets.make_classification`` (Guyon's Madelon design) with 32 features (12
    informative, 8 redundant, 12 noise), 5 classes of 2 Gaussian clusters each, class separation
    0.8 and 3% flipped labels, drawn with ``random_state=seed``; the first 2,000 points train,
    the other 8,000 test. Features are standardised with the training part's mean and standard
    deviation. With 8,000 test points, a checkpoint's measured test accuracy is within about
    0.005 (one binomial standard deviation) of its true accuracy, so rankings of checkpoints by
    test accuracy carry little measurement noise. The default ``seed=0`` is the one zoos use.
    """
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=SYNTH_TRAIN + SYNTH_TEST, n_features=32, n_informative=12,
                               n_redundant=8, n_classes=5, n_clusters_per_class=2, class_sep=0.8, flip_y=0.03,
                               random_state=seed)
    xtr, xte = x[:SYNTH_TRAIN], x[SYNTH_TRAIN:]
    mean, std = xtr.mean(0), xtr.std(0)
    xtr, xte = ((a - mean) / std for a in (xtr, xte))
    return ClassificationData("synthetic", torch.from_numpy(xtr.astype(np.float32)),
                              torch.from_numpy(y[:SYNTH_TRAIN].astype(np.int64)),
                              torch.from_numpy(xte.astype(np.float32)),
                              torch.from_numpy(y[SYNTH_TRAIN:].astype(np.int64)), 5)


@dataclass(frozen=True)
class CharCorpus:
    """A character-level corpus: token ids for a train and a validation part, and the vocabulary."""

    train_ids: Tensor
    val_ids: Tensor
    vocab: str
    files: tuple[str, ...] = field(repr=False)
    sha256: str

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> Tensor:
        """Token ids of ``text``; characters outside the vocabulary become ``'?'``."""
        table = {c: i for i, c in enumerate(self.vocab)}
        unk = table[UNKNOWN_CHAR]
        return torch.tensor([table.get(c, unk) for c in text], dtype=torch.long)

    def decode(self, ids: Tensor | list[int]) -> str:
        """The text of a sequence of token ids."""
        return "".join(self.vocab[int(i)] for i in ids)

    def __repr__(self) -> str:
        return (f"CharCorpus(train={len(self.train_ids)}, val={len(self.val_ids)}, vocab_size={self.vocab_size}, "
                f"files={len(self.files)}, sha256={self.sha256[:12]})")


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """The ``.py`` files of Python's standard library in a fixed order (sorted relative paths).

    Third-party packages (``site-packages``, ``dist-packages``) are left out.
    """
    root = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(f"standard-library folder {root} does not exist")
    skip = {"site-packages", "dist-packages", "__pycache__"}
    files: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip]
        files.extend(Path(folder) / n for n in names if n.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def stdlib_corpus(max_chars: int = 1_000_000, val_fraction: float = 0.1,
                  root: str | Path | None = None) -> CharCorpus:
    """Python's standard-library sources as a character-level corpus.

    Files are read in sorted order and concatenated until ``max_chars`` characters; characters
    outside :data:`CHAR_VOCAB` (tab, newline, printable ASCII) become ``'?'``. The last
    ``val_fraction`` of the text is the validation part. The text depends on the Python version;
    ``sha256`` identifies it.
    """
    if max_chars <= 0:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    chunks: list[str] = []
    used: list[str] = []
    total = 0
    files = stdlib_files(root)
    base = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        chunks.append(text[: max_chars - total])
        used.append(path.relative_to(base).as_posix())
        total += len(chunks[-1])
        if total >= max_chars:
            break
    if total == 0:
        raise ValueError(f"no Python sources found under {base}")
    text = "".join(chunks)
    table = np.full(0x110000, CHAR_VOCAB.index(UNKNOWN_CHAR), dtype=np.int64)
    table[[ord(c) for c in CHAR_VOCAB]] = np.arange(len(CHAR_VOCAB))
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    ids = torch.from_numpy(table[codes])
    n_val = max(1, int(round(len(ids) * val_fraction)))
    digest = hashlib.sha256(ids.numpy().tobytes()).hexdigest()
    return CharCorpus(ids[:-n_val].clone(), ids[-n_val:].clone(), CHAR_VOCAB, tuple(used), digest)


def char_batch(ids: Tensor, block_size: int, batch_size: int,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One batch of ``batch_size`` random windows: inputs ``[B, block_size]`` and next-char targets."""
    if len(ids) <= block_size:
        raise ValueError(f"corpus part of {len(ids)} tokens is too short for block_size={block_size}")
    starts = torch.randint(0, len(ids) - block_size, (batch_size,), generator=generator).to(ids.device)
    offsets = torch.arange(block_size + 1, device=ids.device)
    windows = ids[starts[:, None] + offsets]
    return windows[:, :-1], windows[:, 1:]


def char_batches(ids: Tensor, block_size: int, batch_size: int,
                 generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """An endless stream of :func:`char_batch` batches drawn with ``generator``."""
    while True:
        yield char_batch(ids, block_size, batch_size, generator)
