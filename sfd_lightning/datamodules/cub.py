"""CUB-200-2011 birds for UMR: CMR-style square crops, masks, 15 keypoints, optional SCOPS part maps.

Reads the RAW CUB files (:mod:`~sfd_lightning.datamodules.cub_annotations`; CONTRACTS §5.3) or,
when ``cmr_cache`` is given, CMR's ``data/<split>_cub_cleaned.mat``. ``root=None`` uses a small
synthetic tree in the same layout (generated once, cached; :mod:`sfd_lightning.synthetic.writers.cub`).

Per sample (methods/umr.md §2, crop math in :mod:`~sfd_lightning.datamodules.cub_crop`): box padded
by ``padding`` per side, jittered by ``jitter`` (train only), squared, cropped (white outside,
mask 0), bilinear-resized to ``image_size``, flipped with p = 0.5 (train only, ``flip``) with the
keypoint permutation. Validation and test are deterministic (no jitter, no flip, every image).

Batch (``S = image_size``):
    ``img`` float32 ``(B, 3, S, S)`` RGB in [0, 1]; ``mask`` float32 ``(B, 1, S, S)`` in [0, 1];
    ``kp`` float32 ``(B, 15, 3)`` (x, y, visible) with x, y in crop NDC (pixel centres at
    ``(2i + 1) / S - 1``, y down), invisible rows zero; ``part_prob`` float32 ``(B, 5, S, S)``
    (background, head, neck, back, belly) when ``part_maps`` is set; ``index`` int64 ``(B,)``
    (dataset index); ``image_id`` int64 ``(B,)`` (CUB id); ``crop`` float32 ``(B, 4)``
    ``(x0, y0, side, flipped)`` of the box in original 0-based pixels (``from_ndc`` inverts).

Part maps (SCOPS layout): ``<part_maps>/<class_dir>/<basename>.npy`` (or UMR's
``<basename>_<k>.npy``), ``(P, P, 5)`` float or uint8 (/255), stored on the DETERMINISTIC crop
(jitter 0) and carried to each sample's crop by one affine resampling, so image, mask and map stay
aligned. A relative ``part_maps`` path is resolved against the data root (``part_maps="part_maps"``
selects the synthetic tree's ground-truth maps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sfd_lightning.datamodules import cub_annotations as ann
from sfd_lightning.datamodules.base import BaseReconDataModule, ensure_synthetic, seed_worker
from sfd_lightning.datamodules.cub_crop import (FLIP_PERMUTATION, JITTER, PAD, crop_resize, flip_keypoints,
                                                square_box, to_ndc, warp_between_boxes)
from sfd_lightning.errors import InputError

DEFAULT_SYNTHETIC: dict[str, Any] = {"n_images": 48, "n_classes": 4, "image_size": 128, "part_map_size": 128,
                                     "seed": 0, "train_fraction": 0.5}
_PART_BORDER = np.array([1.0, 0.0, 0.0, 0.0, 0.0], dtype=np.float32)


def default_cub_root(overrides: dict[str, Any] | None = None) -> Path:
    """Root of the cached synthetic CUB tree (generated on first use, ≤ 64 photos at ≤ 128 px)."""
    params = {**DEFAULT_SYNTHETIC, **(overrides or {})}
    unknown = set(params) - set(DEFAULT_SYNTHETIC)
    if unknown:
        raise InputError(None, f"unknown synthetic options {sorted(unknown)}", f"use {sorted(DEFAULT_SYNTHETIC)}")

    def generate(tmp: Path) -> None:
        from sfd_lightning.synthetic.writers.cub import write_cub

        write_cub(tmp, **params)

    return ensure_synthetic("cub", params, generate)


def read_rgb(path: Path) -> np.ndarray:
    """RGB float32 ``(H, W, 3)`` in [0, 1] (grey photos are expanded)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(path, "image missing or unreadable", "restore the file from the dataset archive")
    return image[..., ::-1].astype(np.float32) / 255.0


def read_mask(path: Path) -> np.ndarray:
    """Soft silhouette float32 ``(H, W)`` in [0, 1] from a CUB segmentation PNG (first channel if RGB)."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise InputError(path, "segmentation missing or unreadable", "restore it from segmentations.tgz")
    if mask.ndim == 3:
        mask = mask[..., 0]
    scale = 65535.0 if mask.dtype == np.uint16 else 255.0
    return mask.astype(np.float32) / scale


class CUBDataset(Dataset):
    """Cropped CUB samples of ``records`` (see the module doc for the item dict)."""

    def __init__(self, layout: ann.CubLayout, records: list[ann.CubRecord], image_size: int,
                 padding: float = PAD, jitter: float = 0.0, flip: bool = False,
                 part_dir: Path | None = None) -> None:
        self.layout, self.records = layout, records
        self.image_size, self.padding, self.jitter, self.flip = int(image_size), padding, jitter, flip
        self.part_dir = part_dir

    def __len__(self) -> int:
        return len(self.records)

    def load_full(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Uncropped photo ``(H, W, 3)`` and mask ``(H, W)`` float32 of sample ``index``."""
        record = self.records[index]
        image_path = self.layout.image_path(record)
        image = read_rgb(image_path)
        if record.mask is not None:
            mask, mask_path = record.mask, image_path
        else:
            mask_path = self.layout.segmentation_path(record)
            mask = read_mask(mask_path)
        if mask.shape != image.shape[:2]:
            raise InputError(mask_path, f"mask is {mask.shape[1]}x{mask.shape[0]} but {image_path.name} is "
                             f"{image.shape[1]}x{image.shape[0]}", "use the segmentation of this image")
        return image, mask

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record = self.records[index]
        image, mask = self.load_full(index)
        noise = (torch.rand(4).numpy() * 2.0 - 1.0) if self.jitter > 0 else None
        box = square_box(record.bbox, self.padding, self.jitter, noise)
        size = self.image_size
        img = crop_resize(image, box, size, 1.0)
        crop_mask = crop_resize(mask, box, size, 0.0)
        visible = record.keypoints[:, 2] > 0
        kp = np.zeros((ann.NUM_KEYPOINTS, 3))
        kp[visible, :2] = to_ndc(record.keypoints[visible, :2], box)
        kp[visible, 2] = 1.0
        parts = None
        if self.part_dir is not None:
            path = ann.part_map_path(self.part_dir, record)
            if path is None:
                raise InputError(self.part_dir / Path(record.rel_path).with_suffix(".npy"), "part map not found",
                                 "write SCOPS maps for every image (or set part_maps: null)")
            deterministic = square_box(record.bbox, self.padding, 0.0)
            parts = warp_between_boxes(ann.read_part_map(path), deterministic, box, size, _PART_BORDER)
        flipped = self.flip and bool(torch.rand(()) < 0.5)
        if flipped:
            img, crop_mask, kp = img[:, ::-1], crop_mask[:, ::-1], flip_keypoints(kp)
            parts = None if parts is None else parts[:, ::-1]
        item = {"img": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
                "mask": torch.from_numpy(np.ascontiguousarray(crop_mask))[None],
                "kp": torch.from_numpy(kp.astype(np.float32)),
                "index": torch.tensor(index, dtype=torch.int64),
                "image_id": torch.tensor(record.image_id, dtype=torch.int64),
                "crop": torch.tensor([box[0], box[1], box[2], float(flipped)], dtype=torch.float32)}
        if parts is not None:
            item["part_prob"] = torch.from_numpy(np.ascontiguousarray(parts.transpose(2, 0, 1)))
        return item


class PhotoFolder(Dataset):
    """Bird photos of a folder (sorted): longer side scaled to ``size``, centred on a white ``size²`` square."""

    SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

    def __init__(self, folder: str | Path, size: int) -> None:
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise InputError(self.folder, "photo folder not found", "pass --data.init_args.predict_images <folder>")
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in self.SUFFIXES)
        if not self.files:
            raise InputError(self.folder, "no photos (.jpg/.png/...) in the folder", "put bird photos in it")
        self.size = int(size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = read_rgb(self.files[index])
        h, w = image.shape[:2]
        scale = self.size / max(h, w)
        nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        canvas = np.ones((self.size, self.size, 3), dtype=np.float32)
        y0, x0 = (self.size - nh) // 2, (self.size - nw) // 2
        canvas[y0:y0 + nh, x0:x0 + nw] = np.clip(resized, 0.0, 1.0)
        return {"img": torch.from_numpy(np.ascontiguousarray(canvas.transpose(2, 0, 1))),
                "name": self.files[index].stem, "index": torch.tensor(index, dtype=torch.int64)}


class CUBDataModule(BaseReconDataModule):
    """CUB-200-2011 (raw files or CMR cache) with CMR crops; synthetic birds when ``root`` is None.

    Args:
        root: folder holding ``CUB_200_2011/`` (or that folder); ``None``: cached synthetic birds.
        image_size: crop side ``S`` (UMR: 256; tiny tests 32-128).
        batch_size / eval_batch_size: loader batch sizes (eval defaults to ``batch_size``).
        num_workers: DataLoader workers (distinct seeds per worker).
        part_maps: SCOPS part-map folder (relative: under the data root); ``None``: no part maps.
        flip, jitter, padding: train augmentation / crop settings (umr.md §2; eval never flips/jitters).
        split_seed: seed of the val/test halving of the official test images (CMR: 100).
        cmr_cache: folder with ``data/{train,val,test}_cub_cleaned.mat``; masks and splits from it.
        drop_last: drop the last incomplete train batch (the original also dropped at test; we don't).
        synthetic: overrides of :data:`DEFAULT_SYNTHETIC` for ``root=None``.
        predict_images: a folder of bird photos for ``sfd predict`` (each: longer side scaled to
            ``image_size``, centred on a white square; items ``img``, ``name``, ``index``); ``None``:
            predict runs over the test split.
    """

    def __init__(self, root: str | None = None, image_size: int = 256, batch_size: int = 8,
                 eval_batch_size: int | None = None, num_workers: int = 0, part_maps: str | None = None,
                 flip: bool = True, jitter: float = JITTER, padding: float = PAD, split_seed: int = 100,
                 cmr_cache: str | None = None, drop_last: bool = True,
                 synthetic: dict[str, Any] | None = None, predict_images: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.predict_images = predict_images
        self.root_arg, self.synthetic = root, synthetic
        self.image_size, self.batch_size = int(image_size), int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers, self.part_maps, self.cmr_cache = int(num_workers), part_maps, cmr_cache
        self.flip, self.jitter, self.padding = bool(flip), float(jitter), float(padding)
        self.split_seed, self.drop_last = int(split_seed), bool(drop_last)
        self.datasets: dict[str, CUBDataset] = {}

    @property
    def root(self) -> Path:
        if self.root_arg is None:
            return default_cub_root(self.synthetic)
        root = Path(self.root_arg).expanduser()
        if not root.is_dir():
            raise InputError(root, "dataset root not found", "check `data.root` (or leave it null for synthetic data)")
        return root

    def prepare_data(self) -> None:
        if self.root_arg is None:
            default_cub_root(self.synthetic)

    def _records(self, layout: ann.CubLayout) -> dict[str, list[ann.CubRecord]]:
        if self.cmr_cache is not None:
            return {split: ann.read_cmr_cache(self.cmr_cache, split) for split in ann.SPLITS}
        _, records, problems = ann.read_raw(layout.root)
        if problems:
            raise InputError(None, f"{len(problems)} problem(s) in the CUB annotations; first: {problems[0]}",
                             f"run `sfd data check {layout.root} --format cub` for the full list")
        if layout.segmentations is None:
            raise InputError(layout.root / "segmentations", "segmentation folder not found",
                             "extract segmentations.tgz beside CUB_200_2011/ (or pass cmr_cache)")
        return {split: ann.split_records(records, split, self.split_seed) for split in ann.SPLITS}

    def _part_dir(self, layout: ann.CubLayout, records: dict[str, list[ann.CubRecord]]) -> Path | None:
        if self.part_maps is None:
            return None
        part_dir = Path(self.part_maps).expanduser()
        part_dir = part_dir if part_dir.is_absolute() else layout.root / part_dir
        if not part_dir.is_dir():
            raise InputError(part_dir, "part-map folder not found", "check `data.part_maps` (SCOPS layout)")
        missing = [r for split in records.values() for r in split if ann.part_map_path(part_dir, r) is None]
        if missing:
            raise InputError(part_dir / Path(missing[0].rel_path).with_suffix(".npy"),
                             f"part map not found ({len(missing)} images have none)",
                             "write SCOPS maps <class_dir>/<basename>.npy for every image (or part_maps: null)")
        return part_dir

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        layout = ann.locate(self.root)
        records = self._records(layout)
        part_dir = self._part_dir(layout, records)
        for split, items in records.items():
            train = split == "train"
            self.datasets[split] = CUBDataset(layout, items, self.image_size, self.padding,
                                              self.jitter if train else 0.0, self.flip and train, part_dir)

    def _loader(self, split: str) -> DataLoader:
        dataset, train = self.datasets[split], split == "train"
        batch = self.batch_size if train else self.eval_batch_size
        return DataLoader(dataset, batch_size=batch, shuffle=train, num_workers=self.num_workers,
                          drop_last=train and self.drop_last and len(dataset) >= batch,
                          worker_init_fn=seed_worker, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        if self.predict_images is not None:
            return DataLoader(PhotoFolder(self.predict_images, self.image_size), batch_size=self.eval_batch_size,
                              shuffle=False, num_workers=self.num_workers)
        return self._loader("test")

    def describe(self) -> dict[str, Any]:
        return {**{f"num_{split}": len(ds) for split, ds in self.datasets.items()}, "image_size": self.image_size,
                "part_maps": self.part_maps is not None, "keypoints": list(ann.CUB_KEYPOINT_NAMES),
                "flip_permutation": list(FLIP_PERMUTATION)}
