"""ShapeNet-style trees: path conventions and file readers (DeepSDF/DIT and LIST layouts).

One root holds both layouts (CONTRACTS §5.1; methods/dit.md §2.1, methods/list.md §2.1)::

    SdfSamples/ShapeNetV2/<synset>/<id>.npz               pos, neg float32 (n, 4) = x, y, z, sdf
    NormalizationParameters/ShapeNetV2/<synset>/<id>.npz  offset (3,), scale (1,): p = (x + offset)·scale
    SurfaceSamples/ShapeNetV2/<synset>/<id>.ply           ASCII points, original frame, dummy faces
    splits/sv2_<chairs|planes|...>_{train,test}.json      {"ShapeNetV2": {synset: [ids]}}
    <synset>/<id>/{easy,hard}/{image,image_rgb}/NN.png    RGBA / RGB on white + rendering_metadata.txt
    isosurface/<synset>/<id>/isosurf_scaled.obj           mesh in [-0.5, 0.5]^3 (longest side 1)
    sampled_points/<synset>/<id>/sampled_points.h5        grid_points, query_points_sigma_<s>
    sampled_points/<synset>/<id>/farthest_pointclouds.h5  points_<k> (k, 3) float32
    images/<synset>/<id>/easy/NN.png                       RGBA + rendering_metadata.txt
    DISN_split/<synset>_{train,test}.lst, DISN_split/testlist_all.lst

Every reader raises :class:`InputError` naming the file and the fix.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sfd_lightning.errors import InputError

#: ShapeNetCore synsets by category name (DeepSDF/DIT and LIST classes).
CATEGORY_SYNSETS: dict[str, str] = {
    "airplane": "02691156", "bench": "02828884", "cabinet": "02933112", "car": "02958343",
    "chair": "03001627", "display": "03211117", "lamp": "03636649", "speaker": "03691459",
    "rifle": "04090263", "sofa": "04256520", "table": "04379243", "phone": "04401088",
    "watercraft": "04530566",
}
#: DeepSDF split-file names (``splits/sv2_<name>_{train,test}.json``) by synset.
SPLIT_NAMES: dict[str, str] = {
    "02691156": "planes", "03001627": "chairs", "04379243": "tables", "04256520": "sofas",
    "03636649": "lamps", "02958343": "cars",
}
_ALIASES = {"plane": "airplane", "planes": "airplane", "airplanes": "airplane", "chairs": "chair",
            "tables": "table", "sofas": "sofa", "lamps": "lamp", "cars": "car"}
DATASET_KEY = "ShapeNetV2"
FPS_KEY_PREFIX = "points_"
QUERY_KEY_PREFIX = "query_points_sigma_"


def resolve_synset(name: str) -> str:
    """Synset id for a category name (``chair``, ``chairs``, ``plane``...) or a synset id itself."""
    name = str(name).strip()
    if re.fullmatch(r"\d{8}", name):
        return name
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in CATEGORY_SYNSETS:
        raise InputError(None, f"unknown ShapeNet category '{name}'",
                         f"use a synset id or one of {sorted(CATEGORY_SYNSETS)}")
    return CATEGORY_SYNSETS[key]


def split_name(synset: str) -> str:
    """DeepSDF split-file stem of a synset (``chairs``), or the synset id itself when unknown."""
    return SPLIT_NAMES.get(synset, synset)


@dataclass(frozen=True)
class ShapeNetLayout:
    """File paths of one ShapeNet-style root (both layouts)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # DeepSDF / DIT layout
    def sdf_samples(self, synset: str, instance: str) -> Path:
        return self.root / "SdfSamples" / DATASET_KEY / synset / f"{instance}.npz"

    def normalization(self, synset: str, instance: str) -> Path:
        return self.root / "NormalizationParameters" / DATASET_KEY / synset / f"{instance}.npz"

    def surface_samples(self, synset: str, instance: str) -> Path:
        return self.root / "SurfaceSamples" / DATASET_KEY / synset / f"{instance}.ply"

    def split_json(self, synset: str, kind: str) -> Path:
        return self.root / "splits" / f"sv2_{split_name(synset)}_{kind}.json"

    def render_dir(self, synset: str, instance: str, level: str = "easy") -> Path:
        return self.root / synset / instance / level

    def render_rgb(self, synset: str, instance: str, view: int, level: str = "easy") -> Path:
        return self.render_dir(synset, instance, level) / "image_rgb" / f"{view:02d}.png"

    def render_rgba(self, synset: str, instance: str, view: int, level: str = "easy") -> Path:
        return self.render_dir(synset, instance, level) / "image" / f"{view:02d}.png"

    # LIST layout
    def isosurface(self, synset: str, instance: str) -> Path:
        return self.root / "isosurface" / synset / instance / "isosurf_scaled.obj"

    def sampled_points(self, synset: str, instance: str) -> Path:
        return self.root / "sampled_points" / synset / instance / "sampled_points.h5"

    def farthest_points(self, synset: str, instance: str) -> Path:
        return self.root / "sampled_points" / synset / instance / "farthest_pointclouds.h5"

    def list_image_dir(self, synset: str, instance: str) -> Path:
        return self.root / "images" / synset / instance / "easy"

    def list_image(self, synset: str, instance: str, view: int) -> Path:
        return self.list_image_dir(synset, instance) / f"{view:02d}.png"

    def lst(self, synset: str, kind: str) -> Path:
        return self.root / "DISN_split" / f"{synset}_{kind}.lst"

    @property
    def testlist_all(self) -> Path:
        return self.root / "DISN_split" / "testlist_all.lst"


def _require(path: Path, what: str, fix: str) -> None:
    if not path.is_file():
        raise InputError(path, f"{what} not found", fix)


def read_sdf_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """DeepSDF samples: ``pos (P, 4)``, ``neg (Q, 4)`` float32 with non-finite rows dropped."""
    path = Path(path)
    _require(path, "SDF samples", "generate them (`sfd data prepare-sdf` or `sfd data synth shapenet`)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in ("pos", "neg") if k in data.files}
            keys = list(data.files)
    except Exception as exc:
        raise InputError(path, f"not a readable .npz ({str(exc)[:60]})", "regenerate the file") from None
    out = []
    for key in ("pos", "neg"):
        if key not in arrays:
            raise InputError(path, f"missing key '{key}' (has {keys})",
                             "store pos/neg float32 (n, 4) arrays (DeepSDF layout)")
        arr = np.asarray(arrays[key])
        if arr.ndim != 2 or arr.shape[1] != 4 or not np.issubdtype(arr.dtype, np.floating):
            raise InputError(path, f"'{key}' has shape {arr.shape} dtype {arr.dtype}, expected float (n, 4)",
                             "store rows x, y, z, sdf")
        arr = arr[np.isfinite(arr).all(axis=1)].astype(np.float32, copy=False)
        if len(arr) == 0:
            raise InputError(path, f"'{key}' has no finite rows", "regenerate the file")
        out.append(arr)
    return out[0], out[1]


def read_normalization(path: str | Path) -> tuple[np.ndarray, float]:
    """DeepSDF normalization: ``offset (3,)`` and ``scale``; ``p_norm = (x + offset)·scale``."""
    path = Path(path)
    _require(path, "normalization parameters", "regenerate them with the SDF samples")
    try:
        with np.load(path, allow_pickle=False) as data:
            offset = np.asarray(data["offset"], dtype=np.float64).reshape(-1)
            scale = np.asarray(data["scale"], dtype=np.float64).reshape(-1)
    except KeyError as exc:
        raise InputError(path, f"missing key {exc}", "store 'offset' (3,) and 'scale' (1,)") from None
    except Exception as exc:
        raise InputError(path, f"not a readable .npz ({str(exc)[:60]})", "regenerate the file") from None
    if offset.shape != (3,) or scale.shape != (1,):
        raise InputError(path, f"offset {offset.shape} / scale {scale.shape}, expected (3,) / (1,)",
                         "store offset (3,) and scale (1,)")
    if not (np.isfinite(offset).all() and np.isfinite(scale).all()) or scale[0] <= 0:
        raise InputError(path, "non-finite offset or non-positive scale", "regenerate the file")
    return offset, float(scale[0])


def read_surface_samples(path: str | Path) -> np.ndarray:
    """SurfaceSamples PLY vertices ``(N, 3)`` float64 in the original frame (no vertex merging)."""
    import trimesh

    path = Path(path)
    _require(path, "surface samples", "regenerate them with the SDF samples")
    try:
        loaded = trimesh.load(str(path), process=False)
        points = np.asarray(loaded.vertices, dtype=np.float64)
    except Exception as exc:
        raise InputError(path, f"cannot be parsed as PLY ({str(exc)[:60]})", "regenerate the file") from None
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0 or not np.isfinite(points).all():
        raise InputError(path, "no finite (N, 3) vertices", "regenerate the file")
    return points


def read_split_json(path: str | Path, keep_duplicates: bool = False) -> list[tuple[str, str]]:
    """``(synset, instance)`` pairs of a DeepSDF split JSON, duplicates dropped (with a warning)."""
    path = Path(path)
    _require(path, "split file", "give an existing split JSON")
    try:
        data = json.loads(path.read_text())
        groups = data[DATASET_KEY] if DATASET_KEY in data else next(iter(data.values()))
        pairs = [(str(s), str(i)) for s, ids in groups.items() for i in ids]
    except Exception as exc:
        raise InputError(path, f"not a split JSON ({str(exc)[:60]})",
                         '{"ShapeNetV2": {"<synset>": ["<id>", ...]}}') from None
    if keep_duplicates:
        return pairs
    unique = list(dict.fromkeys(pairs))
    if len(unique) < len(pairs):
        warnings.warn(f"{path}: {len(pairs) - len(unique)} duplicate ids dropped", stacklevel=2)
    return unique


def read_lst(path: str | Path) -> list[str]:
    """Ids of a DISN ``.lst`` split (one per line, blanks ignored)."""
    path = Path(path)
    _require(path, "split list", "give an existing .lst file (one shape id per line)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_testlist(path: str | Path) -> list[tuple[str, str, int]]:
    """``(synset, instance, view)`` triples of ``testlist_all.lst``."""
    path = Path(path)
    _require(path, "test list", "give testlist_all.lst ('synset shape view' per line)")
    triples = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or not parts[2].isdigit():
            raise InputError(path, f"line {n} is not 'synset shape view'", "fix the line")
        triples.append((parts[0], parts[1], int(parts[2])))
    return triples


def _h5_file(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except Exception as exc:
        raise InputError(path, f"not a readable HDF5 file ({str(exc)[:60]})", "regenerate the file") from None


def read_list_samples(path: str | Path) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """LIST ``sampled_points.h5``: ``grid_points (N, 3)`` and ``{sigma: (N_s, 4) x, y, z, sdf}``."""
    path = Path(path)
    _require(path, "LIST sample file", "generate it (`sfd data prepare-sdf` or `sfd data synth shapenet`)")
    with _h5_file(path) as f:
        keys = list(f.keys())
        if "grid_points" not in f:
            raise InputError(path, f"missing key 'grid_points' (has {keys})", "regenerate the file")
        grid = np.asarray(f["grid_points"][()], dtype=np.float64)
        queries = {float(k[len(QUERY_KEY_PREFIX):]): np.asarray(f[k][()], dtype=np.float32)
                   for k in keys if k.startswith(QUERY_KEY_PREFIX)}
    if not queries:
        raise InputError(path, f"no '{QUERY_KEY_PREFIX}<sigma>' keys (has {keys})", "regenerate the file")
    if grid.ndim != 2 or grid.shape[1] != 3 or not np.isfinite(grid).all():
        raise InputError(path, f"'grid_points' has shape {grid.shape} or non-finite values",
                         "store finite (N, 3) surface samples")
    for sigma, arr in queries.items():
        if arr.ndim != 2 or arr.shape[1] != 4 or len(arr) == 0 or not np.isfinite(arr).all():
            raise InputError(path, f"'{QUERY_KEY_PREFIX}{sigma:g}' has shape {arr.shape} or non-finite values",
                             "store finite (N, 4) rows x, y, z, sdf")
    return grid, dict(sorted(queries.items()))


def read_farthest_points(path: str | Path) -> np.ndarray:
    """FPS points ``(k, 3)`` float32 from the ``points_<k>`` key of ``farthest_pointclouds.h5``."""
    path = Path(path)
    _require(path, "farthest-point file", "generate it with the LIST samples")
    with _h5_file(path) as f:
        keys = [k for k in f.keys() if k.startswith(FPS_KEY_PREFIX)]
        if not keys:
            raise InputError(path, f"no '{FPS_KEY_PREFIX}<k>' key (has {list(f.keys())})", "regenerate the file")
        points = np.asarray(f[keys[0]][()], dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != 3 or not np.isfinite(points).all():
        raise InputError(path, f"'{keys[0]}' has shape {points.shape} or non-finite values", "regenerate the file")
    return points


def read_render_metadata(path: str | Path) -> np.ndarray:
    """``rendering_metadata.txt`` rows ``(V, 10)``: azimuth, elevation, 0, dist, 35, 32, 1.75, loc xyz.

    Rows of 7 values (older renders without the object shift) get a zero shift.
    """
    path = Path(path)
    _require(path, "rendering metadata", "re-render the views")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip().strip("[]")
        if not text:
            continue
        try:
            values = [float(v) for v in re.split(r"[,\s]+", text.strip(", ")) if v]
        except ValueError:
            raise InputError(path, f"line {n} is not a list of numbers", "re-render the views") from None
        if len(values) == 7:
            values += [0.0, 0.0, 0.0]
        if len(values) != 10:
            raise InputError(path, f"line {n} has {len(values)} values, expected 10", "re-render the views")
        rows.append(values)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 10)


def read_image(path: str | Path, size: int | None = None, alpha: str = "drop") -> np.ndarray:
    """Image as float32 ``(3, H, W)`` in [0, 1] (``(4, H, W)`` with ``alpha="keep"``).

    Args:
        alpha: ``"drop"`` keeps the RGB that transparent pixels hold (LIST: PIL ``convert('RGB')``),
            ``"white"`` composites on white, ``"keep"`` returns RGBA.
        size: resize to ``size x size`` (area interpolation when shrinking) when given.
    """
    import cv2

    path = Path(path)
    _require(path, "image", "re-render the views or fix the path")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(path, "not a readable image", "re-save it as PNG/JPEG")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = image[:, :, [2, 1, 0, 3]] if image.shape[2] == 4 else image[:, :, [2, 1, 0]]
    image = image.astype(np.float32) / (65535.0 if image.dtype == np.uint16 else 255.0)
    if image.shape[2] == 3:
        image = np.concatenate([image, np.ones_like(image[:, :, :1])], axis=2)
    if alpha == "white":
        image[:, :, :3] = image[:, :, :3] * image[:, :, 3:] + (1.0 - image[:, :, 3:])
    if size is not None and image.shape[:2] != (size, size):
        interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
        image = cv2.resize(image, (size, size), interpolation=interp)
    channels = 4 if alpha == "keep" else 3
    return np.ascontiguousarray(image[:, :, :channels].transpose(2, 0, 1))


def camera_from_metadata(row, width: int, height: int):
    """OpenCV camera (object frame -> camera) of one ``rendering_metadata.txt`` row.

    The camera sits at radius ``dist · 1.75`` (``row[3] · row[6]``) looking at the origin
    (:func:`~sfd_lightning.geometry.cameras.spherical_camera`, y up), lens ``row[4]`` mm on a
    ``row[5]`` mm sensor; the object is shifted by ``row[7:10]`` before imaging, which is folded into
    the translation: ``x_cam = R (x_obj + loc) + t``. The object frame is the render frame
    (ShapeNet ``model_normalized``: bounding-box centre at the origin, diagonal 1).
    """
    from sfd_lightning.geometry.cameras import (PinholeCamera, intrinsics_from_focal_mm,
                                                spherical_camera)

    row = np.asarray(row, dtype=np.float64).reshape(-1)
    K = intrinsics_from_focal_mm(row[4], row[5], width, height)
    cam = spherical_camera(row[0], row[1], row[3] * row[6], K, width, height)
    return PinholeCamera(K, cam.R, cam.t + cam.R @ row[7:10], width, height)
