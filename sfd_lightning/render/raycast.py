"""CPU ray casting of triangle meshes for ground-truth images (masks, depth, normals, instances).

Uses point-cloud-utils' Embree ``RayMeshIntersector``. Trap (DESIGN.md, pcu 0.34): passing a
single ``(3,)`` origin returns wrong hits for most rays, so one origin row per ray is always passed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sfd_lightning.geometry.cameras import PinholeCamera
from sfd_lightning.geometry.io import Mesh

# Corner-normal smoothing enumerates (corner, incident face) pairs; beyond this many pairs
# (pathological fans) the flat face normals are used instead.
_MAX_CORNER_PAIRS = 20_000_000


@dataclass
class RenderResult:
    """Per-pixel ray-casting result of an ``H x W`` camera.

    Attributes:
        mask: ``(H, W)`` bool, True where a ray hit a surface.
        depth: ``(H, W)`` float32 camera-z of the hit (not ray length), ``inf`` where missed.
        normals: ``(H, W, 3)`` float32 world-frame unit normals, oriented towards the camera
            (0 where missed).
        points: ``(H, W, 3)`` float32 world-frame hit points (0 where missed).
        instance: ``(H, W)`` int32 index of the hit mesh in the input list, -1 for background.
        face: ``(H, W)`` int64 face index WITHIN the hit mesh, -1 for background.
        barycentric: ``(H, W, 3)`` float32 barycentric coordinates of the hit in its face (0 bg).
    """

    mask: np.ndarray
    depth: np.ndarray
    normals: np.ndarray
    points: np.ndarray
    instance: np.ndarray
    face: np.ndarray
    barycentric: np.ndarray | None = None


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted ``(F, 3)`` (length = 2 x area) and unit ``(F, 3)`` face normals."""
    tri = vertices[faces]
    weighted = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    unit = weighted / np.maximum(np.linalg.norm(weighted, axis=1, keepdims=True), 1e-30)
    return weighted, unit


def corner_normals(vertices: np.ndarray, faces: np.ndarray, crease_angle_deg: float = 60.0) -> np.ndarray:
    """Smooth normals per face corner ``(F, 3, 3)`` that keep creases sharp ("auto smooth").

    The normal of corner ``(f, k)`` is the area-weighted mean of the normals of the faces around
    vertex ``faces[f, k]`` whose normal is within ``crease_angle_deg`` of face ``f``'s normal.
    ``crease_angle_deg <= 0`` gives flat (face) normals.
    """
    weighted, unit = face_normals(vertices, faces)
    num_faces = len(faces)
    if crease_angle_deg <= 0 or num_faces == 0:
        return np.repeat(unit[:, None, :], 3, axis=1)
    corner_vertex = faces.reshape(-1)
    corner_face = np.repeat(np.arange(num_faces), 3)
    order = np.argsort(corner_vertex, kind="stable")
    sorted_vertex = corner_vertex[order]
    starts = np.flatnonzero(np.r_[True, sorted_vertex[1:] != sorted_vertex[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    group_size = np.repeat(sizes, sizes)  # per sorted position
    group_start = np.repeat(starts, sizes)
    total = int(group_size.sum())
    if total > _MAX_CORNER_PAIRS:
        return np.repeat(unit[:, None, :], 3, axis=1)
    first = np.repeat(np.arange(len(order)), group_size)  # sorted position of the corner
    offsets = np.arange(total) - np.repeat(np.cumsum(group_size) - group_size, group_size)
    second = group_start[first] + offsets  # sorted position of the neighbour corner
    corner_a, corner_b = order[first], order[second]
    face_a, face_b = corner_face[corner_a], corner_face[corner_b]
    keep = np.einsum("ij,ij->i", unit[face_a], unit[face_b]) >= np.cos(np.radians(crease_angle_deg))
    summed = np.stack([np.bincount(corner_a[keep], weights=weighted[face_b[keep], axis],
                                   minlength=3 * num_faces) for axis in range(3)], axis=1)
    norm = np.linalg.norm(summed, axis=1, keepdims=True)
    fallback = np.repeat(unit, 3, axis=0)
    out = np.where(norm > 1e-30, summed / np.maximum(norm, 1e-30), fallback)
    return out.reshape(num_faces, 3, 3)


def _concatenate(meshes: list[Mesh]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stack meshes: vertices ``(V, 3)``, faces ``(F, 3)``, instance per face, face offset per mesh."""
    vertices, faces, instance = [], [], []
    vertex_offset = 0
    face_offsets = np.zeros(len(meshes), dtype=np.int64)
    for index, mesh in enumerate(meshes):
        verts = np.asarray(mesh.vertices, dtype=np.float64)
        tris = np.asarray(mesh.faces, dtype=np.int64)
        face_offsets[index] = sum(len(f) for f in faces)
        vertices.append(verts)
        faces.append(tris + vertex_offset)
        instance.append(np.full(len(tris), index, dtype=np.int32))
        vertex_offset += len(verts)
    return (np.concatenate(vertices), np.concatenate(faces), np.concatenate(instance), face_offsets)


def raycast(meshes: Mesh | list[Mesh], camera: PinholeCamera, crease_angle_deg: float = 60.0) -> RenderResult:
    """Cast one ray through every pixel centre of ``camera`` against ``meshes``.

    Args:
        meshes: one mesh or a list (instance ``i`` = ``meshes[i]``), all in the world frame.
        camera: the pinhole camera (OpenCV convention).
        crease_angle_deg: normals are interpolated corner normals smoothed across edges flatter
            than this angle (see :func:`corner_normals`); 0 gives flat face normals.

    Returns:
        :class:`RenderResult` with ``H x W`` maps.
    """
    import point_cloud_utils as pcu

    mesh_list = [meshes] if isinstance(meshes, Mesh) else list(meshes)
    height, width = camera.height, camera.width
    num_pixels = height * width
    mask = np.zeros(num_pixels, dtype=bool)
    depth = np.full(num_pixels, np.inf, dtype=np.float32)
    normals = np.zeros((num_pixels, 3), dtype=np.float32)
    points = np.zeros((num_pixels, 3), dtype=np.float32)
    instance = np.full(num_pixels, -1, dtype=np.int32)
    face = np.full(num_pixels, -1, dtype=np.int64)
    bary = np.zeros((num_pixels, 3), dtype=np.float32)
    non_empty = [m for m in mesh_list if len(m.faces) > 0]
    if non_empty:
        vertices, faces, face_instance, face_offsets = _concatenate(mesh_list)
        origins, directions = camera.pixel_rays()  # one origin row per ray (pcu trap)
        intersector = pcu.RayMeshIntersector(vertices, faces)
        hit_face, hit_bary, hit_t = intersector.intersect_rays(
            np.ascontiguousarray(origins), np.ascontiguousarray(directions))
        hit = (hit_face >= 0) & np.isfinite(hit_t)
        hit_face = hit_face[hit].astype(np.int64)
        ray_dir = directions[hit]
        hit_points = origins[hit] + hit_t[hit][:, None] * ray_dir
        corners = corner_normals(vertices, faces, crease_angle_deg)[hit_face]  # (n, 3, 3)
        n = np.einsum("nk,nkc->nc", hit_bary[hit], corners)
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)
        n *= np.where(np.einsum("nc,nc->n", n, ray_dir) > 0, -1.0, 1.0)[:, None]
        inst = face_instance[hit_face]
        mask[hit] = True
        depth[hit] = (hit_points - camera.center) @ camera.R[2]
        normals[hit] = n
        points[hit] = hit_points
        instance[hit] = inst
        face[hit] = hit_face - face_offsets[inst]
        bary[hit] = hit_bary[hit]
    return RenderResult(mask=mask.reshape(height, width), depth=depth.reshape(height, width),
                        normals=normals.reshape(height, width, 3), points=points.reshape(height, width, 3),
                        instance=instance.reshape(height, width), face=face.reshape(height, width),
                        barycentric=bary.reshape(height, width, 3))
