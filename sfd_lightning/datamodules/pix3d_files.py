"""Pix3D trees: path conventions, ``pix3d.json`` / Total3D split readers, camera conversion.

Layout (methods/list.md §2.2)::

    pix3d.json                       list of dicts: img, category, model, bbox [x0, y0, x1, y1],
                                     mask, img_size [W, H], focal_length (mm), rot_mat, trans_mat, ...
    img/<cat>/NNNN.png|jpg           photos;  mask/<cat>/NNNN.png  masks (0 / 255)
    model/<cat>/<model dir>/model.obj
    splits/{train,test}.json         Total3D: ["./data/pix3d/train_test_data/<idx>.pkl", ...]
    data/img/<cat>/<model_folder>/<img stem>.npy          LIST crops (uint8)
    data/sampled_points/<cat>/<model_folder>/sampled_points.h5
    data/isosurface/<cat>/<model_folder>/{isosurf_scaled.obj, mesh_org.ply}

``model_folder = "<model dir>.<model file stem>"`` (``IKEA_X.model``).

Camera: Pix3D's ``rot_mat``/``trans_mat`` map model coordinates to a camera with +x LEFT, +y UP,
+z forward (into the scene), i.e. ``u = cx − f·x/z``, ``v = cy − f·y/z``; ``focal_length`` is in mm on
a 32 mm-wide sensor, ``f = focal_length · W / 32``. :func:`pix3d_to_opencv` flips x and y to the
framework's OpenCV camera (its own inverse).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sfd_lightning.errors import InputError

SENSOR_MM = 32.0
REQUIRED_KEYS = ("img", "category", "model", "bbox", "mask", "img_size", "focal_length", "rot_mat", "trans_mat")
_FLIP = np.diag([-1.0, -1.0, 1.0])


def model_folder(model: str) -> str:
    """``"model/chair/IKEA_X/model.obj"`` -> ``"IKEA_X.model"``."""
    path = Path(model)
    return f"{path.parent.name}.{path.stem}"


@dataclass(frozen=True)
class Pix3DLayout:
    """File paths of one Pix3D root."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def annotations(self) -> Path:
        return self.root / "pix3d.json"

    def split(self, kind: str) -> Path:
        return self.root / "splits" / f"{kind}.json"

    def file(self, relative: str) -> Path:
        """A path stored in ``pix3d.json`` (``img``, ``mask``, ``model``), relative to the root."""
        return self.root / relative

    def _data(self, kind: str, entry: dict) -> Path:
        return self.root / "data" / kind / entry["category"] / model_folder(entry["model"])

    def crop_npy(self, entry: dict) -> Path:
        return self._data("img", entry) / f"{Path(entry['img']).stem}.npy"

    def sampled_points(self, entry: dict) -> Path:
        return self._data("sampled_points", entry) / "sampled_points.h5"

    def isosurface(self, entry: dict) -> Path:
        return self._data("isosurface", entry) / "isosurf_scaled.obj"

    def mesh_org(self, entry: dict) -> Path:
        return self._data("isosurface", entry) / "mesh_org.ply"


def read_pix3d_json(path: str | Path) -> list[dict]:
    """``pix3d.json`` entries, each checked for the keys LIST and the camera need."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "annotation file not found", "point `root` at the Pix3D folder holding pix3d.json")
    try:
        entries = json.loads(path.read_text())
    except Exception as exc:
        raise InputError(path, f"not valid JSON ({str(exc)[:60]})", "restore pix3d.json") from None
    if not isinstance(entries, list):
        raise InputError(path, "expected a list of annotation dicts", "restore pix3d.json")
    for index, entry in enumerate(entries):
        missing = [k for k in REQUIRED_KEYS if k not in entry] if isinstance(entry, dict) else list(REQUIRED_KEYS)
        if missing:
            raise InputError(path, f"entry {index} lacks {missing}", "restore the entry's fields")
    return entries


def read_total3d_split(path: str | Path) -> list[int]:
    """Indices into ``pix3d.json`` of a Total3D split (``.../<idx>.pkl``; ``_flipped`` copies dropped)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "split file not found", "add splits/{train,test}.json (Total3D format)")
    try:
        names = json.loads(path.read_text())
        indices = []
        for name in names:
            stem = Path(str(name)).stem
            if stem.endswith("_flipped"):
                continue
            if not re.fullmatch(r"\d+", stem):
                raise ValueError(f"entry '{name}' is not '<idx>.pkl'")
            indices.append(int(stem))
    except Exception as exc:
        raise InputError(path, f"not a Total3D split ({str(exc)[:60]})",
                         'a JSON list like ["./data/pix3d/train_test_data/12.pkl", ...]') from None
    return list(dict.fromkeys(indices))


def pix3d_to_opencv(rot_mat, trans_mat) -> tuple[np.ndarray, np.ndarray]:
    """Pix3D model->camera ``(R (3, 3), t (3,))`` <-> OpenCV (x right, y down); self-inverse."""
    R = np.asarray(rot_mat, dtype=np.float64).reshape(3, 3)
    t = np.asarray(trans_mat, dtype=np.float64).reshape(3)
    return _FLIP @ R, _FLIP @ t


def pix3d_intrinsics(focal_length_mm: float, width: int, height: int) -> np.ndarray:
    """``K (3, 3)``: ``f = focal_length · W / 32`` px, principal point at the image centre."""
    from sfd_lightning.geometry.cameras import intrinsics_from_focal_mm

    return intrinsics_from_focal_mm(float(focal_length_mm), SENSOR_MM, int(width), int(height))


def pix3d_camera(entry: dict):
    """OpenCV :class:`~sfd_lightning.geometry.cameras.PinholeCamera` (model frame -> image) of an entry."""
    from sfd_lightning.geometry.cameras import PinholeCamera

    width, height = (int(v) for v in entry["img_size"])
    R, t = pix3d_to_opencv(entry["rot_mat"], entry["trans_mat"])
    return PinholeCamera(pix3d_intrinsics(entry["focal_length"], width, height), R, t, width, height)


def read_mask(path: str | Path) -> np.ndarray:
    """Binary mask ``(H, W)`` bool (pixels > 127 of a grayscale or colour PNG)."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "mask not found", "restore the mask file")
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise InputError(path, "not a readable image", "re-save the mask as PNG")
    return mask > 127


def read_crop_npy(path: str | Path) -> np.ndarray:
    """LIST crop ``(H, W, 3)`` uint8."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "LIST image crop not found", "write data/img/... crops or set use_npy_crops false")
    try:
        crop = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(path, f"not a readable .npy ({str(exc)[:60]})", "regenerate the crop") from None
    if crop.ndim != 3 or crop.shape[2] < 3 or crop.dtype != np.uint8:
        raise InputError(path, f"crop has shape {crop.shape} dtype {crop.dtype}", "store uint8 (H, W, 3)")
    return crop[:, :, :3]
