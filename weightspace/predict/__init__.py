"""Predicting a model's properties (test accuracy, generalisation gap) from its weights."""
from .api import (FEW_RUNS, PredictionLoss, PredictorRun, auto_train_config, check_compatible, describe_schedule,
                  evaluate_predictor, predict_store, ranking_loss, regression_metrics, train_predictor)
from .baselines import FlatMLP, NotApplicable, StatNN, statnn_features
from .data import DERIVED_TARGETS, FewRunsWarning, MissingMetric, PropertyGraphs, TooFewRuns, available_metrics
from .model import PropertyPredictor
from .plots import plot_predictions

__all__ = ["PropertyPredictor", "PropertyGraphs", "plot_predictions", "train_predictor", "evaluate_predictor", "predict_store",
           "regression_metrics", "check_compatible", "PredictionLoss", "ranking_loss", "PredictorRun", "StatNN",
           "FlatMLP", "statnn_features", "NotApplicable", "MissingMetric", "available_metrics", "DERIVED_TARGETS",
           "TooFewRuns", "FewRunsWarning", "FEW_RUNS", "auto_train_config", "describe_schedule"]
