"""Projection of mesh vertices into the soft rasteriser's screen space.

Screen convention (the rasteriser's, UMR's and ``grid_sample(align_corners=False)``'s):
normalised device coordinates (NDC) with **x to the right and y down**, the image spanning
``[−1, 1]`` in both axes, pixel ``(row i, column j)`` of an ``H × W`` image centred at

    x = (2j + 1)/W − 1,    y = (2i + 1)/H − 1.

It matches the framework's OpenCV camera (x right, y down, z forward, pixel centres at integer
coordinates ``(u, v) = (column, row)``) through ``x = (2u + 1)/W − 1``, ``y = (2v + 1)/H − 1``:
:func:`pixel_to_ndc` / :func:`ndc_to_pixel`. The third coordinate handed to the rasteriser is the
camera-frame depth ``z`` (positive in front of the camera, smaller = nearer).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "image_hw",
    "pixel_to_ndc",
    "ndc_to_pixel",
    "quaternion_to_matrix",
    "project_perspective",
    "project_weak_perspective",
    "UMR_DEPTH_OFFSET",
]

#: UMR/CMR weak-perspective depth: ``z = s·(RX)_z + 5 + 2.732`` (SoftRas look-at distance 2.732).
UMR_DEPTH_OFFSET = 7.732


def image_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """``S`` or ``(H, W)`` -> ``(H, W)``."""
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def pixel_to_ndc(uv: Tensor, image_size: int | tuple[int, int]) -> Tensor:
    """OpenCV pixel coordinates ``(..., 2)`` = (u column, v row), centres at integers -> NDC ``(..., 2)``."""
    h, w = image_hw(image_size)
    scale = uv.new_tensor([2.0 / w, 2.0 / h])
    return (2.0 * uv + 1.0) * (scale / 2.0) - 1.0


def ndc_to_pixel(xy: Tensor, image_size: int | tuple[int, int]) -> Tensor:
    """NDC ``(..., 2)`` -> OpenCV pixel coordinates ``(..., 2)`` (inverse of :func:`pixel_to_ndc`)."""
    h, w = image_hw(image_size)
    size = xy.new_tensor([float(w), float(h)])
    return ((xy + 1.0) * size - 1.0) / 2.0


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Unit quaternions ``(..., 4)`` in **(w, x, y, z)** order (real part first) -> rotations ``(..., 3, 3)``.

    The input is normalised first. The rotation is active: ``X' = R(q) X`` rotates points by the
    angle ``θ`` about the axis ``n`` for ``q = (cos θ/2, sin θ/2 · n)`` (right-hand rule), the same
    convention as UMR/CMR and ``kornia.geometry.conversions.quaternion_to_rotation_matrix``.
    """
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def project_perspective(vertices: Tensor, K: Tensor, image_size: int | tuple[int, int]) -> Tensor:
    """Pinhole projection of camera-frame vertices to rasteriser input.

    Args:
        vertices: ``(B, V, 3)`` points in the OpenCV camera frame (``x_cam = R x_world + t``), z > 0.
        K: ``(B, 3, 3)`` or ``(3, 3)`` intrinsics in pixels, principal point in the pixel-centre
            convention (the image centre is ``((W − 1)/2, (H − 1)/2)``).
        image_size: ``S`` or ``(H, W)``.

    Returns:
        ``(B, V, 3)``: NDC ``x, y`` and camera depth ``z`` (use ``perspective_correct=True``).
    """
    uvw = vertices @ K.transpose(-1, -2)
    z = vertices[..., 2]
    uv = uvw[..., :2] / uvw[..., 2:3]
    return torch.cat((pixel_to_ndc(uv, image_size), z.unsqueeze(-1)), dim=-1)


def project_weak_perspective(vertices: Tensor, scale: Tensor, trans: Tensor, quat: Tensor,
                             depth_offset: float = UMR_DEPTH_OFFSET) -> Tensor:
    """UMR/CMR weak-perspective camera: ``x = s·(RX)_x + tx``, ``y = s·(RX)_y + ty`` (NDC, y down),
    ``z = s·(RX)_z + depth_offset`` (smaller = nearer).

    Args:
        vertices: ``(B, V, 3)`` object-frame vertices.
        scale: ``(B,)`` or ``(B, 1)``.
        trans: ``(B, 2)`` NDC translation.
        quat: ``(B, 4)`` rotation quaternion, **(w, x, y, z)**, normalised here.
        depth_offset: constant depth added to every vertex (UMR: 7.732).

    Returns:
        ``(B, V, 3)`` NDC ``x, y`` and depth (use ``perspective_correct=False``).
    """
    rot = quaternion_to_matrix(quat)  # (B, 3, 3)
    xr = vertices @ rot.transpose(-1, -2)
    s = scale.reshape(-1, 1, 1)
    xy = s * xr[..., :2] + trans.reshape(-1, 1, 2)
    z = s[..., 0] * xr[..., 2] + depth_offset
    return torch.cat((xy, z.unsqueeze(-1)), dim=-1)
