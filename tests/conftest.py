"""Shared fixtures: every model family, randomised and traced once per test module."""
import pytest
import torch

from families import families, randomize
from weightspace import WeightSpace

FAMILIES = families()


@pytest.fixture(scope="module", params=FAMILIES, ids=[f[0] for f in FAMILIES])
def family(request):
    """(name, factory, model, example input, traced space) for each family."""
    name, make, example = request.param
    torch.manual_seed(0)
    model = randomize(make())
    x = example()
    return name, make, model, x, WeightSpace.from_module(model, x)
