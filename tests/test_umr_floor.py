"""UMR quality floors (slow): short runs on the synthetic birds beat trivial baselines.

Stage 1 (mask IoU): the default synthetic birds (24 train / 13 held-out test images), 32 px crops,
level-2 mesh, small heads, 300 Adam steps (lr 1e-3, batch 8, no GAN, no template update). Scored by
the module's deterministic ``test`` (μ, argmax camera, no flip/jitter) on the held-out test split.
Baseline: the category template (the unit sphere here) under the mean predicted camera.
Measured (2-core CPU; soft IoU vs baseline): 60 steps seed 0/1/2 0.364/0.393/0.381 vs
0.236/0.344/0.387; 300 steps 0.464/0.524/0.440 vs 0.409/0.427/0.410 (+0.055/+0.098/+0.030), so the
test runs 300 steps and asserts IoU > 0.42 and IoU > baseline + 0.015.

Stage 1 does NOT transfer keypoints above the mean camera, and is not expected to: nothing in it
fixes the camera (the per-image deformation and a symmetric mesh can fit a silhouette under many
rotations). Measured at 300 steps, seed 0: median rotation error to the ground-truth cameras 107°
(learned) vs 96° (their mean camera), PCK@0.1 cam mode 0.22 vs mean camera 0.25; the texture flow
stays collapsed near the crop centre (range [-0.06, 0.30]), so flow-mode PCK is 0.04 vs identity
transfer 0.355. UMR resolves the camera with stage 2's semantic part consistency (SCOPS part maps:
part-map rendering and the head/belly vertex Chamfer), so the keypoint floor is a stage-2 run.

Stage 2 (keypoint PCK, camera mode, and IoU): the synthetic birds with their ground-truth part maps
(SCOPS layout), the geometric stand-in template (``template_path: null``: an ellipsoid, head front-top,
belly below), 2 camera hypotheses, 200 steps (lr 1e-3, batch 8, no GAN). Baselines on the same pairs:
``pck10_mean_cam`` = the template under ONE camera (the mean predicted camera) for every image, i.e.
the source keypoint moved onto the nearest template vertex; ``pck10_identity`` (predict the source
location) is reported beside it but is out of reach of template-vertex transfer at this size: even
ground-truth cameras with the stand-in template score 0.37 (visible vertices, mask snap) vs 0.355.
Measured (2-core CPU shared by ~18 busy processes, 25-45 min per seed; idle time not measured),
PCK@0.1 cam vs mean camera | soft IoU vs its baseline | median rotation error to the ground-truth
cameras, learned vs mean camera:
seed 0: 0.281 vs 0.232 (+0.049) | 0.577 vs 0.398 | not measured;
seed 1: 0.304 vs 0.238 (+0.066) | 0.521 vs 0.409 | 65° vs 104°;
seed 2: 0.275 vs 0.232 (+0.043) | 0.548 vs 0.399 | 65° vs 101°.
Flow mode stays at 0.04 (identity 0.355): the texture flow has not spread out of the crop centre after
200 steps. The test fixes seed 0 and asserts PCK@0.1 cam > mean camera + 0.03 (about 2/3 of the
smallest margin) and IoU > 0.45 and > baseline + 0.05.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest

from sfd_lightning.datamodules.cub import CUBDataModule
from sfd_lightning.modules.umr.stage1 import UMRStage1
from sfd_lightning.modules.umr.stage2 import UMRStage2

PCK_MARGIN = 0.03  # smallest measured margin over seeds 0/1/2: +0.043
IOU_MIN = 0.45  # smallest measured soft IoU over seeds 0/1/2: 0.521


def _trainer(tmp_path: Path, steps: int) -> pl.Trainer:
    return pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                      default_root_dir=str(tmp_path))


@pytest.mark.slow
def test_stage1_mask_iou_beats_template_baseline(tmp_path: Path) -> None:
    pl.seed_everything(0)
    model = UMRStage1(img_size=32, mesh_level=2, z_dim=32, feat_dim=64, flow_fc_widths=[64, 256], flow_c0=8,
                      shape_hidden=[64, 128], lr=1e-3, w_gan=0.0, template_update_every=0, deform_start_epoch=1000,
                      pck_pairs=2000)
    dm = CUBDataModule(image_size=32, batch_size=8, part_maps=None)
    trainer = _trainer(tmp_path, 300)
    trainer.fit(model, dm)
    trainer.test(model, dm, verbose=False)
    m = trainer.callback_metrics
    iou, base = float(m["test/mask_iou_soft"]), float(m["test/baseline_template_mean_camera_iou_soft"])
    assert iou > 0.42 and iou > base + 0.015, (iou, base)


@pytest.mark.slow
def test_stage2_keypoint_transfer_beats_mean_camera(tmp_path: Path) -> None:
    pl.seed_everything(0)
    model = UMRStage2(img_size=32, mesh_level=2, z_dim=32, feat_dim=64, flow_fc_widths=[64, 256], flow_c0=8,
                      lr=1e-3, w_gan=0.0, hypotheses=2, pck_pairs=2000)
    dm = CUBDataModule(image_size=32, batch_size=8, part_maps="part_maps")
    trainer = _trainer(tmp_path, 200)
    trainer.fit(model, dm)
    trainer.test(model, dm, verbose=False)
    m = {k[5:]: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    print("UMR stage-2 floor:", m)
    assert m["pck10_cam"] > m["pck10_mean_cam"] + PCK_MARGIN, m
    assert m["mask_iou_soft"] > IOU_MIN and m["mask_iou_soft"] > m["baseline_template_mean_camera_iou_soft"] + 0.05, m

