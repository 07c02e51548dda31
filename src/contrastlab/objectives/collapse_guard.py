"""Collapse guard: the spread of the training embeddings, accumulated over an epoch.

Spread = :func:`contrastlab.evaluation.health.dimension_std`, the mean over dimensions of the
per-dimension standard deviation of the L2-normalised embeddings (D dims): about ``1/sqrt(D)`` for
embeddings spread over the sphere, 0 when every embedding is the same point (collapse, a known
failure of hard-negative mining).
"""

from __future__ import annotations

import warnings

from torch import Tensor

from contrastlab.evaluation.health import CollapseWarning, dimension_std_tensor

__all__ = ["CollapseGuard", "CollapseWarning"]


class CollapseGuard:
    """Averages :func:`~contrastlab.evaluation.health.dimension_std` over the batches of an epoch;
    :meth:`epoch_end` returns the mean and warns (once per run) when it is below ``threshold``
    (``None`` disables the warning). The sum stays a tensor on the embeddings' device during the epoch
    and is read once, at its end."""

    def __init__(self, threshold: float | None = 0.02) -> None:
        self.threshold = threshold
        self.warned = False
        self._sum: Tensor | float = 0.0
        self._count = 0

    def update(self, z: Tensor) -> None:
        if z.shape[0] >= 2:
            self._sum = self._sum + dimension_std_tensor(z.detach())
            self._count += 1

    def epoch_end(self) -> float | None:
        if self._count == 0:
            return None
        spread, self._sum, self._count = float(self._sum) / self._count, 0.0, 0
        if self.threshold is not None and spread < self.threshold and not self.warned:
            self.warned = True
            warnings.warn(
                f"embedding collapse: the training embeddings' spread (mean per-dimension std of the "
                f"normalised embeddings) is {spread:.4g} < objective.collapse_threshold={self.threshold}; "
                "try softer mining (sampler=semi_hard), a larger loss.margin or a lower learning rate.",
                CollapseWarning,
                stacklevel=2,
            )
        return spread
