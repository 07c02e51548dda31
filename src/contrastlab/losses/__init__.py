"""Pure tensor losses. No Lightning, no Hydra, no torch.distributed in here."""

from contrastlab.losses.info_nce import InfoNCELoss, NTXentLoss, info_nce, nt_xent

__all__ = ["InfoNCELoss", "NTXentLoss", "info_nce", "nt_xent"]
