"""Shading of ray-cast hits (Lambert + Blinn-Phong) and one-call renders of posed objects.

``render_instances`` renders K copies of one object (SfD piles); ``render_mesh`` renders one
(ShapeNet / Pix3D views). Textures are evaluated at OBJECT-frame coordinates of every hit, so
identical objects look identical whatever their pose.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from sfd_lightning.geometry.cameras import PinholeCamera
from sfd_lightning.geometry.io import Mesh
from sfd_lightning.render.raycast import RenderResult, raycast

DEFAULT_LIGHT_DIR = (-0.4, -0.6, -1.0)  # towards the light, camera frame: upper left, behind the camera
DEFAULT_ALBEDO = (0.7, 0.7, 0.7)


def shade(result: RenderResult, camera: PinholeCamera, albedo: np.ndarray,
          light_dir: Sequence[float] = DEFAULT_LIGHT_DIR, ambient: float = 0.3, diffuse: float = 0.7,
          specular: float = 0.2, shininess: float = 32.0, light_frame: str = "camera") -> np.ndarray:
    """Lambert + Blinn-Phong shading with one directional white light.

    ``rgb = albedo * (ambient + diffuse * max(0, n.l)) + specular * max(0, n.h)^shininess``
    (specular only where ``n.l > 0``), clipped to ``[0, 1]``.

    Args:
        result: ray-casting result (normals in the world frame).
        camera: the camera that produced ``result`` (gives view directions / light frame).
        albedo: ``(H, W, 3)`` in ``[0, 1]``.
        light_dir: direction TOWARDS the light, in the camera frame (OpenCV axes; default from
            the upper left, behind the viewer) or the world frame (``light_frame="world"``).

    Returns:
        rgb ``(H, W, 3)`` float32 in ``[0, 1]``; background pixels are 0.
    """
    light = np.asarray(light_dir, dtype=np.float64)
    light = light / np.linalg.norm(light)
    if light_frame == "camera":
        light = camera.R.T @ light
    elif light_frame != "world":
        raise ValueError(f"light_frame must be 'camera' or 'world', got {light_frame!r}")
    mask = result.mask
    rgb = np.zeros(mask.shape + (3,), dtype=np.float32)
    if not mask.any():
        return rgb
    normals = result.normals[mask].astype(np.float64)
    to_eye = camera.center[None] - result.points[mask].astype(np.float64)
    to_eye /= np.maximum(np.linalg.norm(to_eye, axis=1, keepdims=True), 1e-12)
    n_dot_l = normals @ light
    half = to_eye + light[None]
    half /= np.maximum(np.linalg.norm(half, axis=1, keepdims=True), 1e-12)
    spec = np.where(n_dot_l > 0, np.clip(np.einsum("nc,nc->n", normals, half), 0, 1) ** shininess, 0.0)
    lit = np.asarray(albedo, dtype=np.float64)[mask] * (ambient + diffuse * np.clip(n_dot_l, 0, None))[:, None]
    rgb[mask] = np.clip(lit + specular * spec[:, None], 0.0, 1.0)
    return rgb


def _background_image(background, height: int, width: int) -> np.ndarray:
    """Colour triple or image (uint8 or float in [0, 1]) -> ``(H, W, 3)`` float."""
    arr = np.asarray(background)
    scale = 255.0 if arr.dtype == np.uint8 else 1.0
    arr = arr.astype(np.float64) / scale
    if arr.shape == (3,):
        return np.broadcast_to(arr, (height, width, 3))
    if arr.shape != (height, width, 3):
        raise ValueError(f"background must be an RGB triple or an ({height}, {width}, 3) image, got {arr.shape}")
    return arr


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def _hit_albedo(result: RenderResult, meshes: list[Mesh], world_to_object: np.ndarray,
                texture: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
    """Albedo ``(H, W, 3)``: texture at object-frame hits, else interpolated vertex colours, else grey."""
    mask = result.mask
    albedo = np.zeros(mask.shape + (3,))
    if not mask.any():
        return albedo
    inst = result.instance[mask]
    if texture is not None:
        world = result.points[mask].astype(np.float64)
        rot, trans = world_to_object[inst, :3, :3], world_to_object[inst, :3, 3]
        local = np.einsum("nij,nj->ni", rot, world) + trans
        albedo[mask] = texture(local)
        return albedo
    colors = meshes[0].vertex_colors
    if colors is not None and len(colors) == len(meshes[0].vertices):
        colors = np.asarray(colors, dtype=np.float64)[:, :3]
        colors = colors / 255.0 if colors.max() > 1.0 else colors
        corner = colors[meshes[0].faces[result.face[mask]]]  # (n, 3 corners, 3)
        albedo[mask] = np.einsum("nk,nkc->nc", result.barycentric[mask].astype(np.float64), corner)
    else:
        albedo[mask] = DEFAULT_ALBEDO
    return albedo


def render_instances(object_mesh: Mesh, object_to_world, camera: PinholeCamera,
                     texture: Callable[[np.ndarray], np.ndarray] | None = None,
                     background=(1.0, 1.0, 1.0), gamma: float = 1.0, crease_angle_deg: float = 60.0,
                     **shading) -> dict[str, np.ndarray]:
    """Render K copies of one object, instance k posed by ``object_to_world[k]``.

    Args:
        object_mesh: the object in its own frame.
        object_to_world: ``(K, 4, 4)`` array or list of ``(4, 4)`` rigid (or similarity) poses.
        camera: OpenCV pinhole camera.
        texture: object-frame albedo callable (e.g. :class:`~sfd_lightning.render.textures.SolidTexture`);
            ``None`` uses the mesh's vertex colours, else uniform grey.
        background: RGB triple or ``(H, W, 3)`` image (uint8 or float in ``[0, 1]``), composited
            behind the object in ``rgb``.
        gamma: output encoding ``value ** (1 / gamma)`` (1 = the linear shaded values; 2.2 makes
            readers that linearise with ``x ** 2.2`` recover the shading).
        crease_angle_deg: normal smoothing, see :func:`~sfd_lightning.render.raycast.raycast`.
        **shading: forwarded to :func:`shade` (``light_dir``, ``ambient``, ``diffuse``, ...).

    Returns:
        dict with ``rgb`` uint8 ``(H, W, 3)`` (over the background), ``rgba`` uint8 ``(H, W, 4)``
        (object colour, black and alpha 0 outside), ``mask`` bool ``(H, W)``, ``instance`` int32
        ``(H, W)`` (-1 background, 0..K-1), ``depth`` float32 ``(H, W)`` camera z (inf outside),
        ``normals`` float32 ``(H, W, 3)`` world frame (0 outside), ``albedo`` float32
        ``(H, W, 3)`` in ``[0, 1]`` (0 outside).
    """
    poses = np.asarray(object_to_world, dtype=np.float64).reshape(-1, 4, 4)
    vertices = np.asarray(object_mesh.vertices, dtype=np.float64)
    homog = np.concatenate([vertices, np.ones((len(vertices), 1))], axis=1)
    meshes = [Mesh((homog @ pose.T)[:, :3], np.asarray(object_mesh.faces, dtype=np.int64),
                   object_mesh.vertex_colors) for pose in poses]
    result = raycast(meshes, camera, crease_angle_deg=crease_angle_deg)
    albedo = _hit_albedo(result, meshes, np.linalg.inv(poses), texture)
    color = shade(result, camera, albedo, **shading).astype(np.float64)
    if gamma != 1.0:
        color = color ** (1.0 / gamma)
    mask = result.mask
    composite = np.where(mask[..., None], color, _background_image(background, camera.height, camera.width))
    rgba = np.concatenate([_to_uint8(color), (mask * 255).astype(np.uint8)[..., None]], axis=2)
    return {"rgb": _to_uint8(composite), "rgba": rgba, "mask": mask, "instance": result.instance,
            "depth": result.depth, "normals": result.normals, "albedo": albedo.astype(np.float32)}


def render_mesh(mesh: Mesh, camera: PinholeCamera, texture: Callable[[np.ndarray], np.ndarray] | None = None,
                background=(1.0, 1.0, 1.0), **kwargs) -> dict[str, np.ndarray]:
    """Render one mesh in the world frame; same dict as :func:`render_instances` (instance 0)."""
    return render_instances(mesh, np.eye(4)[None], camera, texture=texture, background=background, **kwargs)
