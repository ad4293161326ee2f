"""In-memory sphere/box data for the LIST tests: silhouette images, analytic SDF queries, surface points."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

TINY_TREE = {"tree_features": [128, 64, 64, 32, 3], "tree_degrees": [2, 4, 4, 8]}


def sphere_sdf(points: torch.Tensor, radius: float) -> torch.Tensor:
    """Negative inside."""
    return points.norm(dim=-1) - radius


def box_sdf(points: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    q = points.abs() - half
    return q.clamp_min(0).norm(dim=-1) + q.max(dim=-1).values.clamp_max(0)


def surface_points(kind: str, size: float, count: int, generator: torch.Generator) -> torch.Tensor:
    """Points on the sphere (radius ``size``) or cube (half side ``size``) surface ``(count, 3)``."""
    x = torch.randn(count, 3, generator=generator)
    if kind == "sphere":
        return size * x / x.norm(dim=-1, keepdim=True)
    p = x / x.abs().max(dim=-1, keepdim=True).values  # on the unit cube surface
    return size * p


def silhouette(kind: str, size: float, pixels: int = 32) -> torch.Tensor:
    """Orthographic silhouette along z as an RGB image ``(3, H, W)`` (shape white on black)."""
    axis = torch.linspace(-0.5, 0.5, pixels)
    v, u = torch.meshgrid(axis, axis, indexing="ij")
    if kind == "sphere":
        mask = (u ** 2 + v ** 2) <= size ** 2
    else:
        mask = (u.abs() <= size) & (v.abs() <= size)
    shade = 0.5 + 0.5 * torch.cos(3 * u)  # some texture so maps are not constant
    image = torch.stack([mask * shade, mask * 0.8, mask * (1 - 0.5 * shade)]).float()
    return image


def shape_sdf(kind: str, size: float, points: torch.Tensor) -> torch.Tensor:
    if kind == "sphere":
        return sphere_sdf(points, size)
    return box_sdf(points, torch.full((3,), size))


class ShapeSet(Dataset):
    """Items in the LIST batch schema for spheres/boxes of given sizes (fixed draws per item)."""

    def __init__(self, shapes: list[tuple[str, float]], queries: int = 512, fps: int = 256, pixels: int = 32,
                 seed: int = 0, resample: bool = False, near_sigma: float = 0.02) -> None:
        """``resample``: fresh queries at every access (deterministic in the access order) instead of
        one fixed draw per item; ``near_sigma``: spread of the near-surface half of the queries."""
        self.shapes, self.queries, self.fps, self.pixels = shapes, queries, fps, pixels
        self.seed, self.resample, self.near_sigma, self._accesses = seed, resample, near_sigma, 0

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> dict:
        kind, size = self.shapes[index]
        g = torch.Generator().manual_seed(self.seed * 1000 + index)
        if self.resample:
            self._accesses += 1
            g.manual_seed(self.seed * 1000 + index + 7919 * self._accesses)
        near = surface_points(kind, size, self.queries // 2, g) + self.near_sigma * torch.randn(self.queries // 2, 3,
                                                                                                generator=g)
        uniform = torch.rand(self.queries - self.queries // 2, 3, generator=g) - 0.5
        points = torch.cat([near, uniform]).clamp(-0.5, 0.5)
        return {"image": silhouette(kind, size, self.pixels), "points": points,
                "values": shape_sdf(kind, size, points), "fps_points": surface_points(kind, size, self.fps, g),
                "index": torch.tensor(index), "name": f"{kind}_{size:.2f}"}


def iou_on_uniform(sdf_fn, kind: str, size: float, count: int = 20000, seed: int = 0) -> float:
    """IoU of ``{sdf_fn <= 0}`` against the analytic shape on uniform points in [−0.5, 0.5]³."""
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(count, 3, generator=g) - 0.5
    with torch.no_grad():
        pred = sdf_fn(points) <= 0
    gt = shape_sdf(kind, size, points) <= 0
    return float((pred & gt).sum()) / max(1, float((pred | gt).sum()))
