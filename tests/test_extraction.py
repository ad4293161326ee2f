"""Mesh extraction: mapping, orientation, coarse-to-fine == dense, empty/NaN cases, slices."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from sfd_lightning.geometry.extraction import (
    _clean,
    evaluate_grid,
    evaluate_grid_coarse_to_fine,
    extract_mesh,
    extract_surface,
    marching_cubes,
    sdf_slice_image,
)
from sfd_lightning.geometry.surface import SurfaceHandle, similarity_matrix
from sfd_lightning.synthetic.primitives import (
    Box,
    Capsule,
    Sphere,
    Torus,
    Transformed,
    difference,
    rotation_matrix,
    smooth_union,
    union,
)

CUBE = ([-1.0, -1.0, -1.0], [1.0, 1.0, 1.0])


def _signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    v0, v1, v2 = (vertices[faces[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->i", v0, np.cross(v1, v2)).sum() / 6.0)


def _composite():
    """Rotated box ∪ capsule, minus a sphere, smooth-unioned with a torus (all 1-Lipschitz)."""
    body = union(Transformed(Box((0.35, 0.2, 0.25)), rotation_matrix([1, 1, 0], 0.5), (0.1, 0, 0)),
                 Capsule((-0.5, -0.2, 0.0), (0.3, 0.5, 0.2), 0.12))
    carved = difference(body, Sphere(0.22, (0.3, 0.05, 0.2)))
    return smooth_union(carved, Torus(0.3, 0.08, (-0.2, 0.1, -0.45)), k=0.05)


class CountingSDF:
    """Fake SDF "network": counts points and records the largest batch it was given."""

    def __init__(self, sdf) -> None:
        self.sdf, self.points, self.largest, self.calls = sdf, 0, 0, 0

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        assert points.dtype == torch.float32 and points.shape[1] == 3
        assert not torch.is_grad_enabled()  # evaluation runs under no_grad
        self.points += len(points)
        self.largest = max(self.largest, len(points))
        self.calls += 1
        return self.sdf(points)


@pytest.mark.parametrize("mode", ["dense", "coarse_to_fine"])
def test_sphere_radius_volume_orientation(mode):
    res, radius = 64, 0.6
    mesh = extract_mesh(Sphere(radius), *CUBE, resolution=res, mode=mode)
    voxel = 2.0 / (res - 1)
    error = np.abs(np.linalg.norm(mesh.vertices, axis=1) - radius)
    assert error.max() < 0.5 * voxel
    assert error.max() < 0.02 * voxel  # measured 0.0064 voxel (chord error of linear interpolation)
    volume = _signed_volume(mesh.vertices, mesh.faces)
    assert volume > 0  # outward faces for a negative-inside SDF
    assert abs(volume / (4 / 3 * math.pi * radius**3) - 1) < 0.02  # measured -0.17%
    assert mesh.vertices.dtype == np.float64 and mesh.faces.dtype == np.int64
    assert np.isfinite(mesh.vertices).all()


def test_index_to_world_mapping_off_centre_non_cubic_box():
    # Sphere near the box max: an R vs R-1 slip would move vertices by ~0.8 voxel.
    centre, radius = np.array([0.55, 0.45, 0.5]), 0.35
    lo, hi = np.array([-2.0, -1.5, -0.9]), np.array([1.0, 0.9, 1.0])
    res = (97, 81, 65)
    for mode in ("dense", "coarse_to_fine"):
        mesh = extract_mesh(Sphere(radius, tuple(centre)), lo, hi, resolution=res, mode=mode)
        voxel = ((hi - lo) / (np.array(res) - 1)).min()
        error = np.abs(np.linalg.norm(mesh.vertices - centre, axis=1) - radius)
        assert error.max() < 0.5 * voxel
        assert error.max() < 0.05 * voxel  # measured 0.011 voxel
        extent = mesh.vertices.max(0) - centre, centre - mesh.vertices.min(0)
        assert np.abs(np.concatenate(extent) - radius).max() < 0.05 * voxel  # per-axis extremes


def _thin_plate():
    """A tilted plate 0.03 thick: thinner than a voxel at 56³-64³, far thinner than a coarse cell."""
    return Transformed(Box((0.6, 0.5, 0.015)), rotation_matrix([1, 0.3, 0.2], 0.6), (0.05, 0.02, 0.0))


def _same_mesh(first, second) -> bool:
    return (first.vertices.shape == second.vertices.shape and np.array_equal(first.faces, second.faces)
            and np.abs(first.vertices - second.vertices).max() < 1e-6)


@pytest.mark.parametrize("name", ["sphere", "torus", "composite", "thin_plate"])
def test_coarse_to_fine_equals_dense(name):
    sdf = {"sphere": Sphere(0.55, (0.07, -0.03, 0.11)),
           "torus": Transformed(Torus(0.5, 0.15), rotation_matrix([1, 2, 0.5], 0.7), (0.05, 0, 0)),
           "composite": _composite(), "thin_plate": _thin_plate()}[name]
    lo, hi = [-1.0, -0.95, -0.9], [1.0, 1.05, 0.8]
    for res, coarse in ((56, 14), (64, 8)):  # strides 4 and 8, R - 1 not a multiple of either
        dense = extract_mesh(sdf, lo, hi, resolution=res, mode="dense")
        fine = extract_mesh(sdf, lo, hi, resolution=res, mode="coarse_to_fine", coarse_resolution=coarse)
        assert len(dense.vertices) > 1000
        assert _same_mesh(fine, dense)


def test_underestimated_lipschitz_bound_breaks_equality():
    # The guarantee is not vacuous: assuming L = 0.5 for a 1-Lipschitz field loses parts of the
    # thin plate (measured 2104 / 1396 vertices instead of 3114 / 4116).
    lo, hi = [-1.0, -0.95, -0.9], [1.0, 1.05, 0.8]
    dense = extract_mesh(_thin_plate(), lo, hi, resolution=64, mode="dense")
    loose = extract_mesh(_thin_plate(), lo, hi, resolution=64, coarse_resolution=8, lipschitz=0.5)
    assert not _same_mesh(loose, dense) and len(loose.vertices) < 0.8 * len(dense.vertices)


def test_coarse_to_fine_evaluates_a_thin_band():
    res = 96
    dense, fine = CountingSDF(_composite()), CountingSDF(_composite())
    grid_dense = evaluate_grid(dense, *CUBE, res)
    grid_fine, count = evaluate_grid_coarse_to_fine(fine, *CUBE, res, coarse_resolution=12)
    assert dense.points == res**3
    assert count == fine.points
    assert fine.points < 0.05 * res**3  # measured 0.033 (0.039 at 128³ with the default start)
    voxel = 2.0 / (res - 1)
    critical = np.abs(grid_dense) <= voxel
    assert np.array_equal(grid_fine[critical], grid_dense[critical])
    assert np.array_equal(np.sign(grid_fine), np.sign(grid_dense))


@pytest.mark.parametrize("mode", ["dense", "coarse_to_fine"])
def test_no_crossing_gives_empty_mesh(mode):
    sphere = Sphere(0.5)
    for level in (5.0, -2.0):  # above / below the field's range on the box
        mesh = extract_mesh(sphere, *CUBE, resolution=40, level=level, mode=mode)
        assert mesh.is_empty and mesh.vertices.shape == (0, 3) and mesh.faces.shape == (0, 3)
    untrained = extract_mesh(lambda p: torch.full((len(p),), 0.3), *CUBE, resolution=40, mode=mode)
    assert untrained.is_empty


@pytest.mark.parametrize("mode", ["dense", "coarse_to_fine"])
def test_level_offsets_the_surface(mode):
    mesh = extract_mesh(Sphere(0.5), *CUBE, resolution=48, level=0.1, mode=mode)
    radius = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(radius - 0.6).max() < 0.02 * 2 / 47


@pytest.mark.parametrize("mode", ["dense", "coarse_to_fine"])
def test_nan_region_is_outside(mode):
    sphere = Sphere(0.6)

    def sdf(points):
        values = sphere(points)
        return torch.where(points[:, 0] > 0.2, torch.full_like(values, float("nan")), values)

    with pytest.warns(RuntimeWarning, match="NaN"):
        mesh = extract_mesh(sdf, *CUBE, resolution=48, mode=mode)
    voxel = 2.0 / 47
    assert not mesh.is_empty and np.isfinite(mesh.vertices).all()
    assert mesh.vertices[:, 0].max() <= 0.2 + voxel  # the NaN half is carved away
    assert _signed_volume(mesh.vertices, mesh.faces) > 0
    assert mesh.faces.max() < len(mesh.vertices)


def test_evaluate_grid_chunking_and_ij_order():
    def sdf(points):  # asymmetric in the axes, so any transposition shows
        return points[:, 0] * 100 + points[:, 1] * 10 + points[:, 2]

    lo, hi, res = [-1.0, 0.0, 2.0], [1.0, 3.0, 2.5], (7, 5, 9)
    axes = [np.linspace(lo[a], hi[a], res[a]).astype(np.float32) for a in range(3)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    expected = sdf(torch.from_numpy(np.stack([x, y, z], -1).reshape(-1, 3))).numpy().reshape(res)
    for chunk in (1, 7, 64, 100, 10**6):
        counter = CountingSDF(sdf)
        grid = evaluate_grid(counter, lo, hi, res, chunk_size=chunk)
        assert grid.shape == res and grid.dtype == np.float32
        assert np.array_equal(grid, expected)
        assert counter.largest <= chunk and counter.points == int(np.prod(res))
    counter = CountingSDF(Sphere(0.5))
    evaluate_grid_coarse_to_fine(counter, *CUBE, 64, chunk_size=1000)
    assert counter.largest <= 1000


def test_evaluate_grid_accepts_a_module_and_column_output():
    net = torch.nn.Linear(3, 1)  # (N, 1) output is flattened
    grid = evaluate_grid(net, *CUBE, 6)
    point = torch.tensor([[-1.0, 1.0, -0.2]])
    assert grid[0, 5, 2] == pytest.approx(net(point).item(), abs=1e-6)


def test_extract_surface_maps_to_original_frame():
    centre, scale = [3.0, -2.0, 0.5], 2.5
    handle = SurfaceHandle(sdf=Sphere(0.5, (0.1, 0.0, 0.0)),
                           bbox=(torch.full((3,), -1.0), torch.full((3,), 1.0)),
                           to_original=similarity_matrix(centre, scale))
    local = extract_mesh(handle.sdf, *CUBE, resolution=40)
    mesh = extract_surface(handle, resolution=40)
    assert np.allclose(mesh.vertices, local.vertices * scale + centre, atol=1e-5)
    assert np.array_equal(mesh.faces, local.faces)
    radius = np.linalg.norm(mesh.vertices - (np.array(centre) + [0.1 * scale, 0, 0]), axis=1)
    assert np.abs(radius - 0.5 * scale).max() < 0.5 * scale * 2 / 39
    instances = torch.stack([torch.eye(4), similarity_matrix([0.0, 5.0, 0.0], 0.5)])
    handle_k = SurfaceHandle(handle.sdf, handle.bbox, instances)
    second = extract_surface(handle_k, resolution=40, instance=1, mode="dense")
    assert np.allclose(second.vertices, local.vertices * 0.5 + [0.0, 5.0, 0.0], atol=1e-5)
    with pytest.raises(ValueError, match="instance"):
        extract_surface(handle_k, resolution=40, instance=2)


def test_slice_image_colours():
    lo, hi = [-1.0, -0.5, -1.0], [1.0, 0.5, 1.0]
    image = sdf_slice_image(Sphere(0.4), lo, hi, axis=2, offset=0.0, resolution=128)
    assert image.dtype == np.uint8 and image.shape == (64, 128, 3)  # aspect of the x-y extent
    rgb = image.astype(int)
    centre = rgb[28:36, 60:68].reshape(-1, 3)
    corner = rgb[:4, :4].reshape(-1, 3)
    assert (centre[:, 2] > centre[:, 0] + 40).all()  # inside bluish
    assert (corner[:, 0] > corner[:, 2] + 40).all()  # outside reddish
    black = (rgb.sum(-1) == 0)
    rows, cols = np.nonzero(black)
    x = -1 + cols * 2 / 127
    y = 0.5 - rows * 1 / 63  # row 0 is the top (max y)
    assert len(rows) > 100 and np.abs(np.hypot(x, y) - 0.4).max() < 0.03  # zero level
    side = sdf_slice_image(Sphere(0.4), lo, hi, axis=0, offset=0.9, resolution=64)
    assert side.shape == (64, 32, 3)
    assert not (side.astype(int).sum(-1) == 0).any()  # plane x=0.9 misses the sphere


def test_clean_merges_node_duplicates_and_drops_degenerate():
    vertices = np.array([[0, 0, 0], [1, 0.5, 0], [0, 1, 0], [0, 0, 0], [2, 2, 2], [1, 1, np.nan]],
                        dtype=np.float64)
    faces = np.array([[0, 1, 2], [3, 2, 1], [0, 3, 1], [0, 1, 5]])
    cleaned_v, cleaned_f = _clean(vertices, faces)
    assert len(cleaned_v) == 3 and np.isfinite(cleaned_v).all()  # dup merged, unused/NaN gone
    assert cleaned_f.tolist() == [[0, 1, 2], [0, 2, 1]]


def test_node_exact_surface_is_clean_and_watertight():
    # The box faces sit exactly on grid nodes (f == 0 there).
    mesh = extract_mesh(Box((0.5, 0.5, 0.5)), *CUBE, resolution=33, mode="dense")
    assert len(np.unique(mesh.vertices, axis=0)) == len(mesh.vertices)
    edges = np.sort(mesh.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).all()
    assert _signed_volume(mesh.vertices, mesh.faces) == pytest.approx(1.0, rel=0.03)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="bbox_max"):
        extract_mesh(Sphere(0.5), [1, 1, 1], [-1, -1, -1], resolution=16)
    with pytest.raises(ValueError, match="resolution"):
        evaluate_grid(Sphere(0.5), *CUBE, 1)
    with pytest.raises(ValueError, match="mode"):
        extract_mesh(Sphere(0.5), *CUBE, resolution=16, mode="octree")
    with pytest.raises(ValueError, match="returned"):
        evaluate_grid(lambda p: p, *CUBE, 8)
    grid = np.zeros((4, 4, 4), np.float32)
    assert marching_cubes(grid - 1, *CUBE).is_empty
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extract_mesh(Sphere(0.5), *CUBE, resolution=16)  # no spurious warnings
