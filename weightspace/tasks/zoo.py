"""Zoo recipes: train many small models on real offline data into a :class:`CheckpointCollection`.

A recipe samples run configurations deterministically from a hyperparameter grid (run ``i``
of recipe seed ``s`` always gets the same configuration), builds and traces each model, trains
it, and appends a checkpoint with its metrics every ``save_every`` steps. Run ids come from the
recipe and the run index (``mlp-0007``; ``mlp-s3-0007`` for recipe seed 3). Re-running a recipe
into the same folder skips finished runs and retrains interrupted ones.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
import torch.nn as nn

from ..errors import CollectionError, ConfigError
from .data import SYNTH_TEST, SYNTH_TRAIN, digits_split, stdlib_corpus, synthetic_split
from .models import build, example_input
from .train import Callback, TrainResult, train_classifier, train_lm

if TYPE_CHECKING:
    from ..collections import CheckpointCollection

SIZES = ("tiny", "small", "medium", "large")


@dataclass(frozen=True)
class ZooSize:
    """How many runs a zoo has, how long each trains, and how often it saves a checkpoint."""

    runs: int
    steps: int
    save_every: int

    def saved_steps(self) -> list[int]:
        """The steps at which a run saves a checkpoint."""
        return sorted({0, self.steps, *range(0, self.steps + 1, self.save_every)})

    @property
    def checkpoints_per_run(self) -> int:
        return len(self.saved_steps())


@dataclass(frozen=True)
class Recipe:
    """A zoo: its grid of hyperparameters, sizes, and how to build, trace and train one run.

    ``sample(rng)`` draws one configuration (the run's ``hparams``, which also hold the model's
    constructor arguments); ``model(config)`` builds the seeded model; ``train(model, config,
    size, callback)`` trains it, calling ``callback(step, model, metrics)`` at every saved step.
    """

    name: str
    prefix: str
    description: str
    grid: Mapping[str, tuple[Any, ...]]
    sizes: Mapping[str, ZooSize]
    sample: Callable[[random.Random], dict[str, Any]]
    model: Callable[[Mapping[str, Any]], nn.Module]
    train: Callable[[nn.Module, Mapping[str, Any], ZooSize, Callback], TrainResult]
    metrics: tuple[str, ...] = field(default=())

    def run_id(self, index: int, seed: int = 0) -> str:
        """The deterministic id of run ``index`` of recipe seed ``seed``."""
        return f"{self.prefix}-{index:04d}" if seed == 0 else f"{self.prefix}-s{seed}-{index:04d}"

    def config(self, index: int, seed: int = 0) -> dict[str, Any]:
        """The hyperparameters of run ``index`` of recipe seed ``seed`` (independent of the zoo size)."""
        rng = random.Random(f"{self.name}/{seed}/{index}")
        return {"recipe": self.name, **self.sample(rng), "zoo_seed": seed}


def _pick(rng: random.Random, grid: Mapping[str, tuple[Any, ...]], key: str) -> Any:
    return rng.choice(grid[key])


# ----------------------------------------------------------------------------- digits-mlp

MLP_GRID: dict[str, tuple[Any, ...]] = {
    "width": (16, 32, 64, 128),
    "depth": (1, 2, 3),
    "activation": ("relu", "gelu", "tanh", "silu"),
    "lr": (3e-4, 1e-3, 3e-3, 1e-2),
    "weight_decay": (0.0, 1e-3, 1e-2, 1e-1),
}


def _mlp_sampler(grid: Mapping[str, tuple[Any, ...]], in_features: int, out_features: int
                 ) -> Callable[[random.Random], dict[str, Any]]:
    """A recipe's MLP configurations: width, depth, activation, lr and weight decay drawn from ``grid``."""
    def sample(rng: random.Random) -> dict[str, Any]:
        width, depth = _pick(rng, grid, "width"), _pick(rng, grid, "depth")
        return {"family": "mlp", "in_features": in_features, "widths": [width] * depth, "out_features": out_features,
                "activation": _pick(rng, grid, "activation"), "lr": _pick(rng, grid, "lr"),
                "weight_decay": _pick(rng, grid, "weight_decay"), "optimizer": "adamw", "batch_size": 64,
                "seed": rng.randrange(10_000)}
    return sample


_sample_mlp = _mlp_sampler(MLP_GRID, 64, 10)


def _model_mlp(c: Mapping[str, Any]) -> nn.Module:
    return build("mlp", seed=c["seed"], in_features=c["in_features"], widths=list(c["widths"]),
                 out_features=c["out_features"], activation=c["activation"])


def _train_digits(flat: bool) -> Callable[[nn.Module, Mapping[str, Any], ZooSize, Callback], TrainResult]:
    def train(model: nn.Module, c: Mapping[str, Any], size: ZooSize, callback: Callback) -> TrainResult:
        data = _digits(flat)
        return train_classifier(model, data, size.steps, lr=c["lr"], weight_decay=c["weight_decay"],
                                batch_size=c["batch_size"], seed=c["seed"], optimizer=c["optimizer"],
                                eval_every=size.save_every, callback=callback)
    return train


@lru_cache(maxsize=2)
def _digits(flat: bool):
    return digits_split(0, flat=flat)


# ----------------------------------------------------------------------------- synth-mlp

SYNTH_GRID: dict[str, tuple[Any, ...]] = {
    "width": (8, 16, 32, 48),
    "depth": (1, 2, 3),
    "activation": ("relu", "gelu", "tanh", "silu"),
    "lr": (3e-4, 1e-3, 3e-3, 1e-2),
    "weight_decay": (0.0, 1e-3, 1e-2, 1e-1),
}


_sample_synth = _mlp_sampler(SYNTH_GRID, 32, 5)


@lru_cache(maxsize=1)
def _synthetic():
    return synthetic_split(0)


def _train_synth(model: nn.Module, c: Mapping[str, Any], size: ZooSize, callback: Callback) -> TrainResult:
    return train_classifier(model, _synthetic(), size.steps, lr=c["lr"], weight_decay=c["weight_decay"],
                            batch_size=c["batch_size"], seed=c["seed"], optimizer=c["optimizer"],
                            eval_every=size.save_every, callback=callback)


# ----------------------------------------------------------------------------- digits-cnn

CNN_GRID: dict[str, tuple[Any, ...]] = {
    "channels": (4, 8, 16),
    "batchnorm": (False, True),
    "activation": ("relu", "gelu", "tanh"),
    "lr": (1e-3, 3e-3, 1e-2),
    "weight_decay": (0.0, 1e-3, 1e-2, 1e-1),
}


def _sample_cnn(rng: random.Random) -> dict[str, Any]:
    g = CNN_GRID
    channels = [_pick(rng, g, "channels") for _ in range(3)]
    return {"family": "cnn", "channels": channels, "batchnorm": _pick(rng, g, "batchnorm"), "in_channels": 1,
            "num_classes": 10, "activation": _pick(rng, g, "activation"), "lr": _pick(rng, g, "lr"),
            "weight_decay": _pick(rng, g, "weight_decay"), "optimizer": "adamw", "batch_size": 64,
            "seed": rng.randrange(10_000)}


def _model_cnn(c: Mapping[str, Any]) -> nn.Module:
    return build("cnn", seed=c["seed"], channels=tuple(c["channels"]), batchnorm=c["batchnorm"],
                 in_channels=c["in_channels"], num_classes=c["num_classes"], activation=c["activation"])


# ----------------------------------------------------------------------------- tiny-gpt

GPT_GRID: dict[str, tuple[Any, ...]] = {
    "d_model": (32, 48, 64),
    "n_layer": (1, 2),
    "n_head": (2, 4),
    "attention": ("separate", "fused", "mha"),
    "lr": (1e-3, 3e-3),
}
GPT_CORPUS_CHARS = 1_000_000


@lru_cache(maxsize=1)
def _corpus():
    return stdlib_corpus(max_chars=GPT_CORPUS_CHARS)


def _sample_gpt(rng: random.Random) -> dict[str, Any]:
    g = GPT_GRID
    return {"family": "gpt", "vocab_size": _corpus().vocab_size, "block_size": 32,
            "n_layer": _pick(rng, g, "n_layer"), "n_head": _pick(rng, g, "n_head"), "d_model": _pick(rng, g, "d_model"),
            "attention": _pick(rng, g, "attention"), "tie_embeddings": True, "mlp_ratio": 4,
            "lr": _pick(rng, g, "lr"), "weight_decay": 0.0, "optimizer": "adamw", "batch_size": 16,
            "seed": rng.randrange(10_000)}


def _model_gpt(c: Mapping[str, Any]) -> nn.Module:
    return build("gpt", seed=c["seed"], vocab_size=c["vocab_size"], block_size=c["block_size"],
                 n_layer=c["n_layer"], n_head=c["n_head"], d_model=c["d_model"], attention=c["attention"],
                 tie_embeddings=c["tie_embeddings"], mlp_ratio=c["mlp_ratio"])


def _train_gpt(model: nn.Module, c: Mapping[str, Any], size: ZooSize, callback: Callback) -> TrainResult:
    return train_lm(model, _corpus(), size.steps, lr=c["lr"], weight_decay=c["weight_decay"],
                    batch_size=c["batch_size"], block_size=c["block_size"], seed=c["seed"],
                    optimizer=c["optimizer"], eval_every=size.save_every, callback=callback)


# ----------------------------------------------------------------------------- registry

RECIPES: dict[str, Recipe] = {
    "digits-mlp": Recipe(
        name="digits-mlp", prefix="mlp",
        description="MLPs trained on scikit-learn digits (8x8, flattened to 64 features; fixed 1,437/360 split), "
                    "varying width, depth, activation, learning rate, weight decay and seed. Each run saves its "
                    "trajectory with train/test loss and accuracy.",
        grid=MLP_GRID,
        sizes={"tiny": ZooSize(4, 100, 25), "small": ZooSize(64, 400, 20),
               "medium": ZooSize(512, 1000, 25), "large": ZooSize(4096, 1000, 25)},
        sample=_sample_mlp, model=_model_mlp, train=_train_digits(flat=True),
        metrics=("train_loss", "train_acc", "test_loss", "test_acc")),
    "synth-mlp": Recipe(
        name="synth-mlp", prefix="smlp",
        description=f"MLPs trained on a fixed synthetic scikit-learn classification task (make_classification: "
                    f"32 features, 5 classes, random_state=0; {SYNTH_TRAIN:,} train / {SYNTH_TEST:,} test points, "
                    "so test accuracy carries little measurement noise), varying width, depth, activation, "
                    "learning rate, weight decay and seed. Each run saves its trajectory with train/test loss "
                    "and accuracy.",
        grid=SYNTH_GRID,
        sizes={"tiny": ZooSize(2, 20, 10), "small": ZooSize(48, 300, 20),
               "medium": ZooSize(512, 600, 25), "large": ZooSize(2048, 1000, 25)},
        sample=_sample_synth, model=_model_mlp, train=_train_synth,
        metrics=("train_loss", "train_acc", "test_loss", "test_acc")),
    "digits-cnn": Recipe(
        name="digits-cnn", prefix="cnn",
        description="Small-CNN-Zoo-style CNNs (3 conv3x3 layers of 4-16 channels, optional BatchNorm, max-pool, "
                    "global average pooling, linear head) trained on scikit-learn digits (1,437/360 split), "
                    "varying channels, BatchNorm, activation, learning rate, weight decay and seed.",
        grid=CNN_GRID,
        sizes={"tiny": ZooSize(2, 10, 5), "small": ZooSize(24, 300, 20),
               "medium": ZooSize(512, 1000, 25), "large": ZooSize(2048, 1500, 25)},
        sample=_sample_cnn, model=_model_cnn, train=_train_digits(flat=False),
        metrics=("train_loss", "train_acc", "test_loss", "test_acc")),
    "tiny-gpt": Recipe(
        name="tiny-gpt", prefix="gpt",
        description="Character-level GPT decoders (pre-LN, tied embeddings) trained on Python's standard-library "
                    "sources (first 1M characters in sorted file order, 90/10 train/val), varying d_model, "
                    "n_layer, n_head, attention implementation, learning rate and seed.",
        grid=GPT_GRID,
        sizes={"tiny": ZooSize(2, 10, 5), "small": ZooSize(12, 200, 25),
               "medium": ZooSize(128, 1000, 50), "large": ZooSize(512, 2000, 50)},
        sample=_sample_gpt, model=_model_gpt, train=_train_gpt,
        metrics=("train_loss", "val_loss")),
}


ARCH_KEYS_EXCLUDED = frozenset({"recipe", "lr", "weight_decay", "optimizer", "batch_size", "seed", "zoo_seed",
                                "steps", "save_every"})


def _check_same_config(coll: "CheckpointCollection", run_id: str, config: Mapping[str, Any]) -> None:
    """Refuse to reuse a run that was started with other hyperparameters (e.g. another ``size``)."""
    from ..collections.card import HP_PREFIX

    row = coll.row(run_id, coll.steps(run_id)[0])
    diff = {k: (row.get(HP_PREFIX + k), v) for k, v in config.items() if row.get(HP_PREFIX + k) != v}
    if diff:
        details = ", ".join(f"{k}: stored {a!r}, recipe {b!r}" for k, (a, b) in sorted(diff.items()))
        raise CollectionError(f"run {run_id!r} in {coll.root} was trained with other hyperparameters ({details}); "
                              f"build into a fresh folder (was it built with another size or weightspace version?)")


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"K/N"`` (or ``(K, N)``) -> ``(K, N)`` with ``0 <= K < N``: this worker builds runs ``i`` with ``i % N == K``."""
    if shard is None:
        return None
    if isinstance(shard, str):
        k, sep, n = shard.partition("/")
        try:
            if not sep:
                raise ValueError
            shard = (int(k), int(n))
        except ValueError:
            raise ConfigError(f"shard {shard!r} is not 'K/N' (e.g. '0/4' for the first of 4 workers)") from None
    k, n = shard
    if n < 1 or not 0 <= k < n:
        raise ConfigError(f"shard {k}/{n}: need N >= 1 and 0 <= K < N (K counts from 0, like SLURM_ARRAY_TASK_ID "
                          f"and torchrun's RANK)")
    return k, n


def build_zoo(recipe: str, out: str | Path, size: str = "small", seed: int = 0,
              progress: bool = True, threads: int | None = 1,
              shard: str | tuple[int, int] | None = None, pack: bool | None = None) -> "CheckpointCollection":
    """Train the runs of ``recipe`` at ``size`` into the collection at ``out`` (created if needed), and return it.

    Finished runs are skipped, after checking that their stored hyperparameters match and that their
    checkpoints verify (:meth:`CheckpointCollection.verify`); a run with a damaged checkpoint, like an
    interrupted one, is retrained from scratch over its checkpoints, which reproduces them because
    training is deterministic. A run whose loss turns non-finite stops early: it is finished with a
    trajectory that ends before ``hp.steps``. A folder holding another recipe's runs is refused.

    ``shard="K/N"`` builds only runs ``i`` with ``i % N == K``, a disjoint slice: N workers (a SLURM
    array, torchrun ranks) each build one slice into its own folder, and ``weightspace collection
    merge`` (:func:`~weightspace.collections.merge_collections`) joins them.

    ``pack`` stores each finished run as one safetensors file with a step axis instead of one file per
    checkpoint (see :meth:`CheckpointCollection.pack`). By default a new folder packs at the ``medium``
    and ``large`` sizes (20k to 170k checkpoints, against the Hub's recommended 100k files per
    repository) and keeps per-checkpoint files at ``tiny`` and ``small``; an existing folder keeps its
    setting unless ``pack`` is given.

    ``threads`` sets ``torch.set_num_threads`` while building (restored afterwards): these models
    are too small to gain from intra-op threads, and one thread per build keeps a shared machine
    responsive and lets several builds run side by side. ``None`` leaves torch's setting alone.
    """
    try:
        r = RECIPES[recipe]
    except KeyError:
        raise ValueError(f"unknown zoo recipe {recipe!r}; choose one of {', '.join(RECIPES)}") from None
    if size not in r.sizes:
        raise ValueError(f"unknown zoo size {size!r}; choose one of {', '.join(r.sizes)}")
    zs = r.sizes[size]
    part = parse_shard(shard)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _build(r, zs, out, size, seed, progress, part, pack)
    finally:
        torch.set_num_threads(previous_threads)


def _check_recipe(coll: "CheckpointCollection", recipe: str) -> None:
    """Refuse a folder whose runs come from another recipe (one collection, one recipe)."""
    from ..collections.card import HP_PREFIX

    for run in coll.runs():
        try:
            stored = coll.row(run, coll.steps(run)[0]).get(HP_PREFIX + "recipe")
        except CollectionError:
            continue  # unreadable metadata: verify reports it and the run is rebuilt or left alone
        if stored != recipe:
            raise CollectionError(f"{coll.root} holds run {run!r} of {'recipe ' + repr(stored) if stored else 'no recipe'}"
                                  f", not {recipe!r}; build {recipe!r} into another folder (one collection holds "
                                  f"one recipe)")


def _build(r: Recipe, zs: ZooSize, out: str | Path, size: str, seed: int, progress: bool,
           part: tuple[int, int] | None = None, pack: bool | None = None) -> "CheckpointCollection":
    from ..utils import progress_bar

    from ..collections import CheckpointCollection
    from ..space import WeightSpace

    recipe = r.name
    coll = CheckpointCollection.create(out, name=f"{recipe}-{size}", description=recipe_card(r), exist_ok=True,
                                       pack_runs=size in ("medium", "large") if pack is None else pack)
    _check_recipe(coll, recipe)
    if pack is not None:
        coll.set_pack_runs(pack)
    spaces: dict[tuple, WeightSpace] = {}
    existing = set(coll.runs())
    indices = range(zs.runs) if part is None else range(part[0], zs.runs, part[1])
    desc = f"{recipe} ({size})" + ("" if part is None else f" shard {part[0]}/{part[1]}")
    bar = progress_bar(indices, desc=desc, unit="run", disable=not progress)
    for i in bar:
        run_id = r.run_id(i, seed)
        config = {**r.config(i, seed), "steps": zs.steps, "save_every": zs.save_every}
        started = run_id in existing
        if started:
            problems = coll.verify([run_id])
            if any(p.kind == "metadata" for p in problems):
                coll.reopen(run_id)  # moves the unreadable shard aside; the run is built afresh
                started = False
            else:
                _check_same_config(coll, run_id, config)
                if coll.is_finished(run_id):
                    if not problems:
                        continue
                    bar.write(f"retraining {run_id}: {problems[0]}" + (f" (+{len(problems) - 1} more)"
                                                                       if len(problems) > 1 else ""))
                    coll.reopen(run_id)
        model = r.model(config)
        arch = tuple((k, repr(v)) for k, v in config.items() if k not in ARCH_KEYS_EXCLUDED)
        if arch not in spaces:
            spaces[arch] = WeightSpace.from_module(model, example_input(model))
        with coll.run_writer(run_id, space=spaces[arch], hparams=config, overwrite=started) as w:
            def save(step: int, m: nn.Module, metrics: dict[str, float]) -> None:
                w.append(step, m.state_dict(), metrics=metrics)
                bar.set_postfix({k: round(v, 3) for k, v in metrics.items()}, refresh=False)

            r.train(model, config, zs, save)
    coll.update_card()
    return coll


def recipe_card(r: Recipe) -> str:
    """The recipe's dataset card body: ``datasets/<name>.md`` of a source checkout, else its description."""
    path = Path(__file__).resolve().parents[2] / "datasets" / f"{r.name}.md"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return r.description


def script_main(recipe: str, argv: list[str] | None = None) -> "CheckpointCollection":
    """Command line of the ``datasets/<recipe>.py`` scripts: ``--out``, ``--size``, ``--seed``, ``--quiet``."""
    import argparse

    p = argparse.ArgumentParser(description=RECIPES[recipe].description)
    p.add_argument("--out", required=True, help="collection folder (created, or resumed when it exists)")
    p.add_argument("--size", default="small", choices=SIZES)
    p.add_argument("--seed", type=int, default=0, help="recipe seed: which configurations are sampled")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="build only runs i with i %% N == K (K from 0), to split a zoo over N workers; join the "
                        "slices with `weightspace collection merge`")
    p.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None,
                   help="store each finished run as one file with a step axis (default: for medium and large)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    coll = build_zoo(recipe, args.out, size=args.size, seed=args.seed, progress=not args.quiet, shard=args.shard,
                     pack=args.pack)
    print(repr(coll))
    return coll


from . import pdiff_zoo  # noqa: E402,F401  (registers p-diff's recipes, which build on the definitions above)
