"""One synthetic bird photograph: random camera, textured background, soft mask, parts, keypoints.

The bird (:class:`~sfd_lightning.synthetic.birds.BirdModel`, bird frame = world frame) is meshed
by marching cubes, ray cast at ``supersample`` times the photo resolution and box-filtered down,
which gives anti-aliased colours, a soft silhouette (like CUB's soft segmentations) and soft
part probabilities. The camera looks at the bird from a random azimuth / elevation with a small
roll; its focal length sets the bird's size and its principal point the bird's position, so the
bird is always fully inside the photo. Keypoints are the projections of the 3D CUB keypoints,
visible when the segment to the camera stays outside the bird (analytic occlusion test).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sfd_lightning.geometry.cameras import PinholeCamera, look_at
from sfd_lightning.geometry.extraction import extract_mesh
from sfd_lightning.geometry.io import Mesh
from sfd_lightning.render.raycast import raycast
from sfd_lightning.render.shading import shade
from sfd_lightning.render.textures import SolidTexture
from sfd_lightning.synthetic.birds import CUB_KEYPOINT_NAMES, BirdModel, BirdParams
from sfd_lightning.synthetic.primitives import rotation_matrix

NUM_PARTS = 5  # background + head, neck, back, belly
# Backdrop colours: sky, foliage, bark, water, sand, grey.
_NATURE = np.array([(0.55, 0.7, 0.9), (0.3, 0.5, 0.25), (0.45, 0.35, 0.25), (0.25, 0.45, 0.55),
                    (0.8, 0.75, 0.6), (0.6, 0.6, 0.6), (0.7, 0.8, 0.55)])


@dataclass
class BirdPhoto:
    """A rendered bird photo and its ground truth.

    Attributes:
        rgb: ``(H, W, 3)`` uint8.
        mask: ``(H, W)`` float32 soft silhouette in ``[0, 1]``.
        part_prob: ``(H, W, 5)`` float32 part probabilities (SCOPS channels), summing to 1.
        keypoints: ``(15, 3)`` float64 ``(x, y, visible)``, 0-based pixel centres; invisible rows 0.
        keypoints_3d: ``(15, 3)`` bird-frame keypoints.
        camera: the OpenCV camera (world = bird frame).
        params: the bird's parameters.
    """

    rgb: np.ndarray
    mask: np.ndarray
    part_prob: np.ndarray
    keypoints: np.ndarray
    keypoints_3d: np.ndarray
    camera: PinholeCamera
    params: BirdParams


class BirdTexture:
    """Albedo of a bird's hits: per-face part colours modulated by a soft solid texture, dark eyes."""

    def __init__(self, bird: BirdModel, mesh: Mesh, seed: int, eyes: np.ndarray) -> None:
        centroids = np.asarray(mesh.vertices)[np.asarray(mesh.faces)].mean(axis=1)
        self.face_labels, components = bird.classify(centroids)
        self.face_colors = bird.base_colors(self.face_labels, components)
        self.modulation = SolidTexture(seed, "smooth", base_color=(0.5, 0.5, 0.5), scale=0.03)
        self.eyes = np.asarray(eyes, dtype=np.float64).reshape(-1, 3)
        self.eye_radius = 0.18 * bird.params.head_size

    def __call__(self, points: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """Albedo ``(N, 3)`` in ``[0, 1]`` of bird-frame hit points ``(N, 3)`` on mesh faces ``(N,)``."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        lum = self.modulation(pts).mean(axis=1) / 0.5  # ~0.88 .. 1.12
        color = self.face_colors[faces] * (1.0 + 2.5 * (lum - 1.0))[:, None]
        near_eye = np.linalg.norm(pts[:, None, :] - self.eyes[None], axis=2).min(axis=1) < self.eye_radius
        color[near_eye] = 0.03
        return np.clip(color, 0.0, 1.0)


def background_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth natural-looking backdrop ``(H, W, 3)`` float in ``[0, 1]``: colour noise and blurred branches."""
    palette = _NATURE[rng.choice(len(_NATURE), size=2, replace=False)] + rng.uniform(-0.08, 0.08, (2, 3))
    coarse = rng.random((4, 4, 1)).astype(np.float32)
    blend = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).reshape(height, width, 1)
    image = palette[0] * (1 - blend) + palette[1] * blend
    detail = cv2.resize(rng.normal(size=(max(height // 8, 2), max(width // 8, 2))).astype(np.float32),
                        (width, height), interpolation=cv2.INTER_CUBIC)
    image = image * (1.0 + 0.06 * detail[..., None])
    canvas = np.ascontiguousarray(image, dtype=np.float32)
    for _ in range(int(rng.integers(1, 4))):  # a few out-of-focus branches
        p0 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(float(c) for c in rng.uniform(0.1, 0.45, 3))
        cv2.line(canvas, p0, p1, colour, thickness=max(2, int(min(height, width) * rng.uniform(0.02, 0.05))))
    canvas = cv2.GaussianBlur(canvas, (0, 0), sigmaX=max(min(height, width) / 150.0, 0.6))
    return np.clip(canvas, 0.0, 1.0)


def bird_mesh(bird: BirdModel, resolution: int) -> Mesh:
    """Marching-cubes mesh of ``bird`` on a ``resolution``-per-axis grid around its bounds."""
    lo, hi = bird.bounds()
    margin = 0.04 * float(np.max(hi - lo))
    return extract_mesh(bird, lo - margin, hi + margin, resolution)


def sample_camera(rng: np.random.Generator, vertices: np.ndarray, width: int, height: int,
                  size_range: tuple[float, float] = (0.45, 0.85)) -> PinholeCamera:
    """Random view of the points ``vertices (V, 3)`` fully inside a ``width x height`` photo.

    Azimuth uniform, elevation in [-25, 40] degrees, roll in [-12, 12] degrees; the longer side of
    the projected box is ``size_range`` times the shorter image side; position uniform.
    """
    center = 0.5 * (vertices.min(0) + vertices.max(0))
    radius = float(np.linalg.norm(vertices - center, axis=1).max())
    azimuth, elevation = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(-25, 40))
    direction = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                          np.sin(elevation)])
    eye = center + 4.0 * radius * direction
    unit = np.eye(3)  # focal 1, principal point 0: pixels = normalised image coordinates
    camera = look_at(eye, center, (0.0, 0.0, 1.0), unit, width, height)
    roll = rotation_matrix((0, 0, 1), np.radians(rng.uniform(-12, 12)))
    camera = PinholeCamera(unit, roll @ camera.R, roll @ camera.t, width, height)
    normalised, _ = camera.project(vertices)
    extent = normalised.max(0) - normalised.min(0)
    focal = rng.uniform(*size_range) * min(width, height) / float(extent.max())
    lo, hi = focal * normalised.min(0), focal * normalised.max(0)
    margin = 2.0
    cx = rng.uniform(margin - lo[0], max(width - 1 - margin - hi[0], margin - lo[0]))
    cy = rng.uniform(margin - lo[1], max(height - 1 - margin - hi[1], margin - lo[1]))
    K = np.array([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]])
    return PinholeCamera(K, camera.R, camera.t, width, height)


def _supersampled(camera: PinholeCamera, factor: int) -> PinholeCamera:
    """The same camera at ``factor`` times the resolution (pixel centre ``u`` -> ``factor·u + (factor-1)/2``)."""
    K = camera.K.copy()
    K[:2, :2] *= factor
    K[:2, 2] = K[:2, 2] * factor + (factor - 1) / 2.0
    return PinholeCamera(K, camera.R, camera.t, camera.width * factor, camera.height * factor)


def _box_filter(values: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks of ``(H*f, W*f[, C])`` -> ``(H, W[, C])``."""
    h, w = values.shape[0] // factor, values.shape[1] // factor
    blocks = values.reshape((h, factor, w, factor) + values.shape[2:])
    return blocks.mean(axis=(1, 3))


def render_bird_photo(params: BirdParams, width: int, height: int, seed: int,
                      mesh_resolution: int = 64, supersample: int = 2) -> BirdPhoto:
    """Render one photo of the bird ``params`` (everything random drawn from ``seed``)."""
    rng = np.random.default_rng(seed)
    bird = BirdModel(params)
    mesh = bird_mesh(bird, mesh_resolution)
    keypoints_3d = bird.keypoints()
    camera = sample_camera(rng, mesh.vertices, width, height)
    fine = _supersampled(camera, supersample)
    result = raycast(mesh, fine)
    eyes = keypoints_3d[[CUB_KEYPOINT_NAMES.index("LEye"), CUB_KEYPOINT_NAMES.index("REye")]]
    texture = BirdTexture(bird, mesh, int(rng.integers(2**31)), eyes)
    hit = result.mask
    albedo = np.zeros(hit.shape + (3,))
    albedo[hit] = texture(result.points[hit], result.face[hit])
    light = (rng.uniform(-0.7, 0.7), rng.uniform(-1.0, -0.2), -1.0)
    color = shade(result, fine, albedo, light_dir=light, ambient=0.35, diffuse=0.65, specular=0.15)
    background = background_image(rng, fine.height, fine.width)
    composite = np.where(hit[..., None], color, background)
    labels = np.zeros(result.mask.shape, dtype=np.int64)
    labels[hit] = texture.face_labels[result.face[hit]]
    one_hot = np.eye(NUM_PARTS, dtype=np.float32)[labels]
    rgb = np.round(np.clip(_box_filter(composite, supersample), 0, 1) * 255).astype(np.uint8)
    mask = _box_filter(hit.astype(np.float32), supersample)
    part_prob = _box_filter(one_hot, supersample)
    keypoints = _visible_keypoints(bird, keypoints_3d, camera)
    return BirdPhoto(rgb=rgb, mask=mask.astype(np.float32), part_prob=part_prob.astype(np.float32),
                     keypoints=keypoints, keypoints_3d=keypoints_3d, camera=camera, params=params)


def _visible_keypoints(bird: BirdModel, points: np.ndarray, camera: PinholeCamera, step: float = 0.004,
                       start: float = 0.01) -> np.ndarray:
    """``(15, 3)`` pixel coordinates and visibility (invisible rows zeroed) of surface keypoints ``(15, 3)``.

    A keypoint is visible when it projects inside the photo and the segment from it (after
    ``start``) to the camera centre stays outside the bird (SDF > 0 at every ``step``): an
    occlusion test against the analytic surface, independent of the mesh resolution.
    """
    pixels, depth = camera.project(points)
    to_camera = camera.center[None] - points
    length = np.linalg.norm(to_camera, axis=1)
    t = np.arange(start, float(length.max()), step)
    samples = points[:, None, :] + (t[None, :, None] / length[:, None, None]) * to_camera[:, None, :]
    values = np.asarray(bird(samples.reshape(-1, 3))).reshape(len(points), len(t))
    clear = np.where(t[None, :] < length[:, None], values > 0, True).all(axis=1)
    inside = (pixels[:, 0] >= 0) & (pixels[:, 0] <= camera.width - 1) & (pixels[:, 1] >= 0) \
        & (pixels[:, 1] <= camera.height - 1) & (depth > 0)
    visible = clear & inside
    out = np.zeros((len(points), 3))
    out[visible, :2] = pixels[visible]
    out[visible, 2] = 1.0
    return out
