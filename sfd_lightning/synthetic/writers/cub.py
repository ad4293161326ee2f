"""Synthetic birds in the raw CUB-200-2011 layout, with ground-truth part maps and cameras.

Writes under ``<out>`` (layout of :mod:`sfd_lightning.datamodules.cub_annotations`)::

    CUB_200_2011/{images,image_class_labels,classes,train_test_split,bounding_boxes}.txt
    CUB_200_2011/parts/{parts,part_locs}.txt
    CUB_200_2011/images/<NNN.Class_Name>/<Class_Name>_NNNN.jpg      bird photo on a textured backdrop
    segmentations/<NNN.Class_Name>/<Class_Name>_NNNN.png            soft silhouette, 0..255
    part_maps/<NNN.Class_Name>/<Class_Name>_NNNN.npy                SCOPS layout (below)
    gt/cameras.json                                                 ground-truth cameras and birds
    synthetic_info.json                                             what was generated, and how

Part maps follow the SCOPS layout of methods/umr.md §2: ``(P, P, 5)`` float16 probabilities
(channels background, head, neck, back, belly; summing to 1) on the DETERMINISTIC CMR crop of the
image (pad 0.05, jitter 0, squared: :func:`~sfd_lightning.datamodules.cub_crop.square_box`),
``P = --part_map_size`` (256 as SCOPS). ``CUBDataModule(part_maps="part_maps")`` reads them.

``gt/cameras.json``: per image id, the OpenCV world->camera ``R``, ``t`` and ``K`` (pixel centres at
integer 0-based coordinates) with world = the bird frame of :mod:`sfd_lightning.synthetic.birds`
(x forward, y to the bird's left, z up), the photo size, the bird parameters and the 15 keypoints
in the bird frame.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch

from sfd_lightning.datamodules.cub_annotations import CUB_DIR, CUB_PART_NAMES, SCOPS_PART_NAMES
from sfd_lightning.datamodules.cub_crop import PAD, crop_resize, square_box
from sfd_lightning.errors import InputError
from sfd_lightning.geometry.io import atomic_write
from sfd_lightning.synthetic.bird_scenes import BirdPhoto, render_bird_photo
from sfd_lightning.synthetic.birds import sample_class_params, sample_instance_params

_ADJECTIVES = ("Red", "Blue", "Golden", "Spotted", "Crested", "Black", "Rusty", "Pale", "Striped", "Olive",
               "Scarlet", "Grey", "Long", "Short", "White", "Dusky")
_NOUNS = ("Warbler", "Finch", "Tern", "Wren", "Sparrow", "Grebe", "Oriole", "Jay", "Vireo", "Flycatcher",
          "Gull", "Tanager", "Bunting", "Thrush", "Swallow", "Kingfisher")


def configure_parser(parser) -> None:
    """Options of ``sfd data synth cub`` (``--out`` and ``--seed`` already exist)."""
    parser.add_argument("--images", type=int, default=64, help="number of photos")
    parser.add_argument("--classes", type=int, default=4, help="number of bird species (classes)")
    parser.add_argument("--image_size", type=int, default=320,
                        help="longest photo side; each photo's long side is drawn in [0.7, 1] of it")
    parser.add_argument("--part_map_size", type=int, default=256, help="side of the SCOPS-layout part maps")
    parser.add_argument("--train_fraction", type=float, default=0.5, help="share of official train images")


def run(args) -> Path:
    """Entry point of ``sfd data synth cub``; returns the written root."""
    return write_cub(args.out, args.images, args.seed, n_classes=args.classes, image_size=args.image_size,
                     part_map_size=args.part_map_size, train_fraction=args.train_fraction)


def class_names(n_classes: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct ``Adjective_Noun`` species names."""
    pairs = [(a, n) for a in _ADJECTIVES for n in _NOUNS]
    order = rng.permutation(len(pairs))
    if n_classes > len(pairs):
        raise InputError(None, f"--classes {n_classes} exceeds {len(pairs)}", "ask for fewer classes")
    return [f"{pairs[i][0]}_{pairs[i][1]}" for i in order[:n_classes]]


def _check_args(n_images: int, n_classes: int, image_size: int, part_map_size: int, train_fraction: float) -> None:
    if n_images < 2 or n_classes < 1 or n_classes > n_images:
        raise InputError(None, f"--images {n_images} / --classes {n_classes} invalid",
                         "ask for at least 2 images and 1 <= classes <= images")
    if not 32 <= image_size <= 2048 or not 16 <= part_map_size <= 1024:
        raise InputError(None, f"--image_size {image_size} / --part_map_size {part_map_size} out of range",
                         "use 32..2048 and 16..1024")
    if not 0.0 < train_fraction < 1.0:
        raise InputError(None, f"--train_fraction {train_fraction} not in (0, 1)", "use e.g. 0.5")


@contextmanager
def single_torch_thread() -> Iterator[None]:
    """Run torch single-threaded inside (the SDFs evaluate many small tensors: 3-6x faster on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def write_cub(root: str | Path, n_images: int = 64, seed: int = 0, n_classes: int = 4, image_size: int = 320,
              part_map_size: int = 256, train_fraction: float = 0.5, mesh_resolution: int | None = None) -> Path:
    """Write ``n_images`` synthetic bird photos of ``n_classes`` species into ``root`` (see module doc).

    ``mesh_resolution`` defaults to ``clip(0.3 * image_size, 32, 96)`` marching-cubes nodes per axis.
    Every file is written atomically; the tables last, so a killed run leaves no usable half tree.
    """
    with single_torch_thread():
        return _write_cub(Path(root), n_images, seed, n_classes, image_size, part_map_size, train_fraction,
                          mesh_resolution)


def _write_cub(root: Path, n_images: int, seed: int, n_classes: int, image_size: int, part_map_size: int,
               train_fraction: float, mesh_resolution: int | None) -> Path:
    _check_args(n_images, n_classes, image_size, part_map_size, train_fraction)
    started = time.perf_counter()
    cub = root / CUB_DIR
    rng = np.random.default_rng(seed)
    names = class_names(n_classes, rng)
    class_dirs = [f"{k + 1:03d}.{name}" for k, name in enumerate(names)]
    bases = [sample_class_params(rng) for _ in names]
    resolution = mesh_resolution or int(np.clip(round(0.3 * image_size), 32, 96))
    class_of = np.arange(n_images) % n_classes
    is_train = np.zeros(n_images, dtype=bool)
    for k in range(n_classes):  # per class: a train_fraction share, at least one train and one test
        members = rng.permutation(np.flatnonzero(class_of == k))
        n_train = int(np.clip(round(train_fraction * len(members)), min(1, len(members) - 1), len(members) - 1))
        is_train[members[:n_train]] = True
    rows: dict[str, list[str]] = {k: [] for k in ("images", "labels", "split", "boxes", "locs")}
    cameras: dict[str, dict] = {}
    counters = [0] * n_classes
    for index in range(n_images):
        image_id, k = index + 1, int(class_of[index])
        counters[k] += 1
        rel = f"{class_dirs[k]}/{names[k]}_{counters[k]:04d}"
        long_side = int(rng.integers(int(0.7 * image_size), image_size + 1))
        aspect = rng.uniform(0.75, 1.33)
        width, height = (long_side, int(round(long_side / aspect))) if aspect >= 1 else \
            (int(round(long_side * aspect)), long_side)
        params = sample_instance_params(rng, bases[k])
        photo = render_bird_photo(params, width, height, seed=int(rng.integers(2**31)),
                                  mesh_resolution=resolution)
        bbox = _write_photo(root, rel, photo, part_map_size)
        rows["images"].append(f"{image_id} {rel}.jpg")
        rows["labels"].append(f"{image_id} {k + 1}")
        rows["split"].append(f"{image_id} {int(is_train[index])}")
        x1, y1, x2, y2 = bbox
        rows["boxes"].append(f"{image_id} {x1 + 1:.1f} {y1 + 1:.1f} {x2 - x1 + 1:.1f} {y2 - y1 + 1:.1f}")
        for part, (x, y, visible) in enumerate(photo.keypoints, 1):
            coords = f"{x + 1:.2f} {y + 1:.2f} 1" if visible else "0.0 0.0 0"
            rows["locs"].append(f"{image_id} {part} {coords}")
        cam = photo.camera
        cameras[str(image_id)] = {"rel_path": f"{rel}.jpg", "K": cam.K.tolist(), "R": cam.R.tolist(),
                                  "t": cam.t.tolist(), "width": width, "height": height,
                                  "params": params.to_dict(), "keypoints_3d": photo.keypoints_3d.tolist()}
    _write_text(root / "gt" / "cameras.json", json.dumps({
        "convention": "OpenCV world->camera x_cam = R x + t; world = bird frame (x forward, y left, z up); "
                      "pixel centres at integer 0-based coordinates", "images": cameras}, indent=1))
    tables = {"images.txt": rows["images"], "image_class_labels.txt": rows["labels"],
              "train_test_split.txt": rows["split"], "bounding_boxes.txt": rows["boxes"],
              "classes.txt": [f"{k + 1} {d}" for k, d in enumerate(class_dirs)],
              "parts/parts.txt": [f"{i} {n}" for i, n in enumerate(CUB_PART_NAMES, 1)],
              "parts/part_locs.txt": rows["locs"]}
    for name, lines in tables.items():
        _write_text(cub / name, "\n".join(lines) + "\n")
    info = {"format": "cub", "generator": "sfd_lightning.synthetic.writers.cub", "seed": seed,
            "images": n_images, "classes": n_classes, "image_size": image_size,
            "seconds": round(time.perf_counter() - started, 2),
            "part_maps": {"dir": "part_maps", "size": part_map_size, "dtype": "float16",
                          "channels": list(SCOPS_PART_NAMES),
                          "crop": f"deterministic CMR crop of the image: pad {PAD}, jitter 0, squared"},
            "coordinates": "text files 1-based (MATLAB/CUB); gt/cameras.json 0-based pixel centres"}
    _write_text(root / "synthetic_info.json", json.dumps(info, indent=1))
    return root


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _imwrite(path: Path, image: np.ndarray, params: list[int] | None = None) -> None:
    def write(tmp: Path) -> None:
        if not cv2.imwrite(str(tmp), image, params or []):
            raise OSError(f"cv2 could not write {path}")

    atomic_write(path, write)


def tight_box(mask: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int, int]:
    """0-based inclusive ``(x1, y1, x2, y2)`` of the pixels with ``mask >= threshold``."""
    rows, cols = np.nonzero(mask >= threshold)
    if len(rows) == 0:
        raise ValueError("empty bird mask")
    return int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())


def _write_photo(root: Path, rel: str, photo: BirdPhoto, part_map_size: int) -> tuple[int, int, int, int]:
    """Photo, segmentation and SCOPS-layout part map of one image; returns its 0-based box."""
    _imwrite(root / CUB_DIR / "images" / f"{rel}.jpg", np.ascontiguousarray(photo.rgb[..., ::-1]),
             [cv2.IMWRITE_JPEG_QUALITY, 95])
    _imwrite(root / "segmentations" / f"{rel}.png", np.round(photo.mask * 255).astype(np.uint8))
    bbox = tight_box(photo.mask)
    background = np.eye(len(SCOPS_PART_NAMES), dtype=np.float32)[0]
    part_map = crop_resize(photo.part_prob, square_box(np.array(bbox, dtype=np.float64)), part_map_size,
                           background)
    part_map /= np.maximum(part_map.sum(axis=2, keepdims=True), 1e-6)
    atomic_write(root / "part_maps" / f"{rel}.npy", lambda tmp: np.save(tmp, part_map.astype(np.float16)))
    return bbox
