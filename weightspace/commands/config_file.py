"""``--config FILE.yml``: a YAML file whose keys are a command's options, checked strictly.

A key is an option's underscored name (``data_batch`` for ``--data-batch``; ``progress: false`` for
``--no-progress``). An option given on the command line wins over the file, which wins over the
option's default. Unknown keys and wrongly typed values raise :class:`~weightspace.errors.ConfigError`.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from ..utils import closest

HELP = ("YAML file whose keys are this command's options, underscored (data_batch: 32, progress: false); "
        "an option given on the command line overrides the file's value")


class _Default:
    """An option's default, marking that the command line did not give it."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def add_config_option(parser: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int]) -> None:
    """Add ``--config`` to ``parser`` (call it after every other option) and run ``func`` on the merged options.

    Required options may come from the file instead; they are checked once the file is read.
    """
    options: dict[str, argparse.Action] = {}
    required: list[argparse.Action] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.dest == argparse.SUPPRESS:
            continue
        options[action.dest] = action
        action.default = _Default(action.default)
        if action.required:
            action.required = False
            required.append(action)
    parser.add_argument("--config", metavar="FILE.yml", default=None, help=HELP)
    parser.set_defaults(func=WithConfig(func, options, required))


class WithConfig:
    """A command's function, called on its options merged from the command line and ``--config``."""

    def __init__(self, func: Callable[[argparse.Namespace], int], options: dict[str, argparse.Action],
                 required: list[argparse.Action]) -> None:
        self.func, self.options, self.required = func, options, required

    def resolve(self, args: argparse.Namespace) -> argparse.Namespace:
        """``args`` with every option not given on the command line taken from the file, else its default."""
        values = load_config_file(args.config, self.options) if args.config else {}
        merged = argparse.Namespace(**vars(args))
        for dest in self.options:
            given = getattr(args, dest)
            if isinstance(given, _Default):
                setattr(merged, dest, values.get(dest, given.value))
        missing = [a.option_strings[0] for a in self.required if getattr(merged, a.dest) is None]
        if missing:
            raise ConfigError(f"missing {', '.join(missing)}: give it on the command line or in --config")
        return merged

    def __call__(self, args: argparse.Namespace) -> int:
        return self.func(self.resolve(args))


def load_config_file(path: str | Path, options: dict[str, argparse.Action]) -> dict[str, Any]:
    """The values of ``path`` keyed by option name, each checked against its option's type and choices."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of option names to values, got {type(data).__name__}")
    valid = sorted(options)
    out = {}
    for key, value in data.items():
        if key not in valid:
            c = closest(key, valid)
            hint = f"; did you mean {c!r}?" if c else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"config {path}: unknown key {key!r}{hint}")
        out[key] = _checked(path, key, value, options[key])
    return out


def _checked(path: Path, key: str, value: Any, action: argparse.Action) -> Any:
    def bad(want: str) -> ConfigError:
        return ConfigError(f"config {path}: {key!r} must be {want}, got {value!r}")

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    default = action.default.value if isinstance(action.default, _Default) else action.default
    if value is None and default is None:
        return None
    if action.nargs in ("+", "*"):
        if not isinstance(value, list) or (action.nargs == "+" and not value):
            raise bad("a non-empty list" if action.nargs == "+" else "a list")
        return [_scalar(v, action, bad) for v in value]
    return _scalar(value, action, bad)


def _scalar(value: Any, action: argparse.Action, bad: Callable[[str], ConfigError]) -> Any:
    kind = action.type or str
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        value = float(value)
    elif kind is str:
        if not isinstance(value, str):
            raise bad("a string")
    elif isinstance(value, str):
        try:
            value = kind(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            raise bad(f"valid for {getattr(kind, '__name__', kind)} ({e})") from e
    else:
        raise bad("a string")
    if action.choices is not None and value not in action.choices:
        raise bad(f"one of {list(action.choices)}")
    return value
