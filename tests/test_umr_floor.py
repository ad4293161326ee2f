"""UMR quality floor (slow): a short stage-1 run on synthetic birds beats the trivial baseline.

Setting: the default synthetic birds (24 train / 13 held-out test images), 32 px crops, level-2
mesh, small heads, 300 Adam steps (lr 1e-3, batch 8, no GAN, no template update). Scored by the
module's deterministic ``test`` (μ, argmax camera, no flip/jitter) on the held-out test split.
Baseline: the category template (the unit sphere here) under the mean predicted camera.

Measured (2-core CPU, shared; soft IoU vs baseline): seed 0 0.364 vs 0.236 (+0.127), seed 1
0.393 vs 0.344 (+0.049), seed 2 0.381 vs 0.387 (-0.007). The learned IoU is stable (0.36-0.39) but
the mean-camera baseline varies with the predicted cameras, so 60 steps do NOT beat it on every
seed: the test fixes seed 0 and asserts IoU > 0.33 (min over 3 seeds 0.364) and IoU > baseline. Keypoint transfer after 60 steps is NOT above its baselines (seed 0: PCK@0.1
flow 0.078 vs identity 0.355; cam 0.151 vs mean camera 0.274; seed 1: 0.010 / 0.355, 0.158 / 0.207; seed 2: 0.039 / 0.355, 0.167 / 0.175), so only the mask floor is asserted.
Tried (2026-11-21): lr 3e-3 (else identical) raises both numbers and narrows the margin: seeds 0/1/2
IoU 0.425/0.438/0.403 vs baseline 0.429/0.429/0.388 (-0.004/+0.009/+0.015); PCK@0.1 cam 0.174/0.203/
0.213 vs mean camera 0.174/0.246/0.261. So lr stays 1e-3; a robust floor needs a longer run
(200 steps was started but not measured over 3 seeds in time).
300 steps (2026-11-21, idle 2-core CPU, ~2-3 min per seed; this test's settings): soft IoU vs
baseline seed 0 0.464 vs 0.409 (+0.055), seed 1 0.524 vs 0.427 (+0.098), seed 2 0.440 vs 0.410
(+0.030): beats the baseline on every seed, so the test runs 300 steps and asserts IoU > 0.42 and
IoU > baseline + 0.015 (half the smallest measured margin). PCK@0.1 after 300 steps is still below
its baselines (cam 0.221/0.239 vs mean camera 0.248/0.263 on seeds 0/1; flow 0.03-0.05 vs identity
0.355): not asserted.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest

from sfd_lightning.datamodules.cub import CUBDataModule
from sfd_lightning.modules.umr.stage1 import UMRStage1


@pytest.mark.slow
def test_stage1_mask_iou_beats_template_baseline(tmp_path: Path) -> None:
    pl.seed_everything(0)
    model = UMRStage1(img_size=32, mesh_level=2, z_dim=32, feat_dim=64, flow_fc_widths=[64, 256], flow_c0=8,
                      shape_hidden=[64, 128], lr=1e-3, w_gan=0.0, template_update_every=0, deform_start_epoch=1000,
                      pck_pairs=2000)
    dm = CUBDataModule(image_size=32, batch_size=8, part_maps=None)
    trainer = pl.Trainer(max_steps=300, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                         default_root_dir=str(tmp_path))
    trainer.fit(model, dm)
    trainer.test(model, dm, verbose=False)
    m = trainer.callback_metrics
    iou, base = float(m["test/mask_iou_soft"]), float(m["test/baseline_template_mean_camera_iou_soft"])
    assert iou > 0.42 and iou > base + 0.015, (iou, base)
