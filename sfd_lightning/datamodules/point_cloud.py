"""PointCloudDataModule: one raw point cloud -> Neural-Pull queries and targets.

Reads ``.ply/.xyz/.npy/.npz`` point clouds (meshes ``.obj/.off/.ply`` are sampled), validates
them (NaN/inf/empty/too few points -> one-line :class:`InputError` naming the file), normalises to
the unit cube (bbox centre, longest side 1) and stores ``center``/``scale`` so that every output
is mapped back to the input's frame: ``x_original = x_normalized * scale + center``.

Training batches: ``{"queries": (B, 3), "targets": (B, 3)}`` float32 drawn uniformly from the
precomputed query set (an "epoch" is ``steps_per_epoch`` random batches; training length is
``trainer.max_steps``). Validation/test yield one item per shape: ``{"shape_index": (1,)}``; the
system extracts and scores the surface itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sfd_lightning.datamodules.base import BaseReconDataModule, ensure_synthetic, seed_worker
from sfd_lightning.datamodules.query_sampling import QuerySet, generate_queries
from sfd_lightning.errors import InputError
from sfd_lightning.geometry.io import PointCloud, load_point_cloud, load_points_or_mesh

MIN_POINTS = 64


class RandomQueryBatches(Dataset):
    """``length`` random batches of ``batch_size`` queries per epoch.

    Each draw is seeded by ``(seed, item index, number of draws so far)``: reproducible for a
    seed, new batches every epoch, and under DDP the distributed sampler gives each rank
    different item indices, hence different batches.
    """

    def __init__(self, queries: torch.Tensor, targets: torch.Tensor, batch_size: int, length: int,
                 seed: int = 0) -> None:
        self.queries, self.targets = queries, targets
        self.batch_size = min(batch_size, len(queries))
        self.length = length
        self.seed = seed
        self.draws = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        self.draws += 1
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.draws * 10_007 + index)
        pick = torch.randperm(len(self.queries), generator=generator)[: self.batch_size]
        return {"queries": self.queries[pick], "targets": self.targets[pick]}


class _SingleShape(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"shape_index": torch.tensor(index)}


class PointCloudDataModule(BaseReconDataModule):
    """One point cloud (a user's scan, or the built-in synthetic shape when ``path`` is None).

    Args:
        path: point cloud or mesh file; ``None`` -> the synthetic ``shape`` (cached).
        gt_path: optional ground-truth mesh or point cloud (original frame) for metrics.
        shape: synthetic default shape when ``path`` is None (``composite``, ``sphere``, ``torus``...).
        synthetic_points: number of points of the synthetic default cloud.
        num_points: optional seeded subsample of the input before anything else.
        query_preset: ``pytorch`` | ``tf`` | ``paper`` (neuralpull.md §2.2).
        sigma_k: σ neighbour rank (50).
        rounds: explicit ``[[rounds, std multiplier], ...]`` overriding the preset.
        max_queries: cap on the number of queries (seeded subset).
        batch_size: queries per step (5000).
        steps_per_epoch: batches per "epoch" (training length is in steps).
        normalize: map to the unit cube (store centre/scale); False keeps the input frame.
        seed: query generation and batch seed.
    """

    def __init__(self, path: str | None = None, gt_path: str | None = None, shape: str = "composite",
                 synthetic_points: int = 20_000, num_points: int | None = None,
                 query_preset: str = "pytorch", sigma_k: int = 50,
                 rounds: Sequence[Sequence[float]] | None = None, max_queries: int | None = None,
                 batch_size: int = 5000, steps_per_epoch: int = 500, normalize: bool = True,
                 seed: int = 0, num_workers: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.path = path
        self.gt_path = gt_path
        self.cloud: PointCloud | None = None
        self.query_set: QuerySet | None = None
        self.center = np.zeros(3, np.float32)
        self.scale = 1.0
        self.normalized_points: np.ndarray | None = None

    # ------------------------------------------------------------------ data sources
    def _synthetic_root(self) -> Path:
        from sfd_lightning.synthetic.writers.pointcloud import write_pointcloud

        params = {"shape": self.hparams.shape, "points": self.hparams.synthetic_points, "seed": 0}
        return ensure_synthetic("pointcloud", params, lambda tmp: write_pointcloud(tmp, **params))

    def prepare_data(self) -> None:
        if self.hparams.path is None:
            self._synthetic_root()

    def resolved_paths(self) -> tuple[Path, Path | None]:
        """``(input path, ground-truth path or None)`` after resolving the synthetic default."""
        if self.hparams.path is None:
            root = self._synthetic_root()
            gt = self.hparams.gt_path or root / "gt_mesh.ply"
            return root / "points.npy", Path(gt)
        return Path(self.hparams.path), (Path(self.hparams.gt_path) if self.hparams.gt_path else None)

    def load_ground_truth(self):
        """The ground-truth :class:`Mesh` or :class:`PointCloud` (original frame), or None."""
        _, gt = self.resolved_paths()
        return None if gt is None else load_points_or_mesh(gt)

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        path, _ = self.resolved_paths()
        if self.cloud is None:
            self._load(path)
        if stage in (None, "fit") and self.query_set is None:
            try:
                self.query_set = generate_queries(self.normalized_points, self.hparams.query_preset,
                                                  self.hparams.sigma_k, self.hparams.seed,
                                                  self.hparams.rounds, self.hparams.max_queries, path)
            except InputError:
                raise
            except ValueError as exc:
                raise InputError(path, str(exc), "use more points or another query_preset") from None

    def _load(self, path: Path) -> None:
        self.path = str(path)
        cloud = load_point_cloud(path, min_points=MIN_POINTS)
        points = cloud.points
        if self.hparams.num_points and self.hparams.num_points < len(points):
            rng = np.random.default_rng(self.hparams.seed)
            points = points[np.sort(rng.choice(len(points), self.hparams.num_points, replace=False))]
        self.cloud = PointCloud(points, None)
        if self.hparams.normalize:
            lo, hi = points.min(0), points.max(0)
            self.center = ((lo + hi) / 2).astype(np.float32)
            self.scale = float((hi - lo).max())
        self.normalized_points = ((points - self.center) / self.scale).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        info = {"path": self.path, "points": 0 if self.cloud is None else len(self.cloud.points),
                "center": self.center.tolist(), "scale": self.scale}
        if self.query_set is not None:
            info.update(self.query_set.recipe)
        return info

    def normalized_bbox(self, padding: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
        """Input bbox in the normalised frame ± ``padding`` (the Neural-Pull extraction box)."""
        assert self.normalized_points is not None, "call setup() first"
        return self.normalized_points.min(0) - padding, self.normalized_points.max(0) + padding

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        assert self.query_set is not None, "call setup('fit') first"
        dataset = RandomQueryBatches(torch.from_numpy(self.query_set.queries),
                                     torch.from_numpy(self.query_set.targets),
                                     self.hparams.batch_size, self.hparams.steps_per_epoch,
                                     self.hparams.seed)
        return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=self.hparams.num_workers,
                          worker_init_fn=seed_worker, persistent_workers=self.hparams.num_workers > 0)

    def _single(self) -> DataLoader:
        return DataLoader(_SingleShape(), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return self._single()

    def test_dataloader(self) -> DataLoader:
        return self._single()

    def predict_dataloader(self) -> DataLoader:
        return self._single()
