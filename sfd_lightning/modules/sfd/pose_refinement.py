"""Per-instance rigid pose residuals and pose errors (SfD; CONTRACTS §4 "Pile poses").

Instance ``i`` maps the normalised object frame to the world by ``T_i = O_i · S · Δ_i`` with a
residual ``Δ_i = [exp(ω_i) | τ_i]`` in the normalised frame (rotation about the object centre).
``Δ_0`` stays the identity: the world is instance 0's frame and the shared shape would otherwise
absorb a common motion (gauge freedom).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn


def so3_exp(omega: Tensor) -> Tensor:
    """Rodrigues: axis-angle ``(N, 3)`` -> rotations ``(N, 3, 3)`` (smooth at 0)."""
    theta2 = (omega * omega).sum(-1, keepdim=True)[..., None]  # (N, 1, 1)
    theta = torch.sqrt(theta2 + 1e-12)
    zero = torch.zeros_like(omega[:, 0])
    wx, wy, wz = omega.unbind(-1)
    skew = torch.stack([zero, -wz, wy, wz, zero, -wx, -wy, wx, zero], -1).reshape(-1, 3, 3)
    small = theta2 < 1e-8
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    eye = torch.eye(3, device=omega.device, dtype=omega.dtype).expand_as(skew)
    return eye + a * skew + b * (skew @ skew)


class PoseResidual(nn.Module):
    """Learnable ``Δ_i`` for ``num_instances`` instances (zero at init; instance 0 fixed)."""

    def __init__(self, num_instances: int) -> None:
        super().__init__()
        self.rotation = nn.Parameter(torch.zeros(num_instances, 3))
        self.translation = nn.Parameter(torch.zeros(num_instances, 3))

    def forward(self) -> Tensor:
        """``(N, 4, 4)`` residual transforms."""
        count = self.rotation.shape[0]
        keep = torch.ones(count, 1, device=self.rotation.device, dtype=self.rotation.dtype)
        if count:
            keep[0] = 0.0
        out = torch.eye(4, device=self.rotation.device, dtype=self.rotation.dtype).repeat(count, 1, 1)
        out[:, :3, :3] = so3_exp(self.rotation * keep)
        out[:, :3, 3] = self.translation * keep
        return out


def rotation_angle_deg(rotation: np.ndarray) -> np.ndarray:
    """Geodesic angle in degrees of rotations ``(..., 3, 3)``."""
    trace = np.trace(rotation, axis1=-2, axis2=-1)
    return np.degrees(np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0)))


def relative_rotation_errors(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Full relative-rotation error over all pairs (CONTRACTS §4).

    Args:
        pred, gt: object->camera ``(N, 4, 4)`` (only the rotations are used).
    Returns:
        ``rot_err_median_deg``, ``rot_err_max_deg``, ``pairs``.
    """
    errors = []
    for i in range(len(pred)):
        for j in range(i + 1, len(pred)):
            rel_p = pred[i, :3, :3] @ pred[j, :3, :3].T
            rel_g = gt[i, :3, :3] @ gt[j, :3, :3].T
            errors.append(float(rotation_angle_deg(rel_p @ rel_g.T)))
    if not errors:
        return {"rot_err_median_deg": 0.0, "rot_err_max_deg": 0.0, "pairs": 0}
    return {"rot_err_median_deg": float(np.median(errors)), "rot_err_max_deg": float(np.max(errors)),
            "pairs": len(errors)}


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity ``(s, R, t)`` minimising ``Σ‖s R src + t − dst‖²`` (``(N, 3)`` each, N ≥ 3 for a
    unique rotation; with fewer points the rotation is the identity and only scale/shift fit)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    var = (xs ** 2).sum() / len(src)
    if len(src) < 3 or var < 1e-12:
        scale = math.sqrt(((xd ** 2).sum() / max((xs ** 2).sum(), 1e-12))) if var > 1e-12 else 1.0
        return scale, np.eye(3), mu_d - scale * mu_s
    cov = xd.T @ xs / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1.0
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(d) @ sign) / var)
    return scale, rot, mu_d - scale * rot @ mu_s


def translation_errors(pred_centres: np.ndarray, gt_centres: np.ndarray, object_size: float) -> dict[str, float]:
    """Instance-centre error after a similarity alignment, in units of the GT object size."""
    s, rot, t = umeyama(pred_centres, gt_centres)
    residual = np.linalg.norm((s * pred_centres @ rot.T + t) - gt_centres, axis=1)
    return {"trans_err_mean_rel": float(residual.mean() / object_size),
            "trans_err_max_rel": float(residual.max() / object_size)}
