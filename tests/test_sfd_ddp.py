"""SfD under DDP over rays: ranks draw distinct rays, and 2-process CPU ddp_spawn (gloo) trains the
geometry stage and then the material stage (frozen geometry, lighting) without unused-parameter errors."""

from __future__ import annotations

import csv

import pytest
import torch

import lightning.pytorch as pl

from sfd_lightning.datamodules.pile import PileDataModule, PileRayDataset
from sfd_lightning.modules.sfd import SfD
from tests.test_sfd import TINY as SFD_TINY

pytestmark = pytest.mark.usefixtures("one_thread")

# The tiny sizes of test_sfd.py, with lighter visibility/material nets and a coarser test mesh.
TINY = {**SFD_TINY, "vis_width": 16, "mat_enc_width": 16, "num_lobes": 4, "mesh_resolution": 24,
        "chamfer_samples": 1000}


def test_ranks_draw_distinct_reproducible_rays(monkeypatch):
    tensors = {"rgb": torch.arange(5000, dtype=torch.float32)[:, None].repeat(1, 3)}
    dataset = PileRayDataset(tensors, rays_per_batch=64, seed=3)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    draws = {}
    for rank in (0, 1):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        draws[rank] = next(iter(dataset))["rgb"]
        assert torch.equal(draws[rank], next(iter(dataset))["rgb"])  # reproducible per rank
    assert not torch.equal(draws[0], draws[1])


def _trainer(root, steps: int) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=steps, log_every_n_steps=1,
                      limit_val_batches=0, logger=pl.loggers.CSVLogger(root, name="", version=""),
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      default_root_dir=root, inference_mode=False)


def test_ddp_spawn_geometry_then_material(tmp_path):
    dm = PileDataModule(rays_per_batch=64, synthetic_instances=3, synthetic_image_size=40, seed=0)
    torch.manual_seed(0)
    geometry = SfD(**TINY, stage="geometry")
    before = geometry.model.sdf.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    trainer = _trainer(tmp_path / "geo", steps=3)
    trainer.fit(geometry, dm)
    rows = list(csv.DictReader(open(tmp_path / "geo" / "metrics.csv")))
    assert max(int(r["step"]) for r in rows if r.get("train/loss")) == 2  # both ranks ran all 3 steps
    moved = [k for k, v in geometry.model.sdf.state_dict().items() if not torch.equal(v, before[k])]
    assert moved  # the weights trained in the workers came back to the main process
    ckpt = tmp_path / "geo.ckpt"
    torch.save({"state_dict": geometry.state_dict()}, ckpt)

    material = SfD(**TINY, stage="material", previous_stage_checkpoint=str(ckpt))
    light_before = {k: v.clone() for k, v in material.model.light.state_dict().items()}
    _trainer(tmp_path / "mat", steps=2).fit(material, dm)
    for name, value in geometry.model.sdf.state_dict().items():
        assert torch.equal(value, material.model.sdf.state_dict()[name]), name  # geometry stayed frozen
    assert any(not torch.equal(v, light_before[k]) for k, v in material.model.light.state_dict().items())
