"""The ``weightspace`` command.

Subcommands live beside the code they drive; each exposes ``register(subparsers)``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

COMMAND_MODULES = [
    "weightspace.commands.zoo",
    "weightspace.commands.collection",
    "weightspace.commands.graph",
    "weightspace.commands.align",
    "weightspace.commands.merge",
    "weightspace.commands.demo",
    "weightspace.commands.predict",
    "weightspace.commands.nowcast",
    "weightspace.commands.memorization",
    "weightspace.commands.hyper",
    "weightspace.commands.generate",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weightspace", description="Learning on neural-network weights.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .errors import WeightSpaceError
    try:
        return int(args.func(args) or 0)
    except WeightSpaceError as e:
        print(f"weightspace: error: {e}", file=sys.stderr)
        return 2


def existing_path(text: str) -> Path:
    path = Path(text)
    if not path.exists() and not text.startswith("hf://"):
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return path


if __name__ == "__main__":
    sys.exit(main())
