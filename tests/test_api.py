"""The public API: lazy subpackages, a fast import, and ``__all__`` lists that hold only public names."""
import importlib
import subprocess
import sys

import pytest

import weightspace as ws

SUBPACKAGES = ["align", "collections", "generate", "graph", "hyper", "memorization", "merge", "nn", "nowcast", "predict", "space",
               "tasks", "training"]


def test_import_weightspace_loads_no_subpackage_and_no_torch_geometric():
    code = ("import sys, weightspace\n"
            "heavy = [m for m in sys.modules if m == 'torch_geometric' or m.startswith('torch_geometric.') or "
            "m.split('.')[:2] in [['weightspace', s] for s in "
            f"{[s for s in SUBPACKAGES if s != 'space']!r}]]\n"
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_every_subpackage_is_an_attribute(name):
    assert name in ws.SUBPACKAGES
    mod = getattr(ws, name)
    assert mod is importlib.import_module(f"weightspace.{name}")
    assert name in dir(ws) and name in ws.__all__


def test_checkpoint_collection_is_exported():
    from weightspace.collections import CheckpointCollection

    assert ws.CheckpointCollection is CheckpointCollection
    assert "CheckpointCollection" in ws.__all__ and "CheckpointCollection" in dir(ws)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ws.nope


@pytest.mark.parametrize("name", [s for s in ws.SUBPACKAGES if s != "align"] + [""])
def test_all_lists_only_public_names_that_exist(name):
    mod = importlib.import_module("weightspace" + (f".{name}" if name else ""))
    for n in mod.__all__:
        assert not n.startswith("_") or n == "__version__", f"{mod.__name__}.__all__ exports private {n}"
        assert hasattr(mod, n), f"{mod.__name__}.__all__ names missing {n}"


def test_private_helpers_are_not_exported():
    import weightspace.nowcast as nowcast
    import weightspace.predict as predict
    import weightspace.training as training

    for mod, names in [(training, ["free_port"]), (nowcast, ["scale", "unscale"]), (predict, ["GraphStore"])]:
        for n in names:
            assert n not in mod.__all__ and not hasattr(mod, n), f"{mod.__name__}.{n}"
