"""Evaluation needs only ``encoder(x) -> [B, D]``; functions return plain dicts of metrics."""

from .collapse import collapse_metrics, effective_rank, embedding_std
from .features import extract_features
from .knn import knn_accuracy, knn_predict
from .linear import linear_probe

__all__ = ["collapse_metrics", "effective_rank", "embedding_std", "extract_features",
           "knn_accuracy", "knn_predict", "linear_probe"]
