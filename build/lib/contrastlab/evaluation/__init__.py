"""Downstream measurements of an embedding space, and the Lightning callbacks that run them."""

from contrastlab.evaluation.embed import embed_loader
from contrastlab.evaluation.knn import knn_accuracy, knn_predict

__all__ = ["embed_loader", "knn_accuracy", "knn_predict"]
