"""A small VGG-style CNN for tiny images (digits 8x8, 28x28, 32x32)."""

from __future__ import annotations

from torch import Tensor, nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """(B, C, H, W) -> (B, out_dim). Conv stages of width ``width * 2**s``, a 2x2 max-pool between
    stages while the map is larger than 2x2, then global average pooling."""

    def __init__(self, in_chans: int = 1, width: int = 32, stages: int = 3, out_dim: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for s in range(stages):
            c_out = width * 2**s
            layers += [_block(c, c_out), _block(c_out, c_out)]
            if s < stages - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            c = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, out_dim) if out_dim != c else nn.Identity()
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))
