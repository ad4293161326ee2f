"""``torchmetrics.Metric`` wrappers that are safe under DDP evaluation padding.

``DistributedSampler`` pads the test set by repeating objects, so a plain running mean counts
some objects twice (methods/lightning.md §5). These metrics keep **per-object** states in
fixed-capacity tensors indexed by object id — value sums, value counts, a seen counter and a
failure counter, all with ``dist_reduce_fx="sum"`` — and ``compute()`` first divides each
object's sums by its own count (a duplicate evaluation of object ``i`` collapses onto one row)
and only then averages over the objects that were seen. Object ids must lie in
``[0, capacity)``.

Usage in a LightningModule::

    self.chamfer = ChamferMetric("neuralpull")
    ...
    self.chamfer.update(pred_points, gt_points, pred_normals, gt_normals, object_id=int(idx))
    self.log_dict(self.chamfer.compute())   # in on_test_epoch_end
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from sfd_lightning.metrics.geometry_metrics import score_point_sets
from sfd_lightning.metrics.protocols import Protocol, get_protocol
from sfd_lightning.metrics.volume import occupancy_iou

ArrayLike = Tensor | np.ndarray


def _numpy(values: ArrayLike | None) -> np.ndarray | None:
    if values is None:
        return None
    if isinstance(values, Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


class PerObjectMetric(Metric):
    """Base class: per-object value sums/counts keyed by object id (see module docstring).

    Args:
        keys: names of the per-object values.
        capacity: number of object ids the states can hold (ids ``0 .. capacity - 1``).
        aggregate: ``"mean"`` (mean over objects) or ``"mean_median"`` (``<key>_mean`` and
            ``<key>_median``, both NaN-ignoring).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, keys: list[str], capacity: int = 16_384, aggregate: str = "mean", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if aggregate not in ("mean", "mean_median"):
            raise ValueError(f"aggregate must be 'mean' or 'mean_median', got '{aggregate}'")
        self.keys = list(keys)
        self.capacity = int(capacity)
        self.aggregate = aggregate
        width = len(self.keys)
        self.add_state("value_sum", torch.zeros(self.capacity, width, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("value_count", torch.zeros(self.capacity, width, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("seen", torch.zeros(self.capacity, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("failed", torch.zeros(self.capacity, dtype=torch.float64), dist_reduce_fx="sum")

    def _record(self, object_id: int | Tensor, values: dict[str, float], failed: bool) -> None:
        """Add one evaluation of ``object_id`` (missing or NaN values are not counted)."""
        oid = int(object_id)
        if not 0 <= oid < self.capacity:
            raise ValueError(f"object_id {oid} outside [0, {self.capacity}): pass a larger capacity= "
                             "to the metric or use dataset indices as ids")
        row = torch.tensor([float(values.get(key, float("nan"))) for key in self.keys],
                           dtype=torch.float64, device=self.value_sum.device)
        valid = ~torch.isnan(row)
        self.value_sum[oid] += torch.where(valid, row, torch.zeros_like(row))
        self.value_count[oid] += valid.to(torch.float64)
        self.seen[oid] += 1.0
        self.failed[oid] += float(bool(failed))

    def per_object(self) -> dict[int, dict[str, float]]:
        """``{object_id: {key: value}}`` for every seen object (duplicates collapsed)."""
        values = self.value_sum / self.value_count  # NaN where an object has no value for a key
        result = {}
        for oid in torch.nonzero(self.seen > 0).flatten().tolist():
            row = {key: float(values[oid, k]) for k, key in enumerate(self.keys)}
            row["failed"] = float(self.failed[oid] > 0)
            result[oid] = row
        return result

    def compute(self) -> dict[str, Tensor]:
        """Means (and medians) over seen objects, plus ``n_objects`` and ``n_failed``."""
        seen = self.seen > 0
        values = (self.value_sum / self.value_count)[seen]  # (n_objects, K)
        out: dict[str, Tensor] = {}
        for k, key in enumerate(self.keys):
            column = values[:, k]
            if bool(torch.isnan(column).all()):
                continue  # never computed (e.g. NC without normals)
            if self.aggregate == "mean_median":
                out[f"{key}_mean"] = torch.nanmean(column)
                out[f"{key}_median"] = torch.nanmedian(column)
            else:
                out[key] = torch.nanmean(column)
        out["n_objects"] = seen.sum().to(torch.float64)
        out["n_failed"] = (self.failed[seen] > 0).sum().to(torch.float64)
        return out


class ChamferMetric(PerObjectMetric):
    """Chamfer numbers, normal consistency and F-scores of a :class:`Protocol`, per object.

    ``update`` takes already-sampled point sets (the caller samples meshes with the protocol's
    counts); an empty ``pred_points`` is a failed object and gets the protocol's empty-mesh values.
    """

    def __init__(self, protocol: str | Protocol = "neuralpull", capacity: int = 16_384,
                 backend: str = "auto", **kwargs: Any) -> None:
        self.protocol = get_protocol(protocol)
        self.backend = backend
        super().__init__(self.protocol.metric_keys(with_normals=True), capacity, self.protocol.aggregate, **kwargs)

    def update(self, pred_points: ArrayLike, gt_points: ArrayLike, pred_normals: ArrayLike | None = None,
               gt_normals: ArrayLike | None = None, object_id: int | Tensor = 0) -> None:
        """Score one object: ``pred_points (N, 3)``, ``gt_points (M, 3)``, optional normals."""
        pred = _numpy(pred_points).reshape(-1, 3)
        values = score_point_sets(self.protocol, pred, _numpy(gt_points).reshape(-1, 3),
                                  _numpy(pred_normals), _numpy(gt_normals), self.backend)
        self._record(object_id, values, failed=len(pred) == 0)


class VolumeIoUMetric(PerObjectMetric):
    """Per-object volume IoU from occupancies at shared query points, averaged over objects."""

    def __init__(self, key: str = "iou", capacity: int = 16_384, **kwargs: Any) -> None:
        super().__init__([key], capacity, "mean", **kwargs)

    def update(self, pred_occupancy: ArrayLike, gt_occupancy: ArrayLike, object_id: int | Tensor = 0,
               failed: bool = False) -> None:
        """``pred_occupancy``/``gt_occupancy``: boolean ``(N,)`` at the same points; ``failed``:
        no prediction (IoU 0, counted in ``n_failed``)."""
        iou = 0.0 if failed else occupancy_iou(_numpy(pred_occupancy) > 0.5, _numpy(gt_occupancy) > 0.5)
        self._record(object_id, {self.keys[0]: iou}, failed=failed)
