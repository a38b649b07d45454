"""Metric building blocks shared by every modality's evaluator."""

from layersync.metrics.frechet import FrechetEvaluator, GaussianStats, frechet_distance, stored_gaussian
from layersync.metrics.weights import MissingWeightsError, WeightFile, resolve_weights

__all__ = ["FrechetEvaluator", "GaussianStats", "MissingWeightsError", "WeightFile", "frechet_distance", "resolve_weights", "stored_gaussian"]
