"""SDF ground truth helpers: signed distance, near-surface samples, normalisation frames, FPS."""

import numpy as np
import pytest
import torch

from sfd_lightning.errors import InputError
from sfd_lightning.geometry.fps import farthest_point_sampling, farthest_point_sampling_batched
from sfd_lightning.geometry.io import Mesh
from sfd_lightning.geometry.sdf_sampling import (DEEPSDF_TRAIN_SIGMAS, mesh_signed_distance, near_surface_samples,
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
    # the icosphere is inscribed: its surface lies between the face planes' smallest distance to
    # the centre and the radius, so the exact mesh SDF is within that sagitta of the sphere's
    normals = np.cross(*(mesh.vertices[mesh.faces[:, k]] - mesh.vertices[mesh.faces[:, 0]] for k in (1, 2)))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    sagitta = 0.5 - np.abs(np.sum(normals * mesh.vertices[mesh.faces[:, 0]], axis=1)).min()
    assert np.abs(sdf - analytic).max() <= sagitta + 1e-6  # 5.7e-4 (pcu's own magnitude: 2.1e-3)
    assert mesh_signed_distance(mesh, np.zeros((1, 3)))[0] == pytest.approx(-0.5, abs=0.005)


def test_open_mesh_needs_repair():
    mesh = _icosphere(level=2)
    holed = Mesh(mesh.vertices, mesh.faces[1:])  # one missing triangle
    with pytest.raises(InputError, match="not watertight"):
        mesh_signed_distance(holed, np.zeros((4, 3)), path="holed.obj")
    repaired = mesh_signed_distance(holed, np.array([[0.0, 0, 0], [0.9, 0, 0]]), repair=True)
    assert repaired[0] < 0 < repaired[1]


def test_repair_keeps_signs_through_large_holes_and_bad_winding():
    mesh = _icosphere(level=3)
    rng = np.random.default_rng(0)
    points = rng.uniform(-0.8, 0.8, size=(3000, 3))
    analytic = np.linalg.norm(points, axis=1) - 0.5
    far = np.abs(analytic) > 0.02
    holed = Mesh(mesh.vertices, mesh.faces[rng.random(len(mesh.faces)) > 0.05])  # not fillable by trimesh
    with pytest.raises(InputError, match="boundary edges"):
        mesh_signed_distance(holed, points)
    sdf = mesh_signed_distance(holed, points, repair=True)
    assert (np.sign(sdf[far]) == np.sign(analytic[far])).all()  # Manifold repair: 89% here
    assert np.abs(sdf - analytic).max() < 0.01  # near the holes the surface is farther: 0.004
    faces = mesh.faces.copy()
    flip = rng.random(len(faces)) < 0.5
    faces[flip] = faces[flip][:, ::-1]
    with pytest.raises(InputError, match="orientation"):
        mesh_signed_distance(Mesh(mesh.vertices, faces), points)
    fixed = mesh_signed_distance(Mesh(mesh.vertices, faces), points, repair=True)
    inverted = mesh_signed_distance(Mesh(mesh.vertices, mesh.faces[:, ::-1].copy()), points)
    exact = mesh_signed_distance(mesh, points)
    assert np.allclose(fixed, exact) and np.allclose(inverted, exact)
    # a triangle soup (every vertex split) is closed once coincident vertices are merged
    soup = mesh.vertices[mesh.faces].reshape(-1, 3)
    assert np.allclose(mesh_signed_distance(Mesh(soup, np.arange(len(soup)).reshape(-1, 3)), points), exact)


def test_near_surface_samples_are_gaussian_per_sigma_and_seeded():
    anchors = np.stack(np.meshgrid(*[np.arange(15.0)] * 3, indexing="ij"), -1).reshape(-1, 3)[:3000]
    sphere = lambda p: torch.as_tensor(p).norm(dim=1) - 1.0  # noqa: E731  (torch output is accepted)
    out = near_surface_samples(anchors, sphere, sigmas=DEEPSDF_TRAIN_SIGMAS, counts=3000, seed=5)
    again = near_surface_samples(anchors, sphere, sigmas=DEEPSDF_TRAIN_SIGMAS, counts=3000, seed=5)
    other = near_surface_samples(anchors, sphere, sigmas=DEEPSDF_TRAIN_SIGMAS, counts=3000, seed=6)
    assert all(np.array_equal(out[k], again[k]) for k in out) and not np.array_equal(out["points"], other["points"])
    assert np.allclose(out["sdf"], np.linalg.norm(out["points"], axis=1) - 1.0)
    tree = __import__("scipy.spatial", fromlist=["cKDTree"]).cKDTree(anchors)
    for level, sigma in enumerate(DEEPSDF_TRAIN_SIGMAS):  # std sqrt(0.005), sqrt(0.0005)
        pts = out["points"][out["level"] == level]
        assert len(pts) == 3000
        offsets = pts - anchors[tree.query(pts)[1]]  # anchors 1 apart: the nearest is the perturbed one
        assert offsets.std() == pytest.approx(sigma, rel=0.05)


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
    # only vertices referenced by faces define the frames (DeepSDF ignores stray vertices)
    stray = np.vstack([v, [[100.0, 100.0, 100.0]]])
    faces = np.arange(99).reshape(33, 3)
    assert np.allclose(normalize_unit_cube(stray, faces=faces)[1], normalize_unit_cube(v[:99])[1])
    assert normalize_unit_sphere_deepsdf(stray, faces=faces)[2] == pytest.approx(normalize_unit_sphere_deepsdf(v[:99])[2])


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
    assert batched[1].tolist() == farthest_point_sampling(points[::-1].copy(), 5).tolist()  # per cloud
    tensor_index = farthest_point_sampling(torch.as_tensor(points, dtype=torch.float32), 20)
    assert tensor_index.dtype == torch.long and tensor_index.tolist() == chosen
    from_7 = farthest_point_sampling(points, 3, start_index=7)
    assert from_7[0] == 7 and from_7[1] == int(((points - points[7]) ** 2).sum(1).argmax())
    with pytest.raises(ValueError):
        farthest_point_sampling(points, 301)
    # spread: the minimum pairwise distance of FPS picks beats random picks
    picked = points[index]
    rand = points[rng.choice(300, 20, replace=False)]
    def min_gap(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return d[np.triu_indices(len(x), 1)].min()
    assert min_gap(picked) > min_gap(rand)
