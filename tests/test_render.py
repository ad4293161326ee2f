"""CPU ray casting, cameras, solid textures and shading against closed forms."""

import numpy as np
import pytest

from sfd_lightning.geometry.cameras import (PinholeCamera, colmap_principal_point_to_opencv,
                                           intrinsics_from_focal_mm, intrinsics_from_fov, look_at,
                                           opencv_principal_point_to_colmap, opencv_w2c_to_opengl_c2w,
                                           opengl_c2w_to_opencv_w2c, spherical_camera)
from sfd_lightning.geometry.io import Mesh
from sfd_lightning.render.raycast import raycast
from sfd_lightning.render.shading import render_instances, render_mesh, shade
from sfd_lightning.render.textures import KINDS, SolidTexture


def _sphere(radius=1.0, level=4, center=(0.0, 0.0, 0.0)):
    import trimesh

    m = trimesh.creation.icosphere(level, radius=radius)
    return Mesh(np.asarray(m.vertices) + np.asarray(center), np.asarray(m.faces, np.int64))


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


# ---------------------------------------------------------------- cameras


def test_look_at_projects_target_to_centre_and_up_upwards():
    K = intrinsics_from_fov(50.0, 64, 48)
    cam = look_at((3.0, -2.0, 1.5), (0.2, 0.1, -0.3), up=(0, 0, 1), K=K, width=64, height=48)
    pix, depth = cam.project(np.array([[0.2, 0.1, -0.3], [0.2, 0.1, 0.7]]))
    assert np.allclose(pix[0], [31.5, 23.5])  # image centre with integer pixel centres
    assert depth[0] == pytest.approx(np.linalg.norm([2.8, -2.1, 1.8]))
    assert pix[1, 1] < pix[0, 1] and abs(pix[1, 0] - 31.5) < 1e-9  # world up -> image up, same column
    assert np.allclose(cam.R @ cam.R.T, np.eye(3)) and np.linalg.det(cam.R) == pytest.approx(1.0)
    assert np.allclose(cam.center, [3.0, -2.0, 1.5])
    assert np.allclose(cam.world_to_camera() @ cam.camera_to_world(), np.eye(4))
    # looking straight down along "up" still gives a valid camera
    down = look_at((0, 0, 5.0), (0, 0, 0), up=(0, 0, 1), K=K)
    assert (down.width, down.height) == (64, 48)
    assert np.allclose(down.project(np.zeros((1, 3)))[0], [[31.5, 23.5]])


def test_pixel_rays_invert_projection():
    rng = np.random.default_rng(0)
    K = intrinsics_from_focal_mm(35.0, 32.0, 20, 12)
    assert K[0, 0] == pytest.approx(35 * 20 / 32)
    cam = PinholeCamera(K, _random_rotation(rng), rng.normal(size=3), 20, 12)
    origins, dirs = cam.pixel_rays()
    assert origins.shape == (240, 3) and np.allclose(np.linalg.norm(dirs, axis=1), 1.0)
    pix, depth = cam.project(origins + 2.5 * dirs)
    assert (depth > 0).all()
    v, u = np.divmod(np.arange(240), 20)  # row-major: index = v * W + u
    assert np.allclose(pix, np.stack([u, v], 1), atol=1e-9)


def test_opengl_opencv_and_colmap_round_trips():
    rng = np.random.default_rng(1)
    c2w_gl = np.eye(4)
    c2w_gl[:3, :3], c2w_gl[:3, 3] = _random_rotation(rng), rng.normal(size=3)
    w2c = opengl_c2w_to_opencv_w2c(c2w_gl)
    assert np.allclose(opencv_w2c_to_opengl_c2w(w2c), c2w_gl)
    # the OpenGL camera looks along its -z: a point in front has positive OpenCV depth
    ahead = c2w_gl[:3, 3] - 2.0 * c2w_gl[:3, 2] + 0.3 * c2w_gl[:3, 1]
    cam = PinholeCamera.from_w2c(intrinsics_from_fov(60, 32, 32), w2c, 32, 32)
    pix, depth = cam.project(ahead[None])
    assert depth[0] == pytest.approx(2.0) and pix[0, 1] < 15.5  # GL +y (up) -> smaller v
    assert np.allclose(PinholeCamera.from_c2w(cam.K, cam.camera_to_world(), 32, 32).R, cam.R)
    K = intrinsics_from_fov(60, 32, 32)
    colmap = opencv_principal_point_to_colmap(K)
    assert colmap[0, 2] == pytest.approx(16.0) and np.allclose(colmap_principal_point_to_opencv(colmap), K)
    assert np.allclose(colmap_principal_point_to_opencv(np.array([[10.0, 4.0]])), [[9.5, 3.5]])


def test_spherical_camera_follows_the_shapenet_convention():
    K = intrinsics_from_focal_mm(35.0, 32.0, 224, 224)
    for az, el, dist in ((0.0, 0.0, 1.5), (90.0, 0.0, 1.5), (37.0, 25.0, 1.2), (200.0, -10.0, 1.7)):
        cam = spherical_camera(az, el, dist, K, 224, 224)
        a, e = np.radians(az), np.radians(el)
        expected = dist * np.array([np.cos(e) * np.cos(a), np.sin(e), np.cos(e) * np.sin(a)])
        assert np.allclose(cam.center, expected)
        pix, _ = cam.project(np.array([[0.0, 0.0, 0.0], [0.0, 0.3, 0.0]]))
        assert np.allclose(pix[0], [111.5, 111.5]) and pix[1, 1] < pix[0, 1]  # ShapeNet +y is up
    # azimuth 0: camera on +x looking at -x, so world +z is on the image's LEFT
    pix, _ = spherical_camera(0.0, 0.0, 2.0, K, 224, 224).project(np.array([[0.0, 0.0, 0.3]]))
    assert pix[0, 0] < 111.5


# ---------------------------------------------------------------- ray casting


def _moller_trumbore(origins, dirs, vertices, faces):
    """Brute force nearest hit: (face id or -1, t) per ray."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    e1, e2 = b - a, c - a
    p = np.cross(dirs[:, None], e2[None])
    det = np.einsum("rfc,fc->rf", p, e1)
    inv = 1.0 / np.where(np.abs(det) < 1e-12, np.nan, det)
    s = origins[:, None] - a[None]
    u = np.einsum("rfc,rfc->rf", s, p) * inv
    q = np.cross(s, e1[None])
    v = np.einsum("rc,rfc->rf", dirs, q) * inv
    t = np.einsum("fc,rfc->rf", e2, q) * inv
    ok = (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
    t = np.where(ok, t, np.inf)
    face = np.where(np.isfinite(t.min(1)), t.argmin(1), -1)
    return face, t.min(1)


def test_raycast_matches_brute_force_intersection():
    mesh = _sphere(0.8, level=1, center=(0.1, -0.05, 0.0))  # 80 faces
    cam = look_at((0.3, -3.0, 0.4), (0, 0, 0), K=intrinsics_from_fov(40, 40, 40))
    result = raycast(mesh, cam, crease_angle_deg=0)
    origins, dirs = cam.pixel_rays()
    face, t = _moller_trumbore(origins, dirs, mesh.vertices, mesh.faces)
    hit = face >= 0
    t[~hit] = 0.0
    assert hit.sum() > 300
    assert np.array_equal(result.mask.ravel(), hit)
    assert np.array_equal(result.face.ravel(), face)
    depth = (origins + t[:, None] * dirs - cam.center) @ cam.R[2]
    assert np.allclose(result.depth.ravel()[hit], depth[hit], atol=1e-5)


def test_sphere_render_matches_closed_forms():
    radius, distance = 1.0, 4.0
    K = intrinsics_from_fov(40.0, 224, 224)
    cam = look_at((0.0, -distance, 0.0), (0, 0, 0), K=K, width=224, height=224)
    result = raycast(_sphere(radius), cam)
    r_px = K[0, 0] * radius / np.sqrt(distance**2 - radius**2)  # silhouette of a sphere on the axis
    area = np.pi * r_px**2
    assert result.mask.sum() == pytest.approx(area, rel=0.01)  # measured 19792 vs 19832 (-0.2%)
    centre = result.depth[111:113, 111:113]
    assert np.allclose(centre, distance - radius, atol=1e-3)  # level-4 faceting: +2.9e-4
    assert np.isinf(result.depth[~result.mask]).all() and (result.instance[~result.mask] == -1).all()
    pts, nrm = result.points[result.mask], result.normals[result.mask]
    assert np.abs(np.linalg.norm(pts, axis=1) - radius).max() < 2e-3
    cos = np.sum(nrm * pts / np.linalg.norm(pts, axis=1, keepdims=True), axis=1)
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() < 1.0  # smooth: 0.33 deg (flat: 2.6)
    depth_from_points = (pts - cam.center) @ cam.R[2]
    assert np.allclose(result.depth[result.mask], depth_from_points, atol=1e-4)


def test_instances_of_two_spheres_and_normals_face_the_camera():
    K = intrinsics_from_fov(50.0, 96, 64)
    cam = look_at((0.0, -5.0, 0.0), (0, 0, 0), K=K, width=96, height=64)
    left, right = _sphere(0.7, 3, (-1.0, 0, 0)), _sphere(0.7, 3, (1.0, 0.5, 0))
    result = raycast([left, right], cam)
    assert (result.instance[:, :40][result.mask[:, :40]] == 0).all()
    assert (result.instance[:, 56:][result.mask[:, 56:]] == 1).all()
    counts = np.bincount(result.instance[result.mask])
    assert counts[0] > counts[1] > 0  # the right sphere is farther away
    assert result.face.max() < len(right.faces) and (result.face[result.mask] >= 0).all()
    _, dirs = cam.pixel_rays()
    assert (np.sum(result.normals.reshape(-1, 3) * dirs, axis=1)[result.mask.ravel()] < 0).all()
    # seen from inside, the normals are flipped towards the viewer
    inside = raycast(_sphere(2.0, 3), look_at((0, 0, 0), (0, 1, 0), K=K, width=96, height=64))
    assert inside.mask.all()
    p = inside.points.reshape(-1, 3)
    assert (np.sum(inside.normals.reshape(-1, 3) * p, axis=1) < 0).all()


# ---------------------------------------------------------------- textures and shading


def test_textures_deterministic_and_seed_dependent():
    pts = np.random.default_rng(0).uniform(-1, 1, size=(4000, 3))
    for kind in KINDS:
        a, b, c = SolidTexture(3, kind)(pts), SolidTexture(3, kind)(pts), SolidTexture(4, kind)(pts)
        assert a.shape == (4000, 3) and a.min() >= 0 and a.max() <= 1
        assert np.array_equal(a, b)
        assert np.abs(a - c).mean() > 0.05, kind
    with pytest.raises(ValueError):
        SolidTexture(0, "plaid")


def _two_spheres_render(texture, size=200):
    K = np.array([[3000.0, 0, (size - 1) / 2], [0, 3000.0, (size - 1) / 2], [0, 0, 1]])  # far, narrow:
    # both copies are seen from about the same angle, their centres 45 px apart exactly
    cam = look_at((0.0, -40.0, 0.0), (0, 0, 0), K=K, width=size, height=size)
    poses = np.stack([np.eye(4)] * 2)
    poses[0, 0, 3], poses[1, 0, 3] = -0.6, 0.6
    return render_instances(_sphere(0.5, 4), poses, cam, texture), cam, poses


def test_identical_objects_look_identical_and_have_features():
    import cv2

    out, cam, poses = _two_spheres_render(SolidTexture(7, "patches"))
    (u0, v0), (u1, v1) = np.round(cam.project(poses[:, :3, 3])[0]).astype(int)

    def crop_distance(img_a, img_b, shift_range=2):
        """Mean |difference| of 40 px crops around the two centres, best alignment within +-2 px
        (the front of a sphere is nearer than its centre: copies shift by about one pixel)."""
        ref = img_a[v0 - 20:v0 + 20, u0 - 20:u0 + 20].astype(float)
        return min(np.abs(ref - img_b[v1 - 20 + dv:v1 + 20 + dv, u1 - 20 + du:u1 + 20 + du]).mean()
                   for dv in range(-shift_range, shift_range + 1) for du in range(-shift_range, shift_range + 1))

    same = crop_distance(out["rgb"], out["rgb"])
    other, _, _ = _two_spheres_render(SolidTexture(8, "patches"))
    different = crop_distance(out["rgb"], other["rgb"])
    assert set(np.unique(out["instance"])) == {-1, 0, 1}
    assert (out["rgb"][~out["mask"]] == 255).all() and (out["rgba"][..., 3] == out["mask"] * 255).all()
    sift = cv2.SIFT_create()
    count = lambda img: len(sift.detect(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), None))  # noqa: E731
    smooth, _, _ = _two_spheres_render(SolidTexture(7, "smooth"))
    assert same < 0.1 * different  # measured: same copy 1.8, another seed 60.2 (uint8 levels)
    assert count(out["rgb"]) > 80 and count(smooth["rgb"]) < 40  # measured 126 vs 12 keypoints


def test_texture_lives_in_the_object_frame():
    rng = np.random.default_rng(2)
    mesh = _sphere(0.5, 3)
    K = intrinsics_from_fov(40, 64, 64)
    cam = look_at((0.0, -3.0, 0.5), (0, 0, 0), K=K)
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = _random_rotation(rng), rng.normal(size=3)
    # moving object and camera together changes nothing
    moved = PinholeCamera.from_c2w(K, pose @ cam.camera_to_world(), 64, 64)
    a = render_instances(mesh, [np.eye(4)], cam, SolidTexture(1, "marble"), light_frame="camera")
    b = render_instances(mesh, [pose], moved, SolidTexture(1, "marble"))
    assert np.abs(a["rgb"].astype(int) - b["rgb"].astype(int)).max() <= 1
    assert np.array_equal(a["mask"], b["mask"])
    assert np.allclose(b["normals"][b["mask"]], a["normals"][a["mask"]] @ pose[:3, :3].T, atol=1e-4)


def test_lambert_shading_closed_form_and_background():
    K = intrinsics_from_fov(40.0, 64, 64)
    cam = look_at((0.0, -4.0, 0.0), (0, 0, 0), K=K)
    result = raycast(_sphere(1.0, 4), cam)
    white = np.ones((64, 64, 3))
    rgb = shade(result, cam, white, light_dir=(0, 0, -1), ambient=0.0, diffuse=1.0, specular=0.0)
    pts = result.points[result.mask]
    analytic = (pts / np.linalg.norm(pts, axis=1, keepdims=True)) @ -cam.R[2]  # n . l, l toward camera
    assert np.abs(rgb[result.mask][:, 0] - np.clip(analytic, 0, 1)).max() < 0.02
    assert (rgb[~result.mask] == 0).all()
    glossy = shade(result, cam, white * 0.5, light_dir=(0, 0, -1), ambient=0.0, diffuse=0.5, specular=0.5)
    assert glossy[result.mask].max() == pytest.approx(0.75, abs=0.01)  # 0.5*0.5 + 0.5 at the highlight
    photo = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = render_mesh(_sphere(1.0, 3), cam, background=photo)
    assert np.array_equal(out["rgb"][~out["mask"]], photo[~out["mask"]])
    assert (out["rgb"][out["mask"]] == out["rgba"][..., :3][out["mask"]]).all()


def test_vertex_colours_are_interpolated():
    mesh = _sphere(1.0, 3)
    colors = np.where(mesh.vertices[:, :1] > 0, [[1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0]])
    cam = look_at((0.0, -4.0, 0.0), (0, 0, 0), K=intrinsics_from_fov(40.0, 64, 64))
    out = render_mesh(Mesh(mesh.vertices, mesh.faces, colors), cam)
    albedo = out["albedo"][out["mask"]]
    x = raycast(mesh, cam).points[out["mask"]][:, 0]
    assert (albedo[x > 0.2, 0] > 0.99).all() and (albedo[x < -0.2, 2] > 0.99).all()
