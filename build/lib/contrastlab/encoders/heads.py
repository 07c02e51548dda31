"""Projection heads (SimCLR's g(.)): the loss sees the head's output, evaluation the encoder's."""

from __future__ import annotations

from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """MLP ``in_dim -> hidden_dim x (num_layers-1) -> out_dim``; BatchNorm + ReLU between layers.

    ``num_layers=1`` is a linear projection; ``num_layers=0`` is the identity.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 512,
        out_dim: int = 128,
        num_layers: int = 2,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if num_layers == 0:
            self.net: nn.Module = nn.Identity()
            self.out_dim = in_dim
            return
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(d, hidden_dim, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            d = hidden_dim
        layers.append(nn.Linear(d, out_dim, bias=not last_batch_norm))
        if last_batch_norm:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
