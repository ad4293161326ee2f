"""LIST unit tests: TreeGCN layout, voxel axis order, voxelisation, losses, SDF scale/sign, freezing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sfd_lightning.errors import InputError
from sfd_lightning.modules.list_recon import ListCoarse, ListFine
from sfd_lightning.modules.list_recon.common import (chamfer_squared, coarse_loss, occupancy_loss,
                                                     sdf_loss)
from sfd_lightning.modules.list_recon.networks import (perceptual_pool, project, sample_voxel_features,
                                                       voxel_indices, voxelize)
from sfd_lightning.nn.tree_gcn import TreeGCNDecoder, TreeGCNLayer
from tests.list_fixtures import TINY_TREE, silhouette

torch.set_num_threads(2)


# ----------------------------------------------------------------------------- TreeGCN
def test_tree_gcn_output_count_and_list_size():
    dec = TreeGCNDecoder([16, 8, 8, 3], [2, 3, 4], support=2)
    assert dec(torch.randn(5, 16)).shape == (5, 24, 3)
    full = TreeGCNDecoder()  # LIST: 4096 points, ~77.5M parameters (67M in the last branch tensor)
    assert full.num_points == 4096
    assert full.layers[-1].branch.numel() == 64 * 128 * 64 * 128
    assert 77.0e6 < sum(p.numel() for p in full.parameters()) < 78.0e6


def test_tree_gcn_children_are_contiguous_blocks():
    torch.manual_seed(0)
    layer = TreeGCNLayer([4, 6], 5, nodes=3, degree=2, support=2)
    root, level = torch.randn(1, 1, 4), torch.randn(1, 3, 6)
    base = layer([root, level])
    bumped = level.clone()
    bumped[0, 1] += 1.0  # node 1 -> children 2, 3 only
    changed = (layer([root, bumped]) - base).abs().sum(-1)[0] > 1e-6
    assert changed.tolist() == [False, False, True, True, False, False]


def test_tree_gcn_bias_per_degree_and_final_layer_raw():
    layer = TreeGCNLayer([4], 3, nodes=1, degree=2, support=2)
    with torch.no_grad():
        layer.branch.zero_()
        layer.ancestors[0].weight.zero_()
        layer.bias.copy_(torch.tensor([[[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]]]))
    out = layer([torch.randn(2, 1, 4)])
    assert torch.allclose(out[0, 0], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.allclose(out[0, 1], torch.tensor([-0.2, -0.4, -0.6]))  # LeakyReLU(0.2)
    final = TreeGCNLayer([4], 3, nodes=1, degree=2, support=2, final=True)
    assert final.bias is None
    with torch.no_grad():
        final.ancestors[0].weight.fill_(-1.0)
        final.branch.zero_()
    assert (final([torch.ones(1, 1, 4)]) == -4.0).all()  # no activation on the last layer


# ----------------------------------------------------------------------------- voxels
def test_voxel_sampling_axis_order_hot_voxel():
    res = 8
    axis = torch.linspace(-0.5, 0.5, res)
    for i, j, k in [(1, 4, 6), (7, 0, 3), (2, 2, 5)]:
        volume = torch.zeros(1, 1, res, res, res)
        volume[0, 0, i, j, k] = 1.0  # indexed [x][y][z]
        query = torch.tensor([[[axis[i], axis[j], axis[k]], [axis[k], axis[j], axis[i]]]])
        features = sample_voxel_features([volume], query, displacement=0.0)  # (1, 7, 2)
        assert features.shape == (1, 7, 2)
        assert torch.allclose(features[0, :, 0], torch.ones(7))
        assert torch.allclose(features[0, :, 1], torch.zeros(7)), "x and z swapped"
    # channel-major layout: the 7 samples of channel c are adjacent; offset 1 = -d along x
    volume = torch.zeros(1, 2, res, res, res)
    volume[0, 1, 3, 4, 4] = 1.0
    d = 2.0 / (res - 1)  # one voxel in normalised units
    q = torch.tensor([[[axis[4], axis[4], axis[4]]]])
    f = sample_voxel_features([volume], q, displacement=d)[0, :, 0]
    assert f[:7].abs().sum() == 0 and abs(float(f[7 + 1]) - 1.0) < 1e-5 and abs(float(f[7:].sum()) - 1.0) < 1e-5


def test_voxelize_matches_kdtree_nearest_node():
    from scipy.spatial import cKDTree

    res = 32
    points = torch.rand(2, 500, 3) - 0.5
    grid = voxelize(points, res)
    axis = np.linspace(-0.5, 0.5, res)
    nodes = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    _, nearest = cKDTree(nodes).query(points[0].double().numpy())
    assert set(np.flatnonzero(grid[0, 0].numpy().reshape(-1))) == set(nearest.tolist())
    idx = voxel_indices(points, res)[0]
    assert np.array_equal(np.ravel_multi_index(idx.T.numpy(), (res,) * 3), nearest)


def test_vox_res_must_be_power_of_two_at_least_32():
    for bad in (16, 48):
        with pytest.raises(InputError, match="power of two"):
            ListFine(vox_res=bad, **TINY_TREE)


# ----------------------------------------------------------------------------- projection
def test_perceptual_pool_reads_projected_pixel_and_clamps():
    size = 9
    transform = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 0.0], [4.0, 4.0, 1.0]]])
    q = torch.tensor([[[0.25, -0.5, 0.3], [10.0, 10.0, 0.0]]])  # uv = 4 + 4·(x, y)
    assert torch.allclose(project(q, transform)[0, 0], torch.tensor([5.0, 2.0]))
    feature = torch.zeros(1, 1, size, size)
    feature[0, 0, 2, 5] = 1.0  # row v = 2, column u = 5
    pooled = perceptual_pool([feature], q, transform, map_size=size)
    assert pooled.shape == (1, 1, 2) and pooled[0, 0, 0] == 1.0
    assert pooled[0, 0, 1] == 0.0  # clamped to the corner (8, 8), which is 0


# ----------------------------------------------------------------------------- losses
def test_loss_reductions():
    pred, target = torch.zeros(2, 4), torch.full((2, 4), 0.1)
    assert torch.isclose(sdf_loss(pred, target, 10.0), torch.tensor(4.0))  # Σ over 4 points of 1², batch mean
    assert torch.isclose(sdf_loss(pred.repeat(1, 2), target.repeat(1, 2), 10.0), torch.tensor(8.0))
    assert torch.isclose(sdf_loss(pred.repeat(3, 1), target.repeat(3, 1), 10.0), torch.tensor(4.0))
    prob = torch.full((2, 1, 4, 4, 4), 0.5)
    y = torch.zeros_like(prob)
    y[:, :, 0, 0, 0] = 1
    expected = 1000 * (0.9 * (1 / 64) + 0.1 * (63 / 64)) * float(np.log(2))
    assert torch.isclose(occupancy_loss(prob, y), torch.tensor(expected), rtol=1e-4)
    a, b = torch.rand(3, 50, 3), torch.rand(3, 70, 3)
    d = torch.cdist(a, b) ** 2
    reference = d.min(2).values.mean(1) + d.min(1).values.mean(1)
    assert torch.allclose(chamfer_squared(a, b), reference, atol=1e-6)
    assert torch.isclose(coarse_loss(a, b), 1000 * reference.mean())
    assert torch.isclose(coarse_loss(a.repeat(2, 1, 1), b.repeat(2, 1, 1)), coarse_loss(a, b))


# ----------------------------------------------------------------------------- SDF scale, sign, meshing
def test_sdf_scale_sign_and_meshing_on_an_analytic_sphere(monkeypatch):
    from sfd_lightning.metrics.evaluate import evaluate
    from sfd_lightning.synthetic.primitives import Sphere  # noqa: F401  (exists: analytic GT family)

    model = ListFine(vox_res=32, map_size=20, test_pointnum=4096, **TINY_TREE).eval()

    def fake_decode(context, queries):  # the network predicts 10·SDF, negative inside
        return 10.0 * (queries.norm(dim=-1) - 0.3)

    monkeypatch.setattr(model, "decode", fake_decode)
    image = silhouette("sphere", 0.3)
    handle = model.surface(image)
    assert torch.allclose(handle.sdf(torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]])), torch.tensor([-0.3, 0.2]))
    mesh = model.mesh_from_image(image, resolution=48)
    import trimesh

    tm = trimesh.Trimesh(mesh.vertices, mesh.faces)
    assert tm.volume > 0  # outward faces
    assert abs(np.linalg.norm(mesh.vertices, axis=1).mean() - 0.3) < 0.005
    gt = trimesh.creation.icosphere(subdivisions=5, radius=0.3)
    from sfd_lightning.geometry.io import Mesh
    from sfd_lightning.metrics.protocols import get_protocol
    import dataclasses

    proto = dataclasses.replace(get_protocol("list"), pred_samples=20000, gt_samples=20000, iou_points=50000)
    scores = evaluate(mesh, Mesh(np.asarray(gt.vertices), np.asarray(gt.faces)), proto)["metrics"]
    assert scores["list_iou"] > 0.97 and scores["fscore_1.0"] > 0.99 and scores["list_cd_l2_x1e4"] < 0.2


def test_transmat_passthrough():
    torch.manual_seed(0)
    model = ListFine(vox_res=32, map_size=20, **TINY_TREE).eval()
    image = silhouette("box", 0.25)[None]
    given = torch.randn(1, 4, 3)
    context = model.encode(image, given)
    assert torch.equal(context["transform"], given)
    assert not torch.equal(context["predicted_transform"], given)
    q = torch.rand(1, 64, 3) - 0.5
    assert not torch.allclose(model.decode(context, q), model.decode(model.encode(image), q))


def test_legacy_vertex_norm_agrees_when_shape_spans_the_grid():
    from sfd_lightning.geometry.io import Mesh
    from sfd_lightning.modules.list_recon.common import legacy_vertex_norm

    verts = np.array([[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]] + [[0.1 * i - 0.4, 0, 0.2] for i in range(10)])
    out = legacy_vertex_norm(Mesh(verts, np.array([[0, 1, 2]])), 32)
    assert np.allclose(out.vertices, verts, atol=1e-9)


def test_warm_start_loads_and_freezes(tmp_path):
    torch.manual_seed(0)
    coarse = ListCoarse(**TINY_TREE)
    path = tmp_path / "coarse.ckpt"
    torch.save({"state_dict": coarse.state_dict(), "hyper_parameters": dict(coarse.hparams)}, path)
    fine = ListFine(coarse_checkpoint=str(path), vox_res=32, map_size=20, **TINY_TREE)
    fine.load_coarse()
    for name, prefix in (("im_encoder", "encoder"), ("im_encoder2", "encoder"), ("point_decoder", "decoder")):
        for key, value in getattr(fine, name).state_dict().items():
            assert torch.equal(value, coarse.state_dict()[f"{prefix}.{key}"]), (name, key)
    assert not any(p.requires_grad for p in fine.im_encoder.parameters())
    assert not any(p.requires_grad for p in fine.point_decoder.parameters())
    assert all(p.requires_grad for p in fine.im_encoder2.parameters())
    fine.train()
    assert not fine.im_encoder.training and not fine.point_decoder.training and fine.im_encoder2.training
    bad = ListFine(coarse_checkpoint=str(path), vox_res=32, tree_features=[128, 64, 3], tree_degrees=[4, 4])
    with pytest.raises(InputError, match="coarse run"):
        bad.load_coarse()
    with pytest.raises(InputError, match="not found"):
        ListFine(coarse_checkpoint=str(tmp_path / "missing.ckpt"), vox_res=32, **TINY_TREE).load_coarse()


def test_bf16_mixed_step_runs_backbones_in_bf16_and_sdf_head_in_fp32(tmp_path):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from tests.list_fixtures import ShapeSet

    torch.manual_seed(0)
    model = ListFine(vox_res=32, vox_channels=[4, 8, 8, 8, 8], map_size=10, **TINY_TREE)
    watched = {"im_encoder": model.im_encoder.backbone.layer1, "im_encoder2": model.im_encoder2.backbone.conv1,
               "tree_gcn": model.point_decoder.layers[0].loop, "vox_encoder": model.vox_encoder.blocks[0][0],
               "spatial_transformer": model.spatial_transformer, "sdf_decoder": model.sdf_decoder}
    dtypes: dict[str, set] = {name: set() for name in watched}
    for name, module in watched.items():
        module.register_forward_hook(lambda m, i, o, name=name: dtypes[name].add(o.dtype))
    seen = {}
    original = model.decode

    def spy(context, queries):
        seen["transform"] = context["transform"].dtype
        return original(context, queries)

    model.decode = spy
    data = DataLoader(ShapeSet([("sphere", 0.3), ("box", 0.2)], queries=128, fps=64, pixels=16), batch_size=2)
    trainer = pl.Trainer(max_steps=1, precision="bf16-mixed", accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(model, data)
    for name in ("im_encoder", "im_encoder2", "tree_gcn", "vox_encoder"):
        assert dtypes[name] == {torch.bfloat16}, (name, dtypes[name])
    for name in ("spatial_transformer", "sdf_decoder"):
        assert dtypes[name] == {torch.float32}, (name, dtypes[name])
    assert seen["transform"] == torch.float32  # the perspective divide runs on an fp32 matrix


def test_image_folder_bad_inputs_are_one_line_errors(tmp_path):
    from sfd_lightning.datamodules.image_folder import ImageFolder

    with pytest.raises(InputError, match="image folder not found"):
        ImageFolder(tmp_path / "missing")
    with pytest.raises(InputError, match="no images"):
        ImageFolder(tmp_path)


# ----------------------------------------------------------------------------- spec §6 switches
def test_st_bias_init_disn_camera_projects_the_box_inside_the_map():
    from sfd_lightning.modules.list_recon.networks import disn_camera_matrix

    corners = torch.tensor([[x, y, z] for x in (-.5, .5) for y in (-.5, .5) for z in (-.5, .5)])[None]
    for size in (20, 137):
        prior = disn_camera_matrix(size)
        depth = torch.cat([corners, torch.ones(1, 8, 1)], -1) @ prior
        assert depth[..., 2].min() > 0.5  # in front of the camera everywhere in the box
        uv = project(corners, prior[None])[0]
        assert uv.min() > 0 and uv.max() < size - 1
        centre = project(torch.zeros(1, 1, 3), prior[None])[0, 0]
        assert torch.allclose(centre, torch.full((2,), (size - 1) / 2), atol=1e-4)
        up = project(torch.tensor([[[0.0, 0.3, 0.0]]]), prior[None])[0, 0]
        assert up[1] < centre[1]  # +y appears up in the image (smaller row)
    torch.manual_seed(0)
    model = ListFine(vox_res=32, map_size=20, st_bias_init="disn_camera", **TINY_TREE).eval()
    images = torch.stack([silhouette("sphere", 0.3), silhouette("box", 0.2)])
    transform = model.encode(images)["transform"]
    assert (transform - disn_camera_matrix(20)).abs().max() < 0.25 * disn_camera_matrix(20).abs().max()
    with pytest.raises(InputError, match="st_bias_init"):
        ListFine(vox_res=32, st_bias_init="camera", **TINY_TREE)


def test_uniform_queries_sign_and_distance_on_a_sphere():
    from sfd_lightning.datamodules.shapenet_datasets import uniform_queries

    torch.manual_seed(0)
    g = torch.randn(20000, 3, dtype=torch.float64)
    surface = (0.3 * g / g.norm(dim=1, keepdim=True)).numpy()
    pools = []
    for sigma in (0.003, 0.01, 0.07):
        q = torch.from_numpy(surface[:5000]) + sigma * torch.randn(5000, 3, dtype=torch.float64)
        pools.append(torch.cat([q, (q.norm(dim=1) - 0.3)[:, None]], 1).float())
    points, values = uniform_queries(surface, pools, 2000)
    assert points.shape == (2000, 3) and values.shape == (2000,)
    assert points.min() >= -0.5 and points.max() <= 0.5
    exact = points.norm(dim=1) - 0.3
    assert ((values < 0) == (exact < 0)).float().mean() > 0.99
    assert (values.abs() - exact.abs()).abs().max() < 0.02


def test_precise_bn_after_the_last_step_replaces_the_running_averages(tmp_path):
    """``precise_bn_batches``: after the last step the trainable BN statistics are the exact averages
    over that many training batches (recomputing them by hand gives the same numbers); the frozen
    coarse branch keeps its own."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from tests.list_fixtures import ShapeSet

    torch.manual_seed(0)
    model = ListFine(vox_res=32, vox_channels=[4, 8, 8, 8, 8], map_size=10, precise_bn_batches=2, **TINY_TREE)
    frozen_before = model.im_encoder.backbone.bn1.running_mean.clone()
    data = DataLoader(ShapeSet([("sphere", 0.3), ("box", 0.2), ("sphere", 0.2), ("box", 0.3)], queries=128,
                               fps=64, pixels=16), batch_size=2)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, data)
    after_fit = model.im_encoder2.backbone.bn1.running_mean.clone()
    assert torch.equal(model.im_encoder.backbone.bn1.running_mean, frozen_before)
    model.precise_batchnorm(iter(data))
    assert torch.allclose(model.im_encoder2.backbone.bn1.running_mean, after_fit, atol=1e-6)


def test_list_overfits_one_sphere():
    """One shape, IoU near 1 (the box, with sharp edges, is the slow case in test_list_quality.py;
    measured numbers there: sphere 0.973, L_sdf fell 821x)."""
    from tests.test_list_quality import OVERFIT_ONE_STEPS, overfit_one_shape

    iou, drop = overfit_one_shape("sphere", 0.3, OVERFIT_ONE_STEPS)
    assert iou > 0.95 and drop >= 5.0, (iou, drop)
