"""2-process CPU DDP (gloo) through ddp_spawn, the way pytest can run it (lightning.md §5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sfd_lightning.datamodules.point_cloud import PointCloudDataModule, RandomQueryBatches
from sfd_lightning.modules.neural_pull import NeuralPull


def test_ranks_draw_different_batches():
    queries = torch.arange(3000, dtype=torch.float32)[:, None].repeat(1, 3)
    dataset = RandomQueryBatches(queries, queries, batch_size=100, length=4, seed=0)
    first, second = dataset[0]["queries"], dataset[1]["queries"]  # rank 0 gets item 0, rank 1 item 1
    assert not torch.equal(first, second)
    again = RandomQueryBatches(queries, queries, batch_size=100, length=4, seed=0)[0]["queries"]
    assert torch.equal(first, again)


def test_ddp_spawn_two_cpu_processes(tmp_path):
    import lightning.pytorch as pl

    rng = np.random.default_rng(0)
    p = rng.standard_normal((3000, 3))
    np.save(tmp_path / "sphere.npy", (0.3 * p / np.linalg.norm(p, axis=1, keepdims=True)).astype(np.float32))
    dm = PointCloudDataModule(path=str(tmp_path / "sphere.npy"), max_queries=50_000, batch_size=1000,
                              steps_per_epoch=20)
    model = NeuralPull(width=32, depth=3, skip_layers=(2,), val_resolution=24, log_mesh=False)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=30, log_every_n_steps=5,
                         check_val_every_n_epoch=None, val_check_interval=10, limit_val_batches=1,
                         logger=pl.loggers.CSVLogger(tmp_path, name="", version=""),
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         inference_mode=False)
    trainer.fit(model, dm)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert max(int(r["step"]) for r in rows) == 29  # the workers ran all 30 steps (0-based log)
    assert any(r.get("val/mesh_vertices") for r in rows) and any(r.get("train/loss") for r in rows)
    # Weights came back from the workers: the trained net differs from a fresh init.
    fresh = NeuralPull(width=32, depth=3, skip_layers=(2,))
    assert not torch.allclose(fresh.network.layers[0].parametrizations.weight.original1,
                              model.network.layers[0].parametrizations.weight.original1)
