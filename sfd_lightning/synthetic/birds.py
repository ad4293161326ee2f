"""Symmetric bird-like bodies: an analytic SDF with semantic parts and the 15 CUB keypoints.

Bird frame: x forward (beak side), y to the bird's LEFT, z up; the body centre is the origin and
the body is about one unit long. The bird is mirror-symmetric across the sagittal plane
``y = 0``: the field is evaluated at ``(x, |y|, z)`` on a "half bird" whose one-sided parts (left
wing, left leg) lie entirely in ``y > 0``, so the union with the mirrored copy is exact.

Semantic parts follow the SCOPS channel order of methods/umr.md §2: 0 background, 1 head (head and
beak), 2 neck, 3 back (upper body, wings, tail), 4 belly (lower body, breast, legs).
Keypoints follow the CUB order :data:`CUB_KEYPOINT_NAMES`; each lies on the surface where a ray
from an anchor inside its part first leaves the bird (left keypoints mirror the right ones exactly).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from sfd_lightning.datamodules.cub_annotations import CUB_KEYPOINT_NAMES
from sfd_lightning.synthetic.primitives import SDF, Capsule, SmoothUnion, Transformed, rotation_matrix

HEAD, NECK, BACK, BELLY = 1, 2, 3, 4
_MIRROR = np.diag([1.0, -1.0, 1.0])


@dataclass
class Ellipsoid(SDF):
    """Axis-aligned ellipsoid at the origin with semi-axes ``radii`` (Quilez's bound, exact on the surface)."""

    radii: Sequence[float] = (0.5, 0.3, 0.2)

    def evaluate(self, points: Tensor) -> Tensor:
        r = points.new_tensor(self.radii)
        k0 = (points / r).norm(dim=-1)
        k1 = (points / (r * r)).norm(dim=-1)
        centre = k1 < 1e-9  # the bound is 0/0 at the centre: use the exact value there
        value = k0 * (k0 - 1.0) / torch.where(centre, torch.ones_like(k1), k1)
        return torch.where(centre, value.new_tensor(-min(self.radii)), value)

    def bounds(self):
        r = np.asarray(self.radii, dtype=np.float64)
        return -r, r


@dataclass
class BirdParams:
    """Continuous shape and colour parameters of one bird (lengths in body-length units)."""

    body_length: float = 1.0
    body_width: float = 0.4
    body_height: float = 0.42
    body_pitch_deg: float = 15.0
    neck_length: float = 0.2
    head_size: float = 0.16
    beak_length: float = 0.18
    tail_length: float = 0.4
    tail_droop_deg: float = 15.0
    wing_length: float = 0.7
    wing_spread: float = 0.0
    leg_length: float = 0.14
    back_color: tuple[float, float, float] = (0.45, 0.32, 0.2)
    belly_color: tuple[float, float, float] = (0.85, 0.8, 0.65)
    head_color: tuple[float, float, float] = (0.2, 0.2, 0.25)
    neck_color: tuple[float, float, float] = (0.6, 0.45, 0.3)
    beak_color: tuple[float, float, float] = (0.9, 0.65, 0.1)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else float(v)) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "BirdParams":
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})


def _color(rng: np.random.Generator, base: np.ndarray, spread: float) -> tuple[float, float, float]:
    return tuple(float(c) for c in np.clip(base + rng.uniform(-spread, spread, 3), 0.02, 0.98))


def sample_class_params(rng: np.random.Generator) -> BirdParams:
    """Parameters of one synthetic "species" (the centre of its per-image variation)."""
    return BirdParams(
        body_length=float(rng.uniform(0.85, 1.15)), body_width=float(rng.uniform(0.32, 0.46)),
        body_height=float(rng.uniform(0.36, 0.5)), body_pitch_deg=float(rng.uniform(5, 30)),
        neck_length=float(rng.uniform(0.18, 0.4)), head_size=float(rng.uniform(0.13, 0.2)),
        beak_length=float(rng.uniform(0.08, 0.3)), tail_length=float(rng.uniform(0.25, 0.55)),
        tail_droop_deg=float(rng.uniform(0, 30)), wing_length=float(rng.uniform(0.55, 0.85)),
        wing_spread=0.0, leg_length=float(rng.uniform(0.1, 0.2)),
        back_color=_color(rng, rng.uniform(0.1, 0.9, 3), 0.0),
        belly_color=_color(rng, rng.uniform(0.4, 0.95, 3), 0.0),
        head_color=_color(rng, rng.uniform(0.05, 0.9, 3), 0.0),
        neck_color=_color(rng, rng.uniform(0.1, 0.9, 3), 0.0),
        beak_color=_color(rng, rng.uniform(0.05, 0.95, 3), 0.0))


def sample_instance_params(rng: np.random.Generator, base: BirdParams, spread: float = 0.08,
                           wing_spread_prob: float = 0.3) -> BirdParams:
    """One bird of a class: ``base`` with relative jitter ``spread``; wings open with ``wing_spread_prob``."""
    out = BirdParams(**asdict(base))
    for name in ("body_length", "body_width", "body_height", "neck_length", "head_size",
                 "beak_length", "tail_length", "wing_length", "leg_length"):
        setattr(out, name, float(getattr(base, name) * rng.uniform(1 - spread, 1 + spread)))
    out.body_pitch_deg = float(base.body_pitch_deg + rng.uniform(-8, 8))
    out.tail_droop_deg = float(base.tail_droop_deg + rng.uniform(-8, 8))
    out.wing_spread = float(rng.uniform(0.3, 1.0)) if rng.random() < wing_spread_prob else 0.0
    for name in ("back_color", "belly_color", "head_color", "neck_color", "beak_color"):
        setattr(out, name, _color(rng, np.asarray(getattr(base, name)), 0.06))
    return out


@dataclass
class _Part:
    sdf: SDF
    label: int
    name: str


@dataclass
class BirdModel(SDF):
    """The bird of ``params`` as a symmetric SDF with part labels and keypoints (bird frame)."""

    params: BirdParams = field(default_factory=BirdParams)
    blend: float = 0.03

    def __post_init__(self) -> None:
        p = self.params
        a, b, c = p.body_length / 2, p.body_width / 2, p.body_height / 2
        pitch = np.radians(p.body_pitch_deg)
        self.body_rot = rotation_matrix((0, 1, 0), -pitch)  # nose up
        rb = self.body_rot
        neck_dir = rb @ _unit(0.3, 0.0, 1.0)
        self.neck_base = rb @ np.array([0.68 * a, 0.0, 0.5 * c])
        self.neck_top = self.neck_base + p.neck_length * neck_dir
        h = p.head_size
        self.head_center = self.neck_top + h * np.array([0.3, 0.0, 0.6])
        beak_rot = rotation_matrix((0, 1, 0), np.radians(12.0))  # tip slightly down
        self.beak_axis = beak_rot @ np.array([1.0, 0.0, 0.0])
        beak_half = p.beak_length / 2 + 0.3 * h
        self.beak_center = self.head_center + (0.75 * h + beak_half - 0.3 * h) * self.beak_axis \
            + np.array([0.0, 0.0, -0.15 * h])
        droop = np.radians(p.tail_droop_deg)
        self.tail_dir = rb @ np.array([-np.cos(droop), 0.0, -np.sin(droop)])
        tail_root = rb @ np.array([-0.7 * a, 0.0, 0.15 * c])
        self.tail_center = tail_root + (p.tail_length / 2) * self.tail_dir
        tail_rot = rb @ rotation_matrix((0, 1, 0), -droop)  # its -x axis is tail_dir
        self.tail_up = tail_rot[:, 2]
        neck_r = 0.45 * min(b, c)
        parts = [
            _Part(Transformed(Ellipsoid((a, b, c)), rb.tolist(), (0.0, 0.0, 0.0)), BACK, "body"),
            _Part(Capsule(tuple(self.neck_base), tuple(self.neck_top), neck_r), NECK, "neck"),
            _Part(Transformed(Ellipsoid((1.15 * h, 0.95 * h, h)), np.eye(3).tolist(),
                              tuple(self.head_center)), HEAD, "head"),
            _Part(Transformed(Ellipsoid((beak_half, 0.32 * h, 0.26 * h)), beak_rot.tolist(),
                              tuple(self.beak_center)), HEAD, "beak"),
            _Part(Transformed(Ellipsoid((p.tail_length / 2, 0.55 * b, 0.045)), tail_rot.tolist(),
                              tuple(self.tail_center)), BACK, "tail"),
        ]
        # Left wing (y > 0): folded along the flank, opened by sweeping outward and rolling flat.
        spread = float(np.clip(p.wing_spread, 0.0, 1.0))
        self.shoulder = rb @ np.array([0.35 * a, 0.78 * b, 0.4 * c])
        fold = rotation_matrix((0, 1, 0), np.pi)  # local x (span) -> world -x
        sweep = rotation_matrix((0, 0, 1), -np.radians(80.0) * spread)  # -x turns towards +y
        span_dir = sweep @ fold @ np.array([1.0, 0.0, 0.0])
        roll = rotation_matrix(span_dir, -np.radians(85.0) * spread)
        wing_rot = rb @ roll @ sweep @ fold
        wing_half = p.wing_length / 2
        self.wing_center = self.shoulder + wing_rot @ np.array([0.85 * wing_half, 0.0, 0.0])
        self.wing_out = wing_rot @ np.array([0.0, 1.0, 0.0])  # thickness axis, points away from body
        parts.append(_Part(Transformed(Ellipsoid((wing_half, 0.04, 0.55 * c)), wing_rot.tolist(),
                                       tuple(self.wing_center)), BACK, "wing"))
        # Left leg: a short capsule below the belly.
        self.hip = rb @ np.array([0.05 * a, 0.4 * b, -0.75 * c])
        self.foot = np.array([self.hip[0] + 0.03, self.hip[1], self.hip[2] - c * 0.25 - p.leg_length])
        parts.append(_Part(Capsule(tuple(self.hip), tuple(self.foot), 0.035), BELLY, "leg"))
        self.parts = parts
        self._field = SmoothUnion([part.sdf for part in parts], self.blend)
        self._body_axis_z = rb[:, 2]
        self._c = c

    # -------------------------------------------------------------------------------- field
    def evaluate(self, points: Tensor) -> Tensor:
        """Signed distance ``(N,)`` at bird-frame points ``(N, 3)`` (negative inside)."""
        return self._field.evaluate(_fold(points))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self._field.bounds()
        lo, hi = lo - self.blend, hi + self.blend
        half_y = max(abs(lo[1]), abs(hi[1]))
        return np.array([lo[0], -half_y, lo[2]]), np.array([hi[0], half_y, hi[2]])

    def classify(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Part label ``(N,)`` int64 in 1..4 and nearest component ``(N,)`` of bird-frame points ``(N, 3)``.

        The label is the nearest component's; the body is split into back (above a plane slightly
        below its centre, along the pitched body's up axis) and belly. Components are indices
        into :attr:`parts` (names ``body, neck, head, beak, tail, wing, leg``).
        """
        pts = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 3))
        folded = _fold(pts)
        dists = torch.stack([part.sdf.evaluate(folded) for part in self.parts], 0)
        nearest = dists.argmin(dim=0).numpy()
        labels = np.array([part.label for part in self.parts], dtype=np.int64)[nearest]
        up = pts.numpy() @ self._body_axis_z
        labels[(nearest == 0) & (up < -0.1 * self._c)] = BELLY
        return labels, nearest

    def part_labels(self, points: np.ndarray) -> np.ndarray:
        """Part label ``(N,)`` int64 in 1..4 of bird-frame points ``(N, 3)`` (see :meth:`classify`)."""
        return self.classify(points)[0]

    def base_colors(self, labels: np.ndarray, components: np.ndarray) -> np.ndarray:
        """Base albedo ``(N, 3)`` in [0, 1] from :meth:`classify` output: part colours, beak and legs own colour."""
        p = self.params
        table = np.array([(0.0, 0.0, 0.0), p.head_color, p.neck_color, p.back_color, p.belly_color])
        colors = table[labels]
        names = [part.name for part in self.parts]
        colors[(components == names.index("beak")) | (components == names.index("leg"))] = p.beak_color
        colors[components == names.index("wing")] *= 0.75  # darker wing feathers
        return colors

    # ---------------------------------------------------------------------------- keypoints
    def keypoints(self) -> np.ndarray:
        """The 15 CUB keypoints ``(15, 3)`` on the surface, bird frame, CUB order."""
        rb = self.body_rot
        h = self.params.head_size
        neck_mid = 0.5 * (self.neck_base + self.neck_top)
        throat_anchor = self.neck_base + 0.6 * (self.neck_top - self.neck_base)
        right = {
            "Back": (np.zeros(3), rb @ _unit(-0.15, 0, 1)),
            "Beak": (self.beak_center, self.beak_axis),
            "Belly": (np.zeros(3), rb @ _unit(-0.1, 0, -1)),
            "Breast": (np.zeros(3), rb @ _unit(0.8, 0, -0.6)),
            "Crown": (self.head_center, _unit(-0.1, 0, 1)),
            "FHead": (self.head_center, _unit(0.75, 0, 0.65)),
            "LEye": (self.head_center + np.array([0.2 * h, 0, 0.1 * h]), _unit(0.3, 1, 0.15)),
            "LLeg": (self.foot + np.array([0, 0, 0.03]), _unit(0.6, 1, 0)),
            "LWing": (self.wing_center, self.wing_out),
            "Nape": (neck_mid, _unit(-1, 0, 0.3)),
            "Tail": (self.tail_center + 0.3 * self.params.tail_length * self.tail_dir, self.tail_up),
            "Throat": (throat_anchor, _unit(1, 0, -0.35)),
        }
        for left, mirror in (("LEye", "REye"), ("LLeg", "RLeg"), ("LWing", "RWing")):
            anchor, direction = right[left]
            right[mirror] = (_MIRROR @ anchor, _MIRROR @ direction)
        anchors = np.stack([right[name][0] for name in CUB_KEYPOINT_NAMES])
        directions = np.stack([right[name][1] for name in CUB_KEYPOINT_NAMES])
        return self.first_exit(anchors, directions)

    def first_exit(self, anchors: np.ndarray, directions: np.ndarray, max_t: float = 1.5,
                   samples: int = 600) -> np.ndarray:
        """Surface points ``(K, 3)`` where rays ``anchor + t·dir`` (``(K, 3)`` each) first leave the bird.

        Anchors must be inside (negative SDF); the crossing is refined by 16 bisection steps.
        """
        anchors = np.asarray(anchors, dtype=np.float64)
        dirs = np.asarray(directions, dtype=np.float64)
        dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
        t = np.linspace(0.0, max_t, samples)
        pts = anchors[:, None, :] + t[None, :, None] * dirs[:, None, :]
        values = np.asarray(self(pts.reshape(-1, 3))).reshape(len(anchors), samples)
        if (values[:, 0] >= 0).any():
            bad = [CUB_KEYPOINT_NAMES[i] if len(anchors) == 15 else str(i)
                   for i in np.flatnonzero(values[:, 0] >= 0)]
            raise ValueError(f"keypoint anchors outside the bird: {bad}")
        first = np.argmax(values >= 0, axis=1)  # first sample outside
        if (values.max(axis=1) < 0).any():
            raise ValueError("a keypoint ray never leaves the bird; raise max_t")
        lo, hi = t[first - 1], t[first]
        for _ in range(16):
            mid = 0.5 * (lo + hi)
            inside = np.asarray(self(anchors + mid[:, None] * dirs)) < 0
            lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid)
        return anchors + (0.5 * (lo + hi))[:, None] * dirs


def _fold(points: Tensor) -> Tensor:
    """Reflect points ``(N, 3)`` into the half space ``y >= 0``."""
    return torch.cat([points[:, :1], points[:, 1:2].abs(), points[:, 2:]], dim=1)


def _unit(x: float, y: float, z: float) -> np.ndarray:
    v = np.array([x, y, z], dtype=np.float64)
    return v / np.linalg.norm(v)
