"""UMR unit tests: symmetric template, camera conventions, losses, keypoint metrics, rendering conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sfd_lightning.metrics.image_metrics import mask_iou
from sfd_lightning.metrics.keypoints import keypoint_faces, pck_from_predictions, pck_pairs, transfer_cam, \
    transfer_flow, transfer_pck
from sfd_lightning.modules.umr import losses as L
from sfd_lightning.modules.umr.cameras import flip_camera, mean_camera, project, quat_multiply, rotate_about_y, \
    to_opencv_orthographic
from sfd_lightning.modules.umr.semantic import face_labels, geometric_template, vertex_labels
from sfd_lightning.modules.umr.template import TABLE, build_template, symmetric_vertices
from sfd_lightning.render.mesh_camera import ndc_to_pixel, quaternion_to_matrix
from sfd_lightning.render.soft_rasterizer import SoftRasterizer

F64 = torch.float64


@pytest.mark.parametrize("level", [1, 2, 3])
def test_template_counts_and_symmetry(level: int) -> None:
    t = build_template(level)
    v_all, f_all, p, r, q, m, n_pred, n_tex, uh, uw = TABLE[level]
    assert (len(t.vertices), len(t.faces), t.n_plane, t.n_pair, t.n_plane_faces, t.n_face_pairs) == (
        v_all, f_all, p, r, q, m)
    assert (t.n_pred, t.n_tex_faces, t.uv_size) == (n_pred, n_tex, (uh, uw))
    assert t.uv_sampler.shape == (n_tex, 36, 2) and np.abs(t.uv_sampler).max() <= 1.0
    v = t.vertices
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-12)
    assert np.abs(v[:p, 1]).max() < 1e-12 and (v[p:p + r, 1] > 0).all()
    np.testing.assert_allclose(v[p + r:], v[p:p + r] * [1, -1, 1], atol=1e-12)  # left i = mirror of right i
    mirror = t.mirror_vertex()
    left = t.faces[q + m:]
    np.testing.assert_array_equal(left, mirror[t.faces[q:q + m]][:, [0, 2, 1]])
    on_plane = t.faces[:q]  # straddling faces map onto themselves
    assert {tuple(sorted(f)) for f in mirror[on_plane]} == {tuple(sorted(f)) for f in on_plane}
    tri = v[t.faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert ((normal * tri.mean(1)).sum(1) > 0).all()  # outward everywhere
    # a left texel holds the mirror of the right face's texel mirror_texel[t]
    tt = t.texels
    a, b = np.divmod(np.arange(tt * tt), tt)
    ok = a + b <= tt - 1
    w = np.stack([a / (tt - 1), b / (tt - 1), 1 - (a + b) / (tt - 1)], 1)
    right_pts = np.einsum("tk,fkc->ftc", w, tri[q:q + m])
    left_pts = np.einsum("tk,fkc->ftc", w, tri[q + m:])
    np.testing.assert_allclose(left_pts[:, ok], right_pts[:, t.mirror_texel[ok]] * [1, -1, 1], atol=1e-12)
    # symmetrising predicted vertices reproduces the sphere
    full = symmetric_vertices(torch.from_numpy(v[:n_pred]), p).numpy()
    np.testing.assert_allclose(full, v, atol=1e-12)


def test_camera_quaternion_conventions() -> None:
    g = torch.Generator().manual_seed(0)
    qa, qb = torch.randn(2, 5, 4, generator=g, dtype=F64)
    qa, qb = qa / qa.norm(dim=-1, keepdim=True), qb / qb.norm(dim=-1, keepdim=True)
    # Hamilton product composes rotations: R(a ⊗ b) = R(a) R(b); real part first, active rotation
    assert torch.allclose(quaternion_to_matrix(quat_multiply(qa, qb)),
                          quaternion_to_matrix(qa) @ quaternion_to_matrix(qb), atol=1e-12)
    q90z = torch.tensor([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)], dtype=F64)
    assert torch.allclose(quaternion_to_matrix(q90z) @ torch.tensor([1.0, 0, 0], dtype=F64),
                          torch.tensor([0.0, 1, 0], dtype=F64), atol=1e-12)
    # weak perspective: identity camera puts (x, y) at s·(x, y) + t, depth offset 7.732
    cam = torch.tensor([[0.5, 0.1, -0.2, 1, 0, 0, 0]], dtype=F64)
    pts = torch.tensor([[[0.2, 0.4, 0.6]]], dtype=F64)
    assert torch.allclose(project(pts, cam), torch.tensor([[[0.2, 0.0, 0.3 + 7.732]]], dtype=F64))
    # rotation about y by 90°: +x goes to -z (right-hand rule), keeps s, t
    rot = rotate_about_y(cam, torch.tensor([90.0], dtype=F64))
    assert torch.allclose(rot[:, :3], cam[:, :3])
    assert torch.allclose(quaternion_to_matrix(rot[0, 3:]) @ torch.tensor([1.0, 0, 0], dtype=F64),
                          torch.tensor([0.0, 0, -1], dtype=F64), atol=1e-12)
    # flipped camera of a y-symmetric mesh = the horizontally mirrored image
    t = build_template(1)
    v = torch.from_numpy(t.vertices)[None]
    cam = torch.cat([torch.tensor([[0.7, 0.1, 0.05]], dtype=F64), qa[:1]], -1)
    a = project(v, cam)
    b = project(v[:, t.mirror_vertex()], flip_camera(cam))
    assert torch.allclose(b[..., 0], -a[..., 0], atol=1e-12) and torch.allclose(b[..., 1:], a[..., 1:], atol=1e-12)
    # OpenCV orthographic camera at the boundary: u = f·(RX)_x + cx lands on ndc_to_pixel
    ocv = to_opencv_orthographic(cam[0], 64)
    x = v[0] @ ocv["R"].T
    uv = ocv["focal"] * x[:, :2] + ocv["principal"]
    assert torch.allclose(uv, ndc_to_pixel(a[0, :, :2], 64), atol=1e-10)
    # mean camera of identical cameras (sign-flipped quaternions included) is that camera
    cams = torch.cat([cam, cam * torch.tensor([1, 1, 1, -1, -1, -1, -1], dtype=F64)])
    assert torch.allclose(mean_camera(cams), cam[0], atol=1e-12)


def test_projected_vertex_lands_on_its_rendered_pixel() -> None:
    """Pitfall 1: one NDC convention for projection and rendering (pixel centres (2i + 1)/S − 1)."""
    size = 32
    # a tiny triangle around the projection of a point that lands on pixel (row 9, column 21)
    target = torch.tensor([(2 * 21 + 1) / size - 1, (2 * 9 + 1) / size - 1], dtype=F64)
    d = 0.5 / size
    pts = torch.tensor([[[0, 0, 0.0], [3 * d, 0, 0], [0, 3 * d, 0]]], dtype=F64)
    cam = torch.tensor([[1.0, float(target[0]) - d, float(target[1]) - d, 1, 0, 0, 0]], dtype=F64)
    proj = project(pts, cam)
    fid = SoftRasterizer(size, sigma=1e-9, perspective_correct=False).rasterize(
        proj, torch.tensor([[0, 1, 2]]), return_face_index=True).face_index[0]
    assert (fid == 0).nonzero().tolist() == [[9, 21]]


def test_losses_finite_differentiable_and_sane() -> None:
    g = torch.Generator().manual_seed(0)
    t = build_template(1)
    verts = (torch.from_numpy(t.vertices).float()[None].repeat(2, 1, 1)
             + 0.05 * torch.randn(2, 42, 3, generator=g)).requires_grad_(True)
    lap = L.uniform_laplacian(torch.from_numpy(t.faces), 42)
    edges, opp = torch.from_numpy(t.edges), torch.from_numpy(t.edge_opposite)
    mask = (torch.rand(2, 16, 16, generator=g) > 0.5).float()
    pred = torch.rand(2, 16, 16, generator=g, requires_grad=True)
    probs = torch.softmax(torch.randn(2, 8, generator=g), -1).requires_grad_(True)
    img = torch.rand(2, 3, 16, 16, generator=g, requires_grad=True)
    terms = [L.laplacian_loss(verts, lap), L.flatten_loss(verts, edges, opp), L.deform_loss(verts),
             L.ori_loss(verts, t.n_plane), L.mask_loss(pred, mask).mean(), L.entropy_loss(probs),
             L.texture_l1_dssim(img, img.detach().flip(-1)).mean()]
    for term in terms:
        assert torch.isfinite(term)
        term.backward(retain_graph=True)
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in (verts, pred, probs, img))
    assert float(L.mask_loss(mask, mask).max()) < 1e-6
    # a flat grid has zero flatten loss; the sphere does not
    sphere = torch.from_numpy(t.vertices).float()[None]
    assert float(L.flatten_loss(sphere, edges, opp)) > 0
    # gradient descent on the entropy sharpens the hypothesis distribution
    logits = torch.zeros(1, 8, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=50.0)
    start = float(L.entropy_loss(torch.softmax(logits.detach() + 0.01 * torch.arange(8.0), -1)))
    for _ in range(20):
        opt.zero_grad()
        L.entropy_loss(torch.softmax(logits + 0.01 * torch.arange(8.0), -1)).backward()
        opt.step()
    assert float(L.entropy_loss(torch.softmax(logits + 0.01 * torch.arange(8.0), -1))) < start - 0.1
    # vertex Chamfer is zero when projected vertices coincide with part points
    pts = [torch.rand(2, 5, 2, generator=g) for _ in range(4)]
    assert float(L.vertex_chamfer_loss(pts, pts, (1, 0, 0, 1)).abs().max()) == 0.0
    assert float(L.vertex_chamfer_loss([p + 0.1 for p in pts], pts, (1, 0, 0, 1)).min()) > 0
    # part-map loss: finite, zero-gradient-free, smaller for the right map than for a shifted one
    parts = torch.zeros(1, 5, 16, 16)
    parts[0, 0] = 1
    parts[0, 0, 2:6, 2:6], parts[0, 1, 2:6, 2:6] = 0, 1
    parts[0, 0, 10:14, 8:14], parts[0, 4, 10:14, 8:14] = 0, 1
    good = L.part_map_loss(parts[:, 1:], parts)
    bad = L.part_map_loss(parts[:, 1:].roll(6, -1), parts)
    assert torch.isfinite(good) and good < bad
    # DT barrier: ~1 far outside the mask, ~0 deep inside
    m = torch.zeros(1, 1, 32, 32)
    m[..., 8:24, 8:24] = 1
    barrier = L.dt_barrier(m)
    assert barrier[0, 0, 0, 0] > 0.9 and barrier[0, 0, 16, 16] < 0.1
    # part points lie inside their part
    sampled = L.sample_part_points(parts, torch.ones(1, 1, 16, 16), (3, 3, 3, 3),
                                   generator=torch.Generator().manual_seed(0))
    head = sampled[0][0]
    col = ((head[:, 0] + 1) * 16 - 1) / 2
    assert ((col > 1.5) & (col < 5.5)).all()


def test_keypoint_transfer_metrics() -> None:
    g = torch.Generator().manual_seed(0)
    n, k, n_faces, n_verts = 6, 15, 40, 30
    kp = torch.cat([torch.rand(n, k, 2, generator=g) * 1.6 - 0.8, torch.ones(n, k, 1)], -1)
    kp[0, 3, 2] = 0  # one invisible keypoint
    # identity flow: each face's texel flow points sit on one keypoint location -> transfer is exact
    tex_flow = torch.rand(n, n_faces, 4, 2, generator=g) * 2 - 1
    tex_flow[:, :k] = kp[:, :, None, :2]
    faces = keypoint_faces(kp, tex_flow, sigma=0.02)
    assert faces[0, 3] == -1
    assert torch.equal(faces[1], torch.arange(k))
    pairs = torch.from_numpy(pck_pairs(n, 50))
    assert torch.equal(pairs, torch.from_numpy(pck_pairs(n, 50)))  # deterministic
    s, t = pairs[:, 0], pairs[:, 1]
    valid = (kp[s, :, 2] > 0) & (kp[t, :, 2] > 0)
    pred = transfer_flow(faces[s], tex_flow[t].mean(2))
    assert pck_from_predictions(pred, kp[t, :, :2], valid, 0.1) == 1.0
    shifted = pred + 0.5
    assert pck_from_predictions(shifted, kp[t, :, :2], valid, 0.1) == 0.0
    # camera mode: identical cameras and shapes -> the keypoint maps onto itself (if on a vertex)
    proj = torch.rand(1, n_verts, 2, generator=g).expand(len(s), -1, -1) * 2 - 1
    src = proj[:, :k]
    out = transfer_cam(src, proj, proj, None)
    assert torch.allclose(out, src)
    store = {"kp": torch.cat([proj[:n, :k], torch.ones(n, k, 1)], -1), "kp_faces": torch.arange(k).expand(n, -1),
             "mean_flow": proj[:n, :n_faces].clone(), "proj_tpl": proj[:n].clone(),
             "pred_mask": torch.ones(n, 8, 8, dtype=torch.bool)}
    res = transfer_pck(store, n_pairs=20)
    assert res["pck10_flow"] == 1.0 and res["pck10_identity"] == 1.0 and res["pck10_mean_cam"] == 1.0
    # source visibility: a hidden vertex at the keypoint's pixel loses to the visible one behind it
    src_proj = torch.tensor([[[0.0, 0.0], [0.05, 0.0]]])
    tgt_proj = torch.tensor([[[0.9, 0.9], [-0.5, 0.2]]])
    kp0 = torch.zeros(1, 1, 2)
    assert torch.equal(transfer_cam(kp0, src_proj, tgt_proj, None), tgt_proj[:, :1])
    hidden = torch.tensor([[False, True]])
    assert torch.equal(transfer_cam(kp0, src_proj, tgt_proj, None, hidden), tgt_proj[:, 1:])
    assert torch.equal(transfer_cam(kp0, src_proj, tgt_proj, None, torch.zeros(1, 2, dtype=torch.bool)),
                       tgt_proj[:, :1])  # nothing visible: every vertex is a candidate
    # the mean-camera baseline uses the given single projection (a far-away one scores 0)
    res = transfer_pck({**store, "proj_mean_cam": proj[0] + 5.0}, n_pairs=20)
    assert res["pck10_mean_cam"] == 0.0 and res["pck10_cam"] == 1.0
    m = torch.rand(4, 16, 16, generator=g)
    assert torch.allclose(mask_iou(m, m), torch.ones(4))


def test_semantic_labels_and_stand_in_template() -> None:
    t = build_template(2)
    data = geometric_template(t)
    assert data["mean_v"].shape == (t.n_pred, 3) and data["uv_label"].shape == t.uv_size
    labels = face_labels(data["uv_label"], t)
    assert labels.shape == (len(t.faces), 36)
    vlab = vertex_labels(labels, t)
    # labels are mirror-symmetric and every part is present
    np.testing.assert_array_equal(vlab, vlab[t.mirror_vertex()])
    assert all(len(data[f"{n}_vertices"]) > 0 for n in ("head", "neck", "back", "belly"))


def test_bad_inputs_are_one_line_errors(tmp_path) -> None:
    from sfd_lightning.datamodules.cub import PhotoFolder
    from sfd_lightning.errors import InputError
    from sfd_lightning.modules.umr.semantic import load_template, save_template
    from sfd_lightning.modules.umr.stage2 import UMRStage2

    model = UMRStage2(img_size=32, mesh_level=1, hypotheses=2, z_dim=8, feat_dim=16, flow_fc_widths=[16, 64],
                      flow_c0=2, template_path=str(tmp_path / "missing.npz"))
    with pytest.raises(InputError, match="build-template"):
        model.setup("fit")
    # a template of another mesh level is refused with the fix named
    t2 = build_template(2)
    data = geometric_template(t2)
    path = save_template(tmp_path / "level2.npz", data["mean_v"], data["uv_prob"], t2)
    loaded = load_template(path, t2)
    assert loaded["mean_v"].shape == (t2.n_pred, 3)
    with pytest.raises(InputError, match="mesh_level"):
        load_template(path, build_template(1))
    with pytest.raises(InputError, match="photo folder not found"):
        PhotoFolder(tmp_path / "nope", 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no photos"):
        PhotoFolder(tmp_path / "empty", 32)


def test_photo_folder_of_shared_birds(shared_data) -> None:
    from sfd_lightning.datamodules.cub import PhotoFolder

    ds = PhotoFolder(shared_data / "birds", 64)
    assert len(ds) == 3
    for i in range(len(ds)):
        item = ds[i]
        assert item["img"].shape == (3, 64, 64) and 0.0 <= float(item["img"].min()) <= float(item["img"].max()) <= 1.0
    assert {ds[i]["name"] for i in range(3)} == {"birdie", "img1", "img2"}


def test_ground_truth_bird_under_its_camera_scores_pck_one() -> None:
    """End-to-end camera conventions on the synthetic birds: the ground-truth perspective camera,
    expressed as a UMR weak-perspective camera (quaternion w-first, NDC y down, crop box), projects
    the 3D keypoints onto the dataset's keypoints (PCK@0.1 = 1), renders the bird onto its mask, and
    keypoint transfer through ground-truth correspondences and cameras scores PCK 1."""
    import json

    from sfd_lightning.datamodules.cub import CUBDataModule
    from sfd_lightning.geometry.cameras import PinholeCamera
    from sfd_lightning.modules.umr.cameras import fit_weak_perspective, matrix_to_quaternion, rotation_error_deg
    from sfd_lightning.synthetic.bird_scenes import bird_mesh
    from sfd_lightning.synthetic.birds import BirdModel, BirdParams

    size = 32
    dm = CUBDataModule(image_size=size, batch_size=4, part_maps=None)
    dm.setup("test")
    ds = dm.datasets["test"]
    gt = json.loads((dm.root / "gt" / "cameras.json").read_text())["images"]
    kps, perspective, weak, ious = [], [], [], []
    for i in range(len(ds)):
        item = ds[i]
        g = gt[str(int(item["image_id"]))]
        rot = np.array(g["R"])
        camera = PinholeCamera(np.array(g["K"]), rot, np.array(g["t"]), g["width"], g["height"])
        pts3d = np.array(g["keypoints_3d"])
        pix, _ = camera.project(pts3d)
        x0, y0, side, flipped = item["crop"].tolist()
        assert flipped == 0.0
        ndc = torch.from_numpy(2.0 * (pix - [x0, y0] + 0.5) / side - 1.0)  # the crop's NDC (cub_crop.to_ndc)
        cam = fit_weak_perspective(torch.from_numpy(pts3d), torch.from_numpy(rot), ndc)
        assert float(rotation_error_deg(quaternion_to_matrix(cam[3:7]), torch.from_numpy(rot))) < 1e-4
        assert torch.allclose(quaternion_to_matrix(matrix_to_quaternion(torch.from_numpy(rot))),
                              torch.from_numpy(rot), atol=1e-9)
        weak.append(project(torch.from_numpy(pts3d)[None], cam[None])[0, :, :2].float())
        perspective.append(ndc.float())
        kps.append(item["kp"])
        if i < 3:  # the bird's surface under the same camera covers its ground-truth mask
            mesh = bird_mesh(BirdModel(BirdParams.from_dict(g["params"])), 40)
            verts = torch.from_numpy(np.asarray(mesh.vertices)).float()[None]
            rast = SoftRasterizer(size, sigma=1e-7, gamma=1e-4, dist_eps=1e-10,  # near-hard silhouette
                                  perspective_correct=False)
            alpha = rast(project(verts, cam[None].float()), torch.from_numpy(np.asarray(mesh.faces)).long())[0, -1]
            ious.append(float(L.soft_iou(alpha[None], item["mask"])[0]))
    kp = torch.stack(kps)
    vis = kp[..., 2] > 0
    assert vis.float().mean() > 0.3
    # the dataset's keypoints are the exact perspective projections, in the same NDC (x right, y down)
    assert (torch.stack(perspective) - kp[..., :2])[vis].abs().max() < 1e-3
    # UMR's weak-perspective projection of the ground truth: every keypoint within PCK@0.1
    weak = torch.stack(weak)
    assert pck_from_predictions(weak, kp[..., :2], vis, 0.1) == 1.0
    err = (weak - kp[..., :2]).norm(dim=-1)[vis] * 0.55  # in units of the max bbox side
    assert float(err.mean()) < 0.03, float(err.max())
    assert min(ious) > 0.75, ious  # the weak-perspective approximation of the photo camera costs a little
    # transfer through ground-truth correspondences (the 15 3D keypoints as "template vertices")
    store = {"kp": kp, "kp_faces": torch.zeros(len(kp), 15, dtype=torch.long), "mean_flow": torch.zeros(len(kp), 1, 2),
             "proj_tpl": torch.stack(perspective), "pred_mask": torch.ones(len(kp), size, size, dtype=torch.bool)}
    res = transfer_pck(store, n_pairs=500)
    assert res["pck10_cam"] == 1.0 and res["pck10_identity"] < 0.6 and res["pck10_mean_cam"] < 0.6, res
    store["proj_tpl"] = weak  # weak perspective (photo cameras sit 4 bird radii away): measured 0.963
    assert transfer_pck(store, n_pairs=500)["pck10_cam"] > 0.93


def test_lr_decay_follows_max_steps_and_upright_camera_start() -> None:
    from types import SimpleNamespace

    from sfd_lightning.modules.umr.networks import MultiCamera, SingleCamera, base_rotations
    from sfd_lightning.modules.umr.stage1 import UMRStage1

    def final_factor(max_steps: int, **kw) -> float:
        model = UMRStage1(img_size=32, mesh_level=1, z_dim=8, feat_dim=16, flow_fc_widths=[16, 64], flow_c0=2,
                          shape_hidden=[16], **kw)
        model._trainer = SimpleNamespace(max_steps=max_steps, estimated_stepping_batches=max_steps)
        sched = model.configure_optimizers()["lr_scheduler"]["scheduler"]
        return float(sched.lr_lambdas[0](max_steps))

    assert final_factor(10, lr_decay_total=1.0) == pytest.approx(0.5)  # 1/(1 + total) at max_steps
    assert final_factor(1000, lr_decay_total=1.0) == pytest.approx(0.5)
    assert final_factor(1000) == pytest.approx(1 / (1 + 5e-4 * 1000))  # default: the original's per-step rate
    # upright start: template z (up) -> image up (NDC y down), symmetry axis y -> depth; 4 hypotheses 90° apart
    rots = quaternion_to_matrix(base_rotations(4, "upright"))
    up = rots @ torch.tensor([0.0, 0.0, 1.0])
    assert torch.allclose(up, torch.tensor([0.0, -1.0, 0.0]).expand(4, -1), atol=1e-6)
    forward = rots @ torch.tensor([1.0, 0.0, 0.0])
    assert torch.allclose(forward, torch.tensor([[1.0, 0, 0], [0, 0, -1], [-1, 0, 0], [0, 0, 1]]), atol=1e-6)
    assert torch.equal(base_rotations(3, "identity"), torch.tensor([[1.0, 0, 0, 0]]).repeat(3, 1))
    feat = torch.zeros(2, 16)
    cams, _ = MultiCamera(16, 4, init="upright").eval()(feat)
    assert torch.allclose(quaternion_to_matrix(cams[0, :, 3:7]), rots, atol=1e-5)
    single = SingleCamera(16, init="upright").eval()
    assert torch.allclose(quaternion_to_matrix(single(feat)[0][0, 0, 3:7]), rots[0], atol=1e-5)
    assert "base_quat" not in single.state_dict()  # old stage-1 checkpoints still load
