"""examples/hyper and examples/generate configs: `--config FILE.yml` for `hyper train` and `generate fit`,
checked strictly, with command-line options overriding the file."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from weightspace.cli import build_parser, main
from weightspace.errors import ConfigError
from weightspace.tasks.zoo import build_zoo

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GENERATE = sorted((EXAMPLES / "generate").glob("*.yml"))
FAST = ["--steps", "2", "--no-progress", "--no-plot", "--device", "cpu", "--checkpoint-every", "0"]


def resolve(argv: list[str]):
    """The options the command receives."""
    args = build_parser().parse_args(argv)
    return args.func.resolve(args)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_zoo("pdiff-mlp", tmp_path_factory.mktemp("zoo") / "z", size="tiny", progress=False).root


def test_every_generator_has_an_example() -> None:
    assert {yaml.safe_load(p.read_text())["method"] for p in GENERATE} == {"pdiff", "graph-diffusion", "hyper"}


def test_hyper_example_parses_into_the_command_options_and_runs(tmp_path: Path) -> None:
    cfg = EXAMPLES / "hyper" / "digits.yml"
    args = resolve(["hyper", "train", "--config", str(cfg), "--out", str(tmp_path / "h")])
    for key, value in yaml.safe_load(cfg.read_text()).items():
        assert getattr(args, key) == value, key
    assert args.out == str(tmp_path / "h") and args.precision == "bf16"  # not in the file: the option's default
    out = tmp_path / "h"
    assert main(["hyper", "train", "--config", str(cfg), "--out", str(out), "--eval-every", "2", *FAST]) == 0
    assert (out / "model" / "config.json").exists()


@pytest.mark.parametrize("cfg", GENERATE, ids=lambda p: p.stem)
def test_generator_examples_parse_and_run(zoo: Path, tmp_path: Path, cfg: Path) -> None:
    args = resolve(["generate", "fit", "--config", str(cfg), "--train", str(zoo), "--out", str(tmp_path / "g")])
    for key, value in yaml.safe_load(cfg.read_text()).items():
        assert getattr(args, key) == value, key
    method = args.method
    small = ["--ae-steps", "2"] if method == "pdiff" else []
    small += ["--diffusion-steps", "5"] if method != "hyper" else []
    assert main(["generate", "fit", "--config", str(cfg), "--train", str(zoo), "--out", str(tmp_path / "g"),
                 *FAST, *small]) == 0
    assert (tmp_path / "g" / ("generator" if method == "hyper" else "model") / "config.json").exists()


def test_command_line_overrides_the_file_even_with_the_default_value(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text("hidden: 64\nsteps: 50\nprogress: true\nmlp_widths: [8, 16]\nout: runs/x\n")
    args = resolve(["hyper", "train", "--config", str(cfg), "--hidden", "8", "--steps", "2000", "--no-progress"])
    assert (args.hidden, args.steps, args.progress, args.mlp_widths, args.out) == (8, 2000, False, [8, 16], "runs/x")
    args = resolve(["hyper", "train", "--config", str(cfg)])
    assert (args.hidden, args.steps, args.progress) == (64, 50, True)
    plain = resolve(["hyper", "train", "--out", "o"])
    assert (plain.hidden, plain.steps, plain.progress, plain.mlp_widths) == (32, 2000, True, None)


@pytest.mark.parametrize("command", [["hyper", "train"], ["generate", "fit"]], ids=["hyper", "generate"])
def test_help_states_the_override_rule(command: list[str], capsys) -> None:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    assert "command line overrides the file" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", [["hyper", "train"], ["generate", "fit"]], ids=["hyper", "generate"])
def test_a_misspelled_key_names_the_closest_option(tmp_path: Path, command: list[str], capsys) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text("lr: 0.01\nwarmpu: 5\n")
    with pytest.raises(ConfigError, match=r"unknown key 'warmpu'; did you mean 'warmup'\?"):
        resolve([*command, "--config", str(cfg), "--out", "o"])
    assert main([*command, "--config", str(cfg), "--out", "o"]) == 2
    assert "did you mean 'warmup'" in capsys.readouterr().err


@pytest.mark.parametrize("text, key", [("steps: many", "steps"), ("lr: true", "lr"), ("mlp_widths: 32", "mlp_widths"),
                                       ("families: [mlp, rnn]", "families"), ("progress: 0", "progress"),
                                       ("held_out: [1]", "held_out")])
def test_a_wrongly_typed_value_names_its_key(tmp_path: Path, text: str, key: str) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text(text + "\n")
    with pytest.raises(ConfigError, match=rf"'{key}' must be"):
        resolve(["hyper", "train", "--config", str(cfg), "--out", "o"])


def test_required_options_may_come_from_either_place(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing --out"):
        resolve(["hyper", "train"])
    cfg = tmp_path / "c.yml"
    cfg.write_text("method: pdiff\ntrain: zoo\n")
    with pytest.raises(ConfigError, match="missing --out"):
        resolve(["generate", "fit", "--config", str(cfg)])
    assert resolve(["generate", "fit", "--config", str(cfg), "--out", "o"]).train == "zoo"
    with pytest.raises(ConfigError, match="not valid YAML"):
        (tmp_path / "bad.yml").write_text("a: [1\n")
        resolve(["hyper", "train", "--config", str(tmp_path / "bad.yml"), "--out", "o"])
