"""Command-line options generated from :class:`TrainConfig`, so every training command offers the same ones."""
from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from typing import Any

from ..errors import ConfigError
from .trainer import TrainConfig

TASK_SIZED = ("steps", "batch_size")
"""The only fields a command may give its own default: how long and how wide a run is depends on the task."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_train_arguments(parser: argparse.ArgumentParser, **task_defaults: Any) -> None:
    """Add one option per :class:`TrainConfig` field (``--batch-size``; ``--no-progress`` for a flag that
    is on by default), typed and documented from the field; defaults are the dataclass's, except
    ``steps`` and ``batch_size``, which a command may set through ``task_defaults`` (``None``: the command
    sizes them to its data)."""
    bad = set(task_defaults) - set(TASK_SIZED)
    if bad:
        raise ConfigError(f"training options {sorted(bad)} take TrainConfig's defaults; only {TASK_SIZED} are "
                          "set per command")
    g = parser.add_argument_group("training", "optimisation settings (TrainConfig)")
    for f in fields(TrainConfig):
        default = task_defaults.get(f.name, f.default)
        assert default is not MISSING
        help_ = f.metadata.get("help", "")
        if isinstance(default, bool):
            if default:
                g.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false",
                               help=f"do not {help_}" if help_ else None)
            else:
                g.add_argument(_flag(f.name), dest=f.name, action="store_true", help=help_)
            continue
        kind = type(f.default) if f.default is not None else float
        shown = "sized to the task" if default is None and f.name in TASK_SIZED else default
        g.add_argument(_flag(f.name), dest=f.name, type=kind, default=default,
                       help=f"{help_} (default: {shown})")


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of options added by :func:`add_train_arguments`."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    if values.get("grad_clip") == 0:
        values["grad_clip"] = None
    return TrainConfig.from_dict(values)
