"""NeuS renderer (render/neus.py) on an analytic sphere: silhouette, depth, opacity range, sampling."""

from __future__ import annotations

import pytest
import torch

from sfd_lightning.render.neus import (alpha_to_weights, neus_alpha, render_sdf, sample_pdf, upsample_rounds,
                                       uniform_samples)

RADIUS = 0.5

pytestmark = pytest.mark.usefixtures("one_thread")



def _sphere(points: torch.Tensor) -> torch.Tensor:
    return points.norm(dim=-1) - RADIUS


def _sphere_with_grad(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _sphere(points), torch.nn.functional.normalize(points, dim=-1)


def _rays(count: int = 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Parallel-ish rays from z = -3 through a grid on the z = 0 plane; returns (o, d, lateral offset)."""
    s = torch.linspace(-0.8, 0.8, count)
    x, y = torch.meshgrid(s, s, indexing="ij")
    target = torch.stack([x.ravel(), y.ravel(), torch.zeros(count * count)], -1)
    origin = torch.tensor([0.0, 0.0, -3.0]).expand_as(target)
    d = torch.nn.functional.normalize(target - origin, dim=-1)
    # distance of the ray (line) from the sphere centre
    lateral = torch.cross(-origin, d, dim=-1).norm(dim=-1)
    return origin.contiguous(), d, lateral


def test_sphere_silhouette_depth_and_opacity_range():
    o, d, lateral = _rays()
    near, far = torch.full((len(o),), 1.5), torch.full((len(o),), 4.5)
    out = render_sdf(_sphere_with_grad, lambda p: _sphere(p), o, d, near, far, inv_s=torch.tensor(400.0),
                     n_samples=64, n_importance=64, up_sample_steps=4)
    ws = out["weights_sum"]
    assert (out["alpha"] >= 0).all() and (out["alpha"] <= 1).all()
    assert (ws >= 0).all() and (ws <= 1 + 1e-4).all()
    hit, miss = lateral < 0.9 * RADIUS, lateral > 1.1 * RADIUS
    assert hit.sum() > 50 and miss.sum() > 50
    assert ws[hit].min() > 0.97
    assert ws[miss].max() < 0.03
    # analytic first intersection distance
    oc = -o
    b = (oc * d).sum(-1)
    true_depth = b - torch.sqrt((RADIUS ** 2 - (lateral ** 2)).clamp_min(0))
    spacing = (4.5 - 1.5) / 64
    assert (out["depth"][hit] - true_depth[hit]).abs().max() < spacing


def test_upsampling_concentrates_samples_near_the_surface_without_inference_tensors():
    o, d, lateral = _rays(6)
    near, far = torch.full((len(o),), 1.5), torch.full((len(o),), 4.5)
    z0 = uniform_samples(near, far, 16)
    center, radius = torch.zeros_like(o), torch.full((len(o),), 10.0)
    z = upsample_rounds(lambda p: _sphere(p), o, d, z0, 32, 4, center, radius)
    assert z.shape == (len(o), 48) and not z.is_inference() and not z.requires_grad
    assert (z[:, 1:] >= z[:, :-1]).all()
    hit = lateral < 0.8 * RADIUS
    true_depth = (-o * d).sum(-1) - torch.sqrt((RADIUS ** 2 - lateral ** 2).clamp_min(0))
    close = ((z - true_depth[:, None]).abs() < 0.1).sum(-1)
    assert (close[hit] >= 16).all()  # most new samples land within 0.1 of the surface


def test_pdf_sampling_and_weights():
    bins = torch.linspace(0, 1, 5)[None]
    weights = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    samples = sample_pdf(bins, weights, 8)
    assert ((samples >= 0.25 - 1e-3) & (samples <= 0.5 + 1e-3)).float().mean() > 0.9
    alpha = torch.rand(3, 10)
    w = alpha_to_weights(alpha)
    assert torch.all(w.sum(-1) <= 1 + 1e-5)
    grads = torch.nn.functional.normalize(torch.randn(3, 10, 3), dim=-1)
    a = neus_alpha(torch.randn(3, 10), grads, torch.randn(3, 1, 3), torch.rand(3, 10), 50.0)
    assert (a >= 0).all() and (a <= 1).all()
