"""NeuS volume rendering of a signed distance field (methods/sfd.md §3 "Renderer").

The pieces the SfD system composes:

- :func:`uniform_samples`: ``n_samples`` distances in ``[near, far]`` (optional per-ray jitter);
- :func:`upsample_rounds`: NeuS hierarchical up-sampling (``up_sample_steps`` rounds of
  ``n_importance / up_sample_steps`` samples, fixed ``inv_s = 64·2^i``, "min of prev/next cos"
  estimator, deterministic inverse-CDF sampling). It runs under ``torch.no_grad()`` — never
  ``inference_mode`` — so the returned distances can be reused by autograd;
- :func:`interval_midpoints`: sample positions at interval midpoints, last interval fixed;
- :func:`neus_alpha` and :func:`alpha_to_weights`: the NeuS opacity
  ``α = clip((σ(s·prev) − σ(s·next) + 1e-5)/(σ(s·prev) + 1e-5), 0, 1)`` and
  ``w = α·T``, ``T = cumprod(1 − α + 1e-7)``.

Frames: every function works in one frame per ray. The SfD system passes rays already mapped into
the normalised object frame of the ray's instance (``rays_d`` then has length ``1/r``), with
distances ``z`` measured in world units; SDF values and ``inv_s`` are in the SDF's units. The
"inside sphere" test uses a per-ray centre and radius given in the same frame.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

SdfFn = Callable[[Tensor], Tensor]


def uniform_samples(near: Tensor, far: Tensor, n_samples: int, jitter: Tensor | None = None) -> Tensor:
    """Evenly spaced distances ``(R, n_samples)`` from ``near`` to ``far`` (both ``(R,)``).

    ``jitter (R,)`` is added to every sample of a ray (the original's one offset per ray).
    """
    t = torch.linspace(0.0, 1.0, n_samples, device=near.device, dtype=near.dtype)
    z = near[:, None] + (far - near)[:, None] * t[None]
    if jitter is not None:
        z = z + jitter[:, None]
    return z


def sample_pdf(bins: Tensor, weights: Tensor, n_samples: int) -> Tensor:
    """Deterministic inverse-CDF sampling: ``bins (R, B+1)`` edges, ``weights (R, B)`` -> ``(R, n)``."""
    weights = weights + 1e-5
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)  # (R, B+1)
    u = torch.linspace(0.5 / n_samples, 1.0 - 0.5 / n_samples, n_samples, device=bins.device, dtype=bins.dtype)
    u = u.expand(cdf.shape[0], n_samples).contiguous()
    idx = torch.searchsorted(cdf, u, right=True)
    below = (idx - 1).clamp(0, cdf.shape[-1] - 1)
    above = idx.clamp(0, cdf.shape[-1] - 1)
    cdf_lo, cdf_hi = cdf.gather(1, below), cdf.gather(1, above)
    bin_lo, bin_hi = bins.gather(1, below), bins.gather(1, above)
    denom = torch.where(cdf_hi - cdf_lo < 1e-5, torch.ones_like(cdf_lo), cdf_hi - cdf_lo)
    return bin_lo + (u - cdf_lo) / denom * (bin_hi - bin_lo)


def _inside(points: Tensor, center: Tensor, radius: Tensor) -> Tensor:
    """``points (R, S, 3)`` inside the per-ray sphere ``center (R, 3)``, ``radius (R,)`` -> float ``(R, S)``."""
    return ((points - center[:, None]).norm(dim=-1) < radius[:, None]).to(points.dtype)


def upsample_weights(rays_o: Tensor, rays_d: Tensor, z: Tensor, sdf: Tensor, inv_s: float,
                     center: Tensor, radius: Tensor) -> Tensor:
    """NeuS coarse weights ``(R, S-1)`` of the intervals of ``z (R, S)`` from SDF values ``sdf (R, S)``
    at the sample positions, with the "min of prev/next cos" slope estimator."""
    points = rays_o[:, None] + rays_d[:, None] * z[..., None]
    inside = _inside(points, center, radius)
    prev_sdf, next_sdf = sdf[:, :-1], sdf[:, 1:]
    prev_z, next_z = z[:, :-1], z[:, 1:]
    mid_sdf = 0.5 * (prev_sdf + next_sdf)
    cos_val = (next_sdf - prev_sdf) / (next_z - prev_z + 1e-5)
    prev_cos = torch.cat([torch.zeros_like(cos_val[:, :1]), cos_val[:, :-1]], -1)
    cos_val = torch.minimum(prev_cos, cos_val).clamp(-1e3, 0.0) * inside[:, :-1]
    dist = next_z - prev_z
    prev_est = mid_sdf - cos_val * dist * 0.5
    next_est = mid_sdf + cos_val * dist * 0.5
    prev_cdf = torch.sigmoid(prev_est * inv_s)
    next_cdf = torch.sigmoid(next_est * inv_s)
    alpha = (prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)
    return alpha_to_weights(alpha)


def upsample_rounds(sdf_fn: SdfFn, rays_o: Tensor, rays_d: Tensor, z: Tensor, n_importance: int,
                    up_sample_steps: int, center: Tensor, radius: Tensor, base_inv_s: float = 64.0) -> Tensor:
    """Hierarchical up-sampling; returns sorted distances ``(R, S + n_importance)``.

    Args:
        sdf_fn: points ``(R, S, 3)`` -> SDF ``(R, S)`` in the rays' frame (called under ``no_grad``).
        z: ``(R, S)`` sorted coarse distances.
        n_importance: samples added in total (``n_importance // up_sample_steps`` per round).
    """
    if n_importance <= 0 or up_sample_steps <= 0:
        return z
    per_round = n_importance // up_sample_steps
    with torch.no_grad():
        z = z.detach()
        sdf = sdf_fn(rays_o[:, None] + rays_d[:, None] * z[..., None]).detach()
        for i in range(up_sample_steps):
            weights = upsample_weights(rays_o, rays_d, z, sdf, base_inv_s * 2 ** i, center, radius)
            new_z = sample_pdf(z, weights, per_round).detach()
            new_sdf = sdf_fn(rays_o[:, None] + rays_d[:, None] * new_z[..., None]).detach()
            z, order = torch.sort(torch.cat([z, new_z], -1), -1)
            sdf = torch.cat([sdf, new_sdf], -1).gather(1, order)
    return z


def interval_midpoints(z: Tensor, last_dist: Tensor) -> tuple[Tensor, Tensor]:
    """``z (R, S)`` -> ``(mid_z (R, S), dists (R, S))``; the last interval has length ``last_dist (R,)``."""
    dists = torch.cat([z[:, 1:] - z[:, :-1], last_dist[:, None].expand(-1, 1)], -1)
    return z + 0.5 * dists, dists


def neus_alpha(sdf: Tensor, gradients: Tensor, dirs: Tensor, dists: Tensor, inv_s: Tensor | float,
               cos_anneal_ratio: float = 1.0) -> Tensor:
    """NeuS discrete opacity ``(R, S)`` in [0, 1].

    Args:
        sdf: ``(R, S)`` at interval midpoints. gradients: ``(R, S, 3)`` SDF gradients in the rays' frame.
        dirs: ``(R, S, 3)`` or ``(R, 1, 3)`` ray directions in the same frame (any length: ``dot(d, ∇f)``
            is the SDF change per unit of ``z``). dists: ``(R, S)`` interval lengths in ``z`` units.
        inv_s: the sharpness ``s`` (scalar tensor or float).
    """
    true_cos = (dirs * gradients).sum(-1)
    iter_cos = -(F.relu(-true_cos * 0.5 + 0.5) * (1.0 - cos_anneal_ratio) + F.relu(-true_cos) * cos_anneal_ratio)
    prev_est = sdf - iter_cos * dists * 0.5
    next_est = sdf + iter_cos * dists * 0.5
    prev_cdf = torch.sigmoid(prev_est * inv_s)
    next_cdf = torch.sigmoid(next_est * inv_s)
    return ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clamp(0.0, 1.0)


def alpha_to_weights(alpha: Tensor) -> Tensor:
    """Compositing weights ``w = α·T`` ``(R, S)``, ``T = cumprod(1 − α + 1e-7)`` shifted by one."""
    ones = torch.ones_like(alpha[:, :1])
    transmittance = torch.cumprod(torch.cat([ones, 1.0 - alpha + 1e-7], -1), -1)[:, :-1]
    return alpha * transmittance


def composite(weights: Tensor, values: Tensor) -> Tensor:
    """``Σ_s w_s · v_s``: ``weights (R, S)``, ``values (R, S, C)`` -> ``(R, C)``."""
    return (weights[..., None] * values).sum(1)


def render_sdf(sdf_with_grad: Callable[[Tensor], tuple[Tensor, Tensor]], sdf_fn: SdfFn, rays_o: Tensor,
               rays_d: Tensor, near: Tensor, far: Tensor, inv_s: Tensor | float, n_samples: int = 32,
               n_importance: int = 32, up_sample_steps: int = 4, center: Tensor | None = None,
               radius: Tensor | None = None, jitter: Tensor | None = None) -> dict[str, Tensor]:
    """Render an SDF alone (silhouette and depth): the whole NeuS pipeline in one call.

    Args:
        sdf_with_grad: points ``(P, 3)`` -> ``(sdf (P,), gradient (P, 3))``.
        sdf_fn: points ``(R, S, 3)`` -> ``(R, S)`` for up-sampling (no grad).
        rays_o, rays_d: ``(R, 3)``. near, far: ``(R,)``.
        center, radius: inside-sphere per ray (default: everything inside).
    Returns:
        ``weights (R, S)``, ``weights_sum (R,)``, ``depth (R,)``, ``z (R, S)`` (midpoints),
        ``alpha (R, S)``, ``sdf (R, S)``, ``gradients (R, S, 3)``.
    """
    rays = rays_o.shape[0]
    if center is None:
        center = torch.zeros_like(rays_o)
    if radius is None:
        radius = torch.full((rays,), float("inf"), device=rays_o.device, dtype=rays_o.dtype)
    z = uniform_samples(near, far, n_samples, jitter)
    z = upsample_rounds(sdf_fn, rays_o, rays_d, z, n_importance, up_sample_steps, center, radius)
    mid_z, dists = interval_midpoints(z, (far - near) / n_samples)
    points = rays_o[:, None] + rays_d[:, None] * mid_z[..., None]
    sdf, gradients = sdf_with_grad(points.reshape(-1, 3))
    sdf, gradients = sdf.reshape(rays, -1), gradients.reshape(rays, -1, 3)
    alpha = neus_alpha(sdf, gradients, rays_d[:, None], dists, inv_s)
    weights = alpha_to_weights(alpha)
    return {"weights": weights, "weights_sum": weights.sum(-1), "depth": (weights * mid_z).sum(-1),
            "z": mid_z, "alpha": alpha, "sdf": sdf, "gradients": gradients}
