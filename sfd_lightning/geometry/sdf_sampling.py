"""Ground-truth SDF samples: mesh signed distance, near-surface sampling, frame normalisations.

Traps handled here (point-cloud-utils 0.34, DESIGN.md): ``signed_distance_to_mesh`` and
``closest_points_on_mesh`` return wrong values for a single query point (queries are padded to
two rows), and the magnitude of ``signed_distance_to_mesh`` can differ from the distance to its
own closest point (by ~3e-3 on a unit icosphere), so the magnitude is taken from the exact
``closest_points_on_mesh`` and only the sign from ``signed_distance_to_mesh`` (winding number,
negative inside). Signs need closed, consistently oriented meshes, or ``repair`` (see
:func:`mesh_signed_distance`).

Sampling conventions: ``sigmas`` are STANDARD DEVIATIONS of the isotropic Gaussian perturbation.
DeepSDF states variances (0.005 and 0.0005 for training), i.e. ``DEEPSDF_TRAIN_SIGMAS``; LIST
uses standard deviations 0.003, 0.01, 0.07 (``LIST_SIGMAS``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sfd_lightning.errors import InputError
from sfd_lightning.geometry.io import Mesh

DEEPSDF_TRAIN_SIGMAS = (math.sqrt(0.005), math.sqrt(0.0005))
DEEPSDF_TEST_SIGMAS = (math.sqrt(0.05), math.sqrt(0.0005))
LIST_SIGMAS = (0.003, 0.01, 0.07)
_CHUNK = 200_000
SdfFn = Callable[[np.ndarray], np.ndarray]


def _evaluate(sdf_fn: SdfFn, queries: np.ndarray) -> np.ndarray:
    """Evaluate an SDF callable (numpy or torch output) in chunks -> ``(N,)`` float64."""
    out = np.empty(len(queries))
    for start in range(0, len(queries), _CHUNK):
        values = sdf_fn(queries[start:start + _CHUNK])
        if hasattr(values, "detach"):
            values = values.detach().cpu().numpy()
        out[start:start + _CHUNK] = np.asarray(values, dtype=np.float64).reshape(-1)
    return out


def near_surface_samples(surface_points: np.ndarray, sdf_fn: SdfFn, sigmas: Sequence[float],
                         counts: int | Sequence[int], uniform_count: int = 0,
                         box: tuple[float, float] = (-1.0, 1.0), seed: int = 0) -> dict[str, np.ndarray]:
    """Queries around ``surface_points (M, 3)`` and uniform in a box, with their signed distances.

    Level ``i``: ``counts[i]`` anchors drawn with ``rng.choice`` (with replacement only when more
    than ``M`` are asked for), each perturbed by ``N(0, sigmas[i]^2 I)``; level ``-1``:
    ``uniform_count`` points uniform in ``[box[0], box[1]]^3``.

    Args:
        surface_points: ``(M, 3)`` anchors on the surface.
        sdf_fn: ``(N, 3) float64 -> (N,)`` signed distance, negative inside (numpy or torch
            output), evaluated in chunks of 200k points.
        sigmas: Gaussian STANDARD DEVIATIONS per level (DeepSDF states variances: pass
            :data:`DEEPSDF_TRAIN_SIGMAS`; LIST: :data:`LIST_SIGMAS`).
        counts: queries per level (one int for all levels, or one per level).
        seed: all randomness comes from ``default_rng(seed)``.

    Returns:
        ``points (Q, 3)`` float64, ``sdf (Q,)`` float64 and ``level (Q,)`` int64 (index of the
        sigma, -1 for uniform samples), levels in order then the uniform block. Rows for a file:
        ``np.concatenate([points, sdf[:, None]], 1)``; one level: ``points[level == i]``.
    """
    anchors = np.asarray(surface_points, dtype=np.float64).reshape(-1, 3)
    count_list = [int(counts)] * len(sigmas) if np.isscalar(counts) else [int(c) for c in counts]
    if len(sigmas) != len(count_list):
        raise ValueError("sigmas and counts must have the same length")
    if len(anchors) == 0 and any(count_list):
        raise ValueError("near_surface_samples needs at least one surface point")
    rng = np.random.default_rng(seed)
    chunks, levels = [], []
    for level, (sigma, count) in enumerate(zip(sigmas, count_list)):
        pick = rng.choice(len(anchors), size=count, replace=count > len(anchors))
        chunks.append(anchors[pick] + rng.normal(0.0, float(sigma), size=(count, 3)))
        levels.append(np.full(count, level, dtype=np.int64))
    if uniform_count > 0:
        chunks.append(rng.uniform(box[0], box[1], size=(int(uniform_count), 3)))
        levels.append(np.full(int(uniform_count), -1, dtype=np.int64))
    points = np.concatenate(chunks, 0) if chunks else np.zeros((0, 3))
    level = np.concatenate(levels) if levels else np.zeros(0, dtype=np.int64)
    return {"points": points, "sdf": _evaluate(sdf_fn, points), "level": level}


def watertight_problem(mesh: Mesh) -> str | None:
    """Why ``mesh`` is not a closed, consistently oriented 2-manifold (``None`` when it is).

    Vertices at identical positions are merged first, so seams of split vertices do not count.
    """
    if len(mesh.faces) == 0:
        return "mesh has no faces"
    _, remap = np.unique(np.asarray(mesh.vertices, dtype=np.float64), axis=0, return_inverse=True)
    faces = remap.reshape(-1)[np.asarray(mesh.faces, dtype=np.int64)]
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    undirected = np.sort(directed, axis=1)
    _, edge_counts = np.unique(undirected, axis=0, return_counts=True)
    boundary = int((edge_counts == 1).sum())
    if boundary:
        return f"mesh is not watertight ({boundary} boundary edges)"
    if (edge_counts > 2).any():
        return f"mesh is not watertight ({int((edge_counts > 2).sum())} non-manifold edges)"
    _, directed_counts = np.unique(directed, axis=0, return_counts=True)
    if (directed_counts > 1).any():
        return "mesh is not watertight (inconsistent face orientation)"
    return None


def is_watertight(mesh: Mesh) -> bool:
    """True when ``mesh`` is closed and consistently oriented (see :func:`watertight_problem`)."""
    return watertight_problem(mesh) is None


def signed_volume(mesh: Mesh) -> float:
    """Enclosed volume of a closed mesh, negative when its faces point inwards."""
    tri = np.asarray(mesh.vertices, dtype=np.float64)[np.asarray(mesh.faces, dtype=np.int64)]
    return float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)


def orient_and_fill(mesh: Mesh) -> Mesh:
    """Merge duplicate vertices, make face winding consistent, fill small (3-4 edge) holes.

    Keeps the surface exactly (trimesh ``fix_normals`` + ``fill_holes``); the result is
    watertight only when the holes were small. Closed results face outwards.
    """
    import trimesh

    candidate = trimesh.Trimesh(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64),
                                process=True)
    trimesh.repair.fix_normals(candidate)
    candidate.fill_holes()
    fixed = Mesh(np.asarray(candidate.vertices, np.float64), np.asarray(candidate.faces, np.int64))
    if is_watertight(fixed) and signed_volume(fixed) < 0:
        fixed = Mesh(fixed.vertices, fixed.faces[:, ::-1].copy())
    return fixed


def make_watertight(mesh: Mesh, resolution: int = 20_000, seed: int = 0) -> Mesh:
    """A closed mesh for ``mesh``, deterministically.

    :func:`orient_and_fill` first (exact surface); when holes remain, point-cloud-utils' Manifold
    repair (``make_mesh_watertight``, seeded). Caveat, measured: Manifold floods through holes
    wider than its octree cells, so a sphere with 5% of its faces missing becomes a thin shell
    whose interior counts as OUTSIDE (11% wrong signs at resolution 20000);
    :func:`mesh_signed_distance` with ``repair=True`` therefore does not use it.
    """
    import point_cloud_utils as pcu

    fixed = orient_and_fill(mesh)
    if is_watertight(fixed):
        return fixed
    vertices, faces = pcu.make_mesh_watertight(np.asarray(mesh.vertices, dtype=np.float64),
                                               np.asarray(mesh.faces, dtype=np.int64),
                                               resolution=resolution, seed=seed)
    return Mesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64))


def mesh_signed_distance(mesh: Mesh, points: np.ndarray, repair: bool = False,
                         path: str | Path | None = None) -> np.ndarray:
    """Signed distance ``(N,)`` float64 from ``points (N, 3)`` to ``mesh``, negative inside.

    Magnitude: exact distance to the surface (``closest_points_on_mesh``). Sign: the (fast)
    winding number of ``signed_distance_to_mesh`` -- exact inside/outside for a closed mesh.
    A closed mesh whose faces all point inwards is flipped, not rejected.

    A mesh that is not watertight (or inconsistently wound) raises :class:`InputError` naming
    ``path`` unless ``repair``. With ``repair`` the mesh goes through :func:`orient_and_fill`
    (surface unchanged); if holes remain, the generalised winding number of the oriented mesh
    decides the sign (robust to holes: 100% correct signs on a sphere with 5% of its faces
    missing, where Manifold repair gets 89%), and open sheets without volume come out positive.
    """
    import point_cloud_utils as pcu

    problem = watertight_problem(mesh)
    if problem is not None:
        if not repair:
            raise InputError(path, f"{problem}; its signed distance is undefined",
                             "pass --repair (repair=True) to close it first, or fix the mesh")
        mesh = orient_and_fill(mesh)
    elif signed_volume(mesh) < 0:
        mesh = Mesh(mesh.vertices, np.asarray(mesh.faces)[:, ::-1])
    query = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    count = len(query)
    if count == 0:
        return np.zeros(0)
    if count < 2:  # pcu returns wrong values for a single query point
        query = np.concatenate([query, query + 1.0])
    vertices = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
    faces = np.ascontiguousarray(mesh.faces, dtype=np.int64)
    query = np.ascontiguousarray(query)
    signed, _, _ = pcu.signed_distance_to_mesh(query, vertices, faces)
    distance, _, _ = pcu.closest_points_on_mesh(query, vertices, faces)
    result = np.where(np.asarray(signed) < 0, -1.0, 1.0) * np.asarray(distance, dtype=np.float64)
    return result[:count]


def _used_vertices(vertices: np.ndarray, faces: np.ndarray | None) -> np.ndarray:
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    if faces is None:
        return vertices
    return vertices[np.unique(np.asarray(faces, dtype=np.int64))]


def normalize_unit_cube(vertices: np.ndarray, *, faces: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray, float]:
    """LIST / ONet frame: bbox centre to the origin, longest bbox side to 1 (``[-0.5, 0.5]^3``).

    Returns ``(normalized (V, 3), center (3,), scale)`` with ``normalized = (v - center) / scale``
    and inverse ``v = normalized * scale + center`` (``scale`` = longest side). With ``faces``
    only referenced vertices define the box.
    """
    used = _used_vertices(vertices, faces)
    lo, hi = used.min(axis=0), used.max(axis=0)
    center = (lo + hi) / 2.0
    scale = float((hi - lo).max())
    if scale <= 0:
        raise ValueError("cannot normalise a degenerate (zero-size) shape")
    return (np.asarray(vertices, dtype=np.float64) - center) / scale, center, scale


def normalize_unit_sphere_deepsdf(vertices: np.ndarray, buffer: float = 1.03, *, faces: np.ndarray | None = None
                                  ) -> tuple[np.ndarray, np.ndarray, float]:
    """DeepSDF frame: ``offset = -bbox centre``, ``scale = 1 / (buffer * max distance)``, buffer 1.03.

    Returns ``(normalized (V, 3), offset (3,), scale)`` with ``p_norm = (x + offset) * scale``
    and inverse ``x = p_norm / scale - offset``; the farthest vertex lands at 1/buffer. With
    ``faces`` only referenced vertices count (DeepSDF ignores unreferenced vertices).
    """
    used = _used_vertices(vertices, faces)
    offset = -(used.min(axis=0) + used.max(axis=0)) / 2.0
    max_distance = float(np.linalg.norm(used + offset, axis=1).max())
    if max_distance <= 0:
        raise ValueError("cannot normalise a degenerate (zero-size) shape")
    scale = 1.0 / (buffer * max_distance)
    return (np.asarray(vertices, dtype=np.float64) + offset) * scale, offset, scale
