"""Measuring memorization in generated weights, modulo the permutation symmetry (Zeng et al. 2025).

``nearest`` finds each generated model's nearest training model after weight matching;
``report`` adds the training set's spread, behaviour on test data, baselines made from the
training set and a verdict (copies / interpolates / novel) per generator.
"""
from .baselines import BASELINES, Pool, make_baseline, register
from .behaviour import DATA_SETS, Evaluator, accuracy, agreement, max_similarity
from .flat import MemorizationError, ModelSet, flatten, float_keys, unflatten
from .nearest import NearestIndex, NearestResult, aligned_distance, nearest, spread
from .report import DEFAULT_SWEEPS, RULE, MemorizationReport, decide, report
from .training import TrainingSet, load_training

__all__ = ["nearest", "spread", "report", "aligned_distance", "NearestResult", "NearestIndex", "MemorizationReport",
           "RULE", "DEFAULT_SWEEPS", "decide", "BASELINES", "register", "make_baseline", "Pool", "DATA_SETS",
           "Evaluator", "accuracy", "agreement", "max_similarity", "MemorizationError", "ModelSet", "flatten",
           "float_keys", "unflatten", "TrainingSet", "load_training"]
