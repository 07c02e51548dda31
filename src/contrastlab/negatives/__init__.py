"""Negative-sampling strategies: turn a batch's embeddings into the candidate set a loss sees."""

from contrastlab.negatives.in_batch import Candidates, InBatch

__all__ = ["Candidates", "InBatch"]
