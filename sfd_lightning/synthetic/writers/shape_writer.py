"""Write one shape into both ShapeNet-style layouts from a mesh and a signed-distance function.

Shared by ``sfd data synth shapenet`` (analytic CSG fields, meshes extracted from them) and
``sfd data prepare-sdf`` (real meshes, signed distance to the mesh). Frames:

- **original**: the mesh as given (``SurfaceSamples`` live here).
- **DeepSDF**: ``p = (x + offset) · scale`` with ``offset = −bbox centre`` of the vertices used by
  faces and ``scale = 1 / (1.03 · max distance)`` (``NormalizationParameters``; SDF samples).
- **LIST**: ``p = (x − bbox centre) / longest bbox side`` (``isosurf_scaled.obj`` in [−0.5, 0.5]³).

Signed distances are negative inside and scale with the frame (``sdf_norm(p) = s · sdf(x)``).

DeepSDF sampling (``PreprocessMesh``): train shapes get ``samples`` rows = 47% surface samples +
N(0, 0.005) noise, 47% + N(0, 0.0005) noise (variances), 6% uniform in [−1, 1]³; test shapes get
half as many with the first variance 0.05 (DeepSDF ``-t``). Signs come from the SDF function (no
visibility voting), so pos/neg are exactly ``sdf > 0`` / ``sdf ≤ 0``.
LIST sampling: ``list_points`` surface samples, each perturbed once per σ (default 0.003, 0.01,
0.07); FPS of the surface samples from index 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sfd_lightning.datamodules.shapenet_files import ShapeNetLayout
from sfd_lightning.geometry.fps import farthest_point_sampling
from sfd_lightning.geometry.io import Mesh, sample_mesh_surface, save_mesh
from sfd_lightning.geometry.sdf_sampling import (DEEPSDF_TEST_SIGMAS, DEEPSDF_TRAIN_SIGMAS, LIST_SIGMAS,
                                                 near_surface_samples, normalize_unit_cube,
                                                 normalize_unit_sphere_deepsdf)
from sfd_lightning.synthetic.writers.shapenet_layout import (write_farthest_points, write_list_samples,
                                                             write_npz, write_surface_ply)

#: ``(N, 3)`` float64 points in the ORIGINAL frame -> ``(N,)`` signed distances (negative inside).
SdfFn = Callable[[np.ndarray], np.ndarray]

DEEPSDF_UNIFORM_FRACTION = 0.06  # 30k of 500k (train), 15k of 250k (test)


@dataclass
class SampleSpec:
    """Sample counts per shape (defaults: the original pipelines)."""

    samples: int = 500_000
    surface_points: int = 30_000
    list_points: int = 50_000
    list_sigmas: tuple[float, ...] = LIST_SIGMAS
    fps_points: int = 5000


def deepsdf_counts(total: int) -> tuple[int, int, int]:
    """``(near σ₁, near σ₂, uniform)`` row counts for ``total`` DeepSDF samples."""
    uniform = int(round(DEEPSDF_UNIFORM_FRACTION * total))
    near = (total - uniform) // 2
    return near, near, uniform


def _used_vertices(mesh: Mesh) -> np.ndarray:
    return mesh.vertices[np.unique(mesh.faces.reshape(-1))]


def write_deepsdf_shape(layout: ShapeNetLayout, synset: str, instance: str, mesh: Mesh, sdf_fn: SdfFn,
                        spec: SampleSpec, split: str, seed: int) -> dict[str, float]:
    """``SdfSamples`` + ``NormalizationParameters`` + ``SurfaceSamples`` of one shape.

    Returns:
        summary: ``{"pos": rows, "neg": rows, "deepsdf_scale": s}``.
    """
    _, offset, scale = normalize_unit_sphere_deepsdf(_used_vertices(mesh))
    offset = np.asarray(offset, dtype=np.float64).reshape(3)
    scale = float(np.asarray(scale).reshape(-1)[0])
    surface, _ = sample_mesh_surface(mesh, spec.surface_points, seed=seed)
    write_surface_ply(layout.surface_samples(synset, instance), surface)
    write_npz(layout.normalization(synset, instance), offset=offset.astype(np.float32),
              scale=np.array([scale], dtype=np.float32))

    total = spec.samples if split != "test" else max(spec.samples // 2, 1)
    near1, near2, uniform = deepsdf_counts(total)
    normalized = Mesh((mesh.vertices + offset) * scale, mesh.faces)
    anchors, _ = sample_mesh_surface(normalized, max(near1, 1), seed=seed + 1)
    sigmas = DEEPSDF_TEST_SIGMAS if split == "test" else DEEPSDF_TRAIN_SIGMAS

    def sdf_normalized(points: np.ndarray) -> np.ndarray:
        return np.asarray(sdf_fn(np.asarray(points, dtype=np.float64) / scale - offset)) * scale

    out = near_surface_samples(anchors, sdf_normalized, sigmas=sigmas, counts=[near1, near2],
                               uniform_count=uniform, box=(-1.0, 1.0), seed=seed + 2)
    rows = np.concatenate([out["points"], out["sdf"][:, None]], axis=1).astype(np.float32)
    pos, neg = rows[rows[:, 3] > 0], rows[rows[:, 3] <= 0]
    write_npz(layout.sdf_samples(synset, instance), pos=pos, neg=neg)
    return {"pos": len(pos), "neg": len(neg), "deepsdf_scale": scale}


def write_list_files(isosurface: Path, sampled_points: Path, farthest_points: Path | None, mesh: Mesh,
                     sdf_fn: SdfFn, spec: SampleSpec, seed: int) -> dict[str, float]:
    """LIST files at explicit paths: ``isosurf_scaled.obj``, ``sampled_points.h5``, optional FPS h5.

    Returns:
        ``{"list_side": longest bbox side, "list_center": bbox centre [x, y, z]}`` (original frame);
        ``p_list = (x - list_center) / list_side``.
    """
    _, center, side = normalize_unit_cube(_used_vertices(mesh))
    center = np.asarray(center, dtype=np.float64).reshape(3)
    side = float(np.asarray(side).reshape(-1)[0])
    scaled = Mesh((mesh.vertices - center) / side, mesh.faces)
    save_mesh(isosurface, scaled)
    grid, _ = sample_mesh_surface(scaled, spec.list_points, seed=seed)
    rng = np.random.default_rng(seed + 1)
    queries = {}
    for sigma in spec.list_sigmas:
        points = grid + rng.normal(0.0, sigma, size=grid.shape) if sigma > 0 else grid.copy()
        sdf = np.asarray(sdf_fn(points * side + center)) / side if sigma > 0 else np.zeros(len(grid))
        queries[sigma] = np.concatenate([points, sdf[:, None]], axis=1)
    write_list_samples(sampled_points, grid, queries)
    if farthest_points is not None:
        index = farthest_point_sampling(grid, min(spec.fps_points, len(grid)), start_index=0)
        write_farthest_points(farthest_points, grid[np.asarray(index)])
    return {"list_side": side, "list_center": center.tolist()}


def write_list_shape(layout: ShapeNetLayout, synset: str, instance: str, mesh: Mesh, sdf_fn: SdfFn,
                     spec: SampleSpec, seed: int) -> dict[str, float]:
    """LIST layout of one ShapeNet shape (isosurface, sample and FPS files under ``layout``)."""
    return write_list_files(layout.isosurface(synset, instance), layout.sampled_points(synset, instance),
                            layout.farthest_points(synset, instance), mesh, sdf_fn, spec, seed)
