"""UMR's y-symmetric icosphere template: vertex/face ordering, mirror pairs, UV sampler, mesh operators.

Geometry (methods/umr.md §2): icosahedron ``(±1, ±φ, 0), (0, ±1, ±φ), (±φ, 0, ±1)`` normalised,
``level`` midpoint subdivisions projected to the unit sphere (level 3: 642 vertices, 1280 faces).
The mesh is mirror-symmetric across the plane **y = 0**.

Ordering:
* vertices ``[on-plane (P), right y > 0 (R), left y < 0 (R)]``; left vertex ``P + R + i`` is the
  mirror of right vertex ``P + i``. The network predicts the first ``P + R`` ("predicted vertices").
* faces ``[on-plane (Q, they straddle the plane), right (M), left (M)]``; left face ``Q + M + i`` is
  the mirror of right face ``Q + i`` with its winding reversed (``(m(a), m(c), m(b))``), so every face
  stays outward oriented. Texture faces = ``Q + M`` (on-plane + right).

Texels: ``T × T`` per face, texel ``t = a·T + b`` at ``(a/(T−1))·v0 + (b/(T−1))·v1 + rest·v2`` (the
rasteriser's layout, :func:`~sfd_lightning.render.soft_raster_math.texel_gather`). Because of the
reversed winding, left texel ``(a, b)`` copies right texel ``(a, T−1−a−b)``
(:attr:`IcoTemplate.mirror_texel`; rows with ``a + b > T − 1`` are never read).

UV sampler (undeformed unit sphere): texel point ``p`` -> ``θ = arccos(z/|p|)``, ``φ = atan2(y, x)``,
``u = φ/π``, ``v = 2θ/π − 1`` (``grid_sample`` x = u, y = v); ``uv_sampler (Q + M, T·T, 2)``.
UV image ``H = 2^⌊log2(√(Q + M)·T)⌋``, ``W = 2H`` (level 3: 128 × 256).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["IcoTemplate", "build_template", "icosphere", "symmetric_vertices", "TABLE"]

#: (V, F, on-plane V, V pairs, on-plane F, F pairs, predicted V, texture faces, UV H, UV W) per level
TABLE = {
    1: (42, 80, 8, 17, 8, 36, 25, 44, 32, 64),
    2: (162, 320, 16, 73, 16, 152, 89, 168, 64, 128),
    3: (642, 1280, 32, 305, 32, 624, 337, 656, 128, 256),
}


def icosphere(level: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit icosphere ``(V, 3)`` float64, outward faces ``(F, 3)`` int64 (unordered)."""
    phi = (1.0 + math.sqrt(5.0)) / 2.0
    verts = [(-1, phi, 0), (1, phi, 0), (-1, -phi, 0), (1, -phi, 0), (0, -1, phi), (0, 1, phi),
             (0, -1, -phi), (0, 1, -phi), (phi, 0, -1), (phi, 0, 1), (-phi, 0, -1), (-phi, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5),
             (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    v = [np.array(p, dtype=np.float64) / np.linalg.norm(p) for p in verts]
    f = list(faces)
    for _ in range(level):
        cache: dict[tuple[int, int], int] = {}

        def mid(a: int, b: int) -> int:
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = v[a] + v[b]
                v.append(m / np.linalg.norm(m))
                cache[key] = len(v) - 1
            return cache[key]

        new = []
        for a, b, c in f:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        f = new
    verts_np, faces_np = np.stack(v), np.asarray(f, dtype=np.int64)
    # make every face outward (icosahedron table above is outward for a right-handed frame)
    tri = verts_np[faces_np]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flip = (normal * tri.mean(1)).sum(1) < 0
    faces_np[flip] = faces_np[flip][:, [0, 2, 1]]
    return verts_np, faces_np


@dataclass
class IcoTemplate:
    """Symmetric template tables (numpy; the module registers torch buffers from them).

    Attributes:
        level, texels (T): subdivision level and texels per face side.
        vertices ``(V, 3)`` unit sphere in the [on-plane, right, left] order.
        faces ``(F, 3)`` in the [on-plane, right, left] order, outward.
        n_plane, n_pair: on-plane vertices P and vertex pairs R (predicted vertices = P + R).
        n_plane_faces, n_face_pairs: Q and M (texture faces = Q + M).
        uv_sampler ``(Q + M, T·T, 2)`` in [−1, 1]; uv_size ``(H, W)``.
        mirror_texel ``(T·T,)`` texel permutation of left faces (left[t] = right[mirror_texel[t]]).
        edges ``(E, 2)``; interior edge face pairs ``(E, 2)`` with their opposite vertices ``(E, 2)``.
    """

    level: int
    texels: int
    vertices: np.ndarray
    faces: np.ndarray
    n_plane: int
    n_pair: int
    n_plane_faces: int
    n_face_pairs: int
    uv_sampler: np.ndarray
    uv_size: tuple[int, int]
    mirror_texel: np.ndarray
    edges: np.ndarray
    edge_opposite: np.ndarray

    @property
    def n_pred(self) -> int:
        return self.n_plane + self.n_pair

    @property
    def n_tex_faces(self) -> int:
        return self.n_plane_faces + self.n_face_pairs

    def mirror_vertex(self) -> np.ndarray:
        """Index of each vertex's mirror image ``(V,)``."""
        p, r = self.n_plane, self.n_pair
        return np.concatenate([np.arange(p), np.arange(p + r, p + 2 * r), np.arange(p, p + r)])


def _reorder(verts: np.ndarray, faces: np.ndarray, tol: float = 1e-9) -> tuple[np.ndarray, np.ndarray, int, int, int, int]:
    plane = np.flatnonzero(np.abs(verts[:, 1]) < tol)
    right = np.flatnonzero(verts[:, 1] >= tol)
    left_all = np.flatnonzero(verts[:, 1] <= -tol)
    # left partner of each right vertex
    key = {tuple(np.round(verts[i] * [1, -1, 1], 9)): i for i in left_all}
    left = np.array([key[tuple(np.round(verts[i], 9))] for i in right])
    order = np.concatenate([plane, right, left])
    new_of_old = np.empty(len(verts), dtype=np.int64)
    new_of_old[order] = np.arange(len(verts))
    v = verts[order]
    f = new_of_old[faces]
    p, r = len(plane), len(right)
    mirror = np.concatenate([np.arange(p), np.arange(p + r, p + 2 * r), np.arange(p, p + r)])
    is_left_v = np.arange(len(v)) >= p + r
    is_right_v = (np.arange(len(v)) >= p) & ~is_left_v
    has_l, has_r = is_left_v[f].any(1), is_right_v[f].any(1)
    on_plane_f = np.flatnonzero(has_l & has_r)
    right_f = np.flatnonzero(has_r & ~has_l)
    left_f = mirror[f[right_f]][:, [0, 2, 1]]
    faces_out = np.concatenate([f[on_plane_f], f[right_f], left_f])
    # the built left faces must be exactly the original left faces (as sets)
    orig_left = {tuple(sorted(t)) for t in f[np.flatnonzero(has_l & ~has_r)]}
    if {tuple(sorted(t)) for t in left_f} != orig_left or len(faces_out) != len(faces):
        raise RuntimeError("icosphere is not mirror symmetric across y = 0")
    return v, faces_out, p, r, len(on_plane_f), len(right_f)


def _edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique edges ``(E, 2)`` and the opposite vertex in each of the two faces ``(E, 2)`` (closed mesh)."""
    table: dict[tuple[int, int], list[int]] = {}
    for tri in faces:
        for k in range(3):
            a, b, c = int(tri[k]), int(tri[(k + 1) % 3]), int(tri[(k + 2) % 3])
            table.setdefault((min(a, b), max(a, b)), []).append(c)
    edges = np.array(list(table.keys()), dtype=np.int64)
    opposite = np.array([table[tuple(e)] for e in edges], dtype=np.int64)
    return edges, opposite


def build_template(level: int = 3, texels: int = 6) -> IcoTemplate:
    """Symmetric icosphere template of ``level`` with ``texels × texels`` samples per face."""
    if level < 1 or texels < 2:
        raise ValueError(f"level must be >= 1 and texels >= 2, got {level}, {texels}")
    verts, faces, p, r, q, m = _reorder(*icosphere(level))
    t = texels
    a, b = np.meshgrid(np.arange(t), np.arange(t), indexing="ij")  # texel index a·T + b
    alpha = (a.reshape(-1) / (t - 1))[:, None]
    beta = (b.reshape(-1) / (t - 1))[:, None]
    tri = verts[faces[: q + m]]  # (Q + M, 3, 3)
    pts = alpha[None] * tri[:, None, 0] + beta[None] * tri[:, None, 1] + (1 - alpha - beta)[None] * tri[:, None, 2]
    rad = np.linalg.norm(pts, axis=-1).clip(1e-12)
    theta = np.arccos(np.clip(pts[..., 2] / rad, -1.0, 1.0))
    phi = np.arctan2(pts[..., 1], pts[..., 0])
    uv = np.stack([phi / np.pi, 2.0 * theta / np.pi - 1.0], axis=-1).clip(-1.0, 1.0)
    height = 2 ** int(math.floor(math.log2(math.sqrt(q + m) * t)))
    a_, b_ = a.reshape(-1), b.reshape(-1)
    mirror_texel = np.where(a_ + b_ <= t - 1, a_ * t + np.clip(t - 1 - a_ - b_, 0, t - 1), a_ * t + b_)
    edges, opposite = _edges(faces)
    return IcoTemplate(level, t, verts, faces, p, r, q, m, uv.astype(np.float32), (height, 2 * height),
                       mirror_texel.astype(np.int64), edges, opposite)


def symmetric_vertices(pred: Tensor, n_plane: int) -> Tensor:
    """Predicted vertices ``(..., P + R, 3)`` -> all vertices ``(..., P + 2R, 3)`` (left = right with y negated)."""
    right = pred[..., n_plane:, :]
    left = right * right.new_tensor([1.0, -1.0, 1.0])
    return torch.cat([pred, left], dim=-2)
