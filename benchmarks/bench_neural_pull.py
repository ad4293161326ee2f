"""Neural-Pull speed and time-to-quality (issue: framework core).

Figures (JSON lines ``{"name","value","unit","baseline","ratio"}``; ratio = value / baseline):

- ``neuralpull_step_s``: seconds per training step at the reference settings (8×256 MLP, skip
  at 4, weight norm, batch 5000, pull loss with double backward, Adam) on 2 CPU threads.
  Baseline: the official PyTorch code, 0.28 s/step on this machine class.
- ``neuralpull_query_prep_s``: query generation (σ50 KD-tree + nearest-point targets, ~1M
  queries) on horse (../shared/data); baseline: the official brute force, ~14 min.
- ``neuralpull_time_to_quality_s`` (only with ``SFD_BENCH_LONG=1`` and ../shared present):
  wall time of ``configs/neuralpull/pointcloud.yaml`` on horse until the 128³ mesh reaches
  CD-L1 ≤ 0.0021 (``neuralpull`` protocol, vs meshes/horse.ply), checked every 250 steps,
  at most 2000 steps; baseline: the official code's 583 s for 2000 steps.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def step_time(steps: int = 15, warmup: int = 3) -> float:
    from sfd_lightning.modules.neural_pull import pull_loss, pull_points
    from sfd_lightning.nn.sdf_mlp import SDFMLP

    torch.manual_seed(0)
    net = SDFMLP(width=256, depth=8, skip_layers=(4,), weight_norm=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    queries = torch.rand(5000, 3) - 0.5
    targets = queries + 0.01 * torch.randn_like(queries)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        q = queries.clone().requires_grad_(True)
        pulled, _ = pull_points(net, q, create_graph=True)
        loss = pull_loss(pulled, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def query_prep_time() -> float | None:
    from sfd_lightning.datamodules.query_sampling import generate_queries

    path = SHARED / "pointclouds" / "horse.xyz.npy"
    if not path.exists():
        return None
    points = np.load(path).astype(np.float32)
    lo, hi = points.min(0), points.max(0)
    points = (points - (lo + hi) / 2) / (hi - lo).max()
    start = time.perf_counter()
    generate_queries(points, "pytorch", seed=0)
    return time.perf_counter() - start


def time_to_quality(target: float = 0.0021, max_steps: int = 2000, every: int = 250) -> dict | None:
    if os.environ.get("SFD_BENCH_LONG") != "1" or not (SHARED / "meshes" / "horse.ply").exists():
        return None
    import lightning.pytorch as pl

    from sfd_lightning.datamodules.point_cloud import PointCloudDataModule
    from sfd_lightning.metrics.evaluate import evaluate
    from sfd_lightning.modules.neural_pull import NeuralPull

    class StopAtQuality(pl.Callback):
        def __init__(self) -> None:
            self.reached: tuple[int, float, float] | None = None
            self.start = time.perf_counter()
            self.eval_time = 0.0

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            step = trainer.global_step
            if step % every:
                return
            t0 = time.perf_counter()
            mesh = module.extract(None, 128)
            cd = evaluate(mesh, SHARED / "meshes" / "horse.ply", "neuralpull")["metrics"]["cd_l1"]
            self.eval_time += time.perf_counter() - t0
            print(json.dumps({"step": step, "cd_l1": cd}), flush=True)
            if cd is not None and cd <= target:
                self.reached = (step, cd, time.perf_counter() - self.start - self.eval_time)
                trainer.should_stop = True

    data = PointCloudDataModule(path=str(SHARED / "pointclouds" / "horse.xyz.npy"), steps_per_epoch=1000)
    model = NeuralPull(log_mesh=False)
    stopper = StopAtQuality()
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         limit_val_batches=0, enable_progress_bar=False, callbacks=[stopper],
                         inference_mode=False)
    trainer.fit(model, data)
    if stopper.reached is None:
        return {"name": "neuralpull_time_to_quality_s", "value": None, "unit": "s",
                "baseline": 583.0, "ratio": None, "note": f"CD-L1 {target} not reached in {max_steps} steps"}
    step, cd, seconds = stopper.reached
    return {"name": "neuralpull_time_to_quality_s", "value": seconds, "unit": "s (training only)",
            "baseline": 583.0, "ratio": seconds / 583.0, "steps": step, "cd_l1_neuralpull": cd}


def run() -> list[dict]:
    torch.set_num_threads(2)
    results = []
    seconds = step_time()
    results.append({"name": "neuralpull_step_s", "value": seconds, "unit": "s/step (8x256, batch 5000, 2 threads)",
                    "baseline": 0.28, "ratio": seconds / 0.28})
    prep = query_prep_time()
    if prep is not None:
        results.append({"name": "neuralpull_query_prep_s", "value": prep, "unit": "s (horse, ~1M queries)",
                        "baseline": 840.0, "ratio": prep / 840.0})
    quality = time_to_quality()
    if quality is not None:
        results.append(quality)
    return results


if __name__ == "__main__":
    for row in run():
        print(json.dumps(row))
