"""Negative-sampling strategies: turn a batch's embeddings into the candidate set a loss sees.

The kinds of sampler (candidate set, miner, pair keys, offline miner) and the optional capabilities
(memory, ids, binding to the encoder) are declared in :mod:`contrastlab.negatives.kinds`."""

from contrastlab.negatives.ann import AnnMined, MinedNegativesDataset, mine_ann_negatives
from contrastlab.negatives.candidates import Candidates, MinedTriplets, TripletCandidates
from contrastlab.negatives.in_batch import InBatch
from contrastlab.negatives.kinds import (
    BindsEncoder,
    CandidateSampler,
    Memory,
    Miner,
    MiningDataSource,
    NeedsIds,
    NegativeSampler,
    OfflineMiner,
    PairKeys,
)
from contrastlab.negatives.memory_bank import MemoryBank
from contrastlab.negatives.miners import TripletMiner, mine_from_distances, mine_triplets
from contrastlab.negatives.momentum import MomentumEncoder

__all__ = [
    "AnnMined",
    "BindsEncoder",
    "CandidateSampler",
    "Candidates",
    "InBatch",
    "Memory",
    "MemoryBank",
    "MinedNegativesDataset",
    "MinedTriplets",
    "Miner",
    "MiningDataSource",
    "MomentumEncoder",
    "NeedsIds",
    "NegativeSampler",
    "OfflineMiner",
    "PairKeys",
    "TripletCandidates",
    "TripletMiner",
    "mine_ann_negatives",
    "mine_from_distances",
    "mine_triplets",
]
