"""Networks of SfD (methods/sfd.md §3): shared SDF, colour, proxy classifier, visibility, material,
SG lighting.

Sizes are arguments; the defaults are the original's full sizes, the ``tiny`` preset passes the
debug sizes. Every positional encoding keeps its coarse-to-fine weight ``alpha`` as a buffer
(saved in checkpoints, carried from stage to stage).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sfd_lightning.nn.positional_encoding import PositionalEncoding
from sfd_lightning.nn.sdf_mlp import SDFMLP
from sfd_lightning.nn.weight_norm import WeightNormLinear
from sfd_lightning.render.spherical_gaussians import init_sg_lighting


def sdf_network(width: int = 512, depth: int = 8, multires: int = 6, feature_dim: int = 256,
                init_radius: float = 0.6) -> SDFMLP:
    """The shared SDF ``x_norm (N, 3) -> [sdf, feature] (N, 1 + feature_dim)``: Softplus(β=100),
    weight norm, skip at ``depth // 2``, geometric init ``f ≈ ‖x‖ − init_radius``, PE without π."""
    return SDFMLP(width=width, depth=depth, skip_layers=(depth // 2,), weight_norm=True, activation="softplus",
                  init_radius=init_radius, num_frequencies=multires, feature_dim=feature_dim)


def _mlp(dims: list[int], activation: nn.Module, weight_norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        linear = nn.Linear(dims[i], dims[i + 1])
        layers.append(WeightNormLinear(linear) if weight_norm else linear)
        if i < len(dims) - 2:
            layers.append(activation)
    return nn.Sequential(*layers)


class ColorNetwork(nn.Module):
    """Geo-stage appearance: ``albedo(x_local, n_local, feature) × shade(x_world, d, n_world, feature)``.

    Albedo: ``[3 + 3 + F] -> albedo_depth × albedo_width`` ReLU (weight norm) ``-> 3`` sigmoid.
    Shading: ``[PE4(x − centre), PE4(d), PE4(n_world), F] -> shading_depth × shading_width``
    LeakyReLU(0.2) ``-> 1``; ``shade = relu(s + 1) + 0.01`` (view dependence only through shading).
    """

    def __init__(self, feature_dim: int = 256, albedo_width: int = 512, albedo_depth: int = 4,
                 shading_width: int = 128, shading_depth: int = 3, multires: int = 4) -> None:
        super().__init__()
        self.albedo_net = _mlp([6 + feature_dim] + [albedo_width] * albedo_depth + [3], nn.ReLU(), weight_norm=True)
        self.pe_x = PositionalEncoding(multires)
        self.pe_d = PositionalEncoding(multires)
        self.pe_n = PositionalEncoding(multires)
        in_dim = 3 * self.pe_x.out_dim + feature_dim
        self.shading_net = _mlp([in_dim] + [shading_width] * shading_depth + [1], nn.LeakyReLU(0.2))

    def albedo(self, x_local: Tensor, n_local: Tensor, feature: Tensor) -> Tensor:
        """``(P, 3)`` in (0, 1)."""
        return torch.sigmoid(self.albedo_net(torch.cat([x_local, n_local, feature], -1)))

    def forward(self, x_local: Tensor, n_local: Tensor, x_world_centered: Tensor, dirs: Tensor,
                n_world: Tensor, feature: Tensor) -> tuple[Tensor, Tensor]:
        """All ``(P, ·)``; returns ``(colour (P, 3), albedo (P, 3))``."""
        albedo = self.albedo(x_local, n_local, feature)
        s = self.shading_net(torch.cat([self.pe_x(x_world_centered), self.pe_d(dirs), self.pe_n(n_world), feature], -1))
        shade = F.relu(s + 1.0) + 0.01
        return albedo * shade, albedo


class ProxyClassifier(nn.Module):
    """Per-instance proxy SDFs: ``PE(x_local) -> depth × [Linear width + ReLU] -> 1`` for each of
    ``N`` instances, batched with per-instance weight tensors.

    ``forward(x (N, P, 3)) -> (N, P)``: instance ``i``'s proxy at its own local points.
    """

    def __init__(self, num_instances: int, width: int = 96, depth: int = 7, multires: int = 6) -> None:
        super().__init__()
        self.encoding = PositionalEncoding(multires)
        dims = [self.encoding.out_dim] + [width] * depth + [1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i in range(len(dims) - 1):
            bound = 1.0 / math.sqrt(dims[i])
            self.weights.append(nn.Parameter(torch.empty(num_instances, dims[i], dims[i + 1]).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_instances, 1, dims[i + 1]).uniform_(-bound, bound)))
        self.num_instances = num_instances

    def forward(self, x: Tensor) -> Tensor:
        h = self.encoding(x)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.weights) - 1:
                h = F.relu(h)
        return h[..., 0]


class _SineFiLM(nn.Module):
    """``sin(freq · (W x + b) + phase)`` with learnable scalars: ``freq = 15 f + 30``, phase ∈ [−π, π]."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        bound = math.sqrt(6.0 / in_dim) / 25.0
        nn.init.uniform_(self.linear.weight, -bound, bound)
        nn.init.uniform_(self.linear.bias, -bound, bound)
        self.freq = nn.Parameter(torch.ones(()))
        self.phase = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin((15.0 * self.freq + 30.0) * self.linear(x) + self.phase.clamp(-math.pi, math.pi))


class VisibilityNetwork(nn.Module):
    """SIREN-FiLM visibility: ``[x_world (3), direction (3)] -> depth × width`` sine layers ``-> 2``
    logits; ``softmax[..., 1]`` is P(visible)."""

    def __init__(self, width: int = 256, depth: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_SineFiLM(6 if i == 0 else width, width) for i in range(depth)])
        self.out = nn.Linear(width, 2)
        bound = math.sqrt(6.0 / width) / 25.0
        nn.init.uniform_(self.out.weight, -bound, bound)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, d: Tensor) -> Tensor:
        """``x, d (..., 3) -> logits (..., 2)``."""
        h = torch.cat([x, d], -1)
        for layer in self.layers:
            h = layer(h)
        return self.out(h)

    def visible(self, x: Tensor, d: Tensor) -> Tensor:
        """P(visible) ``(...)``."""
        return torch.softmax(self.forward(x, d).float(), -1)[..., 1]


class MaterialNetwork(nn.Module):
    """Material on the local surface point: ``PE(x) -> enc_depth × enc_width`` LeakyReLU ``-> latent``
    sigmoid ``-> dec_depth × dec_width`` LeakyReLU ``-> 4`` sigmoid (albedo rgb, roughness).

    Albedo clipped to ``[0.117^2.2, 0.941^2.2]``; roughness ``0.9 x + 0.09``.
    """

    ALBEDO_MIN, ALBEDO_MAX = 0.117 ** 2.2, 0.941 ** 2.2

    def __init__(self, multires: int = 10, enc_width: int = 512, enc_depth: int = 4, latent_dim: int = 64,
                 dec_width: int = 128, dec_depth: int = 2) -> None:
        super().__init__()
        self.encoding = PositionalEncoding(multires)
        self.encoder = _mlp([self.encoding.out_dim] + [enc_width] * enc_depth + [latent_dim], nn.LeakyReLU(0.2))
        self.decoder = _mlp([latent_dim] + [dec_width] * dec_depth + [4], nn.LeakyReLU(0.2))

    def encode(self, x: Tensor) -> Tensor:
        """Latent ``(P, latent_dim)`` in (0, 1)."""
        return torch.sigmoid(self.encoder(self.encoding(x)))

    def decode(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(albedo (P, 3), roughness (P, 1))``."""
        out = torch.sigmoid(self.decoder(z)).float()
        albedo = out[..., :3].clamp(self.ALBEDO_MIN, self.ALBEDO_MAX)
        return albedo, 0.9 * out[..., 3:] + 0.09


class SGLighting(nn.Module):
    """Learnable world-frame environment of ``num_lobes`` spherical Gaussians."""

    def __init__(self, num_lobes: int = 128, seed: int = 0) -> None:
        super().__init__()
        lobes, lam, mu = init_sg_lighting(num_lobes, seed)
        self.lobes = nn.Parameter(lobes)
        self.lam = nn.Parameter(lam)
        self.mu = nn.Parameter(mu)

    def params(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(unit lobes (J, 3), λ (J, 1) > 0, μ (J, 3) ≥ 0)``."""
        return F.normalize(self.lobes, dim=-1), self.lam.abs(), self.mu.abs()
