"""Named analytic shapes: the built-in default data of the point-cloud methods.

Each shape is an exact (or CSG) SDF in a unit-ish frame; :func:`shape_in_original_frame` places it
in a deliberately non-unit "original" frame so that every normalisation is exercised.
"""

from __future__ import annotations

import numpy as np

from sfd_lightning.synthetic.primitives import (SDF, Box, Capsule, Sphere, Torus, Transformed,
                                                rotation_matrix, smooth_union, union)

SHAPES = ("sphere", "torus", "box", "capsule", "composite")

# Original frame of the default data: x_original = R·(s·x_unit) + t.
ORIGINAL_SCALE = 2.5
ORIGINAL_OFFSET = (0.4, -1.2, 2.0)
ORIGINAL_ROTATION_AXIS = (1.0, 2.0, 0.5)
ORIGINAL_ROTATION_ANGLE = 0.6


def make_shape(name: str) -> SDF:
    """The shape ``name`` (one of :data:`SHAPES`) in its unit frame (extent within [-0.5, 0.5]³)."""
    if name == "sphere":
        return Sphere(0.35)
    if name == "torus":
        return Torus(0.3, 0.1)
    if name == "box":
        return Box((0.35, 0.25, 0.15))
    if name == "capsule":
        return Capsule((-0.25, 0.0, 0.0), (0.25, 0.0, 0.0), 0.15)
    if name == "composite":
        # A multi-part, non-convex, genus-1 shape: a torus "wheel" on an axle with a box hub
        # and a blob, blended softly where parts meet.
        wheel = Torus(0.22, 0.07, center=(0.0, 0.0, 0.12))
        axle = Capsule((0.0, 0.0, -0.3), (0.0, 0.0, 0.3), 0.05)
        hub = Box((0.12, 0.12, 0.06), center=(0.0, 0.0, -0.12))
        blob = Sphere(0.1, center=(0.22, 0.0, -0.22))
        return smooth_union(union(wheel, axle), hub, blob, k=0.03)
    raise ValueError(f"unknown shape {name!r}; choose one of {SHAPES}")


def shape_in_original_frame(name: str) -> Transformed:
    """``make_shape(name)`` scaled, rotated and offset into the non-unit original frame."""
    rotation = rotation_matrix(ORIGINAL_ROTATION_AXIS, ORIGINAL_ROTATION_ANGLE)
    return Transformed(make_shape(name), rotation.tolist(), ORIGINAL_OFFSET, ORIGINAL_SCALE)


def padded_bounds(sdf: SDF, padding: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """The shape's bounds grown by ``padding`` times the largest extent on every side."""
    lo, hi = sdf.bounds()
    pad = padding * float(np.max(hi - lo))
    return np.asarray(lo) - pad, np.asarray(hi) + pad
