"""Synthetic piles: N identical objects resting on a ground plane, seen by one oblique camera.

Frames (right-handed, arbitrary units; the object is about one unit long):

- object frame: the frame of the object mesh (``+z`` is the object's "up"; about unit size);
- scene frame: the ground plane is ``z = 0``, ``+z`` up; ``object_to_scene[i]`` places
  instance ``i`` (0-based) there;
- camera frame: OpenCV (x right, y down, z forward), ``x_cam = w2c · x_scene`` with pixel centres at
  integer coordinates; ``object_to_camera[i] = w2c · object_to_scene[i]``.

Instances get a random yaw (full circle) and a small random tilt, then drop onto the ground
(lowest vertex at ``z = 0``); placements are rejected while any instance's surface samples come
closer than ``gap`` to another instance (tested on a gridded copy of the analytic SDF, so shapes
that interlock without touching are allowed). The camera looks down at the pile from 55–75°
elevation (steep enough that every instance shows its top, so features repeat across instances)
and a random azimuth; its focal length is chosen so that the pile fills ``fill`` of the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sfd_lightning.geometry.cameras import PinholeCamera, look_at
from sfd_lightning.geometry.io import Mesh
from sfd_lightning.synthetic.primitives import (SDF, Box, Capsule, Cylinder, Sphere, Torus, Transformed,
                                                difference, rotation_matrix, smooth_union, union)

OBJECTS = ("airplane", "mug", "knight")


def airplane_sdf() -> SDF:
    """Toy airplane about 1.0 long (x) and 0.9 wide (y); one engine pod (right wing) and a cockpit
    bump break its mirror symmetry."""
    fuselage = Capsule(a=(-0.45, 0.0, 0.0), b=(0.42, 0.0, 0.0), radius=0.075)
    wings = Box(half_size=(0.12, 0.45, 0.022), center=(0.03, 0.0, 0.0))
    fin = Box(half_size=(0.07, 0.018, 0.12), center=(-0.38, 0.0, 0.12))
    stabilizer = Box(half_size=(0.06, 0.17, 0.018), center=(-0.40, 0.0, 0.02))
    pod = Capsule(a=(-0.02, 0.24, -0.06), b=(0.13, 0.24, -0.06), radius=0.04)
    cockpit = Sphere(radius=0.06, center=(0.24, 0.0, 0.055))
    return smooth_union(fuselage, wings, fin, stabilizer, pod, cockpit, k=0.02)


def mug_sdf() -> SDF:
    """Mug (radius 0.3, height 0.7) with a handle on +x and a knob on +y."""
    body = Cylinder(radius=0.3, half_height=0.35)
    hollow = Cylinder(radius=0.25, half_height=0.35, center=(0.0, 0.0, 0.06))
    handle = Transformed(Torus(major=0.16, minor=0.04), rotation=rotation_matrix((1, 0, 0), np.pi / 2),
                         translation=(0.32, 0.0, 0.02))
    knob = Sphere(radius=0.07, center=(0.0, 0.29, 0.1))
    return union(difference(body, hollow), handle, knob)


def knight_sdf() -> SDF:
    """Chess-knight-like piece: round base, column, and a head leaning towards +x."""
    base = Cylinder(radius=0.3, half_height=0.07, center=(0.0, 0.0, -0.4))
    column = Capsule(a=(0.0, 0.0, -0.35), b=(0.05, 0.0, 0.05), radius=0.16)
    head = Transformed(Box(half_size=(0.22, 0.09, 0.1)), rotation=rotation_matrix((0, 1, 0), 0.5),
                       translation=(0.14, 0.0, 0.2))
    ear = Capsule(a=(-0.02, 0.05, 0.25), b=(-0.06, 0.05, 0.42), radius=0.035)
    return smooth_union(base, column, head, ear, k=0.04)


_BUILDERS = {"airplane": airplane_sdf, "mug": mug_sdf, "knight": knight_sdf}


def object_sdf(name: str) -> SDF:
    """Analytic SDF (negative inside) of one of :data:`OBJECTS` in its object frame."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown pile object '{name}', choose one of {list(OBJECTS)}")
    return _BUILDERS[name]()


def object_mesh(name: str, resolution: int = 96) -> Mesh:
    """Triangle mesh of :func:`object_sdf` by marching cubes on a ``resolution``³ grid."""
    from sfd_lightning.geometry.extraction import extract_mesh

    sdf = object_sdf(name)
    lo, hi = sdf.bounds()
    pad = 0.05 * float(np.max(hi - lo))
    mesh = extract_mesh(sdf, lo - pad, hi + pad, resolution, level=0.0)
    if mesh.is_empty:
        raise RuntimeError(f"mesh extraction of '{name}' returned no surface")
    return mesh


@dataclass
class SyntheticPile:
    """A generated pile scene.

    Attributes:
        object_name: which object (:data:`OBJECTS`).
        sdf: the object's analytic SDF (object frame).
        mesh: the object mesh (object frame).
        object_to_scene: ``(N, 4, 4)`` rigid instance poses in the ground frame (``z = 0`` ground).
        camera: the camera (OpenCV, scene frame -> camera).
        object_to_camera: ``(N, 4, 4)`` rigid object->camera poses (OpenCV axes).
    """

    object_name: str
    sdf: SDF
    mesh: Mesh
    object_to_scene: np.ndarray
    camera: PinholeCamera
    object_to_camera: np.ndarray

    @property
    def K(self) -> np.ndarray:
        """``(3, 3)`` intrinsics, integer pixel centres (``cx = (W - 1) / 2``)."""
        return self.camera.K

    @property
    def num_instances(self) -> int:
        return len(self.object_to_scene)


def _rigid(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rotation, translation
    return out


def _random_rest_rotation(rng: np.random.Generator, max_tilt_deg: float) -> np.ndarray:
    """Yaw about +z (uniform) after a tilt about a random horizontal axis (``≤ max_tilt_deg``)."""
    tilt_axis_angle = rng.uniform(0.0, 2 * np.pi)
    axis = np.array([np.cos(tilt_axis_angle), np.sin(tilt_axis_angle), 0.0])
    tilt = rotation_matrix(axis, np.radians(rng.uniform(0.0, max_tilt_deg)))
    yaw = rotation_matrix((0.0, 0.0, 1.0), rng.uniform(0.0, 2 * np.pi))
    return yaw @ tilt


class _GridSdf:
    """Trilinear lookup of an SDF sampled on a ``resolution``³ grid padded by ``pad``.

    Points outside the grid are reported as ``+inf`` (farther than ``pad`` from the surface), so
    ``min < gap`` tests are exact up to interpolation error for any ``gap < pad``.
    """

    def __init__(self, sdf: SDF, pad: float, resolution: int = 48) -> None:
        from sfd_lightning.geometry.extraction import evaluate_grid

        lo, hi = sdf.bounds()
        self.lo, self.hi = np.asarray(lo, float) - pad, np.asarray(hi, float) + pad
        self.values = evaluate_grid(sdf, self.lo, self.hi, resolution).astype(np.float64)
        self.scale = (resolution - 1) / (self.hi - self.lo)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        from scipy.ndimage import map_coordinates

        inside = np.all((points >= self.lo) & (points <= self.hi), axis=1)
        out = np.full(len(points), np.inf)
        if inside.any():
            coords = ((points[inside] - self.lo) * self.scale).T
            out[inside] = map_coordinates(self.values, coords, order=1, mode="nearest")
        return out


def _collides(sdf: _GridSdf, samples: np.ndarray, pose_a: np.ndarray, pose_b: np.ndarray, gap: float) -> bool:
    """True when surface ``samples`` (object frame) of instance a come within ``gap`` of instance b."""
    relative = np.linalg.inv(pose_b) @ pose_a
    local = samples @ relative[:3, :3].T + relative[:3, 3]
    return bool(np.min(sdf(local)) < gap)


def place_instances(sdf: SDF, mesh: Mesh, count: int, rng: np.random.Generator,
                    max_tilt_deg: float = 12.0, gap: float = 0.03, max_tries: int = 60) -> np.ndarray:
    """Random non-intersecting resting poses ``(count, 4, 4)`` (object -> ground frame).

    Collisions are tested on a gridded copy of ``sdf``; the disc of instance centres starts
    tight and grows by 10% after every ``max_tries`` rejected placements.
    """
    grid_sdf = _GridSdf(sdf, pad=4 * gap)
    vertices = np.asarray(mesh.vertices)
    samples = vertices[rng.choice(len(vertices), size=min(len(vertices), 600), replace=False)]
    radius = float(np.linalg.norm(vertices[:, :2], axis=1).max())
    spread = radius * (0.1 + 0.6 * np.sqrt(count))  # disc holding the instance centres
    poses: list[np.ndarray] = []
    tries = 0
    while len(poses) < count:
        rotation = _random_rest_rotation(rng, max_tilt_deg)
        r, phi = spread * np.sqrt(rng.uniform()), rng.uniform(0.0, 2 * np.pi)
        lift = -float((vertices @ rotation.T)[:, 2].min())
        pose = _rigid(rotation, np.array([r * np.cos(phi), r * np.sin(phi), lift]))
        if all(np.linalg.norm(pose[:2, 3] - other[:2, 3]) > 2 * radius + gap  # bounding circles apart
               or (not _collides(grid_sdf, samples, pose, other, gap)
                   and not _collides(grid_sdf, samples, other, pose, gap))
               for other in poses):
            poses.append(pose)
            continue
        tries += 1
        if tries % max_tries == 0:
            spread *= 1.1
    return np.stack(poses)


def pile_camera(vertices_scene: np.ndarray, rng: np.random.Generator, width: int, height: int,
                elevation_deg: tuple[float, float] = (55.0, 75.0), distance_factor: float = 3.5,
                fill: float = 0.85) -> PinholeCamera:
    """Oblique camera looking at the pile centre from a random azimuth.

    Args:
        vertices_scene: ``(M, 3)`` every instance's vertices in the scene frame.
        elevation_deg: range of the camera's elevation above the ground plane.
        distance_factor: camera distance in pile radii.
        fill: fraction of the half-image the farthest projected vertex reaches.
    """
    centre = 0.5 * (vertices_scene.min(0) + vertices_scene.max(0))
    pile_radius = float(np.linalg.norm(vertices_scene - centre, axis=1).max())
    azimuth = rng.uniform(0.0, 2 * np.pi)
    elevation = np.radians(rng.uniform(*elevation_deg))
    direction = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                          np.sin(elevation)])
    eye = centre + distance_factor * pile_radius * direction
    unit_k = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    probe = look_at(eye, centre, (0.0, 0.0, 1.0), unit_k, width, height)
    cam = probe.to_camera(vertices_scene)
    extent = max(np.abs(cam[:, 0] / cam[:, 2]).max() / (width / 2.0),
                 np.abs(cam[:, 1] / cam[:, 2]).max() / (height / 2.0))
    focal = fill / extent
    K = np.array([[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]])
    return PinholeCamera(K, probe.R, probe.t, width, height)


def make_pile_scene(instances: int = 6, image_size: int = 400, seed: int | tuple[int, ...] = 0,
                    object_name: str = "airplane",
                    resolution: int = 96, max_tilt_deg: float = 12.0,
                    elevation_deg: tuple[float, float] = (55.0, 75.0)) -> SyntheticPile:
    """Generate a pile of ``instances`` copies of ``object_name`` and its camera.

    Deterministic for a given ``seed`` (an int or a tuple of ints, fed to ``default_rng``).
    """
    if instances < 1:
        raise ValueError(f"a pile needs at least one instance, got {instances}")
    rng = np.random.default_rng(seed)
    sdf = object_sdf(object_name)
    mesh = object_mesh(object_name, resolution)
    poses = place_instances(sdf, mesh, instances, rng, max_tilt_deg=max_tilt_deg)
    vertices = np.asarray(mesh.vertices)
    world = np.concatenate([vertices @ p[:3, :3].T + p[:3, 3] for p in poses])
    camera = pile_camera(world, rng, image_size, image_size, elevation_deg=elevation_deg)
    object_to_camera = np.einsum("ij,njk->nik", camera.world_to_camera(), poses)
    return SyntheticPile(object_name, sdf, mesh, poses, camera, object_to_camera)
