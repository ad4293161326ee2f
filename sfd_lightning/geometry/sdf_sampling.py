"""SDF ground truth: near-surface samples, mesh signed distance, normalisation frames.

- :func:`near_surface_samples`: points perturbed around surface anchors with Gaussian noise of
  std σ per level, plus uniform samples in a box, with their signed distances from ``sdf_fn``.
- :func:`mesh_signed_distance`: point-cloud-utils signed distance (negative inside). A signed
  quantity needs a closed mesh: a non-watertight mesh is an error unless ``repair`` is set,
  which runs point-cloud-utils' Manifold repair first (CONTRACTS §6).
- :func:`normalize_unit_cube` (ONet/LIST: bbox centre, longest side 1) and
  :func:`normalize_unit_sphere_deepsdf` (DeepSDF: offset = −bbox centre,
  scale = 1/(1.03·max distance); ``p_norm = (x + offset)·scale``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sfd_lightning.errors import InputError
from sfd_lightning.geometry.io import Mesh

SdfFn = Callable[[np.ndarray], np.ndarray]


def near_surface_samples(surface_points: np.ndarray, sdf_fn: SdfFn, sigmas: Sequence[float],
                         counts: Sequence[int], uniform_count: int = 0,
                         box: tuple[float, float] = (-1.0, 1.0), seed: int = 0) -> dict[str, np.ndarray]:
    """Queries around ``surface_points (M, 3)`` and in a box, with their SDF.

    Args:
        sigmas: Gaussian std per level (DeepSDF gives variances 0.005/0.0005: pass their roots).
        counts: queries per level, drawn from the anchors with replacement when larger than M.
        uniform_count: extra uniform samples in ``box`` (per-axis bounds).

    Returns:
        ``points (Q, 3)``, ``sdf (Q,)`` float64 and ``level (Q,)`` int (−1 for uniform samples).
    """
    if len(sigmas) != len(counts):
        raise ValueError("sigmas and counts must have the same length")
    rng = np.random.default_rng(seed)
    anchors = np.asarray(surface_points, dtype=np.float64)
    chunks, levels = [], []
    for level, (sigma, count) in enumerate(zip(sigmas, counts)):
        count = int(count)
        pick = rng.choice(len(anchors), size=count, replace=count > len(anchors))
        chunks.append(anchors[pick] + rng.normal(0.0, float(sigma), size=(count, 3)))
        levels.append(np.full(count, level))
    if uniform_count > 0:
        chunks.append(rng.uniform(box[0], box[1], size=(int(uniform_count), 3)))
        levels.append(np.full(int(uniform_count), -1))
    points = np.concatenate(chunks, 0) if chunks else np.zeros((0, 3))
    sdf = np.asarray(sdf_fn(points), dtype=np.float64).reshape(-1) if len(points) else np.zeros(0)
    return {"points": points, "sdf": sdf, "level": np.concatenate(levels) if levels else np.zeros(0, int)}


def is_watertight(mesh: Mesh) -> bool:
    """Every edge shared by exactly two faces with opposite orientation (closed, consistently wound)."""
    import trimesh

    return bool(trimesh.Trimesh(mesh.vertices, mesh.faces, process=True).is_watertight)


def make_watertight(mesh: Mesh, resolution: int = 20_000) -> Mesh:
    """Close a mesh: fill simple holes (trimesh) when that suffices, else point-cloud-utils'
    Manifold repair (which wraps open sheets in a thin closed shell)."""
    import point_cloud_utils as pcu
    import trimesh

    candidate = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)
    trimesh.repair.fix_normals(candidate)
    candidate.fill_holes()
    if candidate.is_watertight:
        if candidate.volume < 0:
            candidate.invert()
        return Mesh(np.asarray(candidate.vertices, np.float64), np.asarray(candidate.faces, np.int64))

    vertices, faces = pcu.make_mesh_watertight(np.asarray(mesh.vertices, np.float64),
                                               np.asarray(mesh.faces, np.int32), resolution=resolution)
    return Mesh(np.asarray(vertices, np.float64), np.asarray(faces, np.int64))


def mesh_signed_distance(mesh: Mesh, points: np.ndarray, repair: bool = False,
                         path: str | Path | None = None) -> np.ndarray:
    """Signed distance ``(N,)`` from ``points (N, 3)`` to ``mesh``, negative inside.

    Raises:
        InputError: the mesh is not watertight and ``repair`` is False.
    """
    import point_cloud_utils as pcu

    if not is_watertight(mesh):
        if not repair:
            raise InputError(path, "mesh is not watertight, so inside/outside (the SDF sign) is undefined",
                             "pass --repair to close it first")
        mesh = make_watertight(mesh)
    query = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 3)
    single = len(query) == 1
    if single:  # pcu returns NaN for a single query point: pad with a copy
        query = np.repeat(query, 2, axis=0)
    distance, _, _ = pcu.signed_distance_to_mesh(query, np.ascontiguousarray(mesh.vertices, np.float64),
                                                 np.ascontiguousarray(mesh.faces, np.int32))
    distance = np.asarray(distance, dtype=np.float64)
    return distance[:1] if single else distance


def normalize_unit_cube(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``(normalized, center (3,), side)`` with ``normalized = (v − center)/side`` in [−0.5, 0.5]³."""
    vertices = np.asarray(vertices, dtype=np.float64)
    lo, hi = vertices.min(0), vertices.max(0)
    center = (lo + hi) / 2
    side = float((hi - lo).max())
    return (vertices - center) / side, center, side


def normalize_unit_sphere_deepsdf(vertices: np.ndarray, buffer: float = 1.03) -> tuple[np.ndarray, np.ndarray, float]:
    """DeepSDF frame: ``(normalized, offset (3,), scale)`` with ``normalized = (v + offset)·scale``.

    ``offset = −bbox centre``; ``scale = 1/(buffer · max distance to the centre)``, so the farthest
    vertex lands at 1/1.03. Inverse: ``v = normalized/scale − offset``.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    offset = -(vertices.min(0) + vertices.max(0)) / 2
    scale = 1.0 / (buffer * float(np.linalg.norm(vertices + offset, axis=1).max()))
    return (vertices + offset) * scale, offset, scale
