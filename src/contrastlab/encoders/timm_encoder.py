"""Any timm model by name as a feature extractor (``num_classes=0``)."""

from __future__ import annotations

import timm
from torch import Tensor, nn


class TimmEncoder(nn.Module):
    """(B, C, H, W) -> (B, num_features) from ``timm.create_model(name, num_classes=0)``.

    ``cifar_stem=True`` swaps a ResNet's 7x7/2 stem and max-pool for a 3x3/1 conv and no pool,
    the usual change for 32x32 inputs. ``pretrained`` downloads hub weights (needs network) or
    reads ``checkpoint_path``.
    """

    def __init__(
        self,
        name: str = "resnet18",
        pretrained: bool = False,
        in_chans: int = 3,
        cifar_stem: bool = False,
        checkpoint_path: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__()
        extra = {"pretrained_cfg_overlay": {"file": checkpoint_path}} if checkpoint_path else {}
        self.model = timm.create_model(
            name,
            pretrained=pretrained or bool(checkpoint_path),
            num_classes=0,
            in_chans=in_chans,
            **extra,
            **kwargs,
        )
        if cifar_stem:
            if not (hasattr(self.model, "conv1") and hasattr(self.model, "maxpool")):
                raise ValueError(
                    f"encoder.cifar_stem=true needs a ResNet-style model, '{name}' has no conv1/maxpool."
                )
            out_ch = self.model.conv1.out_channels
            self.model.conv1 = nn.Conv2d(in_chans, out_ch, 3, stride=1, padding=1, bias=False)
            self.model.maxpool = nn.Identity()
        self.out_dim: int = self.model.num_features

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)
