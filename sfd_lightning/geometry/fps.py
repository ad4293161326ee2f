"""Farthest-point sampling in plain torch (no pytorch3d), deterministic from ``start_index``."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def farthest_point_sampling_batched(points: Tensor, k: int, start_index: int = 0) -> Tensor:
    """Indices ``(B, k)`` of ``k`` farthest points of each cloud ``points (B, N, 3)``.

    Greedy: start at ``start_index``, then repeatedly take the point farthest (Euclidean) from
    the chosen set (ties -> lowest index, as ``argmax`` does).
    """
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be (B, N, 3), got {tuple(points.shape)}")
    batch, count, _ = points.shape
    if not 0 < k <= count:
        raise ValueError(f"k must be in [1, {count}], got {k}")
    chosen = torch.empty(batch, k, dtype=torch.long, device=points.device)
    distance = torch.full((batch, count), float("inf"), dtype=points.dtype, device=points.device)
    current = torch.full((batch,), int(start_index), dtype=torch.long, device=points.device)
    rows = torch.arange(batch, device=points.device)
    for i in range(k):
        chosen[:, i] = current
        latest = points[rows, current]  # (B, 3)
        distance = torch.minimum(distance, (points - latest[:, None]).pow(2).sum(-1))
        current = distance.argmax(dim=1)
    return chosen


def farthest_point_sampling(points: Tensor | np.ndarray, k: int, start_index: int = 0) -> Tensor | np.ndarray:
    """Indices ``(k,)`` of ``k`` farthest points of ``points (N, 3)`` (numpy in, numpy out)."""
    was_numpy = isinstance(points, np.ndarray)
    tensor = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float64)) if was_numpy else points
    index = farthest_point_sampling_batched(tensor[None], k, start_index)[0]
    return index.cpu().numpy() if was_numpy else index
