"""Analytic signed distance functions and CSG (negative inside, exact where stated).

Every primitive is a callable object mapping points ``(N, 3)`` (torch tensor or numpy array) to
signed distances ``(N,)`` of the same kind. Composites are built with :func:`union`,
:func:`intersection`, :func:`difference`, :func:`smooth_union` and :class:`Transformed`.

Exactness: sphere, box, torus, capsule and cylinder are exact Euclidean SDFs; a union of exact
SDFs is exact outside and a lower bound on |d| inside; smooth union is a bound. Ground-truth
samples of composite shapes therefore use the CSG field (the convention of evaluation.md §3.8),
and metrics use surfaces extracted from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

Array = Tensor | np.ndarray


def _as_tensor(points: Array) -> tuple[Tensor, bool]:
    if isinstance(points, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(points, dtype=np.float64)), True
    return points, False


def _back(values: Tensor, was_numpy: bool) -> Array:
    return values.detach().cpu().numpy() if was_numpy else values


class SDF:
    """Base class: subclasses implement :meth:`evaluate` on torch tensors ``(N, 3) -> (N,)``."""

    def evaluate(self, points: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement evaluate()")

    def __call__(self, points: Array) -> Array:
        tensor, was_numpy = _as_tensor(points)
        return _back(self.evaluate(tensor), was_numpy)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned box ``(min (3,), max (3,))`` that contains the surface."""
        raise NotImplementedError(f"{type(self).__name__} must implement bounds()")


@dataclass
class Sphere(SDF):
    radius: float = 0.5
    center: Sequence[float] = (0.0, 0.0, 0.0)

    def evaluate(self, points: Tensor) -> Tensor:
        return (points - points.new_tensor(self.center)).norm(dim=-1) - self.radius

    def bounds(self):
        c = np.asarray(self.center, dtype=np.float64)
        return c - self.radius, c + self.radius


@dataclass
class Box(SDF):
    half_size: Sequence[float] = (0.3, 0.3, 0.3)
    center: Sequence[float] = (0.0, 0.0, 0.0)

    def evaluate(self, points: Tensor) -> Tensor:
        q = (points - points.new_tensor(self.center)).abs() - points.new_tensor(self.half_size)
        outside = q.clamp(min=0).norm(dim=-1)
        inside = q.max(dim=-1).values.clamp(max=0)
        return outside + inside

    def bounds(self):
        c, h = np.asarray(self.center, float), np.asarray(self.half_size, float)
        return c - h, c + h


@dataclass
class Torus(SDF):
    """Torus around the z axis: ring radius ``major``, tube radius ``minor``."""

    major: float = 0.35
    minor: float = 0.12
    center: Sequence[float] = (0.0, 0.0, 0.0)

    def evaluate(self, points: Tensor) -> Tensor:
        p = points - points.new_tensor(self.center)
        ring = p[:, :2].norm(dim=-1) - self.major
        return torch.stack([ring, p[:, 2]], -1).norm(dim=-1) - self.minor

    def bounds(self):
        c = np.asarray(self.center, float)
        r = self.major + self.minor
        return c - [r, r, self.minor], c + [r, r, self.minor]


@dataclass
class Capsule(SDF):
    """Segment from ``a`` to ``b`` thickened by ``radius``."""

    a: Sequence[float] = (0.0, 0.0, -0.3)
    b: Sequence[float] = (0.0, 0.0, 0.3)
    radius: float = 0.15

    def evaluate(self, points: Tensor) -> Tensor:
        a, b = points.new_tensor(self.a), points.new_tensor(self.b)
        pa, ba = points - a, b - a
        h = ((pa @ ba) / (ba @ ba)).clamp(0, 1)
        return (pa - h[:, None] * ba).norm(dim=-1) - self.radius

    def bounds(self):
        a, b = np.asarray(self.a, float), np.asarray(self.b, float)
        return np.minimum(a, b) - self.radius, np.maximum(a, b) + self.radius


@dataclass
class Cylinder(SDF):
    """Capped cylinder along z: ``radius``, half height ``half_height``."""

    radius: float = 0.2
    half_height: float = 0.3
    center: Sequence[float] = (0.0, 0.0, 0.0)

    def evaluate(self, points: Tensor) -> Tensor:
        p = points - points.new_tensor(self.center)
        d = torch.stack([p[:, :2].norm(dim=-1) - self.radius, p[:, 2].abs() - self.half_height], -1)
        return d.max(dim=-1).values.clamp(max=0) + d.clamp(min=0).norm(dim=-1)

    def bounds(self):
        c = np.asarray(self.center, float)
        h = np.array([self.radius, self.radius, self.half_height])
        return c - h, c + h


@dataclass
class Transformed(SDF):
    """``child`` rotated by ``rotation`` (3x3, child→world), then translated; uniform ``scale``."""

    child: SDF
    rotation: Sequence[Sequence[float]] = field(default_factory=lambda: np.eye(3).tolist())
    translation: Sequence[float] = (0.0, 0.0, 0.0)
    scale: float = 1.0

    def evaluate(self, points: Tensor) -> Tensor:
        rot = points.new_tensor(np.asarray(self.rotation, dtype=np.float64))
        local = (points - points.new_tensor(self.translation)) @ rot / self.scale
        return self.child.evaluate(local) * self.scale

    def bounds(self):
        lo, hi = self.child.bounds()
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        world = corners * self.scale @ np.asarray(self.rotation, float).T + np.asarray(self.translation, float)
        return world.min(0), world.max(0)


@dataclass
class Union(SDF):
    children: list[SDF]

    def evaluate(self, points: Tensor) -> Tensor:
        return torch.stack([c.evaluate(points) for c in self.children], 0).min(dim=0).values

    def bounds(self):
        b = [c.bounds() for c in self.children]
        return np.min([x[0] for x in b], 0), np.max([x[1] for x in b], 0)


@dataclass
class SmoothUnion(SDF):
    """Polynomial smooth minimum with blend radius ``k`` (a bound, not exact)."""

    children: list[SDF]
    k: float = 0.05

    def evaluate(self, points: Tensor) -> Tensor:
        d = self.children[0].evaluate(points)
        for child in self.children[1:]:
            e = child.evaluate(points)
            h = (0.5 + 0.5 * (e - d) / self.k).clamp(0, 1)
            d = e * (1 - h) + d * h - self.k * h * (1 - h)
        return d

    def bounds(self):
        return Union(self.children).bounds()


@dataclass
class Intersection(SDF):
    children: list[SDF]

    def evaluate(self, points: Tensor) -> Tensor:
        return torch.stack([c.evaluate(points) for c in self.children], 0).max(dim=0).values

    def bounds(self):
        b = [c.bounds() for c in self.children]
        return np.max([x[0] for x in b], 0), np.min([x[1] for x in b], 0)


@dataclass
class Difference(SDF):
    """``base`` minus ``cut``."""

    base: SDF
    cut: SDF

    def evaluate(self, points: Tensor) -> Tensor:
        return torch.maximum(self.base.evaluate(points), -self.cut.evaluate(points))

    def bounds(self):
        return self.base.bounds()


def union(*children: SDF) -> Union:
    return Union(list(children))


def smooth_union(*children: SDF, k: float = 0.05) -> SmoothUnion:
    return SmoothUnion(list(children), k)


def intersection(*children: SDF) -> Intersection:
    return Intersection(list(children))


def difference(base: SDF, cut: SDF) -> Difference:
    return Difference(base, cut)


def rotation_matrix(axis: Sequence[float], angle: float) -> np.ndarray:
    """Rodrigues rotation ``(3, 3)`` about ``axis`` by ``angle`` radians."""
    axis_v = np.asarray(axis, dtype=np.float64)
    axis_v = axis_v / np.linalg.norm(axis_v)
    k = np.array([[0, -axis_v[2], axis_v[1]], [axis_v[2], 0, -axis_v[0]], [-axis_v[1], axis_v[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
