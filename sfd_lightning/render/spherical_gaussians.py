"""Spherical-Gaussian (SG) lighting and a microfacet BRDF in closed form (methods/sfd.md §3 "Mat").

An SG is ``G(ω; ξ, λ, μ) = μ · exp(λ (ω·ξ − 1))`` with unit lobe axis ``ξ (..., 3)``, sharpness
``λ (..., 1)`` and amplitude ``μ (..., C)``. Closed forms used here:

- full-sphere integral ``∫ G = 2π μ/λ (1 − e^{−2λ})`` (:func:`sg_integral`);
- product of two SGs is an SG (:func:`sg_product`), hence inner products in closed form;
- hemisphere integral about a normal ``n``: the smooth approximation of Tokuyoshi / Meder &
  Brüderlin (:func:`hemisphere_integral`), exact for ``λ → 0`` and for axes on the horizon
  pole, within a few percent elsewhere (tested against Monte Carlo).

Shading (linear HDR, direct light only):

- diffuse: ``albedo/π · Σ_j [μ_c·H_n(G_j ⊗ G_c) − α_c·H_n(G_j)]`` with the clamped-cosine SG
  ``G_c = (n, λ 0.0315, μ 32.7080)`` and offset ``α_c = 31.7003``;
- specular: GGX NDF as an SG (``λ = 2/r⁴``, ``μ = 1/(π r⁴)``) warped about the view direction
  (axis = reflection, ``λ/(4|n·v|)``), Schlick Fresnel (SG form) with ``F0 = 0.02``, Smith
  ``G`` with ``k = (r+1)²/8``, integrated against every light SG over the upper hemisphere;
- visibility ``(P, J)`` in [0, 1] multiplies the light amplitudes per point and lobe.

Environment maps are equirectangular ``(H, W, 3)`` in the world frame with ``+z`` up: row ``i`` is
the polar angle ``θ = π (i + 0.5)/H`` from ``+z``, column ``j`` the azimuth
``φ = 2π (j + 0.5)/W − π`` (``φ = 0`` along ``+x``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

CLAMPED_COS_LAMBDA = 0.0315
CLAMPED_COS_MU = 32.7080
CLAMPED_COS_ALPHA = 31.7003


def fibonacci_sphere(n: int) -> Tensor:
    """``n`` nearly uniform unit vectors ``(n, 3)`` (Fibonacci lattice)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    z = 1.0 - 2.0 * i / n
    r = torch.sqrt((1.0 - z * z).clamp_min(0.0))
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1).float()


def sg_eval(lobe: Tensor, lam: Tensor, mu: Tensor, dirs: Tensor) -> Tensor:
    """Value of SGs at unit ``dirs``: broadcasting ``(..., 3)``, ``(..., 1)``, ``(..., C)`` -> ``(..., C)``."""
    return mu * torch.exp(lam * ((lobe * dirs).sum(-1, keepdim=True) - 1.0))


def sg_integral(lam: Tensor, mu: Tensor) -> Tensor:
    """Full-sphere integral ``2π μ/λ (1 − e^{−2λ})``."""
    return 2.0 * math.pi * mu / lam * -torch.expm1(-2.0 * lam)


def sg_product(lobe1: Tensor, lam1: Tensor, mu1: Tensor, lobe2: Tensor, lam2: Tensor,
               mu2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The product of two SGs as one SG ``(lobe, λ, μ)`` (exact)."""
    axis = lam1 * lobe1 + lam2 * lobe2
    lam = axis.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return axis / lam, lam, mu1 * mu2 * torch.exp(lam - lam1 - lam2)


def sg_inner_product(lobe1: Tensor, lam1: Tensor, mu1: Tensor, lobe2: Tensor, lam2: Tensor,
                     mu2: Tensor) -> Tensor:
    """``∫ G1·G2`` over the sphere, in a numerically stable closed form."""
    axis = lam1 * lobe1 + lam2 * lobe2
    lam = axis.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return 2.0 * math.pi * mu1 * mu2 * torch.exp(lam - lam1 - lam2) / lam * -torch.expm1(-2.0 * lam)


def hemisphere_integral(lam: Tensor, cos_beta: Tensor) -> Tensor:
    """Integral of a unit-amplitude SG with sharpness ``λ (..., 1)`` over the hemisphere whose pole
    makes angle ``β`` with the lobe axis (``cos_beta (..., 1)``); smooth closed-form approximation."""
    lam = lam + 1e-6
    inv = 1.0 / lam
    t = torch.sqrt(lam) * (1.6988 + 10.8438 * inv) / (1.0 + 6.2201 * inv + 10.2415 * inv * inv)
    inv_a = torch.exp(-t)
    positive = cos_beta >= 0
    inv_b = torch.exp(-t * cos_beta.clamp_min(0.0))
    s_pos = (1.0 - inv_a * inv_b) / (1.0 - inv_a + inv_b - inv_a * inv_b)
    b = torch.exp(t * cos_beta.clamp_max(0.0))
    s_neg = (b - inv_a) / ((1.0 - inv_a) * (b + 1.0))
    s = torch.where(positive, s_pos, s_neg)
    below = 2.0 * math.pi * inv * torch.exp(-lam) * -torch.expm1(-lam)
    upper = 2.0 * math.pi * inv * -torch.expm1(-lam)
    return below * (1.0 - s) + upper * s


def init_sg_lighting(num_lobes: int = 128, seed: int = 0, energy: float = 0.8 * 2 * math.pi,
                     channels: int = 3) -> tuple[Tensor, Tensor, Tensor]:
    """Initial environment ``(lobes (J, 3), λ (J, 1), μ (J, C))``: Fibonacci axes (a ``J/2``-point
    lattice used twice when ``J`` is even), ``λ = 10 + |20·N(0,1)|``, μ scaled so that
    ``Σ_j ∫ G_j = energy`` per channel."""
    gen = torch.Generator().manual_seed(seed)
    base = fibonacci_sphere(num_lobes // 2 if num_lobes % 2 == 0 else num_lobes)
    lobes = torch.cat([base, base]) if num_lobes % 2 == 0 else base
    lam = 10.0 + (20.0 * torch.randn(num_lobes, 1, generator=gen)).abs()
    mu = torch.rand(num_lobes, channels, generator=gen) + 0.5
    mu = mu * energy / sg_integral(lam, mu).sum(0, keepdim=True)
    return lobes, lam, mu


def diffuse_sg(normal: Tensor, light_lobe: Tensor, light_lam: Tensor, light_mu: Tensor) -> Tensor:
    """Irradiance-like term ``∫ L(ω) max(n·ω, 0) dω`` ``(P, C)`` for per-point light SGs.

    Args:
        normal: ``(P, 3)`` unit. light_*: ``(P, J, 3|1|C)`` (visibility already folded into μ).
    """
    n = normal[:, None]
    c_lobe, c_lam = n.expand_as(light_lobe), torch.full_like(light_lam, CLAMPED_COS_LAMBDA)
    p_lobe, p_lam, p_mu = sg_product(light_lobe, light_lam, light_mu, c_lobe, c_lam,
                                     torch.full_like(light_lam, CLAMPED_COS_MU))
    term = p_mu * hemisphere_integral(p_lam, (p_lobe * n).sum(-1, keepdim=True))
    term = term - CLAMPED_COS_ALPHA * light_mu * hemisphere_integral(light_lam, (light_lobe * n).sum(-1, keepdim=True))
    return term.sum(1).clamp_min(0.0)


def specular_sg(normal: Tensor, view: Tensor, roughness: Tensor, light_lobe: Tensor, light_lam: Tensor,
                light_mu: Tensor, f0: float = 0.02) -> Tensor:
    """Specular radiance ``(P, C)`` of the GGX microfacet BRDF under per-point light SGs.

    Args:
        normal: ``(P, 3)`` unit. view: ``(P, 3)`` unit, from the point towards the camera.
        roughness: ``(P, 1)`` in (0, 1]. light_*: ``(P, J, ·)``.
    """
    r4 = roughness.pow(4).clamp_min(1e-6)
    ndf_lam, ndf_mu = 2.0 / r4, 1.0 / (math.pi * r4)
    n_dot_v = (normal * view).sum(-1, keepdim=True).clamp_min(1e-4)
    warp_axis = F.normalize(2.0 * n_dot_v * normal - view, dim=-1)
    warp_lam = ndf_lam / (4.0 * n_dot_v)
    n_dot_l = (normal * warp_axis).sum(-1, keepdim=True).clamp_min(1e-4)
    half = F.normalize(warp_axis + view, dim=-1)
    v_dot_h = (view * half).sum(-1, keepdim=True).clamp(0.0, 1.0)
    fresnel = f0 + (1.0 - f0) * torch.pow(2.0, -(5.55473 * v_dot_h + 6.8316) * v_dot_h)
    k = (roughness + 1.0) ** 2 / 8.0
    g1 = lambda x: x / (x * (1.0 - k) + k)  # noqa: E731
    shadowing = g1(n_dot_v) * g1(n_dot_l)
    amplitude = ndf_mu * fresnel * shadowing / (4.0 * n_dot_v)  # (P, 1); the n·l of the BRDF cancels
    p_lobe, p_lam, p_mu = sg_product(light_lobe, light_lam, light_mu, warp_axis[:, None].expand_as(light_lobe),
                                     warp_lam[:, None].expand_as(light_lam), amplitude[:, None].expand_as(light_lam))
    term = p_mu * hemisphere_integral(p_lam, (p_lobe * normal[:, None]).sum(-1, keepdim=True))
    return term.sum(1).clamp_min(0.0)


def render_sg(normal: Tensor, view: Tensor, albedo: Tensor, roughness: Tensor, lobes: Tensor, lam: Tensor,
              mu: Tensor, visibility: Tensor | None = None, f0: float = 0.02) -> dict[str, Tensor]:
    """Shade points under SG lighting.

    Args:
        normal, view: ``(P, 3)`` unit (world). albedo: ``(P, 3)``. roughness: ``(P, 1)``.
        lobes, lam, mu: light ``(J, 3)``, ``(J, 1)``, ``(J, C)`` (world frame).
        visibility: optional ``(P, J)`` in [0, 1] multiplying each lobe's amplitude.
    Returns:
        ``rgb``, ``diffuse``, ``specular``: ``(P, C)`` linear radiance.
    """
    count = normal.shape[0]
    light_lobe = F.normalize(lobes, dim=-1)[None].expand(count, -1, -1)
    light_lam = lam.abs()[None].expand(count, -1, -1)
    light_mu = mu.abs()[None].expand(count, -1, -1)
    if visibility is not None:
        light_mu = light_mu * visibility[..., None]
    diffuse = albedo / math.pi * diffuse_sg(normal, light_lobe, light_lam, light_mu)
    specular = specular_sg(normal, view, roughness, light_lobe, light_lam, light_mu, f0)
    return {"rgb": diffuse + specular, "diffuse": diffuse, "specular": specular}


def equirect_directions(height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """Unit directions ``(H, W, 3)`` of an equirectangular map (module docstring convention)."""
    theta = math.pi * (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
    phi = 2 * math.pi * (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width - math.pi
    theta, phi = torch.meshgrid(theta, phi, indexing="ij")
    return torch.stack([torch.sin(theta) * torch.cos(phi), torch.sin(theta) * torch.sin(phi), torch.cos(theta)], -1)


def equirect_solid_angles(height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """Solid angle ``(H, W)`` of each equirectangular pixel (sums to ≈ 4π)."""
    theta = math.pi * (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
    area = (2 * math.pi / width) * (math.pi / height) * torch.sin(theta)
    return area[:, None].expand(height, width)


def sg_to_envmap(lobes: Tensor, lam: Tensor, mu: Tensor, height: int = 128, width: int = 256) -> Tensor:
    """Radiance ``(H, W, C)`` of the SG environment on an equirectangular grid."""
    dirs = equirect_directions(height, width, lobes.device)[..., None, :]  # (H, W, 1, 3)
    values = sg_eval(F.normalize(lobes, dim=-1), lam.abs(), mu.abs(), dirs)  # (H, W, J, C)
    return values.sum(-2)


def fit_sg_to_envmap(envmap: Tensor, num_lobes: int = 128, steps: int = 500, lr: float = 0.02, seed: int = 0,
                     max_height: int = 64) -> tuple[Tensor, Tensor, Tensor]:
    """Fit ``num_lobes`` SGs to an equirectangular map ``(H, W, 3)`` (solid-angle weighted MSE, Adam).

    The map is area-downsampled to at most ``max_height`` rows first. Returns ``(lobes, λ, μ)``.
    """
    env = envmap.float()
    if env.shape[0] > max_height:
        factor = env.shape[0] / max_height
        env = F.interpolate(env.permute(2, 0, 1)[None], size=(max_height, int(round(env.shape[1] / factor))),
                            mode="area")[0].permute(1, 2, 0)
    height, width = env.shape[:2]
    lobes, lam, _ = init_sg_lighting(num_lobes, seed)
    mean = (env * equirect_solid_angles(height, width)[..., None]).sum((0, 1)) / (4 * math.pi)
    mu = (mean / (sg_integral(lam, torch.ones_like(lam)).sum() / (4 * math.pi))).expand(num_lobes, -1).clone()
    params = [p.clone().requires_grad_(True) for p in (lobes, torch.log(lam), torch.log(mu.clamp_min(1e-6)))]
    optimizer = torch.optim.Adam(params, lr=lr)
    weight = equirect_solid_angles(height, width)[..., None]
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            pred = sg_to_envmap(params[0], params[1].exp(), params[2].exp(), height, width)
            loss = (weight * (pred - env) ** 2).sum() / weight.sum()
            loss.backward()
            optimizer.step()
    return F.normalize(params[0].detach(), dim=-1), params[1].detach().exp(), params[2].detach().exp()
