"""Negative-sampling strategies: turn a batch's embeddings into the candidate set a loss sees."""

from contrastlab.negatives.ann import AnnMined, MinedNegativesDataset, mine_ann_negatives
from contrastlab.negatives.in_batch import Candidates, InBatch
from contrastlab.negatives.memory_bank import MemoryBank
from contrastlab.negatives.miners import (
    MinedTriplets,
    TripletCandidates,
    TripletMiner,
    mine_from_distances,
    mine_triplets,
)
from contrastlab.negatives.momentum import MomentumEncoder

__all__ = [
    "AnnMined",
    "Candidates",
    "InBatch",
    "MemoryBank",
    "MinedNegativesDataset",
    "MinedTriplets",
    "MomentumEncoder",
    "TripletCandidates",
    "TripletMiner",
    "mine_ann_negatives",
    "mine_from_distances",
    "mine_triplets",
]
