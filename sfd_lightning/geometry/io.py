"""Reading and writing point clouds and meshes, with one-line errors that name the file.

Point clouds: ``.ply`` (vertices, optional ``nx ny nz``), ``.xyz``/``.txt``/``.pts`` (text,
3 or 6 columns), ``.npy`` (``(N, 3)`` or ``(N, 6)``), ``.npz`` (key ``points``/``point``/
``pos``/``vertices`` and optional ``normals``/``normal``). Meshes (``.obj``, ``.off``, ``.ply``
with faces, ``.stl``, ``.glb``) are sampled area-uniformly when a point cloud is asked for.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sfd_lightning.errors import InputError

POINT_CLOUD_SUFFIXES = (".ply", ".xyz", ".txt", ".pts", ".npy", ".npz")
MESH_SUFFIXES = (".obj", ".off", ".ply", ".stl", ".glb", ".gltf")
_NPZ_POINT_KEYS = ("points", "point", "pos", "vertices", "xyz")
_NPZ_NORMAL_KEYS = ("normals", "normal")


@dataclass
class PointCloud:
    """Points ``(N, 3)`` float32 and optional unit normals ``(N, 3)`` float32."""

    points: np.ndarray
    normals: np.ndarray | None = None


@dataclass
class Mesh:
    """Vertices ``(V, 3)`` float64 and faces ``(F, 3)`` int64, plus optional vertex colors."""

    vertices: np.ndarray
    faces: np.ndarray
    vertex_colors: np.ndarray | None = None

    @property
    def is_empty(self) -> bool:
        return len(self.vertices) == 0 or len(self.faces) == 0


def _require_file(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "file not found", "check the path")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a file", "point to a point cloud or mesh file")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty", "re-export the file")


def _load_trimesh(path: Path):
    import trimesh

    try:
        return trimesh.load(str(path), process=False, force=None)
    except Exception as exc:  # trimesh raises many types for corrupt files
        raise InputError(path, f"cannot be parsed ({type(exc).__name__}: {str(exc)[:80]})",
                         "check that the file is a valid mesh/point cloud") from None


def _validate_points(path: Path, array: np.ndarray, min_points: int) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[1] < 3:
        raise InputError(path, f"expected an (N, 3) array of points, got shape {array.shape}",
                         "store one x y z row per point")
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(path, f"points have non-numeric dtype {array.dtype}", "store floats")
    if len(array) == 0:
        raise InputError(path, "contains no points", "check the export")
    finite = np.isfinite(array[:, :3]).all(axis=1)
    if not finite.all():
        bad = int((~finite).sum())
        raise InputError(path, f"{bad} of {len(array)} points are NaN or infinite",
                         "remove those rows (e.g. points[np.isfinite(points).all(1)])")
    if len(array) < min_points:
        raise InputError(path, f"only {len(array)} points, at least {min_points} are needed",
                         "use a denser scan")
    extent = array[:, :3].max(0) - array[:, :3].min(0)
    if float(extent.max()) <= 0:
        raise InputError(path, "all points coincide", "check the export")
    return array


def load_point_cloud(path: str | Path, min_points: int = 1, mesh_samples: int = 100_000,
                     seed: int = 0) -> PointCloud:
    """Load a point cloud, or sample ``mesh_samples`` points (with normals) from a mesh file.

    Raises:
        InputError: missing/empty/corrupt file, NaN/inf, too few points, wrong shape.
    """
    path = Path(path)
    _require_file(path)
    suffix = path.suffix.lower()
    normals = None
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise InputError(path, f"not a readable .npy array ({str(exc)[:60]})", "re-save with np.save") from None
    elif suffix == ".npz":
        try:
            archive = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise InputError(path, f"not a readable .npz archive ({str(exc)[:60]})", "re-save with np.savez") from None
        key = next((k for k in _NPZ_POINT_KEYS if k in archive.files), None)
        if key is None:
            raise InputError(path, f"no point array among keys {archive.files}",
                             f"store points under one of {list(_NPZ_POINT_KEYS)}")
        array = archive[key].astype(np.float32)
        nkey = next((k for k in _NPZ_NORMAL_KEYS if k in archive.files), None)
        if nkey is not None and archive[nkey].shape == array.shape:
            normals = archive[nkey].astype(np.float32)
    elif suffix in (".xyz", ".txt", ".pts"):
        try:
            array = np.loadtxt(path, dtype=np.float64, ndmin=2)
        except Exception as exc:
            raise InputError(path, f"not a whitespace-separated text point cloud ({str(exc)[:60]})",
                             "write one 'x y z [nx ny nz]' row per line") from None
    elif suffix in MESH_SUFFIXES:
        loaded = _load_trimesh(path)
        faces = getattr(loaded, "faces", None)
        if faces is not None and len(faces) > 0:
            mesh = as_mesh(loaded, path)
            points, normals = sample_mesh_surface(mesh, mesh_samples, seed=seed)
            _validate_points(path, points, min_points)
            return PointCloud(points.astype(np.float32), normals.astype(np.float32))
        array = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))))
        raw = getattr(loaded, "metadata", {}).get("_ply_raw", {}).get("vertex", {}).get("data")
        if raw is not None and raw.dtype.names and {"nx", "ny", "nz"} <= set(raw.dtype.names):
            normals = np.stack([raw["nx"], raw["ny"], raw["nz"]], 1).astype(np.float32)
    else:
        raise InputError(path, f"unsupported file type '{suffix}'",
                         f"use one of {sorted(set(POINT_CLOUD_SUFFIXES + MESH_SUFFIXES))}")
    array = _validate_points(path, np.asarray(array), min_points)
    if normals is None and array.shape[1] >= 6:
        normals = array[:, 3:6].astype(np.float32)
    points = array[:, :3].astype(np.float32)
    if normals is not None and not np.isfinite(normals).all():
        normals = None
    return PointCloud(points, normals)


def as_mesh(loaded, path: Path) -> Mesh:
    """Convert a trimesh object (Trimesh or Scene) into :class:`Mesh`."""
    import trimesh

    if isinstance(loaded, trimesh.Scene):
        geometries = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)] if hasattr(loaded, "dump") else []
        if not geometries:
            raise InputError(path, "scene holds no triangle mesh", "export a single mesh")
        loaded = trimesh.util.concatenate(geometries)
    if not hasattr(loaded, "faces"):
        raise InputError(path, "holds points, not a mesh", "give a mesh with faces")
    vertices = np.asarray(loaded.vertices, dtype=np.float64)
    faces = np.asarray(loaded.faces, dtype=np.int64)
    if len(faces) and (faces.max() >= len(vertices) or faces.min() < 0):
        raise InputError(path, "face indices out of range", "repair the mesh")
    if len(vertices) and not np.isfinite(vertices).all():
        raise InputError(path, "mesh has NaN or infinite vertices", "repair the mesh")
    return Mesh(vertices, faces)


def load_mesh(path: str | Path, allow_empty: bool = False) -> Mesh:
    """Load a triangle mesh (``.obj/.off/.ply/.stl/.glb``)."""
    path = Path(path)
    _require_file(path)
    mesh = as_mesh(_load_trimesh(path), path)
    if mesh.is_empty and not allow_empty:
        raise InputError(path, "mesh has no faces", "give a non-empty triangle mesh")
    return mesh


def load_points_or_mesh(path: str | Path) -> Mesh | PointCloud:
    """Load a file as a :class:`Mesh` when it has faces, else as a :class:`PointCloud`."""
    path = Path(path)
    _require_file(path)
    if path.suffix.lower() in MESH_SUFFIXES:
        loaded = _load_trimesh(path)
        if getattr(loaded, "faces", None) is not None and len(loaded.faces) > 0:
            return as_mesh(loaded, path)
        if path.suffix.lower() != ".ply":
            mesh = as_mesh(loaded, path)
            if mesh.is_empty:
                return mesh
    return load_point_cloud(path)


def sample_mesh_surface(mesh: Mesh, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Area-uniform samples on a triangle mesh.

    Returns:
        points ``(count, 3)`` float64 and their face normals ``(count, 3)`` float64 (unit).
    """
    vertices, faces = mesh.vertices, mesh.faces
    tri = vertices[faces]  # (F, 3, 3)
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    doubled_area = np.linalg.norm(cross, axis=1)
    if doubled_area.sum() <= 0:
        raise InputError(None, "mesh has zero surface area", "give a non-degenerate mesh")
    rng = np.random.default_rng(seed)
    face_ids = rng.choice(len(faces), size=count, p=doubled_area / doubled_area.sum())
    u, v = rng.random(count), rng.random(count)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[face_ids]
    points = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
    normals = cross[face_ids] / np.maximum(doubled_area[face_ids], 1e-30)[:, None]
    return points, normals


def atomic_write(path: str | Path, write_fn) -> Path:
    """Write a file atomically: ``write_fn(tmp_path)`` then rename into place.

    Nothing half-written is ever left at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write_fn(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_mesh(path: str | Path, mesh: Mesh) -> Path:
    """Save a mesh atomically (format from the suffix; ``.ply`` keeps vertex colors)."""
    import trimesh

    def _write(tmp: Path) -> None:
        tm = trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_colors=mesh.vertex_colors, process=False)
        tm.export(str(tmp), file_type=Path(path).suffix.lstrip(".").lower())

    return atomic_write(path, _write)
