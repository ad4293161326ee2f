"""LIST speed: training step time of both stages and image -> mesh latency.

Figures (``run() -> list[dict]``; no baseline measured from the original code, so ``baseline`` and
``ratio`` are ``None``):

- ``list_coarse_step_s``: one CoarseNet step (forward, Chamfer ×1000, backward, Adam).
- ``list_fine_step_s``: one LIST step (frozen coarse branch, voxel branch, spatial transformer,
  SDF + occupancy losses, backward, Adam).
- ``list_image_to_mesh_s``: one image -> encoder, coarse points, voxel pyramid, coarse-to-fine
  SDF grid, marching cubes (``ListFine.mesh_from_image``).

Settings: the reference ones (CoarseNet batch 16, LIST batch 8 with 32,441 queries, 224 px,
4096 coarse points, 128³ voxels and mesh grid) when CUDA is available or ``SFD_BENCH_LONG=1``;
otherwise a CPU-sized run (batch 4, 32 px, 256 coarse points, 32³ voxels and mesh grid,
1024 queries) that finishes in well under 2 minutes on an idle 2-core machine. The ``notes``
field says which was measured.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

REFERENCE = {"pixels": 224, "coarse_batch": 16, "fine_batch": 8, "queries": 32441, "vox_res": 128,
             "map_size": 137, "mesh_res": 128, "tree": {}, "vox_channels": (16, 32, 64, 128, 128)}
SMALL = {"pixels": 32, "coarse_batch": 4, "fine_batch": 4, "queries": 1024, "vox_res": 32, "map_size": 20,
         "mesh_res": 32, "tree": {"tree_features": [128, 64, 64, 32, 3], "tree_degrees": [2, 4, 4, 8]},
         "vox_channels": (16, 32, 64, 128, 128)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def measure(settings: dict[str, Any], device: torch.device, steps: int = 3, warmup: int = 1) -> dict[str, float]:
    from sfd_lightning.modules.list_recon import ListCoarse, ListFine
    from sfd_lightning.modules.list_recon.common import coarse_loss

    torch.manual_seed(0)
    s = settings
    coarse = ListCoarse(**s["tree"]).to(device).train()
    opt = torch.optim.Adam(coarse.parameters(), lr=1e-4)
    images = torch.rand(s["coarse_batch"], 3, s["pixels"], s["pixels"], device=device)
    target = torch.rand(s["coarse_batch"], 5000 if s is REFERENCE else 512, 3, device=device) - 0.5

    def coarse_step() -> None:
        loss = coarse_loss(coarse(images), target)
        opt.zero_grad()
        loss.backward()
        opt.step()

    out = {"coarse": _time(coarse_step, steps, warmup, device)}
    del coarse, opt
    fine = ListFine(vox_res=s["vox_res"], vox_channels=s["vox_channels"], map_size=s["map_size"],
                    test_pointnum=65536, **s["tree"]).to(device).train()
    fopt = torch.optim.Adam([p for p in fine.parameters() if p.requires_grad], lr=1e-4)
    batch = {"image": torch.rand(s["fine_batch"], 3, s["pixels"], s["pixels"], device=device),
             "points": torch.rand(s["fine_batch"], s["queries"], 3, device=device) - 0.5,
             "values": torch.rand(s["fine_batch"], s["queries"], device=device) - 0.5,
             "fps_points": torch.rand(s["fine_batch"], 5000 if s is REFERENCE else 512, 3, device=device) - 0.5}

    def fine_step() -> None:
        loss = fine._losses(batch)["loss"]
        fopt.zero_grad()
        loss.backward()
        fopt.step()

    out["fine"] = _time(fine_step, steps, warmup, device)
    fine.eval()
    image = batch["image"][0]
    out["mesh"] = _time(lambda: fine.mesh_from_image(image, s["mesh_res"]), 1, 1, device)
    return out


def run() -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reference = device.type == "cuda" or os.environ.get("SFD_BENCH_LONG") == "1"
    settings = REFERENCE if reference else SMALL
    label = "reference settings (batch 16 / 8, 224 px, 128^3)" if reference else \
        "CPU-sized settings (batch 4, 32 px, 32^3, 256 coarse points, 1024 queries)"
    numbers = measure(settings, device)
    notes = f"{label} on {device.type}; no measurement of the original code (baseline None)"
    return [{"name": "list_coarse_step_s", "value": numbers["coarse"], "unit": "s", "baseline": None,
             "ratio": None, "notes": notes},
            {"name": "list_fine_step_s", "value": numbers["fine"], "unit": "s", "baseline": None,
             "ratio": None, "notes": notes},
            {"name": "list_image_to_mesh_s", "value": numbers["mesh"], "unit": "s", "baseline": None,
             "ratio": None, "notes": notes + "; untrained net (extraction cost depends on the surface)"}]


if __name__ == "__main__":
    import json

    for row in run():
        print(json.dumps(row))
