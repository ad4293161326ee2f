"""Soft rasteriser (render/soft_rasterizer.py) and projection helpers (render/mesh_camera.py):
closed-form coverage, depth order, gradcheck, lean == dense, hard limit vs analytic coverage and
an independent ray caster, memory of the lean path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh
from torch.utils._python_dispatch import TorchDispatchMode

from sfd_lightning.errors import InputError
from sfd_lightning.render.mesh_camera import (
    ndc_to_pixel,
    pixel_to_ndc,
    project_perspective,
    project_weak_perspective,
    quaternion_to_matrix,
)
from sfd_lightning.render.soft_raster_math import FACE_COLUMNS
from sfd_lightning.render.soft_rasterizer import SoftRasterizer

F64 = torch.float64


def _icosphere(level: int, dtype: torch.dtype = F64) -> tuple[torch.Tensor, torch.Tensor]:
    m = trimesh.creation.icosphere(subdivisions=level)
    return torch.tensor(m.vertices, dtype=dtype), torch.tensor(m.faces, dtype=torch.long)


def _random_views(verts: torch.Tensor, batch: int, seed: int, scale: float = 0.7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, 4, generator=g, dtype=verts.dtype)
    s = scale * (1 + 0.2 * torch.rand(batch, generator=g, dtype=verts.dtype))
    t = 0.15 * torch.randn(batch, 2, generator=g, dtype=verts.dtype)
    return project_weak_perspective(verts.expand(batch, -1, -1), s, t, q)


def _big_triangle(y_edge: float, z: float = 5.0) -> torch.Tensor:
    """Triangle covering y < y_edge (horizontal edge through y_edge) across the whole image."""
    return torch.tensor([[[-3.0, y_edge, z], [3.0, y_edge, z], [0.0, -3.0, z]]], dtype=F64)


@pytest.mark.parametrize("mode", ["dense", "lean"])
def test_big_triangle_closed_form(mode: str) -> None:
    size = 16
    y_edge = (2 * 8 + 1) / size - 1  # pixel row 8's centre lies exactly on the edge
    faces = torch.tensor([[0, 1, 2]])
    red = torch.tensor([[[1.0, 0.0, 0.0]]], dtype=F64)
    r = SoftRasterizer(size, sigma=1e-4, gamma=1e-4, background=(1.0, 1.0, 1.0), mode=mode)
    img = r(_big_triangle(y_edge), faces, red)[0]
    alpha = img[3]
    assert torch.all(alpha[:8] > 1 - 1e-12)  # inside
    assert torch.allclose(alpha[8], torch.full((size,), 0.5, dtype=F64))  # on the edge
    assert torch.all(alpha[9:] == 0)  # beyond the cull radius: exactly 0
    # the face wins the depth softmax wherever it reaches (ω_bg = e^{-9590}); background elsewhere
    assert torch.allclose(img[:3, :9], red[0, 0].view(3, 1, 1).expand(3, 9, size))
    assert torch.all(img[:3, 9:] == 1.0)

    # wide σ: alpha(row) = sigmoid(±d²/σ) inside the cull radius σ·ln(1/eps − 1), 0 beyond
    sigma, eps = 0.01, 1e-4
    r = SoftRasterizer(size, sigma=sigma, gamma=1e-4, dist_eps=eps, mode=mode)
    alpha = r(_big_triangle(y_edge), faces)[0, 0]
    assert alpha.shape == (size, size)
    for i in range(size):
        y = (2 * i + 1) / size - 1
        d2 = (y - y_edge) ** 2
        inside = y < y_edge
        expected = 1 / (1 + math.exp(-(d2 if inside else -d2) / sigma))
        if not inside and d2 >= sigma * math.log(1 / eps - 1):
            expected = 0.0
        assert torch.allclose(alpha[i], torch.full((size,), expected, dtype=F64), atol=1e-12), i


@pytest.mark.parametrize("perspective_correct", [False, True])
def test_depth_order_nearer_colour_wins(perspective_correct: bool) -> None:
    # two overlapping triangles: red at z = 3 (near), blue at z = 6; blue reaches further right
    verts = torch.tensor([[[-0.8, -0.8, 3.0], [0.4, -0.8, 3.0], [-0.8, 0.4, 3.0],
                           [-0.6, -0.6, 6.0], [0.9, -0.6, 6.0], [-0.6, 0.9, 6.0]]])
    cols = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    for order in ([[0, 1, 2], [3, 4, 5]], [[3, 4, 5], [0, 1, 2]]):
        faces = torch.tensor(order)
        c = cols if order[0][0] == 0 else cols.flip(1)
        for mode in ("dense", "lean"):
            r = SoftRasterizer(32, sigma=1e-4, gamma=1e-4, mode=mode, perspective_correct=perspective_correct)
            out = r.rasterize(verts, faces, c, return_face_index=True)
            img, fid = out.image[0], out.face_index[0]
            both = (7, 7)  # pixel (row, col) covered by both triangles: red
            assert torch.allclose(img[:, both[0], both[1]], torch.tensor([1.0, 0, 0, 1]), atol=1e-5)
            blue_only = (14, 18)  # covered by blue alone
            assert torch.allclose(img[:, blue_only[0], blue_only[1]], torch.tensor([0.0, 0, 1, 1]), atol=1e-5)
            red_face = 0 if order[0][0] == 0 else 1
            assert fid[both] == red_face and fid[blue_only] == 1 - red_face
            assert fid[0, 31] == -1 and img[3, 0, 31] == 0


def _tiny_scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    verts = torch.tensor([[[-0.6, -0.5, 2.0], [0.5, -0.3, 2.5], [-0.2, 0.6, 3.0],
                           [0.7, 0.5, 2.2], [0.1, -0.7, 2.8]]], dtype=F64, requires_grad=True)
    faces = torch.tensor([[0, 1, 2], [1, 3, 2], [4, 1, 0]])
    tex = torch.rand(1, 3, 4, 3, dtype=F64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    return verts, faces, tex


@pytest.mark.parametrize("mode,perspective_correct", [("dense", False), ("lean", True)])
def test_gradcheck_vertices_textures(mode: str, perspective_correct: bool) -> None:
    verts, faces, tex = _tiny_scene()
    r = SoftRasterizer(8, sigma=0.03, gamma=0.05, dist_eps=1e-12, background=(0.2, 0.5, 0.9), mode=mode,
                       perspective_correct=perspective_correct, chunk_pairs=64, checkpoint=False)

    def fn(v: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = r.rasterize(v, faces, t, return_centroids=True)
        return out.image, out.centroids

    # full Jacobian for the dense path; the lean path (several chunks: running softmax shift) in
    # gradcheck's fast mode (random projections) — test_lean_equals_dense compares it fully
    fast = mode == "lean"
    assert torch.autograd.gradcheck(fn, (verts, tex), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=fast)
    colours = tex[:, :, 0].detach().clone().requires_grad_(True)  # one colour per face
    assert torch.autograd.gradcheck(lambda v, c: r(v, faces, c), (verts, colours), eps=1e-6, atol=1e-6,
                                    fast_mode=True)


@pytest.mark.parametrize("dtype,tol,level", [(F64, 1e-10, 1), (torch.float32, 2e-5, 2)])
def test_lean_equals_dense(dtype: torch.dtype, tol: float, level: int) -> None:
    v0, faces = _icosphere(level, dtype)
    batch = 3 if level == 1 else 2
    verts = _random_views(v0, batch, seed=1).detach().requires_grad_(True)
    g = torch.Generator().manual_seed(2)
    tex = torch.rand(batch, faces.shape[0], 9, 3, generator=g, dtype=dtype).requires_grad_(True)
    size = 32
    weights = torch.rand(batch, 4, size, size, generator=g, dtype=dtype)
    kw = dict(sigma=1e-5 * (512 / size) ** 2, gamma=1e-4, background=(1.0, 1.0, 1.0), perspective_correct=False)
    results = []
    # lean with several chunks (running softmax shift, checkpointing); dense in pixel blocks
    for mode, extra in (("dense", {}), ("lean", {"chunk_pairs": 2000}), ("dense", {"dense_pixel_chunk": 300})):
        r = SoftRasterizer(size, mode=mode, **extra, **kw)
        out = r.rasterize(verts, faces, tex, return_face_index=True, return_centroids=True)
        loss = (out.image * weights).sum() + (out.centroids * out.centroid_mass.unsqueeze(-1)).sum()
        results.append((out, *torch.autograd.grad(loss, (verts, tex))))
    od, gvd, gtd = results[0]
    assert od.image.shape == (batch, 4, size, size)
    assert 0.2 < od.image[:, 3].mean() < 0.8  # a real scene: spheres cover part of the image
    for ol, gvl, gtl in results[1:]:
        assert torch.allclose(od.image, ol.image, atol=tol, rtol=0)
        assert torch.equal(od.face_index, ol.face_index)
        assert torch.allclose(od.centroids, ol.centroids, atol=tol * 10, rtol=0)
        assert torch.allclose(od.centroid_mass, ol.centroid_mass, atol=tol, rtol=0)
        scale = gvd.abs().max()
        assert torch.allclose(gvd, gvl, atol=tol * 10 * scale, rtol=0)
        assert torch.allclose(gtd, gtl, atol=tol, rtol=0)


def _analytic_render(verts: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel centre: covered?, nearest covering face (linear depth), distance to nearest edge."""
    c = (2 * np.arange(size) + 1) / size - 1
    px, py = np.meshgrid(c, c)  # rows = y
    p = np.stack([px.ravel(), py.ravel()], 1)
    best_z = np.full(len(p), np.inf)
    best_f = np.full(len(p), -1)
    edge = np.full(len(p), np.inf)
    for f, (ia, ib, ic) in enumerate(faces):
        a, b, cc = verts[ia], verts[ib], verts[ic]
        area = (b[0] - a[0]) * (cc[1] - a[1]) - (b[1] - a[1]) * (cc[0] - a[0])
        w = []
        for u, v in ((b, cc), (cc, a), (a, b)):
            w.append(((u[0] - p[:, 0]) * (v[1] - p[:, 1]) - (u[1] - p[:, 1]) * (v[0] - p[:, 0])) / area)
            e = v[:2] - u[:2]
            t = np.clip(((p - u[:2]) @ e) / (e @ e), 0, 1)
            edge = np.minimum(edge, np.linalg.norm(u[:2] + t[:, None] * e - p, axis=1))
        w = np.stack(w, 1)
        inside = (w > 0).all(1)
        z = w @ np.array([a[2], b[2], cc[2]])
        closer = inside & (z < best_z)
        best_z[closer], best_f[closer] = z[closer], f
    return best_f.reshape(size, size), best_f.reshape(size, size) >= 0, edge.reshape(size, size)


def test_hard_limit_matches_analytic_coverage_and_ray_caster() -> None:
    pcu = pytest.importorskip("point_cloud_utils")
    v0, faces = _icosphere(1)
    size = 32
    verts = _random_views(v0, 2, seed=3, scale=0.8)
    colours = torch.rand(2, faces.shape[0], 3, dtype=F64, generator=torch.Generator().manual_seed(4))
    r = SoftRasterizer(size, sigma=1e-10, gamma=1e-6, background=(0.0, 0.0, 0.0), perspective_correct=False)
    out = r.rasterize(verts, faces, colours, return_face_index=True)
    for b in range(2):
        vb = verts[b].numpy()
        fid, cover, edge = _analytic_render(vb, faces.numpy(), size)
        clear = edge > 2e-3  # pixel centres not on a projected edge (hard limit is ambiguous there)
        assert clear.mean() > 0.9
        alpha = out.image[b, 3].numpy()
        assert np.all(np.abs(alpha - cover)[clear] < 1e-6)
        assert np.array_equal(out.face_index[b].numpy()[clear], fid[clear])
        expected = np.where(cover[..., None], colours[b].numpy()[np.maximum(fid, 0)], 0.0)
        assert np.abs(out.image[b, :3].permute(1, 2, 0).numpy() - expected)[clear].max() < 1e-6
        # independent oracle: orthographic rays along +z through the pixel centres
        c = (2 * np.arange(size) + 1) / size - 1
        px, py = np.meshgrid(c, c)
        o = np.stack([px.ravel(), py.ravel(), np.full(px.size, -10.0)], 1)
        d = np.tile([0.0, 0.0, 1.0], (px.size, 1))
        hit, _, _ = pcu.RayMeshIntersector(vb, faces.numpy().astype(np.int32)).intersect_rays(o, d)
        assert np.array_equal(hit.reshape(size, size)[clear], fid[clear])


def test_hard_perspective_render_matches_framework_ray_caster() -> None:
    """Pinhole camera (OpenCV): project_perspective + hard render == render.raycast face ids."""
    raycast = pytest.importorskip("sfd_lightning.render.raycast")
    from sfd_lightning.geometry.cameras import PinholeCamera
    from sfd_lightning.geometry.io import Mesh

    size = 32
    v0, faces = _icosphere(2)
    world = v0 * torch.tensor([1.0, 0.7, 0.9], dtype=F64) + torch.tensor([0.2, -0.1, 0.3], dtype=F64)
    rot = quaternion_to_matrix(torch.tensor([0.9, 0.2, -0.3, 0.1], dtype=F64))
    t = torch.tensor([0.1, 0.05, 3.2], dtype=F64)
    K = torch.tensor([[40.0, 0, (size - 1) / 2 + 1.5], [0, 43.0, (size - 1) / 2 - 1.0], [0, 0, 1]], dtype=F64)
    ndc = project_perspective((world @ rot.T + t)[None], K, size)
    out = SoftRasterizer(size, sigma=1e-10, perspective_correct=True).rasterize(ndc, faces, return_face_index=True)
    cam = PinholeCamera(K.numpy(), rot.numpy(), t.numpy(), size, size)
    ref = raycast.raycast(Mesh(world.numpy(), faces.numpy().astype(np.int64), None), cam)
    clear = _analytic_render(ndc[0].numpy(), faces.numpy(), size)[2] > 2e-3
    assert clear.mean() > 0.8 and ref.mask[clear].mean() > 0.2
    assert np.array_equal(out.face_index[0].numpy()[clear], ref.face[clear])
    assert np.array_equal(out.image[0, 0].numpy()[clear] > 0.5, ref.mask[clear])


def test_backface_culling() -> None:
    v0, faces = _icosphere(1)
    verts = _random_views(v0, 1, seed=5)
    both = SoftRasterizer(24, sigma=1e-9, perspective_correct=False).rasterize(verts, faces, return_face_index=True)
    front = SoftRasterizer(24, sigma=1e-9, perspective_correct=False, cull_backfaces=True)
    culled = front.rasterize(verts, faces, return_face_index=True)
    # a closed outward-oriented mesh: the nearest faces are the front faces
    assert torch.equal(both.face_index, culled.face_index)
    clear = torch.from_numpy(_analytic_render(verts[0].numpy(), faces.numpy(), 24)[2] > 2e-3)
    assert torch.allclose(both.image[0, 0][clear], culled.image[0, 0][clear], atol=1e-6)
    assert culled.image[0, 0][clear].max() == 1.0
    flipped = front.rasterize(verts, faces.flip(-1), return_face_index=True)
    assert not torch.equal(flipped.face_index, both.face_index)  # only back faces remain


class _MaxNumel(TorchDispatchMode):
    """Records the largest tensor any aten op returns (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


def test_lean_memory_is_bounded() -> None:
    v0, faces = _icosphere(3, torch.float32)  # 642 vertices, 1280 faces
    batch, size, chunk = 8, 128, 1 << 15
    verts = _random_views(v0, batch, seed=6, scale=0.35).detach().requires_grad_(True)
    r = SoftRasterizer(size, sigma=1e-5 * (512 / size) ** 2, gamma=1e-4, perspective_correct=False,
                       chunk_pairs=chunk)
    with _MaxNumel() as rec:
        alpha = r(verts, faces)
        (alpha * torch.linspace(0, 1, size)).sum().backward()
    dense = batch * faces.shape[0] * size * size  # 168M pairs
    assert verts.grad is not None and verts.grad.abs().sum() > 0
    assert 0.05 < alpha.mean() < 0.5
    # nothing of the dense size: the largest tensor is a chunk of gathered face rows (x 19)
    # or the (B·H·W, C + 2) pixel sums
    assert rec.max_numel <= max(FACE_COLUMNS * chunk, batch * size * size * 3) < dense // 200


def test_projection_conventions() -> None:
    # quaternion (w, x, y, z): 90° about +z maps x to y (active, right-handed)
    q = torch.tensor([math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)], dtype=F64)
    assert torch.allclose(quaternion_to_matrix(q) @ torch.tensor([1.0, 0, 0], dtype=F64),
                          torch.tensor([0.0, 1, 0], dtype=F64))
    kornia = pytest.importorskip("kornia")
    qs = torch.randn(16, 4, dtype=F64)
    qs = qs / qs.norm(dim=-1, keepdim=True)
    ref = kornia.geometry.conversions.quaternion_to_rotation_matrix(qs)
    assert torch.allclose(quaternion_to_matrix(qs), ref, atol=1e-12)
    # weak perspective: identity rotation -> x = s·X + tx, z = s·Z + offset
    v = torch.tensor([[[0.1, -0.2, 0.3]]], dtype=F64)
    out = project_weak_perspective(v, torch.tensor([2.0], dtype=F64), torch.tensor([[0.5, -0.5]], dtype=F64),
                                   torch.tensor([[1.0, 0, 0, 0]], dtype=F64), depth_offset=7.0)
    assert torch.allclose(out, torch.tensor([[[0.7, -0.9, 7.6]]], dtype=F64))
    # pixel <-> NDC: pixel centre (u, v) = (0, 0) is (-1 + 1/W, -1 + 1/H); round trip
    uv = torch.tensor([[0.0, 0.0], [15.0, 7.0]], dtype=F64)
    assert torch.allclose(pixel_to_ndc(uv, (8, 16)), torch.tensor([[-1 + 1 / 16, -1 + 1 / 8], [1 - 1 / 16, 1 - 1 / 8]],
                                                                  dtype=F64))
    assert torch.allclose(ndc_to_pixel(pixel_to_ndc(uv, (8, 16)), (8, 16)), uv)


def test_projected_vertex_lands_on_its_rendered_pixel() -> None:
    size = 32
    K = torch.tensor([[40.0, 0, (size - 1) / 2], [0, 40.0, (size - 1) / 2], [0, 0, 1]], dtype=F64)
    # a camera-frame point that projects to pixel (u=21, v=9) at depth 4
    u, v, z = 21, 9, 4.0
    x_cam = torch.tensor([[(u - K[0, 2]) * z / 40.0, (v - K[1, 2]) * z / 40.0, z]], dtype=F64)
    centre = project_perspective(x_cam.unsqueeze(0), K, size)[0, 0]
    assert torch.allclose(centre[:2], pixel_to_ndc(torch.tensor([u, v], dtype=F64), size))
    # a small triangle around it covers exactly that pixel
    d = 0.6 / size
    tri = centre.expand(3, 3) + torch.tensor([[-d, -d, 0], [d * 2, 0, 0], [0, d * 2, 0]], dtype=F64)
    fid = SoftRasterizer(size, sigma=1e-9).rasterize(tri[None], torch.tensor([[0, 1, 2]]),
                                                     return_face_index=True).face_index[0]
    assert (fid == 0).nonzero().tolist() == [[v, u]]


def test_bf16_inputs_render_in_fp32_and_bad_settings() -> None:
    v0, faces = _icosphere(1, torch.float32)
    verts = _random_views(v0, 1, seed=7)
    r = SoftRasterizer(16, sigma=1e-3, perspective_correct=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img = r(verts.to(torch.bfloat16), faces, torch.rand(1, faces.shape[0], 3).to(torch.bfloat16))
    assert img.dtype == torch.float32
    assert torch.allclose(img[:, 3], r(verts.to(torch.bfloat16).float(), faces)[:, 0])
    with pytest.raises(InputError, match="sigma"):
        SoftRasterizer(16, sigma=0.0)
    with pytest.raises(InputError, match="mode"):
        SoftRasterizer(16, mode="fast")
    with pytest.raises(ValueError, match="face indices"):
        r(verts, faces + 100)
    with pytest.raises(ValueError, match="textures"):
        r(verts, faces, torch.rand(1, faces.shape[0], 5, 3))
