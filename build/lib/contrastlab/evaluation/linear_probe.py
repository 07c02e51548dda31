"""Linear probe: multinomial logistic regression on frozen features.

Protocol (the L-BFGS probe of CLIP, Radford et al. 2021, on SimCLR's frozen encoder features):

1. standardise features with the training split's per-dimension mean and std;
2. hold out a stratified ``holdout_fraction`` of the training split; for each L2 strength in
   ``weight_decays`` fit on the rest and score top-1 on the held-out part; keep the best
   (the largest strength among ties: the simplest model);
3. refit on the whole training split with that strength and report top-1 on the test split.

Each fit minimises, full batch with L-BFGS (strong-Wolfe line search),
``mean_i CE(W x_i + b, y_i) + (weight_decay / 2) ||W||_F^2`` (bias not penalised) — the same optimum
as scikit-learn's ``LogisticRegression(C=1 / (weight_decay * N))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch import Tensor


def fit_logistic_regression(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    weight_decay: float = 1e-4,
    max_iter: int = 1000,
    tolerance: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """Weights (C, D), bias (C,) minimising the penalised mean cross-entropy of ``x`` (N, D), ``y`` (N,)."""
    x = x.detach()
    w = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=tolerance,
        tolerance_change=tolerance * 1e-3,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + 0.5 * weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def _top1(w: Tensor, b: Tensor, x: Tensor, y: Tensor) -> float:
    return float(((x @ w.T + b).argmax(1) == y).double().mean())


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    weight_decays: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
    holdout_fraction: float = 0.1,
    seed: int = 0,
    standardize: bool = True,
    max_iter: int = 1000,
) -> dict[str, float]:
    """Top-1 of the probe on the test split, the chosen weight decay and its held-out top-1.

    Unlabelled rows (label < 0) are left out. Features may be float32 or float64 (kept as given).
    """
    tr, te = train_y >= 0, test_y >= 0
    xtr, ytr, xte, yte = train_x[tr], train_y[tr].long(), test_x[te], test_y[te].long()
    if not xtr.is_floating_point() or xtr.dtype in (torch.float16, torch.bfloat16):
        xtr, xte = xtr.float(), xte.float()
    if standardize:
        mean, std = xtr.mean(0), xtr.std(0).clamp_min(1e-8)
        xtr, xte = (xtr - mean) / std, (xte - mean) / std
    num_classes = int(max(ytr.max(), yte.max())) + 1
    wds = sorted(weight_decays, reverse=True)
    best_wd, best_acc = wds[0], -1.0
    if len(wds) > 1:
        idx = torch.arange(len(ytr)).numpy()
        fit_idx, hold_idx = train_test_split(
            idx, test_size=holdout_fraction, random_state=seed, stratify=ytr.cpu().numpy()
        )
        fit_idx, hold_idx = torch.as_tensor(fit_idx), torch.as_tensor(hold_idx)
        for wd in wds:
            w, b = fit_logistic_regression(xtr[fit_idx], ytr[fit_idx], num_classes, wd, max_iter)
            acc = _top1(w, b, xtr[hold_idx], ytr[hold_idx])
            if acc > best_acc:
                best_wd, best_acc = wd, acc
    w, b = fit_logistic_regression(xtr, ytr, num_classes, best_wd, max_iter)
    out = {"top1": _top1(w, b, xte, yte), "weight_decay": float(best_wd)}
    if best_acc >= 0:
        out["holdout_top1"] = best_acc
    return out
