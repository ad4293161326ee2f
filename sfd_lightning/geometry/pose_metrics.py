"""Pose error of a pile: the full relative-rotation error in the camera frame (CONTRACTS §4,
methods/sfd.md §9), shared by ``sfd preprocess pile``, its tests and benchmarks, and the SfD trainer.

For instances ``i, j`` registered in both the prediction and the reference, with object->camera
poses ``P_k`` (prediction) and ``Q_k`` (reference), the error of the pair is the geodesic angle
between ``R(P_i P_j⁻¹)`` and ``R(Q_i Q_j⁻¹)``. It is independent of each solution's object frame
(which cancels) and of the world frame, and it sees wrong rotation axes (comparing only the angles
of relative rotations hides them). Both inputs must use the same camera axes (OpenCV here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np


def rotation_angle_deg(rotation: np.ndarray) -> float:
    """Geodesic angle (degrees) of a ``(3, 3)`` rotation."""
    r = np.asarray(rotation, dtype=np.float64)[:3, :3]
    cos = (np.trace(r) - 1.0) / 2.0
    sin = 0.5 * np.linalg.norm([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    return float(np.degrees(np.arctan2(sin, cos)))  # accurate near 0° and 180°, unlike arccos


def _rot(matrix: np.ndarray) -> np.ndarray:
    return np.asarray(matrix, dtype=np.float64)[:3, :3]


def relative_rotation_errors(pred: Mapping[int, np.ndarray],
                             ref: Mapping[int, np.ndarray]) -> dict[tuple[int, int], float]:
    """Per-pair errors ``{(i, j): degrees}`` for ``i < j`` registered in both.

    Args:
        pred, ref: ``{instance id: (4, 4) or (3, 3) object->camera}`` in the same camera axes.
    """
    common = sorted(set(pred) & set(ref))
    out = {}
    for a, i in enumerate(common):
        for j in common[a + 1:]:
            rel_pred = _rot(pred[i]) @ _rot(pred[j]).T
            rel_ref = _rot(ref[i]) @ _rot(ref[j]).T
            out[(i, j)] = rotation_angle_deg(rel_pred.T @ rel_ref)
    return out


def pose_error_stats(pred: Mapping[int, np.ndarray], ref: Mapping[int, np.ndarray]) -> dict:
    """The pile pose statistic: median and max over pairs of :func:`relative_rotation_errors`
    (degrees), with the registered and common counts beside them (NaN errors with < 2 common)."""
    errors = relative_rotation_errors(pred, ref)
    values = np.array(list(errors.values()), dtype=np.float64)
    return {"protocol": "pile_relative_rotation_v1", "unit": "deg",
            "registered": len(pred), "reference": len(ref), "common": len(set(pred) & set(ref)),
            "pairs": len(values),
            "median_deg": float(np.median(values)) if len(values) else float("nan"),
            "max_deg": float(values.max()) if len(values) else float("nan"),
            "mean_deg": float(values.mean()) if len(values) else float("nan"),
            "per_pair_deg": {f"{i}-{j}": round(v, 4) for (i, j), v in errors.items()}}


def object_to_camera_from_layout(root: str | Path) -> dict[int, np.ndarray]:
    """Read a processed pile (``transforms_train.json`` + ``object_pred_pose.json`` +
    ``non_empty_indexes.txt``) as ``{0-based id: (4, 4) object->camera, OpenCV axes}``:
    ``P_k = w2c_cv · O_k`` (the object frame is the layout's, unscaled)."""
    from sfd_lightning.datamodules import pile_files as files
    from sfd_lightning.geometry.cameras import opengl_c2w_to_opencv_w2c

    root = Path(root)
    _, c2w = files.read_camera(root / files.TRANSFORMS)
    registered = files.read_registered_ids(root / files.INDEXES)
    _, poses = files.parse_pose_keys(files.read_json(root / files.POSES), registered, root / files.POSES)
    w2c = opengl_c2w_to_opencv_w2c(c2w)
    return {i: w2c @ pose for i, pose in poses.items()}


def object_to_camera_from_synthetic_gt(root: str | Path) -> dict[int, np.ndarray]:
    """``gt/poses.json`` of ``sfd data synth pile`` -> ``{0-based id: (4, 4) object->camera}`` (OpenCV)."""
    import json

    meta = json.loads((Path(root) / "gt" / "poses.json").read_text())
    return {i: np.asarray(p, dtype=np.float64) for i, p in enumerate(meta["object_to_camera"])}
