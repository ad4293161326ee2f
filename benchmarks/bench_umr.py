"""UMR training-step time (forward + backward + Adam step) of both stages on synthetic birds.

Cases (CPU unless CUDA is available; fp32; batch of real crops from the cached synthetic birds):
* ``umr_s1_step_s_tiny``: stage 1, tiny preset sizes (64 px, level-2 mesh, batch 8, small decoder);
* ``umr_s2_step_s_tiny``: stage 2, same sizes, 8 camera hypotheses (≈ 22 renders per sample);
* ``umr_s1_step_s_level3_128``: stage 1 at 128 px with the paper's level-3 mesh (642 vertices),
  full-size texture-flow decoder, batch 4.
Time: one warm-up step, then the median of ``repeats`` steps. No baseline (the released code needs
its CUDA renderers); ``ratio`` is null. Run: ``.venv/bin/python benchmarks/bench_umr.py`` (~1-2 min
on an idle 2-core CPU; several times longer when the machine is shared).
"""

from __future__ import annotations

import json
import statistics
import time


def _step_time(stage: int, size: int, level: int, batch: int, repeats: int, **kw) -> float:
    import torch

    from sfd_lightning.datamodules.cub import CUBDataModule
    from sfd_lightning.modules.umr.stage1 import UMRStage1
    from sfd_lightning.modules.umr.stage2 import UMRStage2

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cls = UMRStage1 if stage == 1 else UMRStage2
    model = cls(img_size=size, mesh_level=level, **kw).to(device)
    model.log = lambda *a, **k: None  # no trainer attached
    dm = CUBDataModule(image_size=size, batch_size=batch, part_maps="part_maps")
    dm.setup()
    batch_data = next(iter(dm.train_dataloader()))
    batch_data = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch_data.items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for i in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = model.training_step(batch_data, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i > 0:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(repeats: int = 2) -> list[dict]:
    """Seconds per training step for the cases of the module docstring."""
    tiny = dict(z_dim=64, flow_fc_widths=[256, 1024], flow_c0=32, w_gan=0.1)
    cases = [
        ("umr_s1_step_s_tiny", 1, 64, 2, 8, {**tiny, "shape_hidden": [128, 256]}, "64 px, level 2, batch 8"),
        ("umr_s2_step_s_tiny", 2, 64, 2, 8, {**tiny, "hypotheses": 8}, "64 px, level 2, batch 8, 8 hypotheses"),
        ("umr_s1_step_s_level3_128", 1, 128, 3, 4, {}, "128 px, level 3 (642 vertices), full decoder, batch 4"),
    ]
    rows = []
    for name, stage, size, level, batch, kw, notes in cases:
        seconds = _step_time(stage, size, level, batch, repeats, **kw)
        rows.append({"name": name, "value": round(seconds, 3), "unit": "s", "baseline": None, "ratio": None,
                     "notes": notes})
    return rows


if __name__ == "__main__":
    for row in run():
        print(json.dumps(row), flush=True)
