"""Shared pieces of the two LIST stages: losses, batch helpers, evaluation under ``list``.

Loss reductions (methods/list.md §4):

* CoarseNet: ``1000 · mean_batch(mean_i min_j ‖p_i − g_j‖² + mean_j min_i ‖p_i − g_j‖²)``.
* LIST: ``L_sdf = mean_batch Σ_points (s·sdf_gt − pred)²`` (``s`` = sdf_scale, 10) and
  ``L_occ = 1000·(−0.9·mean(y·log(p + 1e-8)) − 0.1·mean((1 − y)·log(1 − p + 1e-8)))`` over all
  ``B·R³`` voxels.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sfd_lightning.geometry.io import Mesh, atomic_write
from sfd_lightning.geometry.surface import SurfaceHandle

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- losses


def squared_distances_to_nearest(query: Tensor, reference: Tensor, chunk: int = 1024) -> Tensor:
    """``min_j ‖q_i − r_j‖²`` for ``query (B, N, 3)``, ``reference (B, M, 3)`` -> ``(B, N)`` (brute
    force in plain torch, chunked over N; differentiable)."""
    out = []
    for start in range(0, query.shape[1], chunk):
        block = query[:, start:start + chunk]
        if reference.shape[1] * block.shape[1] < 65536:  # exact differences for small sets
            d2 = (block.unsqueeze(2) - reference.unsqueeze(1)).pow(2).sum(-1)
        else:
            d2 = torch.cdist(block, reference).pow(2)
        out.append(d2.min(dim=2).values)
    return torch.cat(out, dim=1)


def chamfer_squared(pred: Tensor, gt: Tensor) -> Tensor:
    """Per-item ``mean acc² + mean comp²`` ``(B,)`` (pytorch3d's default Chamfer, directions summed)."""
    pred, gt = pred.float(), gt.float()
    return squared_distances_to_nearest(pred, gt).mean(1) + squared_distances_to_nearest(gt, pred).mean(1)


def coarse_loss(pred: Tensor, gt: Tensor, weight: float = 1000.0) -> Tensor:
    """CoarseNet loss: ``weight · mean_batch(chamfer_squared)``."""
    return weight * chamfer_squared(pred, gt).mean()


def sdf_loss(pred: Tensor, target: Tensor, sdf_scale: float = 10.0) -> Tensor:
    """``mean_batch Σ_points (sdf_scale·target − pred)²``; ``pred, target (B, N)``."""
    return (sdf_scale * target.float() - pred.float()).pow(2).sum(dim=1).mean()


def occupancy_loss(prob: Tensor, target: Tensor, pos_weight: float = 0.9, neg_weight: float = 0.1,
                   scale: float = 1000.0, eps: float = 1e-8) -> Tensor:
    """Weighted BCE over all voxels (means over ``B·R³``): ``prob``, ``target`` ``(B, 1, R, R, R)``."""
    prob, target = prob.float(), target.float()
    pos = (target * torch.log(prob + eps)).mean()
    neg = ((1.0 - target) * torch.log(1.0 - prob + eps)).mean()
    return scale * (-pos_weight * pos - neg_weight * neg)


# ----------------------------------------------------------------------------- batches


def coarse_target(batch: dict[str, Any]) -> Tensor:
    """GT cloud of the coarse stage: ``fps_points`` (ShapeNet) or ``coarse_points`` (Pix3D)."""
    for key in ("fps_points", "coarse_points"):
        if key in batch:
            return batch[key]
    raise KeyError("batch has neither 'fps_points' nor 'coarse_points'")


def item_names(batch: dict[str, Any]) -> list[str]:
    """Stable per-item names: ``name`` (image folders), ``synset_instance_view`` (ShapeNet) or
    ``category_index`` (Pix3D)."""
    size = len(batch["image"])
    if "name" in batch:
        return [str(n) for n in batch["name"]]
    if "synset" in batch and "instance" in batch:
        views = batch.get("view", torch.zeros(size, dtype=torch.long))
        return [f"{s}_{i}_{int(v):02d}" for s, i, v in zip(batch["synset"], batch["instance"], views)]
    if "category" in batch:
        return [f"{c}_{int(i)}" for c, i in zip(batch["category"], batch["index"])]
    return [f"item_{int(i)}" for i in batch.get("index", torch.arange(size))]


def normalize_images(image: Tensor, imagenet: bool) -> Tensor:
    """LIST's ``--normalize`` is an identity (faithful default); ``imagenet`` applies ImageNet stats."""
    if not imagenet:
        return image
    mean = torch.tensor(IMAGENET_MEAN, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    return (image - mean) / std


def save_points(path: str | Path, points: np.ndarray) -> Path:
    """Write a point cloud ``(N, 3)`` as PLY (atomically)."""
    import trimesh

    cloud = trimesh.PointCloud(np.asarray(points, dtype=np.float64))
    return atomic_write(Path(path), lambda tmp: cloud.export(str(tmp), file_type="ply"))


# ----------------------------------------------------------------------------- surfaces


def ball_union_surface(points: Tensor, radius: float | None = None, chunk: int = 16384) -> SurfaceHandle:
    """Points ``(P, 3)`` turned into a surface: SDF of the union of balls ``min_i ‖x − p_i‖ − r``.

    ``radius`` defaults to the mean nearest-neighbour spacing of the cloud (the baseline "coarse
    points as a surface" of the quality floor). Box: [−0.5, 0.5]³.
    """
    points = points.detach().float()
    if radius is None:
        spacing = torch.cdist(points, points)
        spacing.fill_diagonal_(float("inf"))
        radius = float(spacing.min(dim=1).values.mean())

    def sdf(query: Tensor) -> Tensor:
        out = [torch.cdist(query[s:s + chunk].float(), points.to(query.device)).min(dim=1).values - radius
               for s in range(0, len(query), chunk)]
        return torch.cat(out)

    lo = torch.full((3,), -0.5)
    return SurfaceHandle(sdf=sdf, bbox=(lo, -lo))


def legacy_vertex_norm(mesh: Mesh, resolution: int) -> Mesh:
    """The original vertex mapping (spec §6 switch): index-space ``v`` -> ``(v − min v)/max v − 0.5``
    with global scalars (skipped for ≤ 10 vertices)."""
    if len(mesh.vertices) <= 10:
        return mesh
    index = (mesh.vertices + 0.5) * (resolution - 1)
    mapped = (index - index.min()) / index.max() - 0.5
    return Mesh(mapped, mesh.faces, mesh.vertex_colors)


# ----------------------------------------------------------------------------- evaluation


class ListEvaluationMixin:
    """Per-object ``list`` protocol scores in test, means over all objects, ``metrics.json``.

    Needs hparams ``protocol``, ``test_samples`` (None = protocol's 100k), ``test_iou_points``
    (None = protocol's 1M), ``save_test_meshes``; the system implements :meth:`prediction(name,
    index, batch)` returning a :class:`Mesh` or points ``(N, 3)``.
    """

    def _protocol(self):
        from sfd_lightning.metrics.protocols import get_protocol

        proto = get_protocol(self.hparams.protocol)
        changes = {}
        if self.hparams.test_samples is not None:
            changes.update(pred_samples=int(self.hparams.test_samples), gt_samples=int(self.hparams.test_samples))
        if self.hparams.test_iou_points is not None and proto.iou_key:
            changes.update(iou_points=int(self.hparams.test_iou_points))
        return dataclasses.replace(proto, **changes) if changes else proto

    def on_test_epoch_start(self) -> None:
        self._test_records: list[dict[str, Any]] = []

    def score_item(self, prediction: Mesh | np.ndarray, gt_path: str, name: str) -> dict[str, Any]:
        from sfd_lightning.geometry.io import PointCloud
        from sfd_lightning.metrics.evaluate import evaluate

        pred = prediction if isinstance(prediction, Mesh) else PointCloud(np.asarray(prediction, np.float32))
        result = evaluate(pred, gt_path, self._protocol(), seed=0)
        record = {"name": name, "gt": str(gt_path), **result["metrics"]}
        self._test_records.append(record)
        return result

    def on_test_epoch_end(self) -> None:
        records = getattr(self, "_test_records", [])
        if not records:
            return
        proto = self._protocol()
        keys = [k for k in records[0] if k not in ("name", "gt", "n_failed")]
        means: dict[str, float] = {}
        for key in keys:
            values = [r[key] for r in records if r.get(key) is not None]
            if values:
                means[key] = float(np.mean(values))
                self.log(f"test/{key}", means[key], batch_size=len(records))
        n_failed = int(sum(r.get("n_failed", 0) for r in records))
        self.log("test/n_failed", float(n_failed), batch_size=len(records))
        if self.trainer.is_global_zero:
            path = self.write_results({
                "protocol": proto.name, "version": proto.version, "description": proto.description,
                "samples": {"pred": proto.pred_samples, "gt": proto.gt_samples, "iou_points": proto.iou_points},
                "scale": proto.scales(), "n_objects": len(records), "n_failed": n_failed,
                "aggregate": "mean over all objects (failed = protocol worst case)",
                "metrics": means, "per_object": records})
            print(f"metrics: {path}")
