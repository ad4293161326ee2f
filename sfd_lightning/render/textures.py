"""Procedural solid (3D) textures, deterministic from a seed.

A :class:`SolidTexture` maps object-frame points ``(N, 3)`` to albedo ``(N, 3)`` in ``[0, 1]``.
Evaluated at object-frame coordinates, identical objects in different poses look identical,
which is what SfD piles need (the same object duplicated) and what makes SIFT features repeat
across instances. Kinds:

- ``"marble"``: veined bands warped by fractal noise, with fine speckle.
- ``"patches"``: Voronoi cells of random colours with dark borders and fine grain (the most
  feature-rich: many corners and blobs for SIFT).
- ``"stripes"``: noisy bands of random colours along a random direction, with fine grain.
- ``"smooth"``: a base colour with gentle low-frequency variation (ShapeNet-like renders).

Noise: Perlin gradient noise on a 256-periodic lattice, tables drawn from
``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import colorsys
from typing import Sequence

import numpy as np

KINDS = ("marble", "patches", "stripes", "smooth")
_TABLE = 256
_CORNERS = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=np.int64)
_NEIGHBOURS = np.array([[x, y, z] for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1)],
                       dtype=np.int64)


class _Lattice:
    """Hash tables of one seed: permutation, unit gradients and cell jitters."""

    def __init__(self, rng: np.random.Generator) -> None:
        perm = rng.permutation(_TABLE)
        self.perm = np.concatenate([perm, perm])
        gradients = rng.normal(size=(_TABLE, 3))
        self.gradients = gradients / np.linalg.norm(gradients, axis=1, keepdims=True)
        self.jitter = rng.random((_TABLE, 3))

    def hash(self, cells: np.ndarray) -> np.ndarray:
        """Integer cells ``(..., 3)`` -> hash in ``[0, 256)`` of shape ``(...)``."""
        c = cells & (_TABLE - 1)
        return self.perm[self.perm[self.perm[c[..., 0]] + c[..., 1]] + c[..., 2]]

    def perlin(self, points: np.ndarray) -> np.ndarray:
        """Gradient noise ``(N, 3) -> (N,)``, roughly in ``[-1, 1]``, zero at lattice nodes."""
        base = np.floor(points)
        frac = points - base
        cells = base.astype(np.int64)
        fade = frac * frac * frac * (frac * (frac * 6.0 - 15.0) + 10.0)
        total = np.zeros(len(points))
        for corner in _CORNERS:
            grad = self.gradients[self.hash(cells + corner)]
            dot = np.einsum("nc,nc->n", grad, frac - corner)
            weight = np.prod(np.where(corner == 1, fade, 1.0 - fade), axis=1)
            total += weight * dot
        return total * 1.5

    def fbm(self, points: np.ndarray, octaves: int = 4, gain: float = 0.5) -> np.ndarray:
        """Fractal sum of :meth:`perlin` octaves (lacunarity 2), normalised to about ``[-1, 1]``."""
        total, amplitude, norm = np.zeros(len(points)), 1.0, 0.0
        for octave in range(octaves):
            total += amplitude * self.perlin(points * (2.0 ** octave) + 17.31 * octave)
            norm += amplitude
            amplitude *= gain
        return total / norm

    def voronoi(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Worley cells: id ``(N,)`` in ``[0, 65536)`` of the nearest feature point and F2 - F1."""
        cells = np.floor(points).astype(np.int64)
        candidates = cells[:, None, :] + _NEIGHBOURS[None]  # (N, 27, 3)
        features = candidates + self.jitter[self.hash(candidates)]
        dist = np.linalg.norm(features - points[:, None, :], axis=2)
        order = np.argsort(dist, axis=1)[:, :2]
        rows = np.arange(len(points))
        nearest = candidates[rows, order[:, 0]]
        cell_id = self.hash(nearest) * _TABLE + self.hash(nearest + np.array([101, 57, 211]))
        return cell_id, dist[rows, order[:, 1]] - dist[rows, order[:, 0]]


def _random_palette(rng: np.random.Generator, size: int, base_color: np.ndarray | None) -> np.ndarray:
    """``(size, 3)`` colours: vivid random hues, or variations around ``base_color``."""
    if base_color is not None:
        return np.clip(base_color[None] + rng.uniform(-0.3, 0.3, size=(size, 3)), 0.0, 1.0)
    hues = rng.random(size)
    sats = rng.uniform(0.45, 0.95, size)
    vals = rng.uniform(0.35, 1.0, size)
    return np.array([colorsys.hsv_to_rgb(h, s, v) for h, s, v in zip(hues, sats, vals)])


class SolidTexture:
    """Deterministic procedural solid texture.

    Args:
        seed: every table and colour is drawn from ``default_rng(seed)``.
        kind: one of :data:`KINDS`.
        base_color: optional RGB in ``[0, 1]`` the colours vary around (random when ``None``).
        scale: feature size in object units (cell size, band width); the fine grain is 8x smaller.
        detail: amplitude of the fine grain (0 disables it; ignored by ``"smooth"``).
    """

    def __init__(self, seed: int, kind: str = "marble", base_color: Sequence[float] | None = None,
                 scale: float = 0.15, detail: float = 0.25) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown texture kind {kind!r}, expected one of {KINDS}")
        if scale <= 0:
            raise ValueError(f"texture scale must be positive, got {scale}")
        self.seed, self.kind, self.scale, self.detail = int(seed), kind, float(scale), float(detail)
        rng = np.random.default_rng(self.seed)
        self.lattice = _Lattice(rng)
        base = None if base_color is None else np.clip(np.asarray(base_color, dtype=np.float64), 0, 1)
        self.palette = _random_palette(rng, _TABLE, base)
        self.base_color = self.palette[0] if base is None else base
        direction = rng.normal(size=3)
        self.direction = direction / np.linalg.norm(direction)
        self.offset = rng.uniform(0.0, _TABLE / 2, size=3)  # decorrelates textures of nearby seeds

    def __repr__(self) -> str:
        return f"SolidTexture(seed={self.seed}, kind={self.kind!r}, scale={self.scale})"

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Albedo ``(N, 3)`` float64 in ``[0, 1]`` of object-frame points ``(N, 3)``."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if len(pts) == 0:
            return np.zeros((0, 3))
        p = pts / self.scale + self.offset
        color = getattr(self, f"_{self.kind}")(p)
        if self.kind != "smooth" and self.detail > 0:
            grain = self.lattice.fbm(p * 8.0 + 53.7, octaves=2)
            color = color * (1.0 + self.detail * grain)[:, None]
        return np.clip(color, 0.0, 1.0)

    def _marble(self, p: np.ndarray) -> np.ndarray:
        phase = 2.0 * np.pi * (p @ self.direction) + 5.0 * self.lattice.fbm(p * 0.5, octaves=5)
        vein = 0.5 + 0.5 * np.sin(phase)
        light, dark, accent = self.palette[0], self.palette[1] * 0.6, self.palette[2]
        color = light[None] * (1.0 - vein[:, None]) + dark[None] * vein[:, None]
        blob = np.clip(3.0 * self.lattice.perlin(p * 1.7 + 91.0) - 0.6, 0.0, 1.0)[:, None]
        return color * (1.0 - blob) + accent[None] * blob

    def _patches(self, p: np.ndarray) -> np.ndarray:
        cell_id, border = self.lattice.voronoi(p)
        color = self.palette[cell_id % _TABLE]
        edge = np.clip(border / 0.12, 0.0, 1.0)[:, None]
        return color * (0.15 + 0.85 * edge)

    def _stripes(self, p: np.ndarray) -> np.ndarray:
        phase = p @ self.direction + 0.6 * self.lattice.fbm(p * 0.7, octaves=3)
        band = np.floor(phase).astype(np.int64)
        color = self.palette[self.lattice.hash(np.stack([band, band * 7 + 3, band * 13 + 5], axis=1))]
        edge = np.clip(np.minimum(phase - band, band + 1 - phase) / 0.06, 0.0, 1.0)[:, None]
        return color * (0.25 + 0.75 * edge)

    def _smooth(self, p: np.ndarray) -> np.ndarray:
        variation = self.lattice.fbm(p * 0.25, octaves=2)
        return self.base_color[None] * (0.88 + 0.12 * variation)[:, None]
