"""Soft rasteriser forward + backward: memory-lean path vs dense path (baseline).

Scene (UMR's renderer settings without anti-aliasing, issue 8): a batch of 8 level-3 icospheres
(642 vertices, 1280 faces) under random weak-perspective cameras (scale 0.7), 6×6 = 36 texels per
face, σ = 1e-5·(512/S)², γ = 1e-4, dist_eps = 1e-10, black background; the timed step is
``rgba = rasterizer(vertices, faces, textures); rgba.sum().backward()``.

Each case runs in fresh subprocesses. Time: one warm-up step, then the median of ``repeats`` timed
steps (default allocator). Peak memory: a separate one-step run with ``MALLOC_MMAP_THRESHOLD_=65536``
(glibc then maps every allocation ≥ 64 KiB on its own and unmaps it on free, so the process's
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` follows the live tensors instead of the heap's
high-water mark, which grows with fragmentation); reported is that peak minus the RSS after building
the inputs (tracemalloc does not see torch's CPU allocations). Sizes 64², 128², 256².

The dense path over all ``B·F·S²`` pairs needs ≈ 0.38 kB per pair unchunked (≈ 4 GB at 32², 16 GB
at 64², 63 GB at 128²: above the ≈ 8 GB cap of this benchmark and this machine's 23 GB), so the
baseline is the dense path evaluated in pixel blocks of ≈ 1M pairs (``dense_pixel_chunk``, blocks
recomputed in backward): the same all-pairs work with a bounded peak (≈ 0.5 GB measured), timed
once after the warm-up. At 256² the dense path is not run (671M pairs: ≈ 250 GB unchunked, several
minutes blocked); the lean path is reported alone, with the unchunked dense estimate. Lines:

* ``soft_raster_fwd_bwd_s_lean_S``: lean seconds; baseline dense seconds; ratio lean/dense.
* ``soft_raster_peak_mb_lean_S``: lean peak MB; baseline dense (pixel-blocked) peak MB.
* ``soft_raster_pairs_lean_S``: pairs the lean path evaluates; baseline ``B·F·S²``.
* ``soft_raster_dense_unchunked_mb_est_S``: estimated unchunked dense peak (bytes per pair from the
  peaks of unchunked dense runs at 16² and 24²), no baseline.

Dense baseline sizes: up to ``SFD_BENCH_DENSE_MAX`` (default 64, so the default run stays short;
128 adds the pixel-blocked dense 128² case).

Threads: ``SFD_BENCH_THREADS`` (default: torch's default; with other processes busy on a 2-core
machine use 1: two intra-op threads then wait ~8 ms per parallel op). Run:
``.venv/bin/python benchmarks/bench_soft_rasterizer.py`` (JSON lines; several minutes, mostly dense 128²).

Measured here (1 thread, 2-core CPU VM): lean 0.90 / 1.23 / 2.44 s and ≈ 330-360 MB at 64² / 128²
/ 256²; dense (pixel blocks) 13.2 / 52.5 s, ≈ 480-505 MB; lean evaluates 2.6 % / 1.0 % / 0.48 %
of the pairs.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

BATCH, LEVEL, TEXELS = 8, 3, 36
DENSE_BLOCK_PAIRS = 1 << 20


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _case(mode: str, size: int, repeats: int, pixel_chunk: int | None) -> dict:
    """Run one case in this process; returns seconds (median), peak MB above the inputs, pairs."""
    import torch
    import trimesh

    from sfd_lightning.render.mesh_camera import project_weak_perspective
    from sfd_lightning.render.soft_raster_lean import plan_pairs
    from sfd_lightning.render.soft_rasterizer import SoftRasterizer

    threads = int(os.environ.get("SFD_BENCH_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    mesh = trimesh.creation.icosphere(subdivisions=LEVEL)
    v0 = torch.tensor(mesh.vertices, dtype=torch.float32)
    faces = torch.tensor(mesh.faces, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    quat = torch.randn(BATCH, 4, generator=g)
    trans = 0.1 * torch.randn(BATCH, 2, generator=g)
    verts = project_weak_perspective(v0.expand(BATCH, -1, -1), torch.full((BATCH,), 0.7), trans, quat)
    verts = verts.detach().requires_grad_(True)
    tex = torch.rand(BATCH, faces.shape[0], TEXELS, 3, generator=g, requires_grad=True)
    r = SoftRasterizer(size, sigma=1e-5 * (512 / size) ** 2, gamma=1e-4, dist_eps=1e-10, background=(0, 0, 0),
                       perspective_correct=False, mode=mode, dense_pixel_chunk=pixel_chunk)
    tri = verts.detach()[:, faces, :2].reshape(-1, 3, 2)
    pairs = plan_pairs(tri, size, size, r.settings).total if mode == "lean" else BATCH * faces.shape[0] * size**2
    base = _rss_mb()
    times = []
    for i in range(repeats + 1):
        verts.grad = tex.grad = None
        start = time.perf_counter()
        r(verts, faces, tex).sum().backward()
        if i > 0:  # the first step is a warm-up
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    seconds = statistics.median(times) if times else None
    return {"seconds": seconds, "peak_mb": peak, "pairs": pairs, "threads": torch.get_num_threads()}


def _subprocess(mode: str, size: int, repeats: int, pixel_chunk: int | None = None, memory: bool = False) -> dict:
    """One case in a fresh process; ``memory=True`` runs it with glibc's mmap threshold at 64 KiB."""
    cmd = [sys.executable, __file__, "--case", mode, str(size), str(repeats), str(pixel_chunk or 0)]
    env = {**os.environ, **({"MALLOC_MMAP_THRESHOLD_": "65536"} if memory else {})}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure(mode: str, size: int, repeats: int, pixel_chunk: int | None = None) -> dict:
    """Seconds from a run with the default allocator, peak MB from a one-step run with ``memory``."""
    timed = _subprocess(mode, size, repeats, pixel_chunk)
    return {**timed, "peak_mb": _subprocess(mode, size, 0, pixel_chunk, memory=True)["peak_mb"]}


def run(sizes: tuple[int, ...] = (64, 128, 256), dense_max: int | None = None, repeats: int = 3) -> list[dict]:
    """Lean vs dense forward+backward time and peak memory; see the module docstring."""
    if dense_max is None:  # the dense 128² baseline alone takes ~1 min idle: opt in with SFD_BENCH_DENSE_MAX=128
        dense_max = int(os.environ.get("SFD_BENCH_DENSE_MAX", "64"))
    faces = 20 * 4**LEVEL
    small, large = (_subprocess("dense", n, 0, memory=True) for n in (16, 24))  # unchunked dense
    per_pair = (large["peak_mb"] - small["peak_mb"]) * 2**20 / (large["pairs"] - small["pairs"])
    rows: list[dict] = []
    for size in sizes:
        lean = _measure("lean", size, repeats)
        dense = None
        if size <= dense_max:
            block = max(1, DENSE_BLOCK_PAIRS // (BATCH * faces))
            dense = _measure("dense", size, 1, pixel_chunk=block)
        base_t = None if dense is None else round(dense["seconds"], 3)
        base_m = None if dense is None else round(dense["peak_mb"], 1)
        all_pairs = BATCH * faces * size * size
        rows += [
            {"name": f"soft_raster_fwd_bwd_s_lean_{size}", "value": round(lean["seconds"], 3), "unit": "s",
             "baseline": base_t, "ratio": None if dense is None else round(lean["seconds"] / dense["seconds"], 4)},
            {"name": f"soft_raster_peak_mb_lean_{size}", "value": round(lean["peak_mb"], 1), "unit": "MB",
             "baseline": base_m, "ratio": None if dense is None else round(lean["peak_mb"] / dense["peak_mb"], 4)},
            {"name": f"soft_raster_pairs_lean_{size}", "value": lean["pairs"], "unit": "pairs",
             "baseline": all_pairs, "ratio": round(lean["pairs"] / all_pairs, 5)},
            {"name": f"soft_raster_dense_unchunked_mb_est_{size}", "value": round(per_pair * all_pairs / 2**20),
             "unit": "MB", "baseline": None, "ratio": None},
        ]
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--case":
        mode, size, repeats, chunk = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(_case(mode, size, repeats, chunk or None)))
    else:
        for row in run():
            print(json.dumps(row), flush=True)
