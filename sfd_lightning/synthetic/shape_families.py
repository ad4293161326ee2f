"""Parametric shape categories built by CSG of analytic primitives (ShapeNet look-alikes).

Four categories — ``chair``, ``airplane``, ``table``, ``sofa`` — each a union of boxes, capsules
and rotated boxes whose sizes come from a parameter dict. :func:`make_shape` builds the analytic
SDF (negative inside; exact outside, a lower bound on ``|d|`` inside, see ``primitives``);
:func:`sample_params` draws one member of the family.

Axis convention (ShapeNet ``model_normalized``): **y up**, the object's front faces **+z**
(chair seats open toward +z with the backrest at −z; the airplane's nose points to +z), x to the
object's left/right. Canonical shapes are roughly centred on the origin with a bounding-box
diagonal of about 1–1.6, like ShapeNet's normalized models.

Each family has **2–3 dominant continuous parameters** (``DOMINANT[category]``) that vary over a
wide range and carry most of the intra-class variation — the low-dimensional families that the
quality floors rely on (CONTRACTS §7). The remaining (secondary) parameters are jittered by
``±SECONDARY_JITTER`` around their defaults, or held at the defaults with
``sample_params(..., dominant_only=True)``.

| category | dominant parameters (range) |
|---|---|
| chair | ``seat_height`` [0.35, 0.55], ``back_height`` [0.25, 0.60], ``back_tilt`` [0°, 22°] |
| airplane | ``span`` [0.60, 1.10], ``sweep`` [0°, 40°], ``length`` [0.75, 1.10] |
| table | ``top_width`` [0.60, 1.00], ``top_depth`` [0.40, 0.75], ``height`` [0.40, 0.75] |
| sofa | ``width`` [0.80, 1.30], ``back_height`` [0.20, 0.45], ``arm_height`` [0.05, 0.25] |

Synthetic datasets store every shape in a non-unit *original* frame (:func:`original_frame`,
CONTRACTS §5.1): ``x_original = scale · x_canonical + offset``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from sfd_lightning.datamodules.shapenet_files import CATEGORY_SYNSETS
from sfd_lightning.errors import InputError
from sfd_lightning.synthetic.primitives import (SDF, Box, Capsule, Transformed, rotation_matrix,
                                                union)

#: Per category: parameter -> (low, high, default). Angles in degrees, lengths in canonical units.
PARAM_RANGES: dict[str, dict[str, tuple[float, float, float]]] = {
    "chair": {
        "seat_height": (0.35, 0.55, 0.45),
        "back_height": (0.25, 0.60, 0.42),
        "back_tilt": (0.0, 22.0, 10.0),
        "seat_width": (0.40, 0.60, 0.50),
        "seat_depth": (0.38, 0.55, 0.46),
        "leg_thickness": (0.035, 0.07, 0.05),
    },
    "airplane": {
        "span": (0.60, 1.10, 0.85),
        "sweep": (0.0, 40.0, 20.0),
        "length": (0.75, 1.10, 0.92),
        "fuselage_radius": (0.045, 0.07, 0.055),
        "chord": (0.14, 0.22, 0.18),
        "fin_height": (0.10, 0.18, 0.14),
    },
    "table": {
        "top_width": (0.60, 1.00, 0.80),
        "top_depth": (0.40, 0.75, 0.55),
        "height": (0.40, 0.75, 0.60),
        "top_thickness": (0.04, 0.07, 0.05),
        "leg_thickness": (0.04, 0.08, 0.06),
        "leg_inset": (0.01, 0.06, 0.03),
    },
    "sofa": {
        "width": (0.80, 1.30, 1.05),
        "back_height": (0.20, 0.45, 0.32),
        "arm_height": (0.05, 0.25, 0.14),
        "depth": (0.45, 0.60, 0.52),
        "seat_height": (0.18, 0.28, 0.23),
        "arm_width": (0.08, 0.14, 0.11),
    },
}
#: Category name -> ShapeNetCore synset id (the families this module builds).
SYNSETS: dict[str, str] = {name: CATEGORY_SYNSETS[name] for name in PARAM_RANGES}
#: The 2–3 dominant continuous parameters of each family (first keys of ``PARAM_RANGES``).
DOMINANT: dict[str, tuple[str, ...]] = {
    "chair": ("seat_height", "back_height", "back_tilt"),
    "airplane": ("span", "sweep", "length"),
    "table": ("top_width", "top_depth", "height"),
    "sofa": ("width", "back_height", "arm_height"),
}
#: Relative jitter of secondary parameters around their default (clipped to their range).
SECONDARY_JITTER = 0.12


def _check_category(category: str) -> None:
    if category not in PARAM_RANGES:
        raise InputError(None, f"unknown shape category '{category}'",
                         f"use one of {sorted(PARAM_RANGES)}")


def default_params(category: str) -> dict[str, float]:
    """The family's mid-range member."""
    _check_category(category)
    return {name: rng[2] for name, rng in PARAM_RANGES[category].items()}


def sample_params(category: str, rng: np.random.Generator, dominant_only: bool = False) -> dict[str, float]:
    """Draw one member: dominant parameters uniform in their range, secondary ones jittered.

    Args:
        category: one of ``SYNSETS``.
        rng: numpy generator (the only source of randomness).
        dominant_only: hold the secondary parameters at their defaults (a 2–3-D family).
    """
    _check_category(category)
    params: dict[str, float] = {}
    for name, (low, high, default) in PARAM_RANGES[category].items():
        if name in DOMINANT[category]:
            params[name] = float(rng.uniform(low, high))
        elif dominant_only:
            params[name] = float(default)
        else:
            jitter = rng.uniform(-SECONDARY_JITTER, SECONDARY_JITTER)
            params[name] = float(np.clip(default * (1.0 + jitter), low, high))
    return params


def _box(half: tuple[float, float, float], center: tuple[float, float, float]) -> Box:
    return Box(half_size=tuple(float(h) for h in half), center=tuple(float(c) for c in center))


def _rotated(child: SDF, axis: tuple[float, float, float], degrees: float,
             translation: tuple[float, float, float]) -> Transformed:
    rot = rotation_matrix(axis, math.radians(degrees))
    return Transformed(child, rotation=rot.tolist(), translation=tuple(float(t) for t in translation))


def _chair(p: dict[str, float]) -> SDF:
    w, d, h = p["seat_width"], p["seat_depth"], p["seat_height"]
    lt, bh, tilt = p["leg_thickness"], p["back_height"], p["back_tilt"]
    st, bt = 0.06, 0.05  # seat and back thickness
    y0 = -(h + bh) / 2  # centre the chair vertically
    parts: list[SDF] = [_box((w / 2, st / 2, d / 2), (0, y0 + h - st / 2, 0))]
    leg_half = (lt / 2, (h - st) / 2 + 0.005, lt / 2)
    for sx in (-1, 1):
        for sz in (-1, 1):
            parts.append(_box(leg_half, (sx * (w / 2 - lt / 2), y0 + (h - st) / 2, sz * (d / 2 - lt / 2))))
    # Backrest: a slab standing on the seat's rear edge, leaning backwards (top toward −z).
    slab = _box((w / 2, (bh + st) / 2, bt / 2), (0, (bh + st) / 2, 0))
    parts.append(_rotated(slab, (1, 0, 0), -tilt, (0, y0 + h - st, -d / 2 + bt / 2)))
    return union(*parts)


def _airplane(p: dict[str, float]) -> SDF:
    length, r, span = p["length"], p["fuselage_radius"], p["span"]
    sweep, chord, fin_h = p["sweep"], p["chord"], p["fin_height"]
    wt = 0.04  # wing thickness
    parts: list[SDF] = [Capsule(a=(0.0, 0.0, -length / 2 + r), b=(0.0, 0.0, length / 2 - r), radius=r)]
    half_wing = span / 2
    root = (0.0, -0.3 * r, 0.08 * length)
    for side in (-1, 1):
        # A half-wing from the root toward ±x, swept so that its tip moves toward −z (back).
        wing = _box((half_wing / 2, wt / 2, chord / 2), (side * half_wing / 2, 0, 0))
        parts.append(_rotated(wing, (0, 1, 0), side * sweep, root))
    tail_z = -length / 2 + 0.1
    stab_half = 0.28 * span / 2
    for side in (-1, 1):
        stab = _box((stab_half / 2, wt / 2, 0.055), (side * stab_half / 2, 0, 0))
        parts.append(_rotated(stab, (0, 1, 0), side * (sweep + 10.0), (0.0, 0.0, tail_z)))
    fin = _box((wt / 2, fin_h / 2, 0.07), (0, fin_h / 2, 0))
    parts.append(_rotated(fin, (1, 0, 0), -25.0, (0.0, 0.6 * r, tail_z)))
    return union(*parts)


def _table(p: dict[str, float]) -> SDF:
    tw, td, th = p["top_width"], p["top_depth"], p["height"]
    tt, lt, inset = p["top_thickness"], p["leg_thickness"], p["leg_inset"]
    y0 = -th / 2
    parts: list[SDF] = [_box((tw / 2, tt / 2, td / 2), (0, y0 + th - tt / 2, 0))]
    leg_half = (lt / 2, (th - tt) / 2 + 0.005, lt / 2)
    for sx in (-1, 1):
        for sz in (-1, 1):
            parts.append(_box(leg_half, (sx * (tw / 2 - inset - lt / 2), y0 + (th - tt) / 2,
                                         sz * (td / 2 - inset - lt / 2))))
    return union(*parts)


def _sofa(p: dict[str, float]) -> SDF:
    w, d, sh = p["width"], p["depth"], p["seat_height"]
    bh, ah, aw = p["back_height"], p["arm_height"], p["arm_width"]
    bt = 0.12  # back thickness
    y0 = -(sh + bh) / 2
    parts: list[SDF] = [
        _box((w / 2, sh / 2, d / 2), (0, y0 + sh / 2, 0)),  # base and seat
        _box((w / 2, (sh + bh) / 2, bt / 2), (0, y0 + (sh + bh) / 2, -d / 2 + bt / 2)),  # back
    ]
    for side in (-1, 1):
        parts.append(_box((aw / 2, (sh + ah) / 2, d / 2), (side * (w / 2 - aw / 2), y0 + (sh + ah) / 2, 0)))
    return union(*parts)


_BUILDERS: dict[str, Callable[[dict[str, float]], SDF]] = {
    "chair": _chair, "airplane": _airplane, "table": _table, "sofa": _sofa,
}


def make_shape(category: str, params: dict[str, Any] | None = None) -> SDF:
    """Analytic SDF of one family member in the canonical frame (y up, front +z).

    Missing parameters take their defaults; unknown parameter names are an error.
    """
    _check_category(category)
    full = default_params(category)
    unknown = set(params or {}) - set(full)
    if unknown:
        raise InputError(None, f"unknown {category} parameters {sorted(unknown)}",
                         f"use {sorted(full)}")
    full.update({k: float(v) for k, v in (params or {}).items()})
    return _BUILDERS[category](full)


def original_frame(rng: np.random.Generator, scale_range: tuple[float, float] = (0.4, 2.5),
                   offset_range: float = 1.0) -> tuple[float, np.ndarray]:
    """A random non-unit frame: ``scale`` log-uniform in ``scale_range``, ``offset (3,)`` uniform."""
    scale = float(np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]))))
    offset = rng.uniform(-offset_range, offset_range, size=3)
    return scale, offset


def in_frame(sdf: SDF, scale: float, offset: np.ndarray) -> Transformed:
    """``sdf`` placed in the frame ``x = scale · x_canonical + offset`` (distances scale too)."""
    return Transformed(sdf, translation=tuple(float(o) for o in offset), scale=float(scale))
