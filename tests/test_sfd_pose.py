"""SfD joint pose refinement on synthetic piles whose instance poses are perturbed by 5° (seeded).

Fast tests: the silhouette pose term reaches only the pose residuals, and on the exact geometry
(the pile's analytic SDF in place of the network) it recovers most of a 5° rotation perturbation.
The slow test trains shape and poses jointly and compares with the same run without refinement.
Measured figures (seeds, thresholds): see the docstrings of the tests and configs/sfd/tiny_pose.yaml.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from sfd_lightning.datamodules.pile import PileDataModule
from sfd_lightning.modules.sfd import SfD
from sfd_lightning.modules.sfd.evaluation import _ground_truth, pose_metrics
from sfd_lightning.modules.sfd.pose_refinement import boundary_rays
from sfd_lightning.synthetic.pile_scene import object_sdf

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(sdf_width=32, sdf_depth=4, sdf_multires=3, feature_dim=8, albedo_width=32, albedo_depth=2,
             shading_width=32, shading_depth=2, proxy_width=16, proxy_depth=2, proxy_multires=3, n_samples=8,
             n_importance=8, up_sample_steps=2, seg_rays=16, vis_width=32, vis_depth=2, mat_multires=3,
             mat_enc_width=32, mat_enc_depth=2, mat_latent=8, mat_dec_width=16, mat_dec_depth=2, num_lobes=8)


class ExactSDF(nn.Module):
    """The pile object's analytic SDF in the normalised frame (``x_obj = c + r·x_norm``), with the
    interface of the SDF network (``forward_features``: ``(P, 3) -> (P, 1 + F)``, zero features)."""

    def __init__(self, scale_matrix: np.ndarray, feature_dim: int, name: str = "airplane") -> None:
        super().__init__()
        self.shape = object_sdf(name)
        self.register_buffer("centre", torch.tensor(scale_matrix[:3, 3], dtype=torch.float32))
        self.radius = float(scale_matrix[0, 0])
        self.feature_dim = feature_dim

    def forward_features(self, x: Tensor) -> Tensor:
        sdf = self.shape.evaluate(self.centre + self.radius * x) / self.radius
        return torch.cat([sdf[:, None], x.new_zeros(len(x), self.feature_dim)], 1)


def perturbed_pile(seed: int, size: int) -> PileDataModule:
    dm = PileDataModule(rays_per_batch=128, synthetic_instances=3, synthetic_image_size=size, seed=seed,
                        synthetic_pose_noise_deg=5.0)
    dm.setup("fit")
    return dm


def rotation_error(system: SfD, dm: PileDataModule) -> float:
    return pose_metrics(system.model, dm.scene, _ground_truth(dm.scene))["rot_err_median_deg"]


def test_boundary_rays_lie_on_silhouettes():
    instance = np.zeros((12, 12), dtype=np.int64)
    instance[3:8, 3:8] = 1
    instance[3:8, 8:10] = 2  # touches instance 1: that border is not a silhouette of either
    pose_index = np.array([-1, 0, 1])
    pixel, pose, target = boundary_rays(instance, pose_index, np.zeros_like(instance, bool), radius=1)
    flat = instance.reshape(-1)
    assert set(pose.tolist()) == {0, 1}
    for p, row, t in zip(pixel, pose, target):
        assert flat[p] == (row + 1 if t == 1.0 else 0)  # own pixels -> 1, background -> 0, never the other
    assert 5 * 7 + 3 * 4 not in pixel[pose == 0]  # the centre of instance 1 is not within 1 px of its edge


def test_silhouette_pose_gradient_reaches_only_the_poses():
    """With ``pose_loss="silhouette"`` the pose residuals get exactly the silhouette term's gradient
    (colour, eikonal, seg... see detached poses) and the term adds nothing to the networks."""
    dm = perturbed_pile(0, 48)
    torch.manual_seed(0)
    system = SfD(**SMALL, pose_refinement=True, pose_start=0.0, pose_loss="silhouette", pose_rays=64)
    system.scene = dm.scene
    system.model.set_scene(dm.scene)
    system.apply_freezing()
    batch = next(iter(dm.train_dataloader()))
    batch = {k: v[~batch["ignore"]] for k, v in batch.items()}
    torch.manual_seed(1)
    terms = system._geometry_step(batch)
    pose_params = list(system.model.pose.parameters())
    expected = torch.autograd.grad(terms["pose_silhouette"], pose_params, retain_graph=True)
    sdf_from_term = torch.autograd.grad(terms["pose_silhouette"], list(system.model.sdf.parameters()),
                                        retain_graph=True, allow_unused=True)
    assert all(g is None for g in sdf_from_term)
    terms["loss"].backward()
    assert float(expected[0][1:].abs().sum()) > 0 and float(expected[0][0].abs().sum()) == 0.0
    for param, grad in zip(pose_params, expected):
        torch.testing.assert_close(param.grad, grad)
    assert all(p.grad is not None for p in system.model.sdf.parameters())


@pytest.mark.parametrize("seed", [0])
def test_silhouette_refinement_recovers_a_5deg_perturbation_on_exact_geometry(seed):
    """Exact geometry, poses perturbed by 5° (instances 1, 2), 64 px: 100 Adam steps (lr 2e-3,
    256 silhouette rays) on the silhouette term alone. Measured for pile/perturbation seeds
    0 / 1 / 2: 5.0° -> 2.12° / 2.42° / 2.86°; asserted < 3.5° (seed 0 runs; ~10 s on one idle core).
    Silhouettes constrain rotations about axes in the image plane only weakly (foreshortening is
    second order), which is why it stops short of 0°."""
    dm = perturbed_pile(seed, 64)
    torch.manual_seed(0)
    system = SfD(**SMALL, pose_refinement=True, pose_loss="silhouette", pose_rays=256, variance_init=0.6)
    system.scene = dm.scene
    system.model.set_scene(dm.scene)
    system.model.sdf = ExactSDF(dm.scene.scale_matrix, SMALL["feature_dim"])
    start = rotation_error(system, dm)
    optimizer = torch.optim.Adam(system.model.pose.parameters(), lr=2e-3)
    for _ in range(100):
        loss = system.silhouette_pose_term(system.model.transforms())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = rotation_error(system, dm)
    assert 4.9 < start < 5.1
    assert end < 3.5, (start, end)


JOINT = dict(sdf_width=64, sdf_depth=8, sdf_multires=3, feature_dim=16, albedo_width=64, shading_width=64,
             proxy_width=32, proxy_depth=4, proxy_multires=3, vis_width=64, mat_multires=3, mat_enc_width=64,
             mat_latent=16, mat_dec_width=32, num_lobes=32, n_samples=8, n_importance=8, up_sample_steps=2,
             chunk=8192, lr=2e-3, seg_rays=32, mesh_resolution=48, chamfer_samples=5000, pe_ramp=(0.2, 0.8))
# configs/sfd/tiny_pose.yaml: poses move in steps 150-479 with an lr decaying 5e-4 -> 5e-5; the shape
# settles on fixed poses for the last 20 % (without that, 1 of 12 runs ended with CD 2x the run without)
REFINE = dict(pose_refinement=True, pose_loss="photometric", pose_start=0.25, pose_end=0.8, pose_lr=5e-4,
              pose_lr_final=5e-5)
JOINT_STEPS, JOINT_RAYS = 600, 256
ROT_MARGIN = 0.8  # degrees; measured gains from 5° (init seed 0): 1.48 / 1.29 / 1.60, over 12 runs >= 0.91
CD_GAIN = 0.85  # CD(on) / CD(off) on pile 0 at 10°; measured 0.70 (init seed 0) and 0.69 (seed 42)


def joint_run(pile: int, noise_deg: float, refine: bool, root) -> dict:
    """Geometry stage on a pile whose poses are perturbed by ``noise_deg`` (64 px, 256 rays/step,
    600 steps, init seed 0), evaluated like ``sfd test``."""
    import lightning.pytorch as pl

    from sfd_lightning.modules.sfd.evaluation import full_evaluation

    pl.seed_everything(0)
    dm = PileDataModule(rays_per_batch=JOINT_RAYS, synthetic_instances=3, synthetic_image_size=64, seed=pile,
                        synthetic_pose_noise_deg=noise_deg)
    system = SfD(**JOINT, **(REFINE if refine else {}))
    trainer = pl.Trainer(max_steps=JOINT_STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
                         limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                         inference_mode=False, default_root_dir=str(root))
    trainer.fit(system, dm)
    dm.setup("test")
    system.scene = dm.scene
    system.model.set_scene(dm.scene)
    metrics = full_evaluation(system, next(iter(dm.val_dataloader())))["metrics"]
    return {"rot": metrics["rot_err_median_deg"], "cd": metrics["cd_l1"]}


@pytest.mark.slow
@pytest.mark.parametrize("pile", [0, 1, 2])
def test_joint_refinement_ends_closer_than_it_started(pile, tmp_path):
    """Shape and poses trained jointly (``REFINE``) from poses 5° off (median relative rotation over
    the instance pairs: exactly 5.0° at the start). Measured (~35 s each idle), init seeds
    0 / 1 / 2 / 42:
        pile 0: 3.52° / 3.37° / 3.01° / 2.82°
        pile 1: 3.71° / 3.48° / 3.65° / 3.38°
        pile 2: 3.40° / 4.09° / 3.20° / 3.67°
    with mesh CD-L1 0.045-0.066, the range of the runs with gt poses. The previous schedule
    (constant pose lr, 128 rays/step, PE complete at 50 %) ended above 5° in 2 of these 12 runs.
    The test runs init seed 0 and asserts a gain > ``ROT_MARGIN``."""
    on = joint_run(pile, 5.0, True, tmp_path)
    assert on["rot"] < 5.0 - ROT_MARGIN, on


@pytest.mark.slow
def test_refinement_improves_the_mesh_where_the_pose_error_limits_it(tmp_path):
    """At this size (64 px, 600 steps) the mesh error is dominated by the tiny networks, not by
    5° of pose error: gt poses give CD-L1 0.044-0.064, poses 5° off 0.043-0.065 (same range). With
    10° on pile 0 the pose error does limit the mesh (CD 0.079 / 0.087 for init seeds 0 / 42 vs
    0.053 / 0.051 with gt poses), and refinement recovers most of it: 0.055 / 0.060, rotation
    10° -> 7.62° / 6.92°. Piles 1 and 2 at 10° (init seed 0) are not pose-limited (CD off 0.051 /
    0.053, as with gt poses): on, 0.052 (10° -> 8.56°) and 0.069 (10° -> 7.67°; one pair stays at
    10°), the latter worse than off by more than the ±12 % run-to-run noise. Two runs, ~2.5 min idle."""
    off = joint_run(0, 10.0, False, tmp_path / "off")
    on = joint_run(0, 10.0, True, tmp_path / "on")
    assert off["rot"] == pytest.approx(10.0, abs=0.05)
    assert on["rot"] < 10.0 - 2 * ROT_MARGIN, (off, on)
    assert on["cd"] < CD_GAIN * off["cd"], (off, on)
