"""Parameter prediction: a graph hypernetwork that predicts every weight of a new model from its neural graph."""
from .calibrate import calibrate_statistics
from .errors import BadExampleInput, NonFinitePrediction, UnseenArchitecture
from .layout import HyperLayout, model_constants
from .model import DECODERS, PARAMETRIZATIONS, Draw, GraphHyperNetwork

__all__ = ["GraphHyperNetwork", "Draw", "HyperLayout", "model_constants", "calibrate_statistics",
           "BadExampleInput", "NonFinitePrediction", "UnseenArchitecture", "PARAMETRIZATIONS", "DECODERS"]
from .train import (ArchDistribution, ArchitectureCache, ArchitectureTasks, HyperLoss, HyperTrainSpec,
                    evaluate_architectures, train_hypernetwork)

__all__ += ["ArchDistribution", "ArchitectureCache", "ArchitectureTasks", "HyperLoss", "HyperTrainSpec",
            "evaluate_architectures", "train_hypernetwork"]
