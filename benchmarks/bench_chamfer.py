"""Chamfer (both directions, 100k <-> 100k points) with our ``nearest_neighbors`` vs plain scipy.

``run()`` returns one dict per measurement: ``{"name", "value", "unit", "baseline", "ratio"}``
with ``ratio = ours / baseline`` (< 1: ours is faster). Points: uniform in the unit cube plus 1%
Gaussian noise on the second set (methods/lightning.md §11 setting). Timings are the median of
``repeats`` runs on this machine; both sides must give the same Chamfer value.

Run: ``.venv/bin/python benchmarks/bench_chamfer.py`` (prints JSON lines).
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
from scipy.spatial import cKDTree

from sfd_lightning.metrics.neighbors import nearest_neighbors, resolve_backend


def _median_seconds(function, repeats: int) -> tuple[float, float]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def run(count: int = 100_000, repeats: int = 5, seed: int = 0) -> list[dict]:
    """Time a two-way nearest-neighbour Chamfer on ``count`` points per side."""
    rng = np.random.default_rng(seed)
    first = rng.random((count, 3))
    second = rng.random((count, 3)) + 0.01 * rng.normal(size=(count, 3))

    def ours() -> float:
        return float(nearest_neighbors(first, second)[0].mean() + nearest_neighbors(second, first)[0].mean())

    def baseline() -> float:
        return float(cKDTree(second).query(first, k=1, workers=-1)[0].mean()
                     + cKDTree(first).query(second, k=1, workers=-1)[0].mean())

    ours_s, ours_value = _median_seconds(ours, repeats)
    base_s, base_value = _median_seconds(baseline, repeats)
    if not np.isclose(ours_value, base_value, rtol=1e-12, atol=0):
        raise RuntimeError(f"backends disagree: {ours_value} vs {base_value}")
    backend = resolve_backend("auto", first)
    return [{"name": f"chamfer_{count // 1000}k_{backend}_vs_ckdtree", "value": round(ours_s * 1e3, 2),
             "unit": "ms", "baseline": round(base_s * 1e3, 2), "ratio": round(ours_s / base_s, 3)}]


if __name__ == "__main__":
    for row in run():
        print(json.dumps(row))
