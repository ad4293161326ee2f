"""Evaluation metrics: named, versioned protocols (methods/evaluation.md, CONTRACTS.md §4).

- :func:`evaluate` scores one prediction against its ground truth and returns one JSON-ready dict.
- :mod:`.protocols`: the frozen :class:`Protocol` presets and :func:`get_protocol`.
- :mod:`.geometry_metrics`: pure Chamfer / NC / F-score functions on point sets.
- :mod:`.volume`: IoU by winding-number containment, or from an SDF vs GT occupancy.
- :mod:`.neighbors`: nearest neighbours (pykdtree, cKDTree, chunked torch).
- :mod:`.torchmetrics_api`: DDP-padding-safe ``torchmetrics.Metric`` classes (imported lazily:
  torchmetrics costs ~1 s, which ``sfd evaluate`` does not need).
"""

from sfd_lightning.metrics.evaluate import evaluate, load_geometry, sample_geometry
from sfd_lightning.metrics.geometry_metrics import (
    SurfaceDistances,
    chamfer_formula,
    fscore,
    normal_consistency,
    score_point_sets,
    surface_distances,
)
from sfd_lightning.metrics.neighbors import nearest_neighbors
from sfd_lightning.metrics.protocols import PROTOCOLS, MetricSpec, Protocol, get_protocol, register_protocol
from sfd_lightning.metrics.volume import (
    mesh_contains,
    mesh_volume_iou,
    occupancy_iou,
    sdf_iou,
    sdf_occupancy,
    uniform_box_points,
    unpack_occupancy,
)

__all__ = [
    "PROTOCOLS", "ChamferMetric", "MetricSpec", "PerObjectMetric", "Protocol", "SurfaceDistances",
    "VolumeIoUMetric", "chamfer_formula", "evaluate", "fscore", "get_protocol", "load_geometry",
    "mesh_contains", "mesh_volume_iou", "nearest_neighbors", "normal_consistency", "occupancy_iou",
    "register_protocol", "sample_geometry", "score_point_sets", "sdf_iou", "sdf_occupancy",
    "surface_distances", "uniform_box_points", "unpack_occupancy",
]

_LAZY = {"ChamferMetric", "PerObjectMetric", "VolumeIoUMetric"}


def __getattr__(name: str):
    if name in _LAZY:
        from sfd_lightning.metrics import torchmetrics_api

        return getattr(torchmetrics_api, name)
    raise AttributeError(f"module 'sfd_lightning.metrics' has no attribute '{name}'")
