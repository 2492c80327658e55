"""Every merge config in examples/merge runs on freshly trained models and matches the in-memory merge API."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from weightspace.merge import METHODS, load_config, merge, run_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIGS = sorted((EXAMPLES / "merge").glob("*.yml"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/merge copied beside a models/ folder trained by examples/make_models.py (few steps)."""
    root = tmp_path_factory.mktemp("examples")
    spec = importlib.util.spec_from_file_location("make_models", EXAMPLES / "make_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    acc = mod.make_models(root / "models", steps=20)
    assert set(acc) == {"base", "task-low", "task-high", "task-even", "seed-1", "seed-2"}
    shutil.copytree(EXAMPLES / "merge", root / "merge")
    return root


def test_every_method_has_an_example() -> None:
    methods = {load_config_method(p) for p in CONFIGS}
    assert methods == set(METHODS), f"methods without an example: {set(METHODS) - methods}"
    assert any("align: weight" in p.read_text() for p in CONFIGS)


def load_config_method(path: Path) -> str:
    import yaml
    return yaml.safe_load(path.read_text())["merge_method"]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_example_config_runs_and_matches_the_api(workdir: Path, config: Path) -> None:
    cfg_path = workdir / "merge" / config.name
    c = load_config(cfg_path)
    out = run_config(cfg_path, workdir / "out" / config.stem)
    got = load_file(str(out / "model.safetensors"))
    want = merge(c["models"], c["method"], base=c["base"], parameters=c["parameters"],
                 model_parameters=c["model_parameters"], align=c["align"], space=c["space"])
    assert list(got) == list(want)
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)
    assert (out / "weightspace.json").exists(), "the models' WeightSpace is found beside them and written"
    inputs = [load_file(str(p)) for p in c["models"]]
    assert all(any(not torch.equal(got[k], sd[k]) for k in got) for sd in inputs), "the merge is none of its inputs"
