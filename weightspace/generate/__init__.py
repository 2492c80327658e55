"""Weight generators: p-diff latent diffusion, equivariant diffusion on neural graphs, the stochastic hypernetwork.

Each has ``fit(training, ...)`` (state_dicts or a ``CheckpointCollection``) returning the
generator, ``sample(n, seed)`` returning complete state_dicts, and ``save_pretrained`` /
``from_pretrained`` / ``push_to_hub``. Measure what they memorize with :mod:`weightspace.memorization`.
"""
from .base import TrainingModels, WeightGenerator, load_models
from .ddpm import Schedule
from .errors import GeneratorError
from .graph_diffusion import GraphDenoiser, GraphDiffusion
from .hyper import HyperGenerator
from .pdiff import PDiff
from .subset import select_keys

__all__ = ["PDiff", "GraphDiffusion", "GraphDenoiser", "HyperGenerator", "WeightGenerator", "TrainingModels",
           "load_models", "Schedule", "GeneratorError", "select_keys"]

GENERATORS = {"pdiff": PDiff, "graph-diffusion": GraphDiffusion, "hyper": HyperGenerator}
"""The generators by name (the ``weightspace generate`` command's ``--method``)."""
__all__ += ["GENERATORS"]
