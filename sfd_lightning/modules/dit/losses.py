"""DIT losses and schedules (methods/dit.md §4), each term divided by the step's point count N.

Inputs: per-point tensors flattened over scenes, ``pred``/``gt`` ``(N,)``, stages ``(N, 3)``,
codes ``(N, C)``; the point-pair term takes per-scene ``(B, S, 3)`` tensors. Reductions run in
fp32 (callers disable autocast around them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

CURRICULUM_EPS = (2.5e-2, 1e-2, 2.5e-3, 0.0)
CURRICULUM_LAMBDA = (0.0, 0.1, 0.2, 0.5)


def soft_l1(pred: Tensor, gt: Tensor, eps: float, lam: float) -> Tensor:
    """Per-point curriculum soft L1: ``clamp(|p − g| − ε, 0, 100)·(1 + λ·sign(g)·sign(g − p))``."""
    err = (pred - gt).abs() - eps
    return err.clamp(0.0, 100.0) * (1.0 + lam * torch.sign(gt) * torch.sign(gt - pred))


def sdf_loss(preds: Sequence[Tensor], gt: Tensor, clamp: float, n_points: int, curriculum: bool = True,
             eps: Sequence[float] = CURRICULUM_EPS, lam: Sequence[float] = CURRICULUM_LAMBDA) -> Tensor:
    """Curriculum: mean over stages k of Σ soft_l1_k / N; else Σ|p₈ − g|/N. Both clamped to ±clamp."""
    gt_c = gt.float().clamp(-clamp, clamp)
    if not curriculum:
        return (preds[-1].float().clamp(-clamp, clamp) - gt_c).abs().sum() / n_points
    terms = [soft_l1(p.float().clamp(-clamp, clamp), gt_c, e, l).sum() / n_points
             for p, e, l in zip(preds, eps, lam)]
    return torch.stack(terms).mean()


def code_norm_loss(codes: Tensor, n_points: int) -> Tensor:
    """Σ over points of the unsquared code norm / N (codes repeated per point, ``(N, C)``)."""
    return codes.float().norm(dim=-1).sum() / n_points


def huber(norm: Tensor, delta: float = 0.25) -> Tensor:
    """``½n²`` below δ, ``δn − ½δ²`` above (per element)."""
    return torch.where(norm < delta, 0.5 * norm ** 2, delta * norm - 0.5 * delta ** 2)


def pointwise_warp_loss(stages: Sequence[Tensor], xyz: Tensor, n_points: int, delta: float = 0.25) -> Tensor:
    """Mean over stages of Σ Huber(‖x_k − x₀‖)/N."""
    x0 = xyz.float()
    terms = [huber((s.float() - x0).norm(dim=-1), delta).sum() / n_points for s in stages]
    return torch.stack(terms).mean()


def point_pair_loss(final: Tensor, xyz: Tensor, n_points: int, anchor_divisor: int = 8,
                    margin: float = 0.5, clamp: float | None = None, chunk: int = 256) -> Tensor:
    """Lipschitz term on the final warp: per scene ``(B, S, 3)``, the first ``S // anchor_divisor``
    points are anchors paired with the rest; ``relu(‖Δi − Δj‖/(‖xi − xj‖ + 1e-3) − margin)``
    (optionally clamped ≤ ``clamp``), summed over pairs and scenes, / N. Anchors are chunked."""
    x = xyz.float()
    delta = final.float() - x
    n_anchor = x.shape[1] // anchor_divisor
    if n_anchor == 0 or n_anchor >= x.shape[1]:
        return x.new_zeros(())
    xa, da = x[:, :n_anchor], delta[:, :n_anchor]
    xo, do = x[:, n_anchor:], delta[:, n_anchor:]
    total = x.new_zeros(())
    for start in range(0, n_anchor, chunk):
        num = torch.cdist(da[:, start:start + chunk], do)
        den = torch.cdist(xa[:, start:start + chunk], xo) + 1e-3
        term = torch.relu(num / den - margin)
        if clamp is not None:
            term = term.clamp(max=clamp)
        total = total + term.sum()
    return total / n_points


@dataclass
class DITSchedule:
    """Loss-weight ramps and LR halving in DIT epochs (1-indexed), methods/dit.md §4.

    ``epoch`` is the original's epoch, or with ``ramp_unit="step"`` the step's position scaled to
    ``total_epochs`` (so each 100-epoch ramp is ~5% of ``max_steps`` at 2001 epochs).
    """

    code_reg: float = 1e-4
    pointwise: float = 0.005
    pointpair: float = 1e-4
    ramp_epochs: float = 100.0
    lr_halving_epochs: float = 500.0
    total_epochs: float = 2001.0
    ramp_unit: str = "epoch"
    extra: dict = field(default_factory=dict)

    def epoch(self, current_epoch: int, global_step: int, max_steps: int) -> float:
        """The DIT epoch (≥ 1) of this step."""
        if self.ramp_unit == "epoch":
            return float(current_epoch + 1)
        if self.ramp_unit != "step":
            raise ValueError(f"ramp_unit must be 'epoch' or 'step', got {self.ramp_unit!r}")
        if max_steps is None or max_steps <= 0:
            raise ValueError("ramp_unit 'step' needs trainer.max_steps > 0")
        return max(1.0, (global_step + 1) / max_steps * self.total_epochs)

    def code_weight(self, epoch: float) -> float:
        return self.code_reg * min(1.0, epoch / self.ramp_epochs)

    def pointwise_weight(self, epoch: float) -> float:
        return self.pointwise * max(1.0, 10.0 * (1.0 - epoch / self.ramp_epochs))

    def pointpair_weight(self, epoch: float) -> float:
        return self.pointpair * min(1.0, epoch / self.ramp_epochs)

    def lr_factor(self, epoch: float) -> float:
        return 0.5 ** math.floor(epoch / self.lr_halving_epochs)
