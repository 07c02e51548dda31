"""Pure tensor losses. No Lightning, no Hydra, no torch.distributed in here."""

from contrastlab.losses.clip import CLIPLoss, SigLIPLoss, clip_loss, siglip_loss
from contrastlab.losses.info_nce import InfoNCELoss, NTXentLoss, info_nce, nt_xent
from contrastlab.losses.triplet import (
    TripletMarginLoss,
    batch_all_triplet_margin,
    pairwise_distance,
    triplet_margin,
    triplet_margin_from_distances,
)

__all__ = [
    "CLIPLoss",
    "InfoNCELoss",
    "NTXentLoss",
    "SigLIPLoss",
    "TripletMarginLoss",
    "batch_all_triplet_margin",
    "clip_loss",
    "info_nce",
    "nt_xent",
    "pairwise_distance",
    "siglip_loss",
    "triplet_margin",
    "triplet_margin_from_distances",
]
