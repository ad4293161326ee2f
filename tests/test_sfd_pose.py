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
             chunk=8192, lr=2e-3, seg_rays=32, mesh_resolution=48, chamfer_samples=5000)
REFINE = dict(pose_refinement=True, pose_loss="photometric", pose_start=0.25, pose_lr=5e-4)
JOINT_STEPS = 600
ROT_MARGIN = 0.8  # degrees; measured improvements (seeds 0/1/2): 1.40 / 2.13 / 1.30
CD_TOLERANCE = 1.1  # measured CD(on)/CD(off): 0.80 / 1.05 / 0.89; run-to-run CD noise is ~±15 %


def joint_run(seed: int, refine: bool, root) -> dict:
    """Geometry stage on the 5°-perturbed pile (64 px, 128 rays/step), evaluated like ``sfd test``."""
    import lightning.pytorch as pl

    from sfd_lightning.modules.sfd.evaluation import full_evaluation

    pl.seed_everything(0)
    dm = PileDataModule(rays_per_batch=128, synthetic_instances=3, synthetic_image_size=64, seed=seed,
                        synthetic_pose_noise_deg=5.0)
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
def test_joint_refinement_ends_closer_and_the_mesh_is_not_worse(tmp_path):
    """Shape and poses trained jointly (``REFINE``: photometric pose gradient from step 150 of 600,
    pose lr 5e-4) vs the same run with refinement off; pile/perturbation seed 0, init seed 0.
    Measured, pile seeds 0 / 1 / 2 (init seed 0), start 5.0° each:
        median relative rotation  3.60° / 2.87° / 3.70°
        CD-L1 on vs off           0.0668 vs 0.0833 / 0.0788 vs 0.0753 / 0.0574 vs 0.0646
    NOT robust to the network-init seed: pile seed 0 with init seeds 1 / 2 / 42 ends at 5.12° /
    3.51° / 5.39° (42 = configs/sfd/tiny_pose.yaml: the rotation about the viewing axis is
    recovered, a tilt about an image-plane axis goes the wrong way). This test pins init seed 0;
    it guards the mechanism against regressions, it does not show that refinement always helps.
    ~7.5 min on the shared, loaded 2-core machine (two 600-step runs; ~2 min idle, estimated)."""
    off = joint_run(0, False, tmp_path / "off")
    on = joint_run(0, True, tmp_path / "on")
    assert off["rot"] == pytest.approx(5.0, abs=0.05)
    assert on["rot"] < off["rot"] - ROT_MARGIN, (off, on)
    assert on["cd"] < CD_TOLERANCE * off["cd"], (off, on)
