"""Pose visualization of a preprocessed pile: instance axes and reprojected SfM points on the photo."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from sfd_lightning.geometry.cameras import opengl_c2w_to_opencv_w2c

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]
AXIS_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 90, 255)]


def _project(K: np.ndarray, w2c: np.ndarray, points: np.ndarray) -> np.ndarray:
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = np.where(cam[:, 2:3] > 1e-9, cam[:, 2:3], np.nan)
    return (cam @ K.T)[:, :2] / z


def draw_poses(image: np.ndarray, K: np.ndarray, c2w_opengl: np.ndarray, object_to_world: Mapping[int, np.ndarray],
               scale_matrix: np.ndarray, points_world: Mapping[int, np.ndarray] | None = None,
               excluded: Mapping[int, str] | None = None, instance: np.ndarray | None = None) -> np.ndarray:
    """Return a copy of ``image (H, W, 3)`` uint8 RGB with, per registered instance, its reprojected
    points (dots), object axes at ``O_i·S·0`` (x red, y green, z blue; length r) and its 0-based id;
    excluded instances get their id and reason in grey at their mask centroid."""
    import cv2

    canvas = np.ascontiguousarray(image.copy())
    w2c = opengl_c2w_to_opencv_w2c(c2w_opengl)
    thick = max(1, int(round(canvas.shape[1] / 400)))
    for i, pose in sorted(object_to_world.items()):
        colour = PALETTE[i % len(PALETTE)]
        if points_world is not None and i in points_world and len(points_world[i]):
            for u, v in _project(K, w2c, np.asarray(points_world[i]))[::max(1, len(points_world[i]) // 400)]:
                if np.isfinite(u) and np.isfinite(v):
                    cv2.circle(canvas, (int(round(u)), int(round(v))), thick, colour, -1)
        r = scale_matrix[0, 0]
        local = np.array([[0, 0, 0], [r, 0, 0], [0, r, 0], [0, 0, r]], dtype=np.float64) + scale_matrix[:3, 3]
        world = local @ pose[:3, :3].T + pose[:3, 3]
        uv = _project(K, w2c, world)
        if not np.isfinite(uv).all():
            continue
        origin = tuple(int(round(x)) for x in uv[0])
        for axis in range(3):
            cv2.line(canvas, origin, tuple(int(round(x)) for x in uv[axis + 1]), AXIS_COLOURS[axis], 2 * thick)
        cv2.putText(canvas, str(i), (origin[0] + 4, origin[1] - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thick,
                    (255, 255, 255), thick + 1)
    for i, reason in sorted((excluded or {}).items()):
        if instance is None or not np.any(instance == i + 1):
            continue
        ys, xs = np.nonzero(instance == i + 1)
        cv2.putText(canvas, f"{i}: {reason}", (int(xs.mean()) - 20, int(ys.mean())), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thick, (160, 160, 160), thick)
    return canvas


def save_visualization(path: Path, canvas: np.ndarray) -> Path:
    """Write the visualization PNG atomically."""
    from sfd_lightning.datamodules.pile_files import write_png

    write_png(path, canvas)
    return path
