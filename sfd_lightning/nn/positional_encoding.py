"""NeRF-style sinusoidal positional encoding with an optional coarse-to-fine ramp."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionalEncoding(nn.Module):
    """``x -> [x, sin(2^k x), cos(2^k x)]_{k<L}`` (IDR/NeuS ordering).

    Args:
        num_frequencies: L (0 disables the encoding: output = input).
        include_input: keep ``x`` itself as the first 3 channels.

    The coarse-to-fine weight ``alpha`` in [0, L] (a buffer, so it survives checkpoints and
    stage chaining) fades band k in with ``(1 - cos(pi * clamp(alpha - k, 0, 1))) / 2``.
    """

    def __init__(self, num_frequencies: int = 6, include_input: bool = True, in_dim: int = 3) -> None:
        super().__init__()
        self.num_frequencies = num_frequencies
        self.include_input = include_input
        self.in_dim = in_dim
        self.register_buffer("alpha", torch.tensor(float(num_frequencies)))
        self.register_buffer("frequencies", 2.0 ** torch.arange(num_frequencies, dtype=torch.float32))

    @property
    def out_dim(self) -> int:
        return self.in_dim * (int(self.include_input) + 2 * self.num_frequencies)

    def band_weights(self) -> Tensor:
        """Per-band weights ``(L,)`` from the ramp ``alpha``."""
        k = torch.arange(self.num_frequencies, device=self.alpha.device, dtype=torch.float32)
        return (1 - torch.cos(math.pi * (self.alpha - k).clamp(0, 1))) / 2

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in_dim) -> (..., out_dim)``."""
        if self.num_frequencies == 0:
            return x
        scaled = x[..., None, :] * self.frequencies[:, None]  # (..., L, D)
        weights = self.band_weights()[:, None]
        bands = torch.cat([torch.sin(scaled) * weights, torch.cos(scaled) * weights], dim=-1)  # (..., L, 2D)
        parts = [x] if self.include_input else []
        parts.append(bands.flatten(-2))
        return torch.cat(parts, dim=-1)
