"""SDF ground truth helpers: signed distance, near-surface samples, normalisation frames, FPS."""

import numpy as np
import pytest
import torch

from sfd_lightning.errors import InputError
from sfd_lightning.geometry.fps import farthest_point_sampling, farthest_point_sampling_batched
from sfd_lightning.geometry.io import Mesh
from sfd_lightning.geometry.sdf_sampling import (mesh_signed_distance, near_surface_samples,
                                                 normalize_unit_cube, normalize_unit_sphere_deepsdf)


def _icosphere(radius=0.5, level=4):
    import trimesh

    m = trimesh.creation.icosphere(level, radius=radius)
    return Mesh(np.asarray(m.vertices, float), np.asarray(m.faces, np.int64))


def test_mesh_signed_distance_matches_analytic_sphere():
    mesh = _icosphere()
    rng = np.random.default_rng(0)
    points = rng.uniform(-0.9, 0.9, size=(2000, 3))
    analytic = np.linalg.norm(points, axis=1) - 0.5
    sdf = mesh_signed_distance(mesh, points)
    far = np.abs(analytic) > 0.01
    assert (np.sign(sdf[far]) == np.sign(analytic[far])).all()
    assert np.abs(sdf - analytic).max() < 0.005  # faceting error of a level-4 icosphere
    assert mesh_signed_distance(mesh, np.zeros((1, 3)))[0] == pytest.approx(-0.5, abs=0.005)


def test_open_mesh_needs_repair():
    mesh = _icosphere(level=2)
    holed = Mesh(mesh.vertices, mesh.faces[1:])  # one missing triangle
    with pytest.raises(InputError, match="not watertight"):
        mesh_signed_distance(holed, np.zeros((4, 3)), path="holed.obj")
    repaired = mesh_signed_distance(holed, np.array([[0.0, 0, 0], [0.9, 0, 0]]), repair=True)
    assert repaired[0] < 0 < repaired[1]


def test_near_surface_samples_counts_and_spread():
    rng = np.random.default_rng(0)
    anchors = rng.standard_normal((5000, 3))
    anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
    out = near_surface_samples(anchors, lambda p: np.linalg.norm(p, axis=1) - 1.0, sigmas=[0.07, 0.02],
                               counts=[4000, 3000], uniform_count=1000, box=(-1, 1), seed=1)
    assert out["points"].shape == (8000, 3) and out["sdf"].shape == (8000,)
    assert (out["level"] == 0).sum() == 4000 and (out["level"] == -1).sum() == 1000
    for level, sigma in ((0, 0.07), (1, 0.02)):
        # |sdf| of a Gaussian offset from a unit sphere ≈ |radial component| ~ half-normal(σ)
        sdf = out["sdf"][out["level"] == level]
        assert np.sqrt(np.mean(sdf**2)) == pytest.approx(sigma, rel=0.1)
    uniform = out["points"][out["level"] == -1]
    assert uniform.min() >= -1 and uniform.max() <= 1


def test_normalisations_round_trip():
    rng = np.random.default_rng(0)
    v = rng.random((100, 3)) * [2.0, 1.0, 0.5] + [5.0, -3.0, 1.0]
    cube, center, side = normalize_unit_cube(v)
    assert (cube.max(0) - cube.min(0)).max() == pytest.approx(1.0)
    assert np.allclose(cube * side + center, v)
    sphere, offset, scale = normalize_unit_sphere_deepsdf(v)
    assert np.linalg.norm(sphere, axis=1).max() == pytest.approx(1 / 1.03)
    assert np.allclose(sphere / scale - offset, v)


def test_fps_matches_brute_force_and_spreads():
    rng = np.random.default_rng(0)
    points = rng.random((300, 3))
    index = farthest_point_sampling(points, 20)
    chosen = [0]
    dist = np.full(300, np.inf)
    for _ in range(19):
        dist = np.minimum(dist, ((points - points[chosen[-1]]) ** 2).sum(1))
        chosen.append(int(dist.argmax()))
    assert index.tolist() == chosen
    batched = farthest_point_sampling_batched(torch.as_tensor(np.stack([points, points[::-1].copy()])), 5)
    assert batched.shape == (2, 5) and batched[0].tolist() == chosen[:5]
    # spread: the minimum pairwise distance of FPS picks beats random picks
    picked = points[index]
    rand = points[rng.choice(300, 20, replace=False)]
    def min_gap(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return d[np.triu_indices(len(x), 1)].min()
    assert min_gap(picked) > min_gap(rand)
