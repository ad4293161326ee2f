"""UMR weak-perspective cameras ``[s, tx, ty, qw, qx, qy, qz]`` (methods/umr.md §3, camera convention).

Quaternions real first, active rotation ``X' = R(q) X``; ``x = s·(RX)_x + tx``, ``y = s·(RX)_y + ty``
(NDC, y down), depth ``z = s·(RX)_z + 7.732`` (smaller = nearer). At the module boundary a camera is
converted to the framework's OpenCV orthographic camera (:func:`to_opencv_orthographic`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sfd_lightning.render.mesh_camera import project_weak_perspective, quaternion_to_matrix

__all__ = ["quat_multiply", "axis_angle_quat", "project", "flip_camera", "rotate_about_y",
           "mean_camera", "to_opencv_orthographic", "matrix_to_quaternion", "fit_weak_perspective",
           "rotation_error_deg"]


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product ``a ⊗ b`` of ``(..., 4)`` (w, x, y, z) quaternions (``R(a⊗b) = R(a) R(b)``)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], dim=-1)


def axis_angle_quat(axis: tuple[float, float, float], angle: Tensor) -> Tensor:
    """Quaternions ``(..., 4)`` rotating by ``angle (...)`` radians about the unit ``axis``."""
    half = angle / 2
    s = torch.sin(half)
    return torch.stack([torch.cos(half), s * axis[0], s * axis[1], s * axis[2]], dim=-1)


def project(vertices: Tensor, cam: Tensor) -> Tensor:
    """``vertices (B, V, 3)`` under ``cam (B, 7)`` -> rasteriser input ``(B, V, 3)`` (NDC x, y; depth)."""
    return project_weak_perspective(vertices, cam[:, 0], cam[:, 1:3], cam[:, 3:7])


def flip_camera(cam: Tensor) -> Tensor:
    """Camera of the horizontally flipped image for an object symmetric across **y = 0**.

    With ``F = diag(−1, 1, 1)`` (image flip) and ``M = diag(1, −1, 1)`` (object mirror), the mirrored
    point ``M X`` under ``R' = F R M`` lands at the flipped image position with the same depth.
    ``F R M = R_z(π)·(M R M)``, i.e. ``q' = (0, 0, 0, 1) ⊗ (w, −x, y, −z)``; ``tx`` is negated.
    (CMR's "negate tx, qy, qz" is the same construction for its x-symmetric meshes.)
    """
    q = cam[..., 3:7] * cam.new_tensor([1.0, -1.0, 1.0, -1.0])
    rz = cam.new_tensor([0.0, 0.0, 0.0, 1.0]).expand_as(q)
    return torch.cat([cam[..., :1], -cam[..., 1:2], cam[..., 2:3], quat_multiply(rz, q)], dim=-1)


def rotate_about_y(cam: Tensor, degrees: Tensor) -> Tensor:
    """Left-multiply the rotation by ``degrees (B,)`` about the y axis (keeps s, t): a novel view."""
    rot = axis_angle_quat((0.0, 1.0, 0.0), degrees * math.pi / 180.0)
    return torch.cat([cam[:, :3], quat_multiply(rot, cam[:, 3:7])], dim=-1)


def mean_camera(cams: Tensor) -> Tensor:
    """A mean camera ``(7,)`` of ``cams (N, 7)``: mean scale and translation, sign-aligned mean quaternion."""
    q = cams[:, 3:7]
    ref = q[0]
    q = torch.where((q @ ref < 0).unsqueeze(-1), -q, q)
    qm = q.mean(0)
    qm = qm / qm.norm().clamp_min(1e-12)
    return torch.cat([cams[:, :3].mean(0), qm])


def to_opencv_orthographic(cam: Tensor, image_size: int) -> dict[str, Tensor]:
    """OpenCV orthographic camera of ``cam (7,)`` at ``image_size`` pixels.

    Pixel column ``j = ((x_ndc + 1)·S − 1)/2`` with ``x_ndc = s·(RX)_x + tx`` (rows alike), i.e.
    ``u = f·(RX)_x + cx`` with ``f = s·S/2``, ``cx = ((tx + 1)·S − 1)/2``; ``R`` the rotation (same axes:
    x right, y down, z forward). Returns ``{"R": (3, 3), "focal": (), "principal": (2,)}``.
    """
    s, tx, ty = cam[0], cam[1], cam[2]
    size = float(image_size)
    return {"R": quaternion_to_matrix(cam[3:7]), "focal": s * size / 2,
            "principal": torch.stack([((tx + 1) * size - 1) / 2, ((ty + 1) * size - 1) / 2])}


def matrix_to_quaternion(rot: Tensor) -> Tensor:
    """Rotations ``(..., 3, 3)`` -> unit quaternions ``(..., 4)`` (w, x, y, z), ``w >= 0``; the inverse of
    :func:`~sfd_lightning.render.mesh_camera.quaternion_to_matrix` (largest-pivot method, stable)."""
    m = rot.reshape(-1, 3, 3)
    diag = torch.stack([m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2], m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2],
                        -m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], -m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1)
    # candidate i solves with its own component as the (largest) pivot: 4·q_i² = 1 + diag_i
    cands = torch.stack([
        torch.stack([1 + diag[:, 0], m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
        torch.stack([m[:, 2, 1] - m[:, 1, 2], 1 + diag[:, 1], m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0]], -1),
        torch.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 + diag[:, 2], m[:, 1, 2] + m[:, 2, 1]], -1),
        torch.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1], 1 + diag[:, 3]], -1),
    ], 1)  # (N, 4 candidates, 4)
    best = diag.argmax(-1)
    q = cands[torch.arange(len(m), device=m.device), best]
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    q = torch.where(q[:, :1] < 0, -q, q)
    return q.reshape(*rot.shape[:-2], 4)


def fit_weak_perspective(points: Tensor, rot: Tensor, ndc: Tensor) -> Tensor:
    """Least-squares weak-perspective camera ``(7,)`` with rotation ``rot (3, 3)`` (object -> camera,
    x right, y down, z forward: the OpenCV axes) that maps object points ``(N, 3)`` to NDC ``(N, 2)``:
    ``min_{s, t} Σ ‖s·(R X)_{xy} + t − ndc‖²``. Used to express a ground-truth perspective camera in
    UMR's convention (tests, rotation-error diagnostics)."""
    xr = (points.double() @ rot.double().T)[:, :2]
    n = len(points)
    a = torch.zeros(2 * n, 3, dtype=torch.float64, device=points.device)
    a[0::2, 0], a[1::2, 0] = xr[:, 0], xr[:, 1]
    a[0::2, 1], a[1::2, 2] = 1.0, 1.0
    sol = torch.linalg.lstsq(a, ndc.double().reshape(-1, 1)).solution[:, 0]
    return torch.cat([sol, matrix_to_quaternion(rot.double())]).to(points.dtype)


def rotation_error_deg(rot_a: Tensor, rot_b: Tensor) -> Tensor:
    """Geodesic angle in degrees ``(...)`` between rotations ``(..., 3, 3)``."""
    cos = ((rot_a.transpose(-1, -2) @ rot_b).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))
