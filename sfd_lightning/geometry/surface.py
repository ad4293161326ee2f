"""The surface interface shared by every SDF method (CONTRACTS.md §3).

Extraction, export and evaluation are written once against :class:`SurfaceHandle`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor


@dataclass
class SurfaceHandle:
    """An SDF and where to mesh it.

    Attributes:
        sdf: callable mapping points ``(N, 3)`` in the SDF frame to signed distances ``(N,)``,
            negative inside, already divided by any ``sdf_scale``.
        bbox: ``(min_xyz (3,), max_xyz (3,))`` extraction box in the SDF frame.
        to_original: ``(4, 4)`` (or ``(K, 4, 4)`` for K instances) homogeneous transform from the
            SDF frame to the data's original frame.
    """

    sdf: Callable[[Tensor], Tensor]
    bbox: tuple[Tensor, Tensor]
    to_original: Tensor = field(default_factory=lambda: torch.eye(4))

    def map_to_original(self, points: Tensor, instance: int | None = None) -> Tensor:
        """Map points ``(N, 3)`` from the SDF frame to the data frame."""
        transform = self.to_original
        if transform.dim() == 3:
            transform = transform[0 if instance is None else instance]
        transform = transform.to(points)
        return points @ transform[:3, :3].T + transform[:3, 3]


def similarity_matrix(center: Tensor | list[float], scale: float) -> Tensor:
    """Homogeneous ``(4, 4)`` matrix for ``x_original = x_normalized * scale + center``."""
    center_t = torch.as_tensor(center, dtype=torch.float64).reshape(3)
    matrix = torch.eye(4, dtype=torch.float64)
    matrix[:3, :3] *= float(scale)
    matrix[:3, 3] = center_t
    return matrix.float()
