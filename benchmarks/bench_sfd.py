"""SfD training throughput and memory (issue: SfD inverse rendering).

Figures (JSON lines; ``baseline``/``ratio`` are None: no reference-code figure was measured here):

- ``sfd_<stage>_rays_per_s_<size>``: training rays per second (forward + backward + optimiser
  step) of the geometry, visibility (primary rays, each with ``vis_dirs`` secondary rays) and
  material stages, ``tiny`` = the tiny preset's sizes (8+8 samples), ``full`` = the original's
  sizes (8×512 SDF, 256 features, 32+32 samples, 128 SG lobes, 25 visibility directions per lobe).
- ``sfd_geometry_saved_mb_per_1k_rays_<size>``: bytes of tensors saved for backward in one
  geometry step, per 1,000 rays (the activation memory that dominates training; CPU has no
  allocator peak counter, on CUDA the peak allocation is reported too).

Runs on CUDA when available, else CPU with ``torch.get_num_threads()`` threads. Default run < 1 min.
"""

from __future__ import annotations

import time

import torch

from sfd_lightning.datamodules.pile import PileDataModule
from sfd_lightning.modules.sfd import SfD

TINY = dict(sdf_width=64, sdf_depth=8, sdf_multires=3, feature_dim=16, albedo_width=64, shading_width=64,
            proxy_width=32, proxy_depth=4, proxy_multires=3, vis_width=128, mat_multires=3, mat_enc_width=128,
            mat_latent=32, mat_dec_width=32, mat_dec_depth=4, num_lobes=32, n_samples=8, n_importance=8,
            up_sample_steps=2, seg_rays=32, vis_dirs=2, vis_n_samples=8, vis_n_importance=8, light_dirs=4)
FULL: dict = {}  # the constructor defaults are the original's sizes


def _system(sizes: dict, stage: str, dm: PileDataModule, device: torch.device) -> SfD:
    torch.manual_seed(0)
    system = SfD(stage=stage, **sizes)
    system.model.set_scene(dm.scene)
    system.to(device)
    system.apply_freezing()
    return system


def _batch(dm: PileDataModule, rays: int, device: torch.device) -> dict[str, torch.Tensor]:
    tensors = dm._tensors
    gen = torch.Generator().manual_seed(0)
    index = torch.randint(len(tensors["rgb"]), (rays,), generator=gen)
    batch = {k: v[index] for k, v in tensors.items()}
    return {k: v[~batch["ignore"]].to(device) for k, v in batch.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rays_per_second(system: SfD, batch: dict[str, torch.Tensor], steps: int, device: torch.device) -> float:
    step = getattr(system, f"_{system.hparams.stage}_step")
    params = [p for p in system.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-5)
    for i in range(steps + 1):
        if i == 1:
            _sync(device)
            start = time.perf_counter()
        loss = step(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _sync(device)
    return steps * len(batch["rgb"]) / (time.perf_counter() - start)


def saved_bytes(system: SfD, batch: dict[str, torch.Tensor]) -> int:
    """Bytes of distinct tensors autograd saves for backward during one geometry step."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        key = (t.untyped_storage().data_ptr(), t.device.type)
        seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = system._geometry_step(batch)["loss"]
    loss.backward()
    return sum(seen.values())


def run() -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dm = PileDataModule(rays_per_batch=64, synthetic_instances=3, synthetic_image_size=96, seed=0)
    dm.setup("fit")
    where = f"{device.type}, {torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name()
    rows = []
    plans = {"tiny": (TINY, {"geometry": 256, "visibility": 128, "material": 256}, 3),
             "full": (FULL, {"geometry": 64, "visibility": 16, "material": 64}, 1)}
    if device.type == "cuda":
        plans["full"] = (FULL, {"geometry": 2048, "visibility": 1024, "material": 2048}, 5)
    for size, (sizes, rays, steps) in plans.items():
        for stage, count in rays.items():
            system = _system(sizes, stage, dm, device)
            value = rays_per_second(system, _batch(dm, count, device), steps, device)
            rows.append({"name": f"sfd_{stage}_rays_per_s_{size}", "value": round(value, 2), "unit": "rays/s",
                         "baseline": None, "ratio": None,
                         "notes": f"{where}; {count} rays per step; stage '{stage}' forward+backward+Adam"})
        system = _system(sizes, "geometry", dm, device)
        batch = _batch(dm, rays["geometry"], device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        mb = saved_bytes(system, batch) / 2 ** 20 * 1000 / len(batch["rgb"])
        notes = f"{where}; tensors saved for backward, {len(batch['rgb'])} rays"
        if device.type == "cuda":
            notes += f"; CUDA peak {torch.cuda.max_memory_allocated() / 2 ** 20 * 1000 / len(batch['rgb']):.1f} MB/1k rays"
        rows.append({"name": f"sfd_geometry_saved_mb_per_1k_rays_{size}", "value": round(mb, 2), "unit": "MB",
                     "baseline": None, "ratio": None, "notes": notes})
    return rows


if __name__ == "__main__":
    import json

    for row in run():
        print(json.dumps(row))
