"""DIT quality floors on the synthetic chair family (16 shapes, 3 dominant parameters; 12 train / 4 test).

One tiny auto-decoder run (configs/dit/tiny.yaml settings, FLOOR_STEPS steps) is shared by:
overfit (training Chamfer, own code vs the mean code), template (one plausible component),
test-time optimisation on held-out shapes vs decoding the mean latent. Margins measured over seeds
0, 1, 2 (values next to the constants). The image floor (phase 2 on held-out views vs the mean
shape) shares the same run (~25 s on an idle 2-core machine).

Chamfer everywhere is the field's metric: protocol ``deepsdf`` (mean d² both ways, summed, x1e3,
original frame of the SurfaceSamples), meshes at 32^3, 3000 samples per side, seeded per shape.
Why the floors failed before (diagnosed on dumped meshes, normalised frame, 24^3): (1) at 200 steps
with batch 4 and the LR halved every 25% of the run, the legs were not learned at all (GT->mesh
distance 15-20 x1e-3 vs 0.7 for the GT field meshed at the same resolution) and TTO codes broke them
into sheets; batch 8 x 256 samples (each code updated twice as often, same points per step), LR
halving at 50% and 300 steps fix that; (2) thin parts extrude through the unconstrained far field
up to the extraction box (legs to y = -1, GT -0.73); ``bound_radius`` (the DeepSDF frame's bounding
ball 1/1.03) removes what cannot be surface. Without the clip TTO still beats the mean code at 300
steps (seeds 0/1/2: 4.20 vs 4.77, 4.18 vs 4.78, 3.64 vs 4.96) but by a smaller margin.
"""

from __future__ import annotations

import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from sfd_lightning.datamodules.shapenet import ShapeNetSDFDataModule
from sfd_lightning.datamodules.shapenet_files import read_surface_samples
from sfd_lightning.modules.dit import DITAutoDecoder
from sfd_lightning.modules.dit.evaluation import score_mesh
from sfd_lightning.modules.dit.networks import DEEPSDF_BALL_RADIUS

SYNTH = {"shapes": 16, "dominant_only": True}
FLOOR_STEPS = 300
TINY = dict(code_dim=32, warper_hidden=64, steps=8, template_dims=(128, 128, 128, 128), dropout=0.0,
            lr_warper=0.002, lr_template=0.002, lr_codes=0.004, ramp_unit="step", lr_halving_epochs=1000.0,
            tto_iterations=100, tto_samples=2000, tto_lr=0.02, tto_holdout=0.25, test_resolution=32,
            eval_samples=3000, score_mean_code=True, bound_radius=DEEPSDF_BALL_RADIUS)
# measured with seeds 0/1/2 at FLOOR_STEPS steps (2-core CPU, fp32):
OVERFIT_CD_MAX = 2.0          # deepsdf CD x1e3, mean of 3 training shapes at 40^3: 0.69 / 0.69 / 0.63
OWN_VS_MEAN_CODE = 0.7        # same, own code / mean code: 0.45 / 0.52 / 0.48
SDF_LOSS_DROP = 4.0           # mean of the first 5 / last 5 logged SDF losses: 6.2 / 6.7 / 8.9
TTO_SDF_MARGIN = 0.4          # held-out samples of held-out shapes, TTO / mean-latent SDF-L1: 0.24 / 0.26 / 0.20
TTO_CD_MARGIN = 0.7           # held-out shapes, deepsdf CD mean, TTO / mean latent: 1.04/2.32, 1.31/2.46, 0.99/2.11
TTO_CD_MAX = 3.0              # held-out shapes, deepsdf CD x1e3 mean of the TTO meshes: 1.04 / 1.31 / 0.99


class _Losses(pl.Callback):
    def __init__(self) -> None:
        self.sdf: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.sdf.append(float(trainer.callback_metrics["train/sdf"]))


def datamodule() -> ShapeNetSDFDataModule:
    return ShapeNetSDFDataModule(categories=["chair"], samples_per_scene=256, eval_samples_per_scene=8000,
                                 batch_size=8, eval_batch_size=4, val_split="none", synthetic=SYNTH)


def train(tmp_path, seed: int = 0, steps: int = FLOOR_STEPS):
    pl.seed_everything(seed)
    model = DITAutoDecoder(**TINY)
    losses = _Losses()
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                         default_root_dir=str(tmp_path), callbacks=[losses])
    dm = datamodule()
    trainer.fit(model, dm)
    return model, trainer, dm, losses


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train(tmp_path_factory.mktemp("dit_floor"))


def training_chamfer(model, dm, count: int = 3, mean_code: bool = False) -> list[float]:
    """deepsdf CD x1e3 of training shapes decoded from their own codes (or the mean code)."""
    from sfd_lightning.modules.dit.evaluation import to_original

    values = []
    for i in range(count):
        gt = read_surface_samples(dm.train_set.surface_samples_path(i))
        if mean_code:
            offset, scale = dm.train_set.normalization(i)
            mesh = to_original(model.extract(model.mean_code(), 40), offset, scale)
        else:
            mesh = model.extract(i, 40)  # original frame (per-scene normalisation)
        values.append(score_mesh(mesh, gt, "deepsdf", f"train{i}", 5000)["metrics"]["deepsdf_cd_x1e3"])
    return values


def test_overfit_training_shapes(trained):
    model, _, dm, losses = trained
    first, last = np.mean(losses.sdf[:5]), np.mean(losses.sdf[-5:])
    assert first / last >= SDF_LOSS_DROP, (first, last)
    cds = training_chamfer(model, dm)
    assert np.mean(cds) < OVERFIT_CD_MAX, cds
    baseline = training_chamfer(model, dm, mean_code=True)
    assert np.mean(cds) <= OWN_VS_MEAN_CODE * np.mean(baseline), (cds, baseline)


def test_template_is_one_plausible_component(trained):
    import trimesh

    model = trained[0]
    mesh = model.extract("template", 40)
    assert not mesh.is_empty
    parts = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True).split(only_watertight=False)
    big = [p for p in parts if len(p.faces) > 0.02 * len(mesh.faces)]
    assert len(big) == 1, [len(p.faces) for p in parts]
    extent = mesh.vertices.max(0) - mesh.vertices.min(0)
    # a chair-sized object in the normalised frame (shapes reach ~0.97 of the unit ball)
    assert (extent > 0.4).all() and (extent < 2.0).all(), extent


def test_test_time_optimisation_beats_mean_latent(trained, tmp_path):
    model, trainer, dm, _ = trained
    trainer.test(model, datamodule=dm)
    record = json.loads((model.run_dir / "metrics.json").read_text())
    tto, mean = record["sdf_l1_mean"], record["sdf_l1_mean_code_mean"]
    assert tto <= TTO_SDF_MARGIN * mean, (tto, mean)
    summary, baseline = record["summary"]["03001627"], record["mean_code_baseline"]["03001627"]
    assert summary["n"] == 4 and summary["n_failed"] == 0 and baseline["n_failed"] == 0
    assert record["protocol"] == "deepsdf" and record["resolution"] == 32
    cd, cd_mean_code = summary["deepsdf_cd_x1e3_mean"], baseline["deepsdf_cd_x1e3_mean"]
    assert cd < TTO_CD_MAX, cd
    assert cd <= TTO_CD_MARGIN * cd_mean_code, (cd, cd_mean_code)


IMAGE_STEPS = 100
IMAGE_SIZE = 32
# measured with seeds 0/1/2 (phase 1 of the same seed, 24 held-out views of the 12 training chairs):
IMAGE_SDF_MARGIN = 0.8  # image SDF-L1 / mean-shape SDF-L1: 0.60 / 0.56 / 0.59
IMAGE_CD_MARGIN = 0.8   # deepsdf CD x1e3 mean, image / mean shape: 2.54/4.42, 2.50/4.64, 2.38/4.33 (0.57 / 0.54 / 0.55)


def test_image_to_mesh_beats_mean_shape_on_held_out_views(trained, tmp_path):
    """Phase 2 on views 0-5 of the 12 training chairs; scored on their held-out views 6 and 7.

    Two switches matter at this size (measured, seed 0, 32 px, 100 steps): without them the
    image meshes are worse than the mean shape (CD 6.81 vs 4.42) — view 6 (274°) is the mirror
    of training view 2 and a from-scratch ResNet does not generalise to it, and off-manifold codes
    of a barely trained encoder decode worse than the mean. ``hflip`` (mirrored views of the
    bilaterally symmetric chairs) and ``head_init: mean`` (the encoder starts at the mean code).
    Ablation (seed 0): hflip only 6.50 vs 4.42, head_init only 3.27 vs 4.42, both 2.54 vs 4.42.
    (64 px, 150 steps, neither switch: 3.06 vs 4.42.)"""
    from sfd_lightning.datamodules.dit_data import DITImageDataModule
    from sfd_lightning.modules.dit import DITImageTwoPhase

    model, trainer, _, _ = trained
    ckpt = tmp_path / "phase1.ckpt"
    trainer.save_checkpoint(ckpt)
    pl.seed_everything(0)
    encoder = DITImageTwoPhase(dit_checkpoint=str(ckpt), jitter=0.1, hue=0.05, lr_step=0.25, test_resolution=32,
                               eval_samples=3000, bound_radius=DEEPSDF_BALL_RADIUS, hflip=0.5, head_init="mean")
    dm = DITImageDataModule(categories=["chair"], image_size=IMAGE_SIZE, batch_size=32, eval_batch_size=8,
                            samples_per_scene=512, eval_samples_per_scene=4000, train_views=[0, 1, 2, 3, 4, 5],
                            eval_views=[6, 7], shapes_split="train", val_split="none", synthetic=SYNTH)
    image_trainer = pl.Trainer(max_steps=IMAGE_STEPS, accelerator="cpu", devices=1, logger=False,
                               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                               inference_mode=False, default_root_dir=str(tmp_path))
    image_trainer.fit(encoder, dm)
    image_trainer.test(encoder, datamodule=dm)
    record = json.loads((encoder.run_dir / "metrics.json").read_text())
    assert len(record["views"]) == 24
    assert record["sdf_l1_mean"] <= IMAGE_SDF_MARGIN * record["sdf_l1_mean_code_mean"], record["sdf_l1_mean"]
    summary, baseline = record["summary"]["03001627"], record["mean_code_baseline"]["03001627"]
    assert summary["n_failed"] == 0 and record["protocol"] == "deepsdf"
    cd, cd_mean_shape = summary["deepsdf_cd_x1e3_mean"], baseline["deepsdf_cd_x1e3_mean"]
    assert cd <= IMAGE_CD_MARGIN * cd_mean_shape, (cd, cd_mean_shape)
