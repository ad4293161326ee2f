"""Steps 6-7 of ``sfd preprocess pile``: SfM solution -> the original SfD files (methods/sfd.md §2.3).

COLMAP gives, per registered instance ``i``, ``W2C_i`` = object->camera in OpenCV axes (its world is
the shared object's frame). With ``F = diag(1, −1, −1, 1)``: points ``p' = F·p``,
``W2C'_i = F·W2C_i·F``, ``V_i = W2C'_i⁻¹``; the camera is ``c2w = V_ref`` (OpenGL axes) and the
object poses ``O_i = V_ref·V_i⁻¹``, so ``O_ref = I`` (``ref`` = the lowest registered id; 0 in the
original, which requires every instance to register). ``S`` = centre and half bbox diagonal of the
99% of object points nearest their mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

FLIP = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class PileGeometry:
    """The processed geometry in the original's conventions.

    Attributes:
        c2w: ``(4, 4)`` OpenGL camera->world. object_to_world: ``{id: (4, 4)}`` rigid, ``O_ref = I``.
        scale_matrix: ``S (4, 4)``. points_world: ``{id: (M_i, 3)}`` world points seen by instance ``id``.
        object_points: ``(M, 3)`` points in the (flipped) object frame ``x'``.
    """

    c2w: np.ndarray
    object_to_world: dict[int, np.ndarray]
    scale_matrix: np.ndarray
    points_world: dict[int, np.ndarray]
    object_points: np.ndarray


def scale_matrix_from_points(points: np.ndarray, keep: float = 0.99) -> np.ndarray:
    """``S (4, 4)``: uniform scale r = half bbox diagonal and centre = mean of the ``keep`` fraction
    of ``(M, 3)`` points nearest their mean (the original's one-cluster k-means)."""
    points = np.asarray(points, dtype=np.float64)
    order = np.argsort(np.linalg.norm(points - points.mean(0), axis=1), kind="stable")
    kept = points[order[: max(1, int(np.ceil(len(points) * keep)))]]
    scale = np.eye(4)
    scale[:3, :3] *= max(0.5 * float(np.linalg.norm(kept.max(0) - kept.min(0))), 1e-9)
    scale[:3, 3] = kept.mean(0)
    return scale


def geometry_from_solution(object_to_camera: Mapping[int, np.ndarray], points: np.ndarray,
                           observers: Mapping[int, np.ndarray]) -> PileGeometry:
    """Convert COLMAP poses (``{id: W2C_i}``, OpenCV) and object points ``(M, 3)`` (COLMAP world)
    into camera, object poses, S and per-instance world points."""
    ids = sorted(object_to_camera)
    if not ids:
        raise ValueError("no registered instance")
    w2c_gl = {i: FLIP @ np.asarray(object_to_camera[i], dtype=np.float64) @ FLIP for i in ids}
    views = {i: np.linalg.inv(w2c_gl[i]) for i in ids}
    ref = ids[0]
    c2w = views[ref]
    object_to_world = {}
    for i in ids:
        pose = c2w @ w2c_gl[i]
        pose[:3, :3] = _orthonormalize(pose[:3, :3])
        pose[3] = (0.0, 0.0, 0.0, 1.0)
        object_to_world[i] = pose
    object_to_world[ref] = np.eye(4)
    flipped = np.asarray(points, dtype=np.float64) @ FLIP[:3, :3].T
    scale = scale_matrix_from_points(flipped)
    per_instance = {}
    for i in ids:
        idx = np.asarray(observers.get(i, np.zeros(0, dtype=np.int64)), dtype=np.int64)
        per_instance[i] = flipped[idx] @ object_to_world[i][:3, :3].T + object_to_world[i][:3, 3]
    return PileGeometry(c2w, object_to_world, scale, per_instance, flipped)


def _orthonormalize(rotation: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(rotation)
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    return r


def write_layout(out: Path, views, geometry: PileGeometry, matcher: str, timings: Mapping[str, float],
                 name: str | None = None) -> Path:
    """Write the processed layout (shared writer of :mod:`sfd_lightning.datamodules.pile_files`)."""
    from sfd_lightning.datamodules.pile_files import write_processed_layout

    K = views.K
    intrinsics = {"fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2]}
    points = {i: p for i, p in geometry.points_world.items() if len(p)}
    return write_processed_layout(out, views.image, views.labels, views.focal, geometry.c2w,
                                  geometry.object_to_world, geometry.scale_matrix, points or None, intrinsics,
                                  views.num_instances, matcher, timings, name=name)
