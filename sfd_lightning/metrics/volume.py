"""Volume IoU: mesh vs mesh by containment, and a predicted SDF vs GT occupancy.

Containment rule (methods/evaluation.md §3.5, documented choice): a point is inside a mesh when
its **generalized winding number** is ≥ 0.5, computed with point-cloud-utils'
``triangle_soup_fast_winding_number`` (Barill et al. 2018 fast winding numbers). For closed,
consistently oriented meshes this equals ONet's ray-parity test; for open or self-intersecting
meshes it degrades gracefully (a hole changes the number near the hole only) where ray parity
needs LIST's 3-rotation "waterproofing" re-test. Face orientation does matter: an inward-facing
closed mesh has winding number −1 inside and counts as empty.

IoU = |pred ∩ gt| / |pred ∪ gt| over uniform points in a box; two empty occupancies give 1.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from sfd_lightning.geometry.io import Mesh


def uniform_box_points(count: int, box_min: np.ndarray | float, box_max: np.ndarray | float,
                       seed: int = 0) -> np.ndarray:
    """``(count, 3)`` float64 points uniform in the axis-aligned box ``[box_min, box_max]``."""
    rng = np.random.default_rng(seed)
    low = np.broadcast_to(np.asarray(box_min, dtype=np.float64), (3,))
    high = np.broadcast_to(np.asarray(box_max, dtype=np.float64), (3,))
    return low + rng.random((count, 3)) * (high - low)


def mesh_contains(mesh: Mesh, points: np.ndarray) -> np.ndarray:
    """Boolean ``(N,)``: generalized winding number of ``points (N, 3)`` w.r.t. ``mesh`` ≥ 0.5.

    An empty mesh contains nothing.
    """
    points = np.ascontiguousarray(points, dtype=np.float64)
    if mesh.is_empty or len(points) == 0:
        return np.zeros(len(points), dtype=bool)
    import point_cloud_utils as pcu

    winding = pcu.triangle_soup_fast_winding_number(
        np.ascontiguousarray(mesh.vertices, dtype=np.float64),
        np.ascontiguousarray(mesh.faces, dtype=np.int64), points)
    return np.asarray(winding) >= 0.5


def occupancy_iou(pred_occupancy: np.ndarray, gt_occupancy: np.ndarray) -> float:
    """|pred ∩ gt| / |pred ∪ gt| of two boolean ``(N,)`` arrays (1.0 when both are empty)."""
    pred = np.asarray(pred_occupancy, dtype=bool)
    gt = np.asarray(gt_occupancy, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"occupancy shapes differ: {pred.shape} vs {gt.shape}")
    union = int(np.count_nonzero(pred | gt))
    return 1.0 if union == 0 else int(np.count_nonzero(pred & gt)) / union


def union_bbox(meshes: list[Mesh], padding: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of all non-empty meshes, grown by ``padding`` × its longest side per side."""
    vertices = [m.vertices for m in meshes if not m.is_empty]
    if not vertices:
        raise ValueError("union_bbox needs at least one non-empty mesh")
    stacked = np.concatenate(vertices, axis=0)
    low, high = stacked.min(0), stacked.max(0)
    pad = padding * float((high - low).max())
    return low - pad, high + pad


def mesh_volume_iou(pred: Mesh, gt: Mesh, count: int = 100_000,
                    box: float | tuple[np.ndarray, np.ndarray] | None = None, seed: int = 0) -> float:
    """Volume IoU of two meshes by winding-number containment on uniform points.

    Args:
        pred, gt: meshes (an empty ``pred`` gives IoU 0 against a non-empty ``gt``).
        count: number of uniform points.
        box: half-extent ``h`` of the cube ``[-h, h]³`` (ONet 0.55, LIST 0.5), an explicit
            ``(min (3,), max (3,))``, or ``None`` for the union bbox of both meshes padded by 5%.
        seed: seed of the uniform points.
    """
    if box is None:
        low, high = union_bbox([pred, gt])
    elif isinstance(box, (int, float)):
        low, high = -float(box), float(box)
    else:
        low, high = box
    points = uniform_box_points(count, low, high, seed)
    return occupancy_iou(mesh_contains(pred, points), mesh_contains(gt, points))


def sdf_occupancy(sdf: Callable[[torch.Tensor], torch.Tensor], points: np.ndarray | torch.Tensor,
                  level: float = 0.0, chunk: int = 65_536, device: torch.device | str | None = None) -> np.ndarray:
    """Boolean ``(N,)`` occupancy ``sdf(p) <= level`` (negative inside), evaluated in chunks.

    Args:
        sdf: callable on torch ``(n, 3)`` float32 -> ``(n,)`` (e.g. ``SurfaceHandle.sdf``).
        points: ``(N, 3)`` query points.
        level: iso-level; ``chunk``: points per call; ``device``: where the SDF lives (default:
            the device of ``points`` if a tensor, else CPU).
    """
    points_t = torch.as_tensor(points)
    device = points_t.device if device is None else torch.device(device)
    inside = []
    with torch.no_grad():
        for start in range(0, points_t.shape[0], chunk):
            block = points_t[start:start + chunk].to(device=device, dtype=torch.float32)
            values = torch.as_tensor(sdf(block)).reshape(-1)
            inside.append((values <= level).cpu().numpy())
    return np.concatenate(inside) if inside else np.zeros(0, dtype=bool)


def sdf_iou(sdf: Callable[[torch.Tensor], torch.Tensor], points: np.ndarray | torch.Tensor,
            gt_occupancy: np.ndarray, level: float = 0.0, chunk: int = 65_536,
            device: torch.device | str | None = None) -> float:
    """IoU of a predicted SDF's occupancy (``sdf <= level``) against GT occupancy ``(N,)`` bool
    at the same points ``(N, 3)`` (e.g. ONet ``points.npz`` after :func:`unpack_occupancy`)."""
    return occupancy_iou(sdf_occupancy(sdf, points, level, chunk, device), gt_occupancy)


def unpack_occupancy(packed: np.ndarray, count: int) -> np.ndarray:
    """ONet's bit-packed ``occupancies`` (``np.packbits``) -> boolean ``(count,)``."""
    return np.unpackbits(np.asarray(packed, dtype=np.uint8))[:count].astype(bool)
