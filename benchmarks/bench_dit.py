"""DIT / "Template is all you need" speed figures (JSON-able dicts; ratio = value / baseline).

- ``dit_train_samples_per_s`` (full-size net: code 256, warper 512×8, template 5×256; 4 scenes ×
  1000 samples per step, all four loss terms, Adam) and ``dit_tiny_train_samples_per_s`` (tiny
  preset: code 32, warper 64, template 4×128, 8 × 512). Baseline for the full net: dit.md §4's
  2-core CPU measurement, 10k points forward + backward in 6.7 s ≈ 1,490 samples/s.
- ``dit_tto_s_per_shape_tiny``: test-time optimisation, tiny preset (100 its × 2000 samples).
- ``dit_tto_s_per_shape_full``: full-size net, 800 its × 8000 samples, extrapolated from
  ``SFD_BENCH_DIT_TTO_ITERS`` (default 2) measured iterations; baseline dit.md §4: ~70 min on CPU.
- ``dit_image_to_mesh_s_128`` / ``_256``: one image (224 px) -> ResNet-18 code -> coarse-to-fine
  mesh at 128³ / 256³ with the full-size net on GPU (the tiny preset's net on CPU). With ``SFD_BENCH_DIT_CKPT`` (a DITImageTwoPhase or
  DITImageEndToEnd checkpoint) the trained model is used; otherwise a random-init network whose
  template is replaced by an analytic sphere SDF, so the surface band has a realistic size.
  Baseline: a dense grid (dense evaluations × the measured per-point cost).
"""

from __future__ import annotations

import os
import time

import torch


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_throughput(full: bool, steps: int = 3) -> float:
    from sfd_lightning.modules.dit.auto_decoder import dit_objective
    from sfd_lightning.modules.dit.losses import DITSchedule
    from sfd_lightning.modules.dit.networks import DITNetwork

    device = _device()
    torch.manual_seed(0)
    if full:
        net, code_dim, b, s = DITNetwork(256, 512, 8, (256,) * 5, 0.05), 256, 4, 1000
        if device.type == "cuda":
            b, s = 24, 5000
    else:
        net, code_dim, b, s = DITNetwork(32, 64, 8, (128,) * 4, 0.0), 32, 8, 512
    net.to(device)
    codes = torch.nn.Embedding(b, code_dim, max_norm=1.0).to(device)
    opt = torch.optim.Adam([*net.parameters(), *codes.parameters()], lr=1e-4)
    samples = (torch.rand(b, s, 4, device=device) * 2 - 1) * torch.tensor([1, 1, 1, 0.1], device=device)
    schedule = DITSchedule()
    start = 0.0
    for i in range(steps + 1):
        if i == 1:
            _sync(device)
            start = time.perf_counter()
        terms = dit_objective(net, codes(torch.arange(b, device=device)), samples, schedule, 1.0)
        loss = torch.stack(list(terms.values())).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    _sync(device)
    return b * s * steps / (time.perf_counter() - start)


def tto_seconds(full: bool) -> float:
    from sfd_lightning.modules.dit.networks import DITNetwork
    from sfd_lightning.modules.dit.reconstruct import reconstruct_codes

    device = _device()
    torch.manual_seed(0)
    net = (DITNetwork(256, 512, 8, (256,) * 5, 0.05) if full else DITNetwork(32, 64, 8, (128,) * 4, 0.0)).to(device)
    pool = torch.cat([torch.rand(20000, 3, device=device) * 2 - 1, torch.rand(20000, 1, device=device) * 0.2 - 0.1], 1)
    iters, total, samples = (int(os.environ.get("SFD_BENCH_DIT_TTO_ITERS", 2)), 800, 8000) if full else (100, 100, 2000)
    _sync(device)
    start = time.perf_counter()
    reconstruct_codes(net, [pool], iterations=iters, samples=samples)
    _sync(device)
    return (time.perf_counter() - start) * total / iters


def image_to_mesh(resolution: int) -> tuple[float, int]:
    from sfd_lightning.geometry.extraction import extract_mesh
    from sfd_lightning.modules.dit.image_encoder import DITImageTwoPhase

    device = _device()
    ckpt = os.environ.get("SFD_BENCH_DIT_CKPT")
    if ckpt:
        from sfd_lightning.modules.dit.image_encoder import DITImageEndToEnd

        hp = torch.load(ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]
        cls = DITImageEndToEnd if "freeze_dit" in hp else DITImageTwoPhase
        model = cls.load_from_checkpoint(ckpt, map_location="cpu")
    else:
        # full-size net on GPU; on CPU the tiny preset's net (a full-size 256^3 mesh takes minutes there)
        net = ({"code_dim": 256, "warper_hidden": 512, "steps": 8, "template_dims": [256] * 5, "dropout": 0.05}
               if device.type == "cuda" else
               {"code_dim": 32, "warper_hidden": 64, "steps": 8, "template_dims": [128] * 4, "dropout": 0.0})
        model = DITImageTwoPhase(net=net)
        model.net.sdf_decoder.forward = lambda x: x.norm(dim=-1) - 0.6  # type: ignore[assignment]
    model.to(device).eval()
    image = torch.rand(1, 3, 224, 224, device=device)
    calls = [0]
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        code = model.encode(image)[0]
    fn = model.sdf_fn(code)

    def counted(points):
        calls[0] += len(points)
        return fn(points)
    mesh = extract_mesh(counted, [-1.0] * 3, [1.0] * 3, resolution, 0.0, "coarse_to_fine", lipschitz=2.0,
                        device=device)
    _sync(device)
    assert not mesh.is_empty
    return time.perf_counter() - start, calls[0]


def run() -> list[dict]:
    device = str(_device())
    note = f"device {device}; CPU figures on a shared 2-core machine are inflated by other load"
    out = []
    full = train_throughput(True)
    out.append({"name": "dit_train_samples_per_s", "value": full, "unit": "samples/s", "baseline": 10_000 / 6.7,
                "ratio": full / (10_000 / 6.7), "notes": "full-size net; baseline dit.md §4 (2-core CPU). " + note})
    tiny = train_throughput(False)
    out.append({"name": "dit_tiny_train_samples_per_s", "value": tiny, "unit": "samples/s", "baseline": None,
                "ratio": None, "notes": "tiny preset net. " + note})
    t_tiny = tto_seconds(False)
    out.append({"name": "dit_tto_s_per_shape_tiny", "value": t_tiny, "unit": "s", "baseline": None, "ratio": None,
                "notes": "100 its x 2000 samples. " + note})
    t_full = tto_seconds(True)
    out.append({"name": "dit_tto_s_per_shape_full", "value": t_full, "unit": "s", "baseline": 70 * 60.0,
                "ratio": t_full / 4200.0, "notes": "800 its x 8000 samples, extrapolated. " + note})
    for res in (128, 256):
        seconds, evaluated = image_to_mesh(res)
        per_point = seconds / max(evaluated, 1)
        dense = per_point * res ** 3
        out.append({"name": f"dit_image_to_mesh_s_{res}", "value": seconds, "unit": "s", "baseline": dense,
                    "ratio": seconds / dense, "notes": f"coarse-to-fine, {evaluated} SDF evaluations vs {res ** 3} "
                    "dense (baseline = dense at the same per-point cost); "
                    + ("trained checkpoint. " if os.environ.get("SFD_BENCH_DIT_CKPT") else
                       f"random warper + sphere template, {'full' if device == 'cuda' else 'tiny'} net. ") + note})
    return out


if __name__ == "__main__":
    import json

    for row in run():
        print(json.dumps(row))
