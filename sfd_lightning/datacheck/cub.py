"""``sfd data check --format cub``: validate a CUB-200-2011 tree (raw files, masks, optional part maps).

Each problem is one line ``"<path>: <problem> — <fix>"`` (at most 20 per kind, then a count).
Checked: the seven annotation tables exist and parse (ids integers, right column counts, no
duplicates); ``image_class_labels`` / ``train_test_split`` / ``bounding_boxes`` list exactly the ids
of ``images.txt``; class ids exist in ``classes.txt``; split flags are 0/1; ``parts.txt`` has ids
1..15; ``part_locs`` ids and flags are in range; every image decodes, its box and visible
keypoints lie inside it, its segmentation exists with the image's size; part maps (``part_maps/``
beside ``CUB_200_2011/``, when present) exist per image with shape ``(P, P, 5)``, finite values
in [0, 1]; ``gt/cameras.json`` (synthetic trees) parses.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from sfd_lightning.datamodules import cub_annotations as ann
from sfd_lightning.errors import InputError

PART_MAP_DIR = "part_maps"


def _shape(path: Path | None, flags: int) -> tuple[int, ...] | None:
    if path is None or not path.is_file():
        return None
    image = cv2.imread(str(path), flags)
    return None if image is None else image.shape


def check(root: Path) -> list[str]:
    """Every problem found in the CUB tree at ``root`` (empty: usable)."""
    try:
        layout, records, problems = ann.read_raw(root)
    except InputError as exc:
        return [str(exc)]
    if layout.segmentations is None:
        problems.add(layout.root / "segmentations", "segmentation folder not found",
                     "extract segmentations.tgz beside CUB_200_2011/ (or train with a CMR cache)")
    part_dir = layout.root / PART_MAP_DIR
    part_dir = part_dir if part_dir.is_dir() else None
    if not layout.images.is_dir():
        problems.add(layout.images, "image folder not found", "extract CUB_200_2011.tgz completely")
        return problems.summarise()
    for record in records:
        image_path = layout.image_path(record)
        mask_path = layout.segmentation_path(record)
        ann.validate_sample(record, image_path, _shape(image_path, cv2.IMREAD_COLOR), mask_path,
                            _shape(mask_path, cv2.IMREAD_UNCHANGED), problems)
        if part_dir is not None:
            _check_part_map(part_dir, record, problems)
    gt = layout.root / "gt" / "cameras.json"
    if gt.is_file():
        try:
            cameras = json.loads(gt.read_text())["images"]
            listed = ann.read_table(layout.cub_dir / "images.txt", 2, ann.ProblemList())
            unknown = set(cameras) - {str(i) for i in listed}
            if unknown:
                problems.add(gt, f"cameras for unknown image ids {sorted(unknown)[:5]}", "regenerate the tree")
        except (ValueError, KeyError, TypeError) as exc:
            problems.add(gt, f"cannot be parsed ({type(exc).__name__})", "regenerate the synthetic tree")
    return problems.summarise()


def _check_part_map(part_dir: Path, record: ann.CubRecord, problems: ann.ProblemList) -> None:
    path = ann.part_map_path(part_dir, record)
    if path is None:
        problems.add(part_dir / Path(record.rel_path).with_suffix(".npy"), "part map not found",
                     "write a SCOPS map for every image, or remove the part_maps folder", kind="part map missing")
        return
    try:
        values = ann.read_part_map(path)
    except InputError as exc:
        problems.add(path, exc.problem, exc.fix, kind="part map unreadable")
        return
    if values.min() < -1e-3 or values.max() > 1.0 + 1e-3:
        problems.add(path, f"values in [{values.min():.3g}, {values.max():.3g}], expected probabilities in [0, 1]",
                     "store softmax/CRF probabilities (uint8 maps are divided by 255)", kind="part map range")
    elif float(np.mean(values.sum(axis=2) > 0)) < 0.5:
        problems.add(path, "part map is mostly empty (channels sum to 0)", "re-export the part map",
                     kind="part map empty")
