"""``evaluate(pred, gt, protocol)``: one prediction vs its ground truth under a named protocol.

Sampling: a mesh gets area-uniform samples with face normals (``sample_mesh_surface``); a point
cloud is used as given, reduced to a seeded subset when it has more points than the protocol's
count. Seeds: the GT is sampled with ``seed``, the prediction with ``seed + 1`` and the GT
self-score's second sample with ``seed + 2``.

``gt_self_score`` is the sampling floor, the score of a perfect prediction:

- GT mesh: a second, independent sample of the GT mesh (the prediction's sample count) scored
  against the GT sample used above.
- GT point cloud: its points are shuffled (``seed + 2``) and split into two disjoint subsets of
  ``k = min(gt count, N // 2)`` points, scored against each other. When the GT has fewer than
  twice the protocol's count, the halves are sparser than the full cloud and the floor is an
  over-estimate (about √2 × for CD-L1 on a surface).

A failed prediction (empty mesh, zero-area mesh, no points) gets the protocol's empty-mesh values
and ``n_failed = 1``; it never raises. NaN values come out as ``None`` (JSON ``null``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from sfd_lightning.errors import InputError
from sfd_lightning.geometry.io import MESH_SUFFIXES, Mesh, PointCloud, load_points_or_mesh, sample_mesh_surface
from sfd_lightning.metrics.geometry_metrics import score_point_sets
from sfd_lightning.metrics.protocols import Protocol, get_protocol
from sfd_lightning.metrics.volume import mesh_volume_iou

Geometry = Mesh | PointCloud
UNITS = ("data-frame units; *_cd_l2/cd_l2/deepsdf_cd are squared distances; a key ending in "
         "_x1eK is multiplied by 10^K (see 'scale'); nc, fscore, precision, recall, iou unitless")


def _empty_mesh() -> Mesh:
    return Mesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))


def _file_has_no_geometry(path: Path) -> bool:
    """True for a readable mesh file with zero vertices (what an extractor writes for no surface)."""
    if path.suffix.lower() not in MESH_SUFFIXES or not path.is_file():
        return False
    import trimesh

    try:
        loaded = trimesh.load(str(path), process=False)
    except Exception:
        return False
    if isinstance(loaded, trimesh.Scene):
        return len(loaded.geometry) == 0 or all(len(getattr(g, "vertices", ())) == 0 for g in loaded.geometry.values())
    return len(getattr(loaded, "vertices", ())) == 0


def load_geometry(source: str | Path | Geometry, role: str) -> Geometry:
    """A :class:`Mesh` or :class:`PointCloud` from a path or an object.

    ``role="pred"`` accepts an empty mesh file (returned as an empty :class:`Mesh`); for
    ``role="gt"`` it is an :class:`InputError`.
    """
    if isinstance(source, (Mesh, PointCloud)):
        return source
    path = Path(source)
    try:
        return load_points_or_mesh(path)
    except InputError:
        if role == "pred" and _file_has_no_geometry(path):
            return _empty_mesh()
        raise


def sample_geometry(geometry: Geometry, count: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Points ``(n, 3)`` and normals ``(n, 3)`` or ``None``: mesh -> ``count`` area-uniform samples
    with face normals; point cloud -> all points if ``<= count``, else a seeded subset of ``count``.

    Raises:
        InputError: zero-area mesh (``sample_mesh_surface``).
    """
    if isinstance(geometry, Mesh):
        return sample_mesh_surface(geometry, count, seed=seed)
    points = np.asarray(geometry.points, dtype=np.float64)
    normals = None if geometry.normals is None else np.asarray(geometry.normals, dtype=np.float64)
    if len(points) > count:
        keep = np.random.default_rng(seed).choice(len(points), size=count, replace=False)
        points = points[keep]
        normals = None if normals is None else normals[keep]
    return points, normals


def _json_value(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _json_dict(values: dict[str, float]) -> dict[str, float | None]:
    return {key: _json_value(value) for key, value in values.items()}


def _self_score(protocol: Protocol, gt: Geometry, gt_points: np.ndarray, gt_normals: np.ndarray | None,
                pred_count: int, gt_count: int, seed: int, backend: str) -> dict:
    if isinstance(gt, Mesh):
        other_points, other_normals = sample_mesh_surface(gt, pred_count, seed=seed + 2)
        values = score_point_sets(protocol, other_points, gt_points, other_normals, gt_normals, backend)
        method = f"two independent area-uniform samples of the GT mesh (seeds {seed + 2} and {seed})"
        sizes = {"pred": len(other_points), "gt": len(gt_points)}
    else:
        points = np.asarray(gt.points, dtype=np.float64)
        normals = None if gt.normals is None else np.asarray(gt.normals, dtype=np.float64)
        half = min(gt_count, len(points) // 2)
        order = np.random.default_rng(seed + 2).permutation(len(points))
        first, second = order[:half], order[half:2 * half]
        values = score_point_sets(protocol, points[first], points[second],
                                  None if normals is None else normals[first],
                                  None if normals is None else normals[second], backend)
        method = f"two disjoint seeded subsets of the GT point cloud ({half} points each, seed {seed + 2})"
        sizes = {"pred": half, "gt": half}
    return {"metrics": _json_dict(values), "samples": sizes, "method": method}


def evaluate(pred: str | Path | Geometry, gt: str | Path | Geometry, protocol: str | Protocol = "neuralpull",
             samples: int | None = None, seed: int | None = None, backend: str = "auto") -> dict:
    """Score a prediction against ground truth under ``protocol``.

    Args:
        pred: predicted mesh or point cloud (path, :class:`Mesh` or :class:`PointCloud`).
        gt: ground-truth mesh or point cloud.
        protocol: protocol name/alias (:func:`get_protocol`) or a :class:`Protocol`.
        samples: override of both sample counts (``None``: the protocol's).
        seed: sampling seed (``None``: the protocol's, 0).
        backend: nearest-neighbour backend.

    Returns:
        A JSON-serialisable dict: ``protocol``, ``version``, ``description``, ``metrics`` (values at
        the reported scale, plus ``n_failed``), ``scale``, ``units``, ``samples``, ``seed``,
        ``gt_self_score``, ``skipped`` (metrics that could not be computed, with the reason) and
        ``notes`` (warnings, e.g. a GT outside the protocol's IoU box).

    Raises:
        InputError: unknown protocol, unreadable files, empty ground truth, bad ``samples``.
    """
    proto = get_protocol(protocol)
    seed = proto.seed if seed is None else int(seed)
    if samples is not None and int(samples) < 1:
        raise InputError(None, f"--samples must be a positive count, got {samples}", "pass e.g. --samples 100000")
    pred_count = proto.pred_samples if samples is None else int(samples)
    gt_count = proto.gt_samples if samples is None else int(samples)
    gt_geometry = load_geometry(gt, "gt")
    pred_geometry = load_geometry(pred, "pred")
    gt_name = gt if isinstance(gt, (str, Path)) else None
    if (isinstance(gt_geometry, Mesh) and gt_geometry.is_empty) or (
            isinstance(gt_geometry, PointCloud) and len(gt_geometry.points) == 0):
        raise InputError(gt_name, "ground truth is empty", "give a non-empty GT mesh or point cloud")
    try:
        gt_points, gt_normals = sample_geometry(gt_geometry, gt_count, seed)
    except InputError as exc:
        raise InputError(gt_name, exc.problem, exc.fix) from None

    failed = isinstance(pred_geometry, Mesh) and pred_geometry.is_empty
    pred_points, pred_normals = np.zeros((0, 3)), None
    if not failed:
        try:
            pred_points, pred_normals = sample_geometry(pred_geometry, pred_count, seed + 1)
        except InputError:  # zero-area mesh: nothing to sample, a failed reconstruction
            failed = True
    failed = failed or len(pred_points) == 0
    if failed:
        pred_points, pred_normals = np.zeros((0, 3)), None
    values = score_point_sets(proto, pred_points, gt_points, pred_normals, gt_normals, backend)

    skipped: dict[str, str] = {}
    notes: list[str] = []
    if proto.nc_key and proto.nc_key not in values:
        skipped[proto.nc_key] = "needs normals on both sides (point clouds without normals have none)"
    if proto.iou_key:
        both_meshes = isinstance(pred_geometry, Mesh) and isinstance(gt_geometry, Mesh)
        if failed and isinstance(gt_geometry, Mesh):
            values[proto.iou_key] = proto.worst_values()[proto.iou_key]
        elif both_meshes:
            values[proto.iou_key] = mesh_volume_iou(pred_geometry, gt_geometry, proto.iou_points, proto.iou_box, seed)
            if proto.iou_box is not None and np.abs(gt_geometry.vertices).max() > proto.iou_box:
                notes.append(f"the GT mesh extends beyond the {proto.iou_key} box [-{proto.iou_box:g}, "
                             f"{proto.iou_box:g}]^3: this protocol expects the unit-cube frame")
        else:
            skipped[proto.iou_key] = "containment needs a mesh for both prediction and ground truth"
    values["n_failed"] = int(failed)

    return {
        "protocol": proto.name,
        "version": proto.version,
        "description": proto.description,
        "metrics": {k: (v if k == "n_failed" else _json_value(v)) for k, v in values.items()},
        "scale": proto.scales(),
        "units": UNITS,
        "samples": {"pred": int(len(pred_points)), "gt": int(len(gt_points)),
                    "pred_source": "empty" if failed else type(pred_geometry).__name__.lower(),
                    "gt_source": type(gt_geometry).__name__.lower(),
                    "iou_points": proto.iou_points if proto.iou_key and proto.iou_key not in skipped else 0},
        "seed": seed,
        "gt_self_score": _self_score(proto, gt_geometry, gt_points, gt_normals, pred_count, gt_count, seed, backend),
        "skipped": skipped,
        "notes": notes,
    }
