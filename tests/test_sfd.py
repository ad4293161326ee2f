"""SfD system: frames, schedules, losses, one step per stage, chaining, bf16 smoke, export, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lightning.pytorch as pl

from sfd_lightning.datamodules.pile import PileDataModule
from sfd_lightning.errors import InputError
from sfd_lightning.modules.sfd import SfD
from sfd_lightning.modules.sfd.losses import seg_hinge
from sfd_lightning.modules.sfd.pose_refinement import so3_exp, umeyama
from sfd_lightning.modules.sfd.system import cone_directions, pe_progress

TINY = dict(sdf_width=32, sdf_depth=4, sdf_multires=3, feature_dim=8, albedo_width=32, albedo_depth=2,
            shading_width=32, shading_depth=2, proxy_width=16, proxy_depth=2, proxy_multires=3, vis_width=32,
            vis_depth=2, mat_multires=3, mat_enc_width=32, mat_enc_depth=2, mat_latent=8, mat_dec_width=16,
            mat_dec_depth=2, num_lobes=8, n_samples=8, n_importance=8, up_sample_steps=2, chunk=8192,
            seg_rays=16, vis_dirs=2, vis_n_samples=8, vis_n_importance=8, light_dirs=4, mesh_resolution=32,
            chamfer_samples=2000, novel_views=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def datamodule() -> PileDataModule:
    dm = PileDataModule(rays_per_batch=96, synthetic_instances=3, synthetic_image_size=48, seed=0)
    dm.setup("fit")
    return dm


def _system(dm: PileDataModule, **kw) -> SfD:
    torch.manual_seed(0)
    system = SfD(**{**TINY, **kw})
    system.scene = dm.scene
    system.model.set_scene(dm.scene)
    return system


def _batch(dm: PileDataModule) -> dict[str, torch.Tensor]:
    batch = next(iter(dm.train_dataloader()))
    return {k: v[~batch["ignore"]] for k, v in batch.items()}


def test_geometric_init_is_roughly_a_sphere(datamodule):
    """Loose: the geometric init of a 64x8 network is a sphere of radius 0.6 to about ±0.1."""
    system = _system(datamodule, sdf_width=64, sdf_depth=8)
    x = torch.randn(2000, 3) * 0.4
    with torch.no_grad():
        sdf = system.model.sdf_features(x)[:, 0]
    assert (sdf - (x.norm(dim=-1) - 0.6)).abs().mean() < 0.15
    assert (sdf[x.norm(dim=-1) < 0.2] < 0).all() and (sdf[x.norm(dim=-1) > 1.2] > 0).all()


def test_pe_ramp_fractions_of_max_steps():
    values = [pe_progress(s, 1000, (0.2, 0.5)) for s in range(0, 1001, 50)]
    assert values[:5] == [0.0] * 5 and values[10:] == [1.0] * 11
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert pe_progress(35_000, 100_000, (0.2, 0.5)) == pytest.approx(0.5)


def test_frames_project_instance_centres_into_their_masks(datamodule):
    system = _system(datamodule)
    scene = datamodule.scene
    transforms = system.model.transforms().detach().double()
    assert torch.allclose(transforms, torch.from_numpy(scene.object_to_world @ scene.scale_matrix), atol=1e-5)
    for i, label in enumerate(np.asarray(scene.registered_ids) + 1):
        centre_cam = scene.w2c @ transforms[i, :, 3].numpy()
        u, v, _ = scene.K @ (centre_cam[:3] / centre_cam[2])
        assert scene.instance[int(round(v)), int(round(u))] == label


def test_small_math_helpers():
    omega = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.5]])
    rot = so3_exp(omega)
    assert torch.allclose(rot[0], torch.eye(3)) and torch.allclose(rot[1] @ rot[1].T, torch.eye(3), atol=1e-6)
    assert math.isclose(float(torch.rad2deg(torch.arccos((rot[1].trace() - 1) / 2))), math.degrees(float(omega[1].norm())),
                        rel_tol=1e-4)
    src = np.random.default_rng(0).normal(size=(5, 3))
    r = so3_exp(torch.tensor([[0.1, 0.7, -0.3]], dtype=torch.float64))[0].numpy()
    s, rot_est, t = umeyama(src, 2.5 * src @ r.T + 1.0)
    assert math.isclose(s, 2.5, rel_tol=1e-9) and np.allclose(rot_est, r) and np.allclose(t, 1.0)
    ok = torch.tensor([[0.0, 0.3, 0.5]])
    assert float(seg_hinge(ok, torch.tensor([0]))) == 0.0 and float(seg_hinge(ok, torch.tensor([2]))) > 0
    normal = torch.nn.functional.normalize(torch.randn(10, 3), dim=-1)
    dirs = cone_directions(normal, 6)
    assert ((dirs * normal[:, None]).sum(-1) >= math.cos(math.asin(0.95)) - 1e-5).all()


@pytest.mark.parametrize("stage", ["geometry", "visibility", "material"])
def test_one_step_per_stage_trains_only_its_modules(datamodule, stage):
    system = _system(datamodule, stage=stage)
    system.apply_freezing()
    terms = getattr(system, f"_{stage}_step")(_batch(datamodule))
    assert torch.isfinite(terms["loss"])
    terms["loss"].backward()
    trainable = {"geometry": ("sdf", "color", "variance", "proxy"), "visibility": ("visibility",),
                 "material": ("material", "light")}[stage]
    with_grad = {n.split(".")[0] for n, p in system.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and with_grad <= set(trainable)
    if stage == "geometry":
        assert {"sdf", "color", "proxy"} <= with_grad


def _fit(system: SfD, dm: PileDataModule, tmp_path, steps: int = 2, **trainer_kw) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, limit_val_batches=0,
                         enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                         default_root_dir=str(tmp_path), **trainer_kw)
    trainer.fit(system, dm)
    return trainer


def test_chaining_carries_alpha_and_freezes_geometry(datamodule, tmp_path):
    geo = _system(datamodule, stage="geometry")
    trainer = _fit(geo, datamodule, tmp_path / "geo", steps=6)
    ckpt = tmp_path / "geo.ckpt"
    trainer.save_checkpoint(ckpt)
    alpha = float(geo.model.sdf.encoding.alpha)
    assert 0 < alpha <= 3  # the ramp moved (6 steps: 0.2 -> 0.5 of max_steps)
    vis = SfD(**{**TINY, "stage": "visibility", "previous_stage_checkpoint": str(ckpt)})
    _fit(vis, datamodule, tmp_path / "vis", steps=3)
    assert float(vis.model.sdf.encoding.alpha) == alpha
    for (name, a), b in zip(geo.model.sdf.state_dict().items(), vis.model.sdf.state_dict().values()):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in vis.model.sdf.parameters())
    with pytest.raises(InputError, match="previous-stage checkpoint not found"):
        SfD(**{**TINY, "stage": "material"}).load_previous_stage(tmp_path / "missing.ckpt")
    wrong = SfD(**{**TINY, "sdf_width": 24})
    with pytest.raises(InputError, match="same network sizes"):
        wrong.load_previous_stage(ckpt)


def test_bf16_mixed_smoke_keeps_the_sdf_in_fp32(datamodule, tmp_path):
    """Under bf16-mixed the colour, visibility and material MLPs run in bf16; the SDF network (and
    its double backward for normals/eikonal) and the proxy classifier stay fp32."""
    dtypes: dict[str, set] = {}

    def hook(name):
        def record(module, inputs, output):
            dtypes.setdefault(name, set()).add(output.dtype)
        return record

    system = _system(datamodule, stage="geometry")
    m = system.model
    for name, module in {"sdf": m.sdf.layers[-1], "albedo": m.color.albedo_net, "shading": m.color.shading_net,
                         "proxy": m.proxy, "visibility": m.visibility, "material": m.material.decoder}.items():
        module.register_forward_hook(hook(name))
    _fit(system, datamodule, tmp_path, steps=1, precision="bf16-mixed")
    assert dtypes["sdf"] == {torch.float32} and dtypes["proxy"] == {torch.float32}
    assert dtypes["albedo"] == {torch.bfloat16} and dtypes["shading"] == {torch.bfloat16}
    for stage in ("visibility", "material"):
        system.hparams.stage = stage
        system.apply_freezing()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            terms = getattr(system, f"_{stage}_step")(_batch(datamodule))
        assert torch.isfinite(terms["loss"])
        terms["loss"].backward()
    assert dtypes["visibility"] == {torch.bfloat16} and dtypes["material"] == {torch.bfloat16}
    assert dtypes["sdf"] == {torch.float32}


def test_export_writes_mesh_with_material_and_envmap(datamodule, tmp_path):
    import json

    import trimesh

    system = _system(datamodule, stage="material", sdf_width=64, sdf_depth=8)
    paths = system.export_meshes(tmp_path / "out", resolution=24)
    names = sorted(p.name for p in paths)
    assert names == ["envmap.npy", "envmap.png", "instances.json", "object.ply"]
    mesh = trimesh.load(tmp_path / "out" / "object.ply", process=False)
    vertex = mesh.metadata["_ply_raw"]["vertex"]["data"]
    assert {"albedo_r", "roughness"} <= set(vertex.dtype.names)
    assert (vertex["roughness"] >= 0.09 - 1e-6).all() and (vertex["roughness"] <= 0.99 + 1e-6).all()
    # initial sphere of radius 0.6 in the normalised frame -> 0.6 r around instance 0's centre
    scene = datamodule.scene
    centre = (scene.object_to_world[0] @ scene.scale_matrix)[:3, 3]
    radius = np.linalg.norm(mesh.vertices - centre, axis=1)
    assert abs(radius.mean() / (0.6 * scene.scale_matrix[0, 0]) - 1) < 0.3
    info = json.loads((tmp_path / "out" / "instances.json").read_text())
    assert np.asarray(info["object_to_world"]).shape == (3, 4, 4)
    assert np.load(tmp_path / "out" / "envmap.npy").shape == (128, 256, 3)
    handle = system.surface()
    assert handle.to_original.shape == (3, 4, 4)


def test_relighting_inputs_are_checked(tmp_path):
    from sfd_lightning.modules.sfd.predict import load_envmap

    with pytest.raises(InputError, match="not found"):
        load_envmap(tmp_path / "nope.npy")
    np.save(tmp_path / "bad.npy", np.zeros((4, 4)))
    with pytest.raises(InputError, match="equirectangular"):
        load_envmap(tmp_path / "bad.npy")
    (tmp_path / "map.exr").write_bytes(b"x")
    with pytest.raises(InputError, match="openexr"):
        load_envmap(tmp_path / "map.exr")


def test_resume_mid_stage_keeps_freezing_and_counters(datamodule, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    geo = _system(datamodule, stage="geometry")
    trainer = _fit(geo, datamodule, tmp_path / "geo", steps=2)
    trainer.save_checkpoint(tmp_path / "geo.ckpt")
    vis = SfD(**{**TINY, "stage": "visibility", "previous_stage_checkpoint": str(tmp_path / "geo.ckpt")})
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, every_n_train_steps=2)
    _fit(vis, datamodule, tmp_path / "vis", steps=2, callbacks=[ckpt])
    resumed = SfD(**{**TINY, "stage": "visibility", "previous_stage_checkpoint": str(tmp_path / "geo.ckpt")})
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=False, limit_val_batches=0, enable_progress_bar=False,
                         enable_model_summary=False, inference_mode=False, default_root_dir=str(tmp_path / "r"))
    trainer.fit(resumed, datamodule, ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert trainer.global_step == 4
    assert not any(p.requires_grad for p in resumed.model.sdf.parameters())
    assert all(p.requires_grad for p in resumed.model.visibility.parameters())
    assert torch.equal(resumed.model.sdf.layers[0].bias, geo.model.sdf.layers[0].bias)


def test_pose_refinement_gradients_and_perturbed_synthetic_poses(tmp_path, monkeypatch):
    """Mechanics only: pose residuals get gradients (instance 0 never), and the perturbed synthetic
    pile starts 5° off. (Whether refinement converges is measured separately: see the report.)"""
    from sfd_lightning.modules.sfd.evaluation import _ground_truth, pose_metrics

    dm = PileDataModule(rays_per_batch=96, synthetic_instances=3, synthetic_image_size=48, seed=0,
                        synthetic_pose_noise_deg=5.0)
    dm.setup("fit")
    system = _system(dm, stage="geometry", pose_refinement=True, pose_start=0.0)
    system.apply_freezing()
    assert system.model.pose.rotation.requires_grad
    errors = pose_metrics(system.model, dm.scene, _ground_truth(dm.scene))
    assert 4.0 < errors["rot_err_median_deg"] < 7.5
    terms = system._geometry_step(_batch(dm))
    terms["loss"].backward()
    grad = system.model.pose.rotation.grad
    assert grad is not None and float(grad[0].abs().sum()) == 0.0 and float(grad[1:].abs().sum()) > 0
    optimizer = system.configure_optimizers()
    assert [g["lr"] for g in optimizer.param_groups][1] == system.hparams.pose_lr


def test_pose_refinement_window_and_decaying_pose_lr(datamodule):
    """``pose_start``/``pose_end`` bound the steps in which poses move; ``pose_lr_final`` decays the
    pose lr exponentially over that window while the networks keep their own lr."""
    from types import SimpleNamespace

    system = _system(datamodule, stage="geometry", pose_refinement=True, pose_start=0.2, pose_end=0.6,
                     pose_lr=1e-3, pose_lr_final=1e-4)
    system._trainer = SimpleNamespace(max_steps=100, global_step=0)
    system.apply_freezing()
    config = system.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(100):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    main, pose = np.array(lrs).T
    assert np.allclose(main, main[0])
    assert np.allclose(pose[:21], 1e-3) and pose[40] == pytest.approx(10 ** -3.5) and np.allclose(pose[60:], 1e-4)
    assert np.all(np.diff(pose) <= 0)
    batch = _batch(datamodule)
    for step, moving in ((10, False), (30, True), (60, False)):
        system._trainer.global_step = step
        system.model.zero_grad()
        system._geometry_step(batch)["loss"].backward()
        grad = system.model.pose.rotation.grad
        assert (grad is not None and float(grad[1:].abs().sum()) > 0) == moving, step


@pytest.mark.parametrize("bad", [dict(pose_start=0.8, pose_end=0.5), dict(pose_end=1.5), dict(pose_lr_final=0.0)])
def test_bad_pose_schedule_is_refused_in_one_line(bad):
    with pytest.raises(ValueError, match="pose_"):
        SfD(**{**TINY, "pose_refinement": True, **bad})
