"""``sfd data check --format pile``: validate a pile folder (raw and/or processed layout).

Each problem is one line ``"<path>: <problem> — <fix>"``; checks that depend on a broken file are
skipped, so one defect gives one message. Checked (CONTRACTS §5.2, methods/sfd.md §2.1):

- raw: a photo (``raw/000_color.png`` or ``000_rgb.png``) and ``raw/000_instance_seg.png`` that
  decode, have the same size and whose labels follow ``k·255//N`` (N from ``gt/poses.json`` when
  present, else the number of distinct labels);
- processed: ``transforms_train.json`` (string focal > 0, rigid finite camera), ``train/000_rgb.png``,
  ``train/000_instance_seg.png`` (same size, labels on the rule), ``train/000_mask.png`` and the
  normal prior when present (same size), ``non_empty_indexes.txt`` (integer ids below N),
  ``object_pred_pose.json`` (keys ``<name>_NN`` matching the indexes, rigid finite matrices),
  ``object_scale_matrix.json``, ``points_world.npy`` (when present), ``scene.json`` (when present:
  registered ids and count agree), and every instance centre ``O_i·S·0`` lying in front of the
  camera and projecting into its own mask's box, nearer its own mask's centroid than any other's
  (labels and poses in the same order).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from sfd_lightning.datamodules import pile_files as files
from sfd_lightning.errors import InputError
from sfd_lightning.geometry.cameras import opengl_c2w_to_opencv_w2c
from sfd_lightning.synthetic.instance_labels import (decode_instance_labels, read_instance_labels,
                                                     validate_instance_labels)

T = TypeVar("T")


class _Problems(list):
    """Collects one-line problems; :meth:`attempt` runs a check and records its InputError."""

    def attempt(self, fn: Callable[..., T], *args, **kwargs) -> T | None:
        try:
            return fn(*args, **kwargs)
        except InputError as exc:
            self.append(str(exc))
            return None

    def add(self, path: Path, problem: str, fix: str) -> None:
        self.append(str(InputError(path, problem, fix)))


def _same_size(problems: _Problems, reference: np.ndarray | None, other: np.ndarray | None,
               path: Path, reference_name: str) -> bool:
    if reference is None or other is None:
        return False
    if reference.shape[:2] != other.shape[:2]:
        problems.add(path, f"size {other.shape[1]}x{other.shape[0]} differs from {reference_name} "
                     f"{reference.shape[1]}x{reference.shape[0]}",
                     "resize with nearest-neighbour interpolation to the photo's size")
        return False
    return True


def _gt_count(root: Path, problems: _Problems) -> int | None:
    path = root / "gt" / "poses.json"
    if not path.is_file():
        return None
    meta = problems.attempt(files.read_json, path)
    count = meta.get("num_instances") if isinstance(meta, dict) else None
    if meta is not None and not isinstance(count, int):
        problems.add(path, "no integer 'num_instances'", "regenerate the synthetic pile")
        return None
    return count


def _check_raw(root: Path, problems: _Problems) -> None:
    photo, seg_path = files.raw_paths(root)
    if photo is None:
        problems.add(seg_path.parent / "000_color.png", "photo not found (nor 000_rgb.png)",
                     "put the photo at raw/000_color.png")
    image = problems.attempt(files.read_rgb, photo) if photo is not None else None
    labels = problems.attempt(read_instance_labels, seg_path)
    if labels is not None and (image is None or _same_size(problems, image, labels, seg_path, photo.name)):
        problems.attempt(validate_instance_labels, labels, _gt_count(root, problems), seg_path)


def _check_processed(root: Path, problems: _Problems) -> None:
    camera = problems.attempt(files.read_camera, root / files.TRANSFORMS)
    rgb = problems.attempt(files.read_rgb, root / files.RGB)
    seg_path = root / files.SEG
    labels = problems.attempt(read_instance_labels, seg_path)
    labels_ok = labels is not None and (rgb is None or _same_size(problems, rgb, labels, seg_path, "train/000_rgb.png"))
    for optional, reader in ((files.MASK, read_instance_labels), (files.NORMAL, files.read_rgb)):
        if (root / optional).is_file():
            _same_size(problems, labels if labels_ok else None, problems.attempt(reader, root / optional),
                       root / optional, "the instance mask")
    meta = problems.attempt(files.read_json, root / files.SCENE) if (root / files.SCENE).is_file() else {}
    count = meta.get("num_instances") if isinstance(meta, dict) else None
    n = problems.attempt(validate_instance_labels, labels, count, seg_path, require_all=False) if labels_ok else None
    ids = problems.attempt(files.read_registered_ids, root / files.INDEXES)
    if ids is not None and n is not None and ids[-1] >= n:
        problems.add(root / files.INDEXES, f"id {ids[-1]} but the mask holds {n} instances",
                     "ids are 0-based labels k - 1")
        ids = None
    if isinstance(meta, dict) and ids is not None and "registered_ids" in meta and meta["registered_ids"] != ids:
        problems.add(root / files.SCENE, f"registered_ids {meta['registered_ids']} differ from "
                     f"non_empty_indexes.txt {ids}", "re-run the preprocessing")
    poses_json = problems.attempt(files.read_json, root / files.POSES)
    poses = None
    if poses_json is not None and ids is not None:
        parsed = problems.attempt(files.parse_pose_keys, poses_json, ids, root / files.POSES)
        poses = None if parsed is None else parsed[1]
    scale = problems.attempt(files.read_scale_matrix, root / files.SCALE)
    if (root / files.POINTS).is_file():
        problems.attempt(files.load_points_world, root / files.POINTS)
    if all(x is not None for x in (camera, poses, scale, n)) and labels_ok:
        _check_centres(root, problems, camera, poses, scale, decode_instance_labels(labels, n))


def _check_centres(root: Path, problems: _Problems, camera: tuple[float, np.ndarray], poses: dict[int, np.ndarray],
                   scale: np.ndarray, instance: np.ndarray) -> None:
    """Instance centres must lie in front of the camera, project into their own mask's box (padded
    by 10%) and nearer their own mask's centroid than any other instance's."""
    focal, c2w_gl = camera
    w2c = opengl_c2w_to_opencv_w2c(c2w_gl)
    height, width = instance.shape
    labels = [k for k in range(1, int(instance.max()) + 1) if np.any(instance == k)]
    centroids = {k: np.argwhere(instance == k).mean(0)[::-1] for k in labels}  # (u, v)
    key = root / files.POSES
    for index, pose in sorted(poses.items()):
        centre = (w2c @ pose @ scale)[:3, 3]
        name = f"instance {index + 1} (pose _{index:02d})"
        if centre[2] <= 0:
            problems.add(key, f"{name} lies behind the camera",
                         "check the camera/pose conventions (OpenGL camera->world, object->world)")
            continue
        if index + 1 not in centroids:
            continue
        uv = focal * centre[:2] / centre[2] + np.array([width, height]) / 2.0 - 0.5
        rows, cols = np.nonzero(instance == index + 1)
        pad_u, pad_v = 0.1 * (np.ptp(cols) + 1) + 2, 0.1 * (np.ptp(rows) + 1) + 2
        inside = cols.min() - pad_u <= uv[0] <= cols.max() + pad_u and rows.min() - pad_v <= uv[1] <= rows.max() + pad_v
        own = np.linalg.norm(uv - centroids[index + 1])
        nearest = min(centroids, key=lambda k: np.linalg.norm(uv - centroids[k]))
        if not inside or nearest != index + 1:
            problems.add(key, f"{name} projects to ({uv[0]:.0f}, {uv[1]:.0f}), {own:.0f} px from its mask's "
                         f"centroid{'' if inside else ' and outside its box'} (nearest: instance {nearest})",
                         "labels and poses are not in the same order, or the pose is wrong")


def check(root: Path) -> list[str]:
    """Every problem found in the pile folder ``root`` (empty: usable)."""
    root = Path(root)
    problems = _Problems()
    has_raw = (root / "raw").is_dir() or (root / Path(files.RAW_SEG).name).is_file()
    has_processed = (root / files.TRANSFORMS).is_file() or (root / "train").is_dir()
    if not has_raw and not has_processed:
        problems.add(root, "neither raw/ nor a processed layout (transforms_train.json, train/) found",
                     "point to a pile folder (raw/000_color.png + raw/000_instance_seg.png)")
    if has_raw:
        _check_raw(root, problems)
    if has_processed:
        _check_processed(root, problems)
    return list(problems)
