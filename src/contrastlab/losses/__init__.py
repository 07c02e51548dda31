"""Pure tensor losses. No Lightning, no Hydra, no torch.distributed in here."""

from contrastlab.losses.clip import CLIPLoss, SigLIPLoss, clip_loss, siglip_loss
from contrastlab.losses.info_nce import InfoNCELoss, NTXentLoss, info_nce, nt_xent

__all__ = [
    "CLIPLoss",
    "InfoNCELoss",
    "NTXentLoss",
    "SigLIPLoss",
    "clip_loss",
    "info_nce",
    "nt_xent",
    "siglip_loss",
]
