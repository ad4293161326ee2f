"""SDF MLP with geometric (sphere) initialisation, skip connections and weight norm.

Architecture of IDR / SAL / Neural-Pull: ``depth`` hidden Linear layers of width ``width``; at
each skip layer the input (after positional encoding) is concatenated to the hidden features and
the sum is divided by sqrt(2); the layer before a skip outputs ``width - in_dim`` features so the
width stays constant. The geometric init makes ``f(x) ≈ ||x|| - radius`` (negative inside).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from sfd_lightning.nn.positional_encoding import PositionalEncoding
from sfd_lightning.nn.weight_norm import WeightNormLinear


class SDFMLP(nn.Module):
    """``f: (N, 3) [+ latent (N, C)] -> sdf (N,)`` (plus optional extra feature channels).

    Args:
        width: hidden width (Neural-Pull: 256).
        depth: number of hidden Linear layers (Neural-Pull: 8).
        skip_layers: indices of layers whose INPUT is ``cat(h, x) / sqrt(2)`` (Neural-Pull: (4,)).
        weight_norm: weight normalisation on every Linear (parametrizations API).
        activation: ``"relu"`` or ``"softplus"`` (Softplus(beta), IDR/NeuS use beta=100).
        init_radius: geometric init sphere radius (Neural-Pull: 0.5).
        num_frequencies: positional encoding bands (0 = none).
        latent_dim: conditioning code size concatenated to the input (0 = none).
        feature_dim: extra output channels (e.g. NeuS feature vector), returned by ``forward_features``.
        inside_negative: geometric init sign (always True in this framework).
    """

    def __init__(self, width: int = 256, depth: int = 8, skip_layers: Sequence[int] = (4,),
                 weight_norm: bool = True, activation: str = "relu", softplus_beta: float = 100.0,
                 init_radius: float = 0.5, num_frequencies: int = 0, latent_dim: int = 0,
                 feature_dim: int = 0, geometric_init: bool = True) -> None:
        super().__init__()
        self.encoding = PositionalEncoding(num_frequencies) if num_frequencies > 0 else None
        point_dim = self.encoding.out_dim if self.encoding is not None else 3
        self.in_dim = point_dim + latent_dim
        self.latent_dim = latent_dim
        self.feature_dim = feature_dim
        self.skip_layers = tuple(int(s) for s in skip_layers)
        dims = [self.in_dim] + [width] * depth + [1 + feature_dim]
        layers = []
        for i in range(len(dims) - 1):
            out_dim = dims[i + 1] - self.in_dim if (i + 1) in self.skip_layers else dims[i + 1]
            layer = nn.Linear(dims[i], out_dim)
            if geometric_init:
                self._geometric_init(layer, i, len(dims) - 2, out_dim, init_radius, num_frequencies, point_dim)
            layers.append(WeightNormLinear(layer) if weight_norm else layer)
        self.layers = nn.ModuleList(layers)
        if activation == "relu":
            self.activation: nn.Module = nn.ReLU()
        elif activation == "softplus":
            self.activation = nn.Softplus(beta=softplus_beta)
        else:
            raise ValueError(f"activation must be 'relu' or 'softplus', got {activation!r}")

    def _geometric_init(self, layer: nn.Linear, index: int, last: int, out_dim: int, radius: float,
                        num_frequencies: int, point_dim: int) -> None:
        with torch.no_grad():
            if index == last:
                nn.init.normal_(layer.weight, mean=math.sqrt(math.pi) / math.sqrt(layer.in_features), std=1e-4)
                nn.init.constant_(layer.bias, -radius)
                return
            nn.init.constant_(layer.bias, 0.0)
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2) / math.sqrt(out_dim))
            # Encoded bands start silent (IDR): the net begins as a function of xyz only.
            if num_frequencies > 0 and index == 0:
                layer.weight[:, 3:point_dim] = 0.0
            if num_frequencies > 0 and index in self.skip_layers:
                start = layer.in_features - self.in_dim
                layer.weight[:, start + 3:start + point_dim] = 0.0

    def forward_features(self, points: Tensor, latent: Tensor | None = None) -> Tensor:
        """``points (N, 3)``, ``latent (N, C)`` -> raw outputs ``(N, 1 + feature_dim)``."""
        x = self.encoding(points) if self.encoding is not None else points
        if self.latent_dim:
            if latent is None:
                raise ValueError("this SDF MLP is conditioned: pass latent (N, latent_dim)")
            x = torch.cat([x, latent], dim=-1)
        h = x
        for i, layer in enumerate(self.layers):
            if i in self.skip_layers:
                h = torch.cat([h, x], dim=-1) / np.sqrt(2)
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.activation(h)
        return h

    def forward(self, points: Tensor, latent: Tensor | None = None) -> Tensor:
        """Signed distance ``(N,)`` at ``points (N, 3)`` (negative inside)."""
        return self.forward_features(points, latent)[..., 0]


def sdf_with_gradient(network: nn.Module, points: Tensor, create_graph: bool = True,
                      latent: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One forward serves ``f`` and ``∇f``.

    Args:
        points: ``(N, 3)``; a leaf that requires grad is made if needed.
    Returns:
        ``sdf (N,)`` and ``gradient (N, 3)``; ``create_graph=True`` keeps second-order terms.
    Works inside validate/test/predict only with ``Trainer(inference_mode=False)``.
    """
    with torch.enable_grad():
        if not points.requires_grad:
            points = points.detach().requires_grad_(True)
        sdf = network(points, latent) if latent is not None else network(points)
        (gradient,) = torch.autograd.grad(sdf, points, grad_outputs=torch.ones_like(sdf),
                                          create_graph=create_graph)
    return sdf, gradient
