"""DISN-style render views of one shape (``ShapenetRender_more_variation`` camera ranges).

Per level, view ``i`` of ``V``: azimuth ``360/V · i ± 5°`` (7.2° for DIT's 50 views, 10° for
LIST's 36), lens 35 mm on a 32 mm sensor, camera at radius ``dist · 1.75`` looking at the origin
(:func:`~sfd_lightning.datamodules.shapenet_files.camera_from_metadata`).

- ``easy``: elevation 20–30°, dist 0.65–1.0, object at the origin.
- ``hard``: elevation 0–45°, dist 0.60–1.0, object shifted ±0.2 per axis; after 4 rejected
  tries the shift shrinks to ±0.1 and dist becomes 0.75–1.1.

A view is re-drawn while the object touches the image border (the original re-renders while the
border alpha sum is ≥ 600 at 224²; here any covered border pixel counts), up to ``max_tries``.
The object is imaged in the *render frame* (ShapeNet ``model_normalized``): its bounding-box
centre at the origin and bounding-box diagonal 1 (:func:`render_normalization`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sfd_lightning.datamodules.shapenet_files import ShapeNetLayout, camera_from_metadata
from sfd_lightning.geometry.io import Mesh
from sfd_lightning.render.shading import render_mesh
from sfd_lightning.synthetic.writers.shapenet_layout import format_metadata, write_png, write_text

FOCAL_MM, SENSOR_MM, DIST_FACTOR = 35.0, 32.0, 1.75
LEVELS = {
    "easy": {"elevation": (20.0, 30.0), "dist": (0.65, 1.0), "shift": 0.0},
    "hard": {"elevation": (0.0, 45.0), "dist": (0.60, 1.0), "shift": 0.2},
}
_HARD_RETRY = {"dist": (0.75, 1.1), "shift": 0.1}


def render_normalization(vertices: np.ndarray) -> tuple[np.ndarray, float]:
    """``(center (3,), scale)`` with ``x_render = (x - center) · scale``: bbox centred, diagonal 1."""
    lo, hi = vertices.min(0), vertices.max(0)
    return (lo + hi) / 2.0, 1.0 / float(np.linalg.norm(hi - lo))


def sample_view(level: str, index: int, views: int, rng: np.random.Generator, attempt: int = 0) -> np.ndarray:
    """One metadata row ``(10,)``: azimuth, elevation, 0, dist, 35, 32, 1.75, shift x, y, z."""
    spec = dict(LEVELS[level])
    if level == "hard" and attempt >= 4:
        spec.update(_HARD_RETRY)
    azimuth = (360.0 / views * index + rng.uniform(-5.0, 5.0)) % 360.0
    elevation = rng.uniform(*spec["elevation"])
    dist = rng.uniform(*spec["dist"])
    shift = rng.uniform(-spec["shift"], spec["shift"], size=3) if spec["shift"] > 0 else np.zeros(3)
    return np.array([azimuth, elevation, 0.0, dist, FOCAL_MM, SENSOR_MM, DIST_FACTOR, *shift])


def _touches_border(alpha: np.ndarray) -> bool:
    return bool(alpha[0].any() or alpha[-1].any() or alpha[:, 0].any() or alpha[:, -1].any())


def render_level(mesh: Mesh, texture, level: str, views: int, size: int, rng: np.random.Generator,
                 max_tries: int = 20) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    """Render ``views`` views of ``mesh`` (already in the render frame) at ``size x size``.

    Returns:
        metadata rows ``(V, 10)`` and per view the :func:`render_mesh` dict (``rgba`` uint8
        ``(size, size, 4)`` with black, transparent background; ``rgb`` on white).
    """
    rows, renders = [], []
    for index in range(views):
        for attempt in range(max_tries):
            row = sample_view(level, index, views, rng, attempt)
            out = render_mesh(mesh, camera_from_metadata(row, size, size), texture=texture,
                              background=(1.0, 1.0, 1.0))
            if not _touches_border(out["mask"]):
                break
        rows.append(row)
        renders.append(out)
    return np.stack(rows) if rows else np.zeros((0, 10)), renders


def write_views(layout: ShapeNetLayout, synset: str, instance: str, mesh_original: Mesh, texture,
                views: int, size: int, seed: int, hard_views: int = 0, list_layout: bool = True) -> list[Path]:
    """Render and write a shape's views in both layouts.

    DeepSDF/DIT: ``<synset>/<id>/<level>/{image,image_rgb}/NN.png`` + ``rendering_metadata.txt``;
    LIST (``list_layout``): the same easy RGBA views under ``images/<synset>/<id>/easy/``.
    """
    center, scale = render_normalization(mesh_original.vertices)
    mesh = Mesh((mesh_original.vertices - center) * scale, mesh_original.faces)
    rng = np.random.default_rng(seed)
    written: list[Path] = []
    for level, count in (("easy", views), ("hard", hard_views)):
        if count <= 0:
            continue
        rows, renders = render_level(mesh, texture, level, count, size, rng)
        metadata = format_metadata(rows)
        folder = layout.render_dir(synset, instance, level)
        for view, out in enumerate(renders):
            written.append(write_png(layout.render_rgba(synset, instance, view, level), out["rgba"]))
            written.append(write_png(layout.render_rgb(synset, instance, view, level), out["rgb"]))
            if list_layout and level == "easy":
                written.append(write_png(layout.list_image(synset, instance, view), out["rgba"]))
        written.append(write_text(folder / "rendering_metadata.txt", metadata))
        if list_layout and level == "easy":
            written.append(write_text(layout.list_image_dir(synset, instance) / "rendering_metadata.txt", metadata))
    return written
