"""File-level helpers of the pile layouts (CONTRACTS §5.2, methods/sfd.md §2.1).

Names of every file, validated readers of the original SfD JSON/TXT/NPY files (each problem an
:class:`InputError` naming the file), the scene constants (near/far, scene sphere) and an
atomic writer of the processed layout shared by ``sfd data synth pile`` and ``sfd preprocess
pile``. Matrices in the files keep the original's conventions: the camera is an OpenGL
camera->world matrix; object poses are object->world, rigid, unscaled.
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sfd_lightning.errors import InputError
from sfd_lightning.geometry.io import atomic_write

LAYOUT_VERSION = 1
TRANSFORMS = "transforms_train.json"
TRANSFORMS_TEST = "transforms_test.json"
POSES = "object_pred_pose.json"
SCALE = "object_scale_matrix.json"
INDEXES = "non_empty_indexes.txt"
POINTS = "points_world.npy"
SCENE = "scene.json"
RGB = "train/000_rgb.png"
SEG = "train/000_instance_seg.png"
MASK = "train/000_mask.png"
NORMAL = "train/000_normal_pretrain.png"
RAW_COLOR = ("raw/000_color.png", "raw/000_rgb.png")
RAW_SEG = "raw/000_instance_seg.png"
ROT_TOL = 1e-4


def raw_paths(root: Path) -> tuple[Path | None, Path]:
    """(photo or None, instance mask) of a raw pile; ``root`` is the pile folder or its ``raw/``."""
    raw = root / "raw" if (root / "raw").is_dir() or not (root / Path(RAW_SEG).name).is_file() else root
    photo = next((raw / Path(name).name for name in RAW_COLOR if (raw / Path(name).name).is_file()), None)
    return photo, raw / Path(RAW_SEG).name


def read_json(path: Path) -> Any:
    """Parse a JSON file (InputError when missing or malformed)."""
    if not path.is_file():
        raise InputError(path, "file not found", "run `sfd preprocess pile` or restore the file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not valid JSON ({str(exc)[:60]})", "re-write the file") from None


def as_matrix(value: Any, path: Path, what: str, rigid: bool = False) -> np.ndarray:
    """``value`` as a finite ``(4, 4)`` float64 matrix with last row (0, 0, 0, 1).

    ``rigid=True`` also requires an orthonormal rotation with determinant +1.
    """
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(path, f"{what} is not a numeric matrix", "store a 4x4 list of numbers") from None
    if matrix.shape != (4, 4):
        raise InputError(path, f"{what} has shape {matrix.shape}, expected (4, 4)", "store a 4x4 matrix")
    if not np.isfinite(matrix).all():
        raise InputError(path, f"{what} holds NaN or infinite values", "re-run the preprocessing")
    if not np.allclose(matrix[3], [0, 0, 0, 1], atol=1e-6):
        raise InputError(path, f"{what} last row is {matrix[3].tolist()}, expected [0, 0, 0, 1]",
                         "store homogeneous 4x4 matrices")
    if rigid:
        rot = matrix[:3, :3]
        if not np.allclose(rot @ rot.T, np.eye(3), atol=ROT_TOL) or np.linalg.det(rot) < 0:
            raise InputError(path, f"{what} is not a rigid transform (rotation not orthonormal, det +1)",
                             "store rotation + translation only (scale goes into object_scale_matrix.json)")
    return matrix


def read_camera(path: Path) -> tuple[float, np.ndarray]:
    """``transforms_train.json`` -> (focal in pixels, OpenGL camera->world ``(4, 4)``)."""
    meta = read_json(path)
    try:
        focal = float(meta["focal"])
        c2w = meta["frames"][0]["transform_matrix"]
    except (KeyError, IndexError, TypeError, ValueError):
        raise InputError(path, "expected {'focal': '<float>', 'frames': [{'transform_matrix': 4x4}]}",
                         "re-write the camera file") from None
    if not np.isfinite(focal) or focal <= 0:
        raise InputError(path, f"focal {focal} is not a positive number", "store the focal length in pixels")
    return focal, as_matrix(c2w, path, "camera transform_matrix", rigid=True)


def read_registered_ids(path: Path) -> list[int]:
    """``non_empty_indexes.txt`` (one float per line, ``%.18e``) -> sorted 0-based ids."""
    if not path.is_file():
        raise InputError(path, "file not found", "list the registered 0-based instance ids, one per line")
    try:
        values = np.atleast_1d(np.loadtxt(path, dtype=np.float64))
    except ValueError as exc:
        raise InputError(path, f"not a list of numbers ({str(exc)[:60]})", "one id per line") from None
    if values.size == 0:
        raise InputError(path, "no registered instances", "re-run the preprocessing")
    if not np.isfinite(values).all() or np.any(values != np.round(values)) or values.min() < 0:
        raise InputError(path, "ids must be non-negative integers", "one 0-based instance id per line")
    ids = sorted(int(v) for v in values)
    if len(set(ids)) != len(ids):
        raise InputError(path, "repeated instance ids", "list each registered instance once")
    return ids


def parse_pose_keys(poses: Mapping[str, Any], registered: list[int], path: Path) -> tuple[str, dict[int, np.ndarray]]:
    """Map ``object_pred_pose.json`` keys ``<name>_NN`` to 0-based instance ids.

    ``NN`` is the instance id ``k - 1`` (CONTRACTS); files of the original release that number
    the registered instances consecutively (``NN`` = 0..R-1 while ``non_empty_indexes`` skips
    ids) are mapped through ``registered`` in order.

    Returns:
        the common name prefix and ``{instance id: object->world (4, 4)}``.
    """
    if not isinstance(poses, Mapping) or not poses:
        raise InputError(path, "expected an object {'<name>_00': 4x4, ...}", "re-run the preprocessing")
    parsed: dict[int, np.ndarray] = {}
    names = set()
    for key, value in poses.items():
        name, sep, number = str(key).rpartition("_")
        if not sep or not number.isdigit():
            raise InputError(path, f"key '{key}' is not '<name>_NN'", "name poses <name>_00, <name>_01, ...")
        names.add(name)
        parsed[int(number)] = as_matrix(value, path, f"pose '{key}'", rigid=True)
    if len(names) > 1:
        raise InputError(path, f"keys use several names {sorted(names)}", "use one object name in every key")
    numbers = sorted(parsed)
    if numbers == registered:
        return names.pop(), parsed
    if numbers == list(range(len(registered))):
        return names.pop(), {registered[i]: parsed[i] for i in numbers}
    raise InputError(path, f"pose keys {numbers} do not match non_empty_indexes.txt {registered}",
                     "keep one pose <name>_NN per registered instance (NN = 0-based id)")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays/dtypes (never arbitrary objects)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_points_world(path: Path) -> dict[str, np.ndarray]:
    """``points_world.npy``: a pickled dict (original) or a plain ``(M, 3)`` array.

    Returns ``{'points_world_all': (M, 3) float64, 'points_world_<i>': ...}``. Pickles are read
    with a restricted unpickler that only accepts numpy arrays.
    """
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = header(handle)
            if dtype.hasobject:
                obj = _ArrayUnpickler(io.BytesIO(handle.read())).load()
                content = obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
            else:
                content = {"points_world_all": np.load(path, allow_pickle=False)}
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise InputError(path, f"not a readable points file ({str(exc)[:70]})",
                         "store a dict {'points_world_all': (M, 3)} with np.save, or delete the file") from None
    if not isinstance(content, dict) or "points_world_all" not in content:
        raise InputError(path, "no 'points_world_all' entry", "store a dict {'points_world_all': (M, 3), ...}")
    out = {}
    for key, value in content.items():
        array = np.asarray(value, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != 3:
            raise InputError(path, f"'{key}' has shape {array.shape}, expected (M, 3)", "store (M, 3) points")
        if not np.isfinite(array).all():
            raise InputError(path, f"'{key}' holds NaN or infinite points", "drop those points")
        out[str(key)] = array
    if len(out["points_world_all"]) < 4:
        raise InputError(path, "fewer than 4 points in 'points_world_all'", "re-run the preprocessing")
    return out


@dataclass
class SceneBounds:
    """Constants shared by every ray (methods/sfd.md §2.1): distances along rays and the scene sphere."""

    near: float
    far: float
    center: np.ndarray  # (3,) world
    radius: float
    source: str  # "sfm_points" or "poses"


def bounds_from_points(points: np.ndarray, camera_center: np.ndarray, keep_ratio: float = 0.95) -> SceneBounds:
    """near = 0.95·min‖p − cam‖, far = 1.05·max; sphere = mean and half bbox diagonal of the
    ``keep_ratio`` of points nearest their centroid (the original's one-cluster k-means)."""
    dist = np.linalg.norm(points - camera_center, axis=1)
    order = np.argsort(np.linalg.norm(points - points.mean(0), axis=1), kind="stable")
    kept = points[order[: max(1, int(len(points) * keep_ratio))]]
    radius = 0.5 * float(np.linalg.norm(kept.max(0) - kept.min(0)))
    return SceneBounds(0.95 * float(dist.min()), 1.05 * float(dist.max()), kept.mean(0), radius, "sfm_points")


def bounds_from_poses(object_to_world: np.ndarray, scale_matrix: np.ndarray,
                      camera_center: np.ndarray) -> SceneBounds:
    """Fallback without SfM points: instance centres ``c_i = O_i·S·0`` and object radius ``r``.

    near = min‖c_i − cam‖ − r, far = max‖c_i − cam‖ + r; sphere centre = mean of the c_i,
    radius = max‖c_i − centre‖ + r (encloses every instance sphere).
    """
    r = float(scale_matrix[0, 0])
    centres = (object_to_world @ scale_matrix)[:, :3, 3]
    dist = np.linalg.norm(centres - camera_center, axis=1)
    centre = centres.mean(0)
    radius = float(np.linalg.norm(centres - centre, axis=1).max()) + r
    return SceneBounds(float(dist.min()) - r, float(dist.max()) + r, centre, radius, "poses")


def read_scale_matrix(path: Path) -> np.ndarray:
    """``object_scale_matrix.json`` -> ``S (4, 4)``: uniform scale r > 0 and a centre."""
    meta = read_json(path)
    if not isinstance(meta, dict) or "scale_matrix" not in meta:
        raise InputError(path, "no 'scale_matrix' entry", "store {'scale_matrix': 4x4}")
    scale = as_matrix(meta["scale_matrix"], path, "scale_matrix")
    r = scale[0, 0]
    if not (r > 0 and np.allclose(scale[:3, :3], r * np.eye(3), atol=1e-6 * max(1.0, r))):
        raise InputError(path, "scale_matrix is not a uniform positive scale with a centre",
                         "store [[r,0,0,cx],[0,r,0,cy],[0,0,r,cz],[0,0,0,1]]")
    return scale


def read_rgb(path: Path) -> np.ndarray:
    """Read a photo as ``(H, W, 3)`` uint8 RGB (grey is replicated, alpha dropped, 16-bit rounded)."""
    import cv2

    if path.suffix.lower() == ".exr":
        raise InputError(path, "EXR photos need the optional 'openexr' package (OpenCV here cannot read EXR)",
                         "convert the photo to an 8-bit PNG, or install openexr")
    if not path.is_file():
        raise InputError(path, "photo not found", "check the pile folder")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(path, "not a readable image", "save the photo as an 8-bit RGB PNG")
    if image.dtype == np.uint16:
        image = np.round(image / 257.0).astype(np.uint8)
    if image.dtype != np.uint8:
        raise InputError(path, f"unsupported photo dtype {image.dtype}", "save the photo as an 8-bit RGB PNG")
    if image.ndim == 2 or image.shape[2] < 3:  # grey (+ alpha)
        grey = image if image.ndim == 2 else image[..., 0]
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    return np.ascontiguousarray(image[..., 2::-1])  # BGR(A) -> RGB


def _dump_json(path: Path, content: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(content, indent=4)))


def write_png(path: Path, image: np.ndarray) -> None:
    """Write ``(H, W, 3)`` RGB or ``(H, W)`` grey uint8 as PNG, atomically."""
    import cv2

    array = image[..., ::-1] if image.ndim == 3 else image  # RGB -> BGR for OpenCV
    def write(tmp: Path) -> None:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(array)):
            raise OSError(f"cannot write {path}")
    atomic_write(path, write)


def write_processed_layout(root: Path, rgb: np.ndarray, labels: np.ndarray, focal: float,
                           c2w_opengl: np.ndarray, object_to_world: Mapping[int, np.ndarray],
                           scale_matrix: np.ndarray, points_world: Mapping[int, np.ndarray] | None,
                           intrinsics: Mapping[str, float], num_instances: int, matcher: str,
                           timings: Mapping[str, float] | None = None, name: str | None = None) -> Path:
    """Write the processed layout the SfD trainer reads, every file atomically.

    Args:
        root: the pile folder (``name`` defaults to its folder name; keys ``<name>_NN``).
        rgb: ``(H, W, 3)`` uint8 photo (RGB order). labels: ``(H, W)`` uint8 grey labels.
        focal: focal length in pixels (stored as a string, like the original).
        c2w_opengl: ``(4, 4)`` camera->world, OpenGL axes.
        object_to_world: ``{0-based instance id: (4, 4) rigid object->world}``, registered only.
        scale_matrix: ``S (4, 4)``, x_world = O_i·S·x_norm.
        points_world: ``{instance id: (M_i, 3)}`` world points per registered instance, or None.
        intrinsics: framework intrinsics for scene.json (fx, fy, cx, cy; integer pixel centres).
        num_instances: N of the label encoding. matcher: what produced the poses.
    """
    root = Path(root)
    name = name or root.name
    ids = sorted(int(i) for i in object_to_world)
    camera = {"focal": repr(float(focal)), "frames": [{"file_path": "train/000",
                                                       "transform_matrix": np.asarray(c2w_opengl).tolist()}]}
    _dump_json(root / TRANSFORMS, camera)
    camera["frames"][0]["file_path"] = "test/000"
    _dump_json(root / TRANSFORMS_TEST, camera)
    _dump_json(root / POSES, {f"{name}_{i:02d}": np.asarray(object_to_world[i]).tolist() for i in ids})
    _dump_json(root / SCALE, {"scale_matrix": np.asarray(scale_matrix).tolist()})
    atomic_write(root / INDEXES, lambda tmp: np.savetxt(tmp, np.asarray(ids, dtype=np.float64), fmt="%.18e"))
    write_png(root / RGB, rgb)
    write_png(root / SEG, labels)
    write_png(root / MASK, np.where(labels > 0, 255, 0).astype(np.uint8))
    cam_center = np.asarray(c2w_opengl)[:3, 3]
    stacked = np.stack([np.asarray(object_to_world[i], dtype=np.float64) for i in ids])
    if points_world:
        content = {f"points_world_{i}": np.asarray(p, dtype=np.float64) for i, p in points_world.items()}
        content["points_world_all"] = np.concatenate([content[f"points_world_{i}"] for i in sorted(points_world)])
        atomic_write(root / POINTS, lambda tmp: np.save(tmp, content, allow_pickle=True))
        bounds = bounds_from_points(content["points_world_all"], cam_center)
    else:
        bounds = bounds_from_poses(stacked, np.asarray(scale_matrix), cam_center)
    height, width = labels.shape
    _dump_json(root / SCENE, {
        "layout_version": LAYOUT_VERSION, "name": name, "width": int(width), "height": int(height),
        "num_instances": int(num_instances), "registered_ids": ids,
        "intrinsics": {k: float(v) for k, v in intrinsics.items()},
        "intrinsics_convention": "OpenCV, pixel centres at integer coordinates (cx = W/2 - 0.5 equals the "
                                 "original's cx = W/2 with pixel centres at u + 0.5)",
        "near": bounds.near, "far": bounds.far, "scene_center": np.asarray(bounds.center).tolist(),
        "scene_radius": bounds.radius, "bounds_source": bounds.source, "matcher": matcher,
        "timings": dict(timings or {})})
    return root
