"""Mesh extraction of a Neural-Pull-sized SDF MLP: coarse-to-fine vs dense.

``run()`` returns one dict per measurement, ``{"name", "value", "unit", "baseline", "ratio"}``
with ``ratio = value / baseline``. The network is Neural-Pull's (8 hidden Linear of width 256,
ReLU, skip at layer 4, weight norm, geometric init -> a sphere-like surface): the project's
``SDFMLP`` when importable, else an equivalent local ``torch.nn`` module. The box follows
Neural-Pull: bbox of the surface ± 0.05 (found by a 64³ extraction), so the object fills it.

Measured: coarse-to-fine at 128³ (vs a dense 128³ evaluation and vs the 4 s target of
methods/lightning.md), the fraction of fine nodes passed to the network, coarse-to-fine at 256³,
peak memory (numpy allocations traced by ``tracemalloc``; torch's allocator is not traced, so
the process RSS peak above the starting RSS is reported too), marching cubes alone, and the
Chamfer-L1 (mean of both directions, vertices to vertices, pykdtree) between the two meshes.
The dense 256³ evaluation (~4 min on 2 cores) runs once, only with ``full=True`` (``--full``);
otherwise the 256³ baseline is 8 x the measured dense 128³ time, and its name says so.

Run: ``.venv/bin/python benchmarks/bench_extraction.py [--full]`` (prints JSON lines).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import torch
from pykdtree.kdtree import KDTree

from sfd_lightning.geometry.extraction import (
    evaluate_grid,
    evaluate_grid_coarse_to_fine,
    extract_mesh,
    marching_cubes,
)
from sfd_lightning.geometry.io import Mesh

TARGET_128_S = 4.0  # methods/lightning.md §11 / task brief: Neural-Pull net, 128³, 2 cores


class _LocalNPNet(torch.nn.Module):
    """Fallback Neural-Pull MLP (used only if ``sfd_lightning.nn.sdf_mlp`` is missing)."""

    def __init__(self, width: int = 256, depth: int = 8, skip: int = 4) -> None:
        super().__init__()
        self.skip = skip
        dims = [3] + [width] * depth
        layers = []
        for i in range(depth):
            out = width - 3 if i + 1 == skip else dims[i + 1]
            layer = torch.nn.Linear(dims[i], out)
            torch.nn.init.normal_(layer.weight, 0.0, math.sqrt(2) / math.sqrt(out))
            torch.nn.init.zeros_(layer.bias)
            layers.append(torch.nn.utils.parametrizations.weight_norm(layer))
        last = torch.nn.Linear(width, 1)
        torch.nn.init.normal_(last.weight, math.sqrt(math.pi) / math.sqrt(width), 1e-4)
        torch.nn.init.constant_(last.bias, -0.5)
        self.layers = torch.nn.ModuleList(layers + [torch.nn.utils.parametrizations.weight_norm(last)])

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        h = points
        for i, layer in enumerate(self.layers):
            if i == self.skip:
                h = torch.cat([h, points], -1) / math.sqrt(2)
            h = layer(h)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h[:, 0]


def _network() -> tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    try:
        from sfd_lightning.nn.sdf_mlp import SDFMLP
        return SDFMLP(width=256, depth=8, skip_layers=(4,), weight_norm=True).eval(), "SDFMLP"
    except ImportError:
        return _LocalNPNet().eval(), "localMLP"


class _Counted:
    def __init__(self, net: torch.nn.Module) -> None:
        self.net, self.points = net, 0

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        self.points += len(points)
        return self.net(points)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


class _Measure:
    """Wall time, tracemalloc peak and sampled RSS peak (above the start) of a block."""

    def __enter__(self):
        self.start_rss = self.peak_rss = _rss_bytes() if Path("/proc/self/statm").exists() else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        tracemalloc.start()
        self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def _sample(self) -> None:
        while self.start_rss and not self._stop.wait(0.02):
            self.peak_rss = max(self.peak_rss, _rss_bytes())

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
        self._stop.set()
        self._thread.join()
        self.traced_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        self.rss_mb = (self.peak_rss - self.start_rss) / 2**20


def _chamfer_l1(first: Mesh, second: Mesh) -> float:
    a, b = first.vertices, second.vertices
    return 0.5 * float(KDTree(b).query(a, k=1)[0].mean() + KDTree(a).query(b, k=1)[0].mean())


def _row(name: str, value: float, unit: str, baseline: float | None) -> dict:
    ratio = None if not baseline else round(value / baseline, 4)
    return {"name": name, "value": round(value, 6), "unit": unit,
            "baseline": None if baseline is None else round(baseline, 6), "ratio": ratio}


def _extract(net: torch.nn.Module, box, resolution: int, mode: str):
    """Mesh, its :class:`_Measure` (grid + marching cubes), points evaluated, MC seconds."""
    counted = _Counted(net)
    with _Measure() as measure:
        if mode == "dense":
            grid = evaluate_grid(counted, *box, resolution)
        else:
            grid, _ = evaluate_grid_coarse_to_fine(counted, *box, resolution)
        start = time.perf_counter()
        mesh = marching_cubes(grid, *box)
        mc_seconds = time.perf_counter() - start
    return mesh, measure, counted.points, mc_seconds


def run(full: bool = False) -> list[dict]:
    """Benchmark rows (see module doc); ``full`` adds the one dense 256³ evaluation."""
    net, tag = _network()
    probe = extract_mesh(net, [-1.0] * 3, [1.0] * 3, resolution=64)
    box = (probe.vertices.min(0) - 0.05, probe.vertices.max(0) + 0.05)
    extract_mesh(net, *box, resolution=32)  # warm-up (threads, allocator)
    rows = []

    ctf128, m_c128, n_c128, _ = _extract(net, box, 128, "coarse_to_fine")
    dense128, m_d128, _, _ = _extract(net, box, 128, "dense")
    rows += [_row(f"extract_128_ctf_{tag}8x256_vs_dense128", m_c128.seconds, "s", m_d128.seconds),
             _row(f"extract_128_ctf_{tag}8x256_vs_target", m_c128.seconds, "s", TARGET_128_S),
             _row("extract_128_ctf_evaluated_fraction", n_c128 / 128**3, "fraction", 1.0),
             _row("extract_128_chamfer_l1_ctf_vs_dense", _chamfer_l1(ctf128, dense128), "box units",
                  float((box[1] - box[0]).max() / 127))]

    ctf256, m_c256, n_c256, mc256 = _extract(net, box, 256, "coarse_to_fine")
    rows.append(_row("extract_256_ctf_evaluated_fraction", n_c256 / 256**3, "fraction", 1.0))
    if full:
        dense256, m_d256, _, _ = _extract(net, box, 256, "dense")
        rows += [_row(f"extract_256_ctf_{tag}8x256_vs_dense256", m_c256.seconds, "s", m_d256.seconds),
                 _row("extract_256_peak_numpy_traced_MB_ctf_vs_dense", m_c256.traced_mb, "MB",
                      m_d256.traced_mb),
                 _row("extract_256_peak_rss_delta_MB_ctf_vs_dense", m_c256.rss_mb, "MB", m_d256.rss_mb),
                 _row("extract_256_chamfer_l1_ctf_vs_dense", _chamfer_l1(ctf256, dense256),
                      "box units", float((box[1] - box[0]).max() / 255))]
    else:
        rows += [_row(f"extract_256_ctf_{tag}8x256_vs_dense_est_8x_dense128", m_c256.seconds, "s",
                      8 * m_d128.seconds),
                 _row("extract_256_peak_numpy_traced_MB_ctf_vs_dense_grid_bytes", m_c256.traced_mb,
                      "MB", 256**3 * 4 / 2**20),
                 _row("extract_256_peak_rss_delta_MB_ctf", m_c256.rss_mb, "MB", None)]
    rows.append(_row("marching_cubes_256_pymcubes_vs_lightning_md_sphere", mc256, "s", 0.366))
    return rows


if __name__ == "__main__":
    for row in run(full="--full" in sys.argv[1:]):
        print(json.dumps(row))
