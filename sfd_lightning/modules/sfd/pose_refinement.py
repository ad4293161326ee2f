"""Per-instance rigid pose residuals and pose errors (SfD; CONTRACTS §4 "Pile poses").

Instance ``i`` maps the normalised object frame to the world by ``T_i = O_i · S · Δ_i`` with a
residual ``Δ_i = [exp(ω_i) | τ_i]`` in the normalised frame (rotation about the object centre).
``Δ_0`` stays the identity: the world is instance 0's frame and the shared shape would otherwise
absorb a common motion (gauge freedom).

What drives ``Δ_i`` (``SfD(pose_loss=...)``): the geometry losses (``"photometric"``, default), or
only :class:`SilhouettePoseLoss` (``"silhouette"``: mask BCE on rays at the instance silhouettes,
rendered with every network frozen, texture-independent), or both. Silhouettes pin rotations about
the viewing axis but only weakly those about axes in the image plane (foreshortening is second
order), so with a learned tiny shape the photometric signal was the more reliable one (measured:
configs/sfd/tiny_pose.yaml, tests/test_sfd_pose.py).

Schedule (``SfD(pose_start, pose_end, pose_lr, pose_lr_final)``, coarse-to-fine as in BARF): the
residuals move only within ``[pose_start, pose_end) · max_steps``, with an lr that decays
exponentially from ``pose_lr`` to ``pose_lr_final``, while the PE ramp (``pe_ramp``) is still
opening. With a constant lr the error kept falling while the encoding was coarse and then drifted
back up once it was complete (the detailed shape absorbs the pose error): measured 5° -> 3.4° at
step 400 -> 5.8° at step 1200.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterable, Iterator

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


# ---------------------------------------------------------------------- silhouette pose loss
@contextmanager
def frozen(params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Temporarily take ``params`` out of autograd (input gradients still flow), so a term
    computed inside reaches only the other parameters; restores the previous flags."""
    flags = [(p, p.requires_grad) for p in params]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def sharpened(model, min_inv_s: float | None) -> Iterator[None]:
    """Temporarily render ``model`` (an ``SfDModel``) with ``inv_s = max(learned, min_inv_s)``."""
    if not min_inv_s:
        yield
        return
    learned = model.inv_s
    model.inv_s = lambda: learned().clamp_min(float(min_inv_s))
    try:
        yield
    finally:
        del model.inv_s  # back to the class method


def boundary_rays(instance: np.ndarray, pose_index: np.ndarray, ignore: np.ndarray,
                  radius: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels near the instance/background silhouettes, each with the instance it is rendered in.

    For every registered instance ``k``: pixels within ``radius`` px of its silhouette that are
    either its own (target 1) or background (target 0). Pixels of another instance are left out
    (instance ``k`` may lie behind them: the segmentation hinge handles those boundaries); a
    background pixel near two instances appears once per instance.

    Args:
        instance: ``(H, W)`` labels (0 background, k = instance k). pose_index: ``(N + 1,)`` label ->
            pose row (-1 unregistered). ignore: ``(H, W)`` pixels of unregistered instances.
    Returns:
        ``pixel (M,)`` row-major indices, ``pose (M,)`` pose rows, ``target (M,)`` float32 in {0, 1}.
    """
    from scipy.ndimage import binary_dilation, binary_erosion

    structure = np.ones((3, 3), dtype=bool)
    background = (instance == 0) & ~ignore
    pixels, poses, targets = [], [], []
    for label in np.unique(instance):
        row = int(pose_index[label]) if label > 0 else -1
        if row < 0:
            continue
        own = instance == label
        ring = binary_dilation(own, structure, iterations=radius) & ~binary_erosion(own, structure, iterations=radius)
        for mask, target in ((ring & own, 1.0), (ring & background, 0.0)):
            index = np.flatnonzero(mask.reshape(-1))
            pixels.append(index)
            poses.append(np.full(len(index), row, dtype=np.int64))
            targets.append(np.full(len(index), target, dtype=np.float32))
    if not pixels:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(pixels), np.concatenate(poses), np.concatenate(targets)


class SilhouettePoseLoss:
    """Texture-independent pose term: mask BCE on rays sampled at the silhouettes, each rendered in
    its instance's frame with the SDF frozen, so only the pose residuals receive its gradient.

    Holds the silhouette rays of one scene (camera-frame directions and targets, built once from a
    :class:`~sfd_lightning.datamodules.pile.PileScene`); :meth:`__call__` draws ``rays`` of them.
    """

    def __init__(self, scene, radius: int = 2) -> None:
        pixel, pose, target = boundary_rays(scene.instance, scene.pose_index, scene.ignore, radius)
        dirs = scene.camera_directions()[pixel]
        self.dirs = torch.from_numpy(dirs.astype(np.float32))  # (M, 3) camera frame
        self.pose = torch.from_numpy(pose)
        self.target = torch.from_numpy(target)

    def __len__(self) -> int:
        return len(self.pose)

    def __call__(self, model, transforms: Tensor, rays: int, n_samples: int, n_importance: int,
                 up_sample_steps: int, generator: torch.Generator | None = None,
                 min_inv_s: float | None = None) -> Tensor:
        """Mask BCE of ``rays`` silhouette rays rendered with ``transforms (N, 4, 4)`` (scalar).

        ``min_inv_s``: render with ``max(inv_s, min_inv_s)`` (a sharper silhouette of the same
        zero level set than early in training, when the learned NeuS ``inv_s`` is still low)."""
        from sfd_lightning.modules.sfd.losses import mask_loss

        device = transforms.device
        if len(self) == 0 or rays <= 0:
            return transforms.sum() * 0.0
        pick = torch.randint(len(self), (rays,), generator=generator)
        rays_o, rays_d = model.camera_rays(self.dirs[pick].to(device))
        inst = self.pose[pick].to(device)
        near, far = model.near.expand(rays).to(device), model.far.expand(rays).to(device)
        with frozen(p for name, p in model.named_parameters() if not name.startswith("pose.")), \
                sharpened(model, min_inv_s):
            out = model.render(rays_o, rays_d, model.primary_assign(inst), near, far, n_samples, n_importance,
                               up_sample_steps, None, True, False, transforms)
        return mask_loss(out["weights_sum"], self.target[pick].to(device) > 0.5)
