"""Pure point-set metrics: accuracy/completeness distances, Chamfer variants, NC, F-score.

Notation (methods/evaluation.md): for predicted points X and GT points Y,
``acc_i`` = distance from x_i to its nearest neighbour in Y (pred -> GT), ``comp_j`` = distance
from y_j to X (GT -> pred); Euclidean, unsquared. Everything here works on numpy arrays and
returns python floats; :func:`score_point_sets` applies a :class:`Protocol`'s formulas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sfd_lightning.metrics.neighbors import nearest_neighbors
from sfd_lightning.metrics.protocols import Protocol


@dataclass
class SurfaceDistances:
    """Per-point nearest distances between a prediction and the ground truth.

    Attributes:
        accuracy: ``(N_pred,)`` pred -> GT distances.
        completeness: ``(N_gt,)`` GT -> pred distances.
        normal_accuracy: ``(N_pred,)`` |n_pred · n_gt(match)|, or ``None`` without normals.
        normal_completeness: ``(N_gt,)`` |n_gt · n_pred(match)|, or ``None``.
    """

    accuracy: np.ndarray
    completeness: np.ndarray
    normal_accuracy: np.ndarray | None = None
    normal_completeness: np.ndarray | None = None


def _unit(normals: np.ndarray) -> np.ndarray:
    normals = np.asarray(normals, dtype=np.float64)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def surface_distances(pred_points: np.ndarray, gt_points: np.ndarray,
                      pred_normals: np.ndarray | None = None, gt_normals: np.ndarray | None = None,
                      backend: str = "auto") -> SurfaceDistances:
    """Nearest-neighbour distances both ways (and absolute normal dots when both have normals).

    Args:
        pred_points: ``(N, 3)``; gt_points: ``(M, 3)``; normals ``(N, 3)`` / ``(M, 3)`` or ``None``
            (need not be unit length).
        backend: nearest-neighbour backend (:func:`nearest_neighbors`).
    """
    pred_points = np.asarray(pred_points, dtype=np.float64)
    gt_points = np.asarray(gt_points, dtype=np.float64)
    accuracy, acc_index = nearest_neighbors(pred_points, gt_points, backend)
    completeness, comp_index = nearest_neighbors(gt_points, pred_points, backend)
    result = SurfaceDistances(accuracy, completeness)
    if pred_normals is not None and gt_normals is not None and len(pred_points) and len(gt_points):
        n_pred, n_gt = _unit(pred_normals), _unit(gt_normals)
        result.normal_accuracy = np.abs(np.einsum("ij,ij->i", n_pred, n_gt[acc_index]))
        result.normal_completeness = np.abs(np.einsum("ij,ij->i", n_gt, n_pred[comp_index]))
    return result


def chamfer_formula(distances: SurfaceDistances, formula: str) -> float:
    """One Chamfer-type number from per-point distances.

    Formulas: ``cd_l1_half`` ½(mean acc + mean comp); ``cd_l2_half`` ½(mean acc² + mean comp²);
    ``cd_l2_sum`` mean acc² + mean comp² (DeepSDF, pytorch3d); ``accuracy`` mean acc;
    ``completeness`` mean comp.
    """
    acc, comp = distances.accuracy, distances.completeness
    if formula == "cd_l1_half":
        return 0.5 * (float(acc.mean()) + float(comp.mean()))
    if formula == "cd_l2_half":
        return 0.5 * (float(np.mean(acc**2)) + float(np.mean(comp**2)))
    if formula == "cd_l2_sum":
        return float(np.mean(acc**2)) + float(np.mean(comp**2))
    if formula == "accuracy":
        return float(acc.mean())
    if formula == "completeness":
        return float(comp.mean())
    raise ValueError(f"unknown Chamfer formula '{formula}'")


def normal_consistency(distances: SurfaceDistances) -> float:
    """½(mean |n·n| at pred->GT matches + mean at GT->pred matches); NaN without normals."""
    if distances.normal_accuracy is None or distances.normal_completeness is None:
        return math.nan
    return 0.5 * (float(distances.normal_accuracy.mean()) + float(distances.normal_completeness.mean()))


def fscore(distances: SurfaceDistances, tau: float, eps: float = 0.0) -> tuple[float, float, float]:
    """Precision, recall and F-score at absolute threshold ``tau``.

    P = fraction of acc ≤ τ, R = fraction of comp ≤ τ, F = 2PR / (P + R + eps) (0 when P + R = 0).
    """
    precision = float(np.mean(distances.accuracy <= tau))
    recall = float(np.mean(distances.completeness <= tau))
    denominator = precision + recall + eps
    return precision, recall, (2.0 * precision * recall / denominator) if denominator > 0 else 0.0


def score_point_sets(protocol: Protocol, pred_points: np.ndarray, gt_points: np.ndarray,
                     pred_normals: np.ndarray | None = None, gt_normals: np.ndarray | None = None,
                     backend: str = "auto") -> dict[str, float]:
    """All point-set numbers of ``protocol`` (reported scale, IoU excluded) for one object.

    An empty prediction (``N_pred == 0``) gets :meth:`Protocol.worst_values` (NC included when the
    GT has normals). Otherwise NC is left out when either side lacks normals.

    Returns:
        ``{key: value}`` with the protocol's keys (see :mod:`sfd_lightning.metrics.protocols`).
    """
    if len(pred_points) == 0:
        worst = protocol.worst_values()
        return {key: worst[key] for key in protocol.metric_keys(gt_normals is not None)}
    with_normals = pred_normals is not None and gt_normals is not None
    distances = surface_distances(pred_points, gt_points, pred_normals, gt_normals, backend)
    values = {spec.key: chamfer_formula(distances, spec.formula) * spec.scale for spec in protocol.chamfer}
    if protocol.nc_key and with_normals:
        values[protocol.nc_key] = normal_consistency(distances)
    for tau in protocol.fscore_thresholds:
        precision, recall, f = fscore(distances, tau, protocol.fscore_eps)
        values[protocol.fscore_name("fscore", tau)] = f
        values[protocol.fscore_name("precision", tau)] = precision
        values[protocol.fscore_name("recall", tau)] = recall
    return values
