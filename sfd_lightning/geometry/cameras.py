"""Pinhole cameras in the framework's one convention, and converters at the boundaries.

Convention inside the framework (OpenCV): camera axes x right, y down, z forward; world->camera
``x_cam = R @ x_world + t``; pixel ``(u, v)`` = (column, row) with pixel CENTRES at integer
coordinates, so the image spans ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` and its centre is
``((W - 1) / 2, (H - 1) / 2)``.

Boundaries:

- OpenGL / NeRF / SfD (``transforms_*.json``): camera-to-world with camera axes x right, y up,
  z backward. ``c2w_cv = c2w_gl @ diag(1, -1, -1, 1)`` (:func:`opengl_c2w_to_opencv_w2c` and its
  inverse :func:`opencv_w2c_to_opengl_c2w`).
- COLMAP: same axes as OpenCV, but pixel centres at ``+0.5`` (the image spans ``[0, W]``), so
  ``c_colmap = c_opencv + 0.5`` (:func:`colmap_principal_point_to_opencv` and inverse).
- ShapeNet renders (Blender, DISN / 3D-R2N2 / ``rendering_metadata.txt``): :func:`spherical_camera`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

_GL_FLIP = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class PinholeCamera:
    """A pinhole camera (OpenCV axes, integer pixel centres).

    Attributes:
        K: ``(3, 3)`` intrinsics ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` in pixels.
        R: ``(3, 3)`` world->camera rotation.
        t: ``(3,)`` world->camera translation (``x_cam = R x_world + t``).
        width, height: image size in pixels.
    """

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64).reshape(3, 3)
        self.R = np.asarray(self.R, dtype=np.float64).reshape(3, 3)
        self.t = np.asarray(self.t, dtype=np.float64).reshape(3)
        self.width, self.height = int(self.width), int(self.height)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")

    @classmethod
    def from_w2c(cls, K: np.ndarray, w2c: np.ndarray, width: int, height: int) -> "PinholeCamera":
        """Build from a ``(4, 4)`` (or ``(3, 4)``) OpenCV world->camera matrix."""
        w2c = np.asarray(w2c, dtype=np.float64)
        return cls(K, w2c[:3, :3], w2c[:3, 3], width, height)

    @classmethod
    def from_c2w(cls, K: np.ndarray, c2w: np.ndarray, width: int, height: int) -> "PinholeCamera":
        """Build from a ``(4, 4)`` OpenCV camera->world matrix."""
        return cls.from_w2c(K, _invert_rigid(np.asarray(c2w, dtype=np.float64)), width, height)

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates ``(3,)`` = ``-R^T t``."""
        return -self.R.T @ self.t

    def world_to_camera(self) -> np.ndarray:
        """``(4, 4)`` homogeneous world->camera matrix."""
        out = np.eye(4)
        out[:3, :3], out[:3, 3] = self.R, self.t
        return out

    def camera_to_world(self) -> np.ndarray:
        """``(4, 4)`` homogeneous camera->world matrix."""
        out = np.eye(4)
        out[:3, :3], out[:3, 3] = self.R.T, self.center
        return out

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points ``(N, 3)`` -> camera-frame points ``(N, 3)``."""
        return np.asarray(points, dtype=np.float64).reshape(-1, 3) @ self.R.T + self.t

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project world points ``(N, 3)``.

        Returns:
            pixels ``(N, 2)`` as (u, v) with integer pixel centres, and depth ``(N,)`` = camera z
            (points behind the camera get depth <= 0 and meaningless pixels).
        """
        cam = self.to_camera(points)
        depth = cam[:, 2]
        homog = cam @ self.K.T
        with np.errstate(divide="ignore", invalid="ignore"):
            pixels = homog[:, :2] / depth[:, None]
        return pixels, depth

    def pixel_grid(self) -> np.ndarray:
        """Pixel centres ``(H*W, 2)`` as (u, v), row-major (index = v * W + u)."""
        v, u = np.meshgrid(np.arange(self.height, dtype=np.float64),
                           np.arange(self.width, dtype=np.float64), indexing="ij")
        return np.stack([u.ravel(), v.ravel()], axis=1)

    def pixel_rays(self) -> tuple[np.ndarray, np.ndarray]:
        """One ray per pixel centre, row-major (index = v * W + u), in the world frame.

        Returns:
            origins ``(H*W, 3)`` (the camera centre, one row per ray) and unit directions
            ``(H*W, 3)``.
        """
        uv = self.pixel_grid()
        homog = np.concatenate([uv, np.ones((len(uv), 1))], axis=1)
        d_cam = homog @ np.linalg.inv(self.K).T
        d_world = d_cam @ self.R  # R^T d for each row
        d_world /= np.linalg.norm(d_world, axis=1, keepdims=True)
        origins = np.broadcast_to(self.center, d_world.shape).copy()
        return origins, d_world


def _invert_rigid(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a ``(4, 4)`` rigid (rotation + translation) matrix."""
    out = np.eye(4)
    rot = matrix[:3, :3]
    out[:3, :3] = rot.T
    out[:3, 3] = -rot.T @ matrix[:3, 3]
    return out


def intrinsics_from_focal_mm(focal_mm: float, sensor_mm: float, width: int, height: int) -> np.ndarray:
    """``K (3, 3)`` of a lens of ``focal_mm`` on a sensor whose WIDTH is ``sensor_mm``.

    Square pixels (Blender's ``sensor_fit`` horizontal/auto for W >= H), principal point at the
    image centre ``((W-1)/2, (H-1)/2)`` in integer-centre pixel coordinates. ShapeNet renders:
    35 mm lens, 32 mm sensor, so ``fx = 35 * W / 32``.
    """
    f = focal_mm * width / sensor_mm
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def intrinsics_from_fov(fov_x_deg: float, width: int, height: int) -> np.ndarray:
    """``K (3, 3)`` with horizontal field of view ``fov_x_deg`` (``fx = W / (2 tan(fov/2))``)."""
    f = width / (2.0 * np.tan(np.radians(fov_x_deg) / 2.0))
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def _size_from_K(K: np.ndarray) -> tuple[int, int]:
    return int(round(2 * K[0, 2] + 1)), int(round(2 * K[1, 2] + 1))


def look_at(eye: Sequence[float], target: Sequence[float], up: Sequence[float] = (0.0, 0.0, 1.0),
            K: np.ndarray | None = None, width: int | None = None,
            height: int | None = None) -> PinholeCamera:
    """Camera at ``eye`` looking at ``target``; ``up`` (world) appears up in the image (-v).

    ``K`` is required; ``width``/``height`` default to ``2 c + 1`` of its principal point.
    When ``up`` is parallel to the viewing direction another world axis is used as ``up``.
    """
    if K is None:
        raise TypeError("look_at needs the intrinsics K")
    K = np.asarray(K, dtype=np.float64)
    default_w, default_h = _size_from_K(K)
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    norm = np.linalg.norm(forward)
    if norm <= 0:
        raise ValueError("look_at: eye and target coincide")
    forward /= norm
    up_vec = np.asarray(up, dtype=np.float64)
    up_vec = up_vec / np.linalg.norm(up_vec)
    right = np.cross(forward, up_vec)
    if np.linalg.norm(right) < 1e-9:  # looking straight along up: pick the least aligned axis
        up_vec = np.eye(3)[int(np.argmin(np.abs(forward)))]
        right = np.cross(forward, up_vec)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    return PinholeCamera(K, R, -R @ eye, width or default_w, height or default_h)


def _azimuth_frame(up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal ``(e0, e90)`` perpendicular to ``up``: azimuth 0 and 90 degree directions.

    ``e0`` is world +x projected off ``up`` (world +z if up is along x); ``e90 = e0 x up``.
    For ``up = +y`` this gives ``e0 = +x`` and ``e90 = +z``.
    """
    seed_axis = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    e0 = seed_axis - up * (seed_axis @ up)
    e0 /= np.linalg.norm(e0)
    return e0, np.cross(e0, up)


def spherical_camera(azimuth_deg: float, elevation_deg: float, distance: float, K: np.ndarray,
                     width: int, height: int, target: Sequence[float] = (0.0, 0.0, 0.0),
                     up: Sequence[float] = (0.0, 1.0, 0.0)) -> PinholeCamera:
    """Camera on a sphere around ``target`` looking at it, ``up`` appearing up in the image.

    ShapeNet render convention (meshes are y-up; Blender's OBJ import maps ShapeNet
    ``(x, y, z)`` to Blender ``(x, -z, y)``; DISN/3D-R2N2 ``getBlenderProj``): with the default
    ``up = +y`` the camera sits at

        ``target + distance * (cos(el) cos(az), sin(el), cos(el) sin(az))``

    i.e. azimuth 0 is on the +x axis, azimuth 90 on +z, elevation raises the camera towards +y.
    ``distance`` is the metric radius: for ``rendering_metadata.txt`` rows pass
    ``dist_ratio * 1.75``. For another ``up`` the azimuth origin is world +x projected off ``up``
    and azimuth 90 is ``origin x up``.
    """
    up_vec = np.asarray(up, dtype=np.float64)
    up_vec = up_vec / np.linalg.norm(up_vec)
    e0, e90 = _azimuth_frame(up_vec)
    az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
    direction = np.cos(el) * (np.cos(az) * e0 + np.sin(az) * e90) + np.sin(el) * up_vec
    target = np.asarray(target, dtype=np.float64)
    return look_at(target + distance * direction, target, up_vec, K, width, height)


def opengl_c2w_to_opencv_w2c(c2w: np.ndarray) -> np.ndarray:
    """OpenGL camera->world ``(4, 4)`` (x right, y up, z back) -> OpenCV world->camera ``(4, 4)``."""
    c2w_cv = np.asarray(c2w, dtype=np.float64) @ _GL_FLIP
    return np.linalg.inv(c2w_cv)


def opencv_w2c_to_opengl_c2w(w2c: np.ndarray) -> np.ndarray:
    """OpenCV world->camera ``(4, 4)`` -> OpenGL camera->world ``(4, 4)`` (inverse of the above)."""
    return np.linalg.inv(np.asarray(w2c, dtype=np.float64)) @ _GL_FLIP


def _shift_principal_point(intrinsics: np.ndarray, delta: float) -> np.ndarray:
    arr = np.array(intrinsics, dtype=np.float64, copy=True)
    if arr.shape == (3, 3):
        arr[0, 2] += delta
        arr[1, 2] += delta
    elif arr.shape[-1] == 2:
        arr += delta
    else:
        raise ValueError(f"expected K (3, 3) or principal points (..., 2), got shape {arr.shape}")
    return arr


def colmap_principal_point_to_opencv(intrinsics: np.ndarray) -> np.ndarray:
    """COLMAP principal point (pixel centres at +0.5) -> framework convention (``c - 0.5``).

    Accepts a ``K (3, 3)`` or principal points / keypoints ``(..., 2)``; returns a new array.
    Rotation and translation need no change (COLMAP uses OpenCV axes).
    """
    return _shift_principal_point(intrinsics, -0.5)


def opencv_principal_point_to_colmap(intrinsics: np.ndarray) -> np.ndarray:
    """Inverse of :func:`colmap_principal_point_to_opencv` (``c + 0.5``)."""
    return _shift_principal_point(intrinsics, 0.5)
