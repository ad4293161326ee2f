"""Pix3D DataModule (LIST's Pix3D setting): bbox crops, masks, models and LIST sample files.

``root=None`` uses a small synthetic tree (:data:`DEFAULT_SYNTHETIC`, written by
``sfd_lightning.synthetic.writers.pix3d.write_pix3d`` and cached). Paths and cameras:
:mod:`~sfd_lightning.datamodules.pix3d_files`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from sfd_lightning.datamodules.base import ensure_synthetic
from sfd_lightning.datamodules.pix3d_files import (Pix3DLayout, pix3d_camera, read_crop_npy, read_mask,
                                                   read_pix3d_json, read_total3d_split)
from sfd_lightning.datamodules.shapenet_datasets import draw_queries, load_query_pools, query_counts
from sfd_lightning.datamodules.shapenet_files import read_image
from sfd_lightning.datamodules.tree_base import TreeDataModule
from sfd_lightning.errors import InputError

#: Default synthetic Pix3D tree: 3 categories x 2 models, 4 photos each at 128 px.
DEFAULT_SYNTHETIC: dict[str, Any] = {
    "categories": ["chair", "sofa", "table"], "models": 2, "images": 4, "image_size": 128,
    "list_points": 4096, "test_fraction": 0.25, "seed": 0, "mesh_resolution": 64,
}


def default_pix3d_root(overrides: dict[str, Any] | None = None) -> Path:
    """Root of the cached synthetic Pix3D tree (generated on first use)."""
    params = {**DEFAULT_SYNTHETIC, **(overrides or {})}
    unknown = set(params) - set(DEFAULT_SYNTHETIC)
    if unknown:
        raise InputError(None, f"unknown synthetic options {sorted(unknown)}", f"use {sorted(DEFAULT_SYNTHETIC)}")

    def generate(tmp: Path) -> None:
        from sfd_lightning.synthetic.writers.pix3d import write_pix3d

        write_pix3d(tmp, **params)

    return ensure_synthetic("pix3d", params, generate)


def crop_resize(image: np.ndarray, bbox: Sequence[float], size: int, nearest: bool = False) -> np.ndarray:
    """Crop ``(H, W, C)`` to ``bbox`` [x0, y0, x1, y1] (inclusive, clipped) and resize to ``size x size``
    ignoring the aspect ratio (LIST's ``Resize((224, 224))``)."""
    import cv2

    height, width = image.shape[:2]
    x0, y0 = max(int(np.floor(bbox[0])), 0), max(int(np.floor(bbox[1])), 0)
    x1, y1 = min(int(np.ceil(bbox[2])), width - 1), min(int(np.ceil(bbox[3])), height - 1)
    crop = np.ascontiguousarray(image[y0:y1 + 1, x0:x1 + 1])
    out = cv2.resize(crop, (size, size), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)
    return out.reshape(size, size, -1)


def crop_intrinsics(K: np.ndarray, bbox: Sequence[float], size: int) -> np.ndarray:
    """``K (3, 3)`` of the ``size x size`` crop of ``bbox`` (pixel centres at integers)."""
    x0, y0, x1, y1 = (float(v) for v in bbox)
    sx, sy = size / (x1 - x0 + 1), size / (y1 - y0 + 1)
    scale = np.array([[sx, 0, sx * (0.5 - x0) - 0.5], [0, sy, sy * (0.5 - y0) - 0.5], [0, 0, 1]])
    return scale @ K


class Pix3DSamples(Dataset):
    """One Pix3D annotation per item.

    Item (dict): ``image`` float32 ``(3, S, S)`` in [0, 1] (bbox crop of the photo, or the LIST
    ``.npy`` crop); ``mask`` float32 ``(1, S, S)`` (same crop, nearest); ``points`` float32
    ``(N, 3)`` / ``values`` float32 ``(N,)`` σ-level queries (as ShapeNet LIST, frame [−0.5, 0.5]³);
    ``coarse_points`` float32 ``(P, 3)``: ``grid_points`` drawn with replacement (LIST's coarse GT);
    ``K``, ``K_crop`` float32 ``(3, 3)``, ``R`` ``(3, 3)``, ``t`` ``(3,)`` OpenCV model->camera;
    ``bbox`` float32 ``(4,)``; ``index`` int64 (row of ``pix3d.json``); ``category``, ``model`` str; ``mesh_path`` str (GT
    ``isosurf_scaled.obj``, for evaluation).
    """

    def __init__(self, root: str | Path, entries: list[dict], indices: Sequence[int], image_size: int = 224,
                 sample_point_density: int = 32768, sigma_fractions: Sequence[float] = (0.5, 0.49, 0.01),
                 coarse_points: int = 4096, use_npy_crops: bool = False, load_queries: bool = True) -> None:
        self.layout = Pix3DLayout(Path(root))
        self.entries, self.indices = entries, list(indices)
        self.image_size, self.coarse_points = int(image_size), int(coarse_points)
        self.fractions, self.density = [float(f) for f in sigma_fractions], int(sample_point_density)
        self.use_npy_crops, self.load_queries = use_npy_crops, load_queries
        self._cache: dict[str, tuple[torch.Tensor, list[torch.Tensor]]] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def _samples(self, entry: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        key = entry["model"]
        if key not in self._cache:
            grid, pools = load_query_pools(self.layout.sampled_points(entry), self.fractions)
            self._cache[key] = (torch.from_numpy(grid.astype(np.float32)), pools)
        return self._cache[key]

    def __getitem__(self, item: int) -> dict:
        index = self.indices[item]
        entry = self.entries[index]
        bbox = np.asarray(entry["bbox"], dtype=np.float64)
        size = self.image_size
        if self.use_npy_crops:
            crop = read_crop_npy(self.layout.crop_npy(entry)).astype(np.float32) / 255.0
            image = crop_resize(crop, [0, 0, crop.shape[1] - 1, crop.shape[0] - 1], size)
        else:
            photo = read_image(self.layout.file(entry["img"])).transpose(1, 2, 0)
            image = crop_resize(photo, bbox, size)
        mask = crop_resize(read_mask(self.layout.file(entry["mask"])).astype(np.uint8), bbox, size, nearest=True)
        cam = pix3d_camera(entry)
        out = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)),
               "mask": torch.from_numpy(mask.transpose(2, 0, 1).astype(np.float32)),
               "K": torch.from_numpy(cam.K.astype(np.float32)),
               "K_crop": torch.from_numpy(crop_intrinsics(cam.K, bbox, size).astype(np.float32)),
               "R": torch.from_numpy(cam.R.astype(np.float32)), "t": torch.from_numpy(cam.t.astype(np.float32)),
               "bbox": torch.from_numpy(bbox.astype(np.float32)), "index": torch.tensor(index, dtype=torch.int64),
               "category": entry["category"], "model": entry["model"],
               "mesh_path": str(self.layout.isosurface(entry))}
        if self.load_queries:
            grid, pools = self._samples(entry)
            out["points"], out["values"] = draw_queries(pools, query_counts(self.fractions, self.density))
            out["coarse_points"] = grid[torch.randint(len(grid), (self.coarse_points,))]
        return out


class Pix3DDataModule(TreeDataModule):
    """Pix3D (``pix3d.json`` + Total3D splits) for single-view reconstruction (LIST).

    Args:
        root: Pix3D folder; ``None`` = synthetic default (``synthetic`` overrides its options).
        categories: category names to keep (``None``: all).
        image_size: crop size S (LIST: 224); ``use_npy_crops`` reads ``data/img/...npy`` instead.
        sample_point_density, sigma_fractions: query rows per item and their split over σ levels.
        coarse_points: ``grid_points`` rows per item (LIST's CoarseNet GT: 4096).
        val_items: validation = the first ``val_items`` test items (``None``: all).
    """

    def __init__(self, root: str | None = None, categories: Sequence[str] | None = None, batch_size: int = 32,
                 eval_batch_size: int | None = None, num_workers: int = 0, image_size: int = 224,
                 sample_point_density: int = 32768, sigma_fractions: Sequence[float] = (0.5, 0.49, 0.01),
                 coarse_points: int = 4096, use_npy_crops: bool = False, val_items: int | None = 30,
                 synthetic: dict[str, Any] | None = None) -> None:
        super().__init__(root, batch_size, eval_batch_size, num_workers, synthetic)
        self.save_hyperparameters()
        self.entries: list[dict] | None = None

    def default_root(self) -> Path:
        return default_pix3d_root(self.synthetic)

    def _indices(self, kind: str) -> list[int]:
        layout = Pix3DLayout(self.root)
        path = layout.split(kind)
        indices = read_total3d_split(path)
        bad = [i for i in indices if not 0 <= i < len(self.entries)]
        if bad:
            raise InputError(path, f"indices {bad[:5]} outside pix3d.json (0..{len(self.entries) - 1})",
                             "use the split that matches this pix3d.json")
        wanted = self.hparams.categories
        return [i for i in indices if wanted is None or self.entries[i]["category"] in wanted]

    def _dataset(self, indices: list[int]) -> Pix3DSamples:
        hp = self.hparams
        return Pix3DSamples(self.root, self.entries, indices, hp.image_size, hp.sample_point_density,
                            hp.sigma_fractions, hp.coarse_points, hp.use_npy_crops)

    def setup(self, stage: str | None = None) -> None:
        if self.entries is None:
            self.entries = read_pix3d_json(Pix3DLayout(self.root).annotations)
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._dataset(self._indices("train"))
            if len(self.train_set) == 0:
                raise InputError(Pix3DLayout(self.root).split("train"), "no training images for the categories",
                                 "check `categories` and the split")
        if self.test_set is None and stage in (None, "fit", "validate", "test", "predict"):
            test = self._indices("test")
            self.test_set = self._dataset(test)
            self.val_set = self._dataset(test[:self.hparams.val_items])

    def describe(self) -> dict[str, Any]:
        return {"num_train": len(self.train_set) if self.train_set is not None else None,
                "num_test": len(self.test_set) if self.test_set is not None else None, "root": str(self.root)}
