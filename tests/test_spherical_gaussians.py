"""Spherical-Gaussian lighting and the microfacet BRDF (render/spherical_gaussians.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sfd_lightning.render import spherical_gaussians as sg

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def sphere_dirs() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return sg.fibonacci_sphere(100_000)  # quasi-uniform: far less noise than random directions


def _mc(values: torch.Tensor) -> torch.Tensor:
    return values.mean(0) * 4 * math.pi


@pytest.mark.parametrize("lam", [0.5, 4.0, 30.0])
def test_single_lobe_integral_matches_closed_form(sphere_dirs, lam):
    lobe = F.normalize(torch.tensor([[0.3, -0.4, 0.8]]), dim=-1)
    mu = torch.tensor([[1.0, 2.0, 0.5]])
    lam_t = torch.tensor([[lam]])
    mc = _mc(sg.sg_eval(lobe, lam_t, mu, sphere_dirs))
    closed = sg.sg_integral(lam_t, mu)[0]
    assert torch.allclose(mc, closed, rtol=1e-2)
    # tends to 4π μ for λ → 0 and 2π μ / λ for large λ
    assert torch.allclose(sg.sg_integral(torch.tensor([[1e-5]]), torch.ones(1, 1)), torch.tensor([[4 * math.pi]]), rtol=1e-3)


def test_inner_product_and_hemisphere_integral(sphere_dirs):
    l1, l2 = F.normalize(torch.tensor([[0.0, 0.2, 1.0]]), dim=-1), F.normalize(torch.tensor([[0.5, 0.0, 0.7]]), dim=-1)
    lam1, lam2 = torch.tensor([[6.0]]), torch.tensor([[3.0]])
    mu1, mu2 = torch.ones(1, 1), torch.full((1, 1), 2.0)
    mc = _mc(sg.sg_eval(l1, lam1, mu1, sphere_dirs) * sg.sg_eval(l2, lam2, mu2, sphere_dirs))
    assert torch.allclose(mc, sg.sg_inner_product(l1, lam1, mu1, l2, lam2, mu2)[0], rtol=1e-2)
    up = sphere_dirs[:, 2:] > 0
    for lam in (0.1, 1.0, 5.0, 30.0):
        for cos in (0.9, 0.2, -0.3):
            lobe = torch.tensor([[math.sqrt(1 - cos * cos), 0.0, cos]])
            lam_t = torch.tensor([[lam]])
            mc = _mc(sg.sg_eval(lobe, lam_t, torch.ones(1, 1), sphere_dirs) * up)
            approx = sg.hemisphere_integral(lam_t, torch.tensor([[cos]]))[0]
            assert abs(float(approx - mc)) < 0.03 * float(sg.sg_integral(lam_t, torch.ones(1, 1))) + 2e-3


def test_initial_lighting_lobes_and_energy():
    lobes, lam, mu = sg.init_sg_lighting(128, seed=3)
    assert torch.allclose(lobes.norm(dim=-1), torch.ones(128), atol=1e-5)
    assert torch.equal(lobes[:64], lobes[64:]) and (lam >= 10).all()
    assert torch.allclose(sg.sg_integral(lam, mu).sum(0), torch.full((3,), 0.8 * 2 * math.pi), rtol=1e-4)


def test_diffuse_matches_monte_carlo_and_white_furnace(sphere_dirs):
    n = torch.tensor([[0.0, 0.0, 1.0]])
    lobe = F.normalize(torch.tensor([[0.5, 0.1, 0.6]]), dim=-1)
    lam, mu = torch.tensor([[8.0]]), torch.ones(1, 3)
    mc = _mc(sg.sg_eval(lobe, lam, mu, sphere_dirs) * sphere_dirs[:, 2:].clamp_min(0)) / math.pi
    out = sg.render_sg(n, n, torch.ones(1, 3), torch.full((1, 1), 0.5), lobe, lam, mu)
    assert torch.allclose(out["diffuse"][0], mc, rtol=3e-2)
    # white furnace: a (nearly) constant unit environment, albedo 1 -> diffuse radiance ≈ 1
    furnace = sg.render_sg(n, n, torch.ones(1, 3), torch.full((1, 1), 0.5), n, torch.tensor([[1e-4]]), torch.ones(1, 3))
    assert 0.97 < float(furnace["diffuse"][0, 0]) < 1.03


@pytest.mark.parametrize("roughness", [0.2, 0.5, 0.9])
def test_brdf_energy_sanity(roughness):
    """Under a uniform white environment the specular reflectance is positive, ≈ F0 = 0.02 at
    normal incidence for rough surfaces, and diffuse + specular never exceeds the incoming energy."""
    normals = torch.tensor([[0.0, 0.0, 1.0]]).expand(4, 3)
    views = F.normalize(torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.0, 0.8], [0.9, 0.0, 0.4], [0.98, 0.0, 0.15]]), dim=-1)
    env = (torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[1e-4]]), torch.ones(1, 3))
    out = sg.render_sg(normals, views, torch.full((4, 3), 0.875), torch.full((4, 1), roughness), *env)
    spec = out["specular"][:, 0]
    assert (spec > 0).all() and (spec < 0.5).all()
    assert float(spec[0]) < 0.05
    assert (out["rgb"] <= 1.0).all()
    # visibility 0 switches the light off
    dark = sg.render_sg(normals, views, torch.full((4, 3), 0.875), torch.full((4, 1), roughness), *env,
                        visibility=torch.zeros(4, 1))
    assert torch.allclose(dark["rgb"], torch.zeros(4, 3))


def test_envmap_round_trip_by_sg_fit():
    lobes = F.normalize(torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.2]]), dim=-1)
    lam, mu = torch.tensor([[8.0], [20.0]]), torch.tensor([[1.0, 0.8, 0.6], [3.0, 2.0, 1.0]])
    env = sg.sg_to_envmap(lobes, lam, mu, 32, 64)
    assert env.shape == (32, 64, 3)
    weights = sg.equirect_solid_angles(32, 64)
    assert abs(float(weights.sum()) - 4 * math.pi) < 0.05
    # the map's energy equals the SG integrals
    energy = (env * weights[..., None]).sum((0, 1))
    assert torch.allclose(energy, sg.sg_integral(lam, mu).sum(0), rtol=3e-2)
    fitted = sg.fit_sg_to_envmap(env, num_lobes=16, steps=150, lr=0.05)
    refit = sg.sg_to_envmap(*fitted, 32, 64)
    assert float(((refit - env) ** 2).mean()) < 0.1 * float((env ** 2).mean())
