"""Neural-Pull query generation (methods/neuralpull.md §2.2), done once per shape.

σ_i = distance from p_i to its k-th nearest OTHER input point (KD-tree, k+1 including itself);
queries q = p_i + s·σ_i·ε, ε ~ N(0, I₃); target = nearest INPUT point to q (exact, KD-tree).
Presets:

============  =================================  ==========================================
preset        input points                        rounds × std multiplier
============  =================================  ==========================================
``pytorch``   ⌊N/60⌋·60 (seeded subset)           ⌊10⁶/N_used⌋ × 0.25·√(N_used/20000)
``tf``        random 20,000 (error if N < 20k)    25 × 2 and 15 × 1 (σ of the subsample)
``paper``     all of P                            25 × 1
============  =================================  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from pykdtree.kdtree import KDTree

from sfd_lightning.errors import InputError

PRESETS = ("pytorch", "tf", "paper")


@dataclass
class QuerySet:
    """Queries ``(M, 3)`` float32, their targets ``(M, 3)`` float32 and the recipe used."""

    queries: np.ndarray
    targets: np.ndarray
    points_used: np.ndarray
    sigma: np.ndarray
    recipe: dict = field(default_factory=dict)


def kth_neighbor_distance(points: np.ndarray, k: int = 50) -> np.ndarray:
    """Distance ``(N,)`` from each point to its ``k``-th nearest other point (k+1 with itself)."""
    tree = KDTree(points.astype(np.float64))
    k_eff = min(k + 1, len(points))
    distances, _ = tree.query(points.astype(np.float64), k=k_eff)
    distances = distances.reshape(len(points), k_eff)
    return distances[:, -1].astype(np.float32)


def nearest_points(reference: np.ndarray, queries: np.ndarray, chunk: int = 500_000) -> np.ndarray:
    """Nearest ``reference`` point ``(M, 3)`` for each query ``(M, 3)`` (exact KD-tree search)."""
    tree = KDTree(reference.astype(np.float64))
    out = np.empty_like(queries, dtype=np.float32)
    for start in range(0, len(queries), chunk):
        _, index = tree.query(queries[start:start + chunk].astype(np.float64), k=1)
        out[start:start + chunk] = reference[index.astype(np.int64)]
    return out


def preset_recipe(preset: str, num_points: int) -> tuple[int, list[tuple[int, float]]]:
    """``(points used, [(rounds, std multiplier), ...])`` for a preset and cloud size."""
    if preset == "pytorch":
        used = (num_points // 60) * 60
        if used == 0:
            raise ValueError("the pytorch preset needs at least 60 points")
        return used, [(max(1, 1_000_000 // used), 0.25 * float(np.sqrt(used / 20000)))]
    if preset == "tf":
        return 20_000, [(25, 2.0), (15, 1.0)]
    if preset == "paper":
        return num_points, [(25, 1.0)]
    raise ValueError(f"query_preset must be one of {PRESETS}, got {preset!r}")


def generate_queries(points: np.ndarray, preset: str = "pytorch", k: int = 50, seed: int = 0,
                     rounds: Sequence[Sequence[float]] | None = None, max_queries: int | None = None,
                     source: str | Path | None = None) -> QuerySet:
    """Build the query/target set of a normalised cloud ``points (N, 3)``.

    Args:
        preset: ``pytorch`` (default), ``tf`` or ``paper``.
        k: σ neighbour rank (50 in every original).
        rounds: explicit ``[(rounds, std multiplier), ...]`` overriding the preset's.
        max_queries: cap on the total (a seeded subset), for quick runs.
        source: file name for error messages.
    """
    rng = np.random.default_rng(seed)
    used_count, recipe = preset_recipe(preset, len(points))
    if preset == "tf" and len(points) < used_count:
        raise InputError(source, f"query_preset 'tf' needs at least 20,000 points, the cloud has {len(points)}",
                         "use query_preset: pytorch")
    if rounds is not None:
        recipe = [(int(r), float(s)) for r, s in rounds]
    if used_count < len(points):
        subset = np.sort(rng.choice(len(points), size=used_count, replace=False))
        used = points[subset]
    else:
        used = points
    # The pytorch port takes σ from the full cloud; tf and paper from the points they use.
    sigma = kth_neighbor_distance(points if preset == "pytorch" else used, k)
    if preset == "pytorch" and used_count < len(points):
        sigma = sigma[subset]
    chunks = []
    for count, multiplier in recipe:
        for _ in range(int(count)):
            noise = rng.standard_normal(used.shape).astype(np.float32)
            chunks.append(used + multiplier * sigma[:, None] * noise)
    queries = np.concatenate(chunks, 0).astype(np.float32)
    if max_queries is not None and len(queries) > max_queries:
        queries = queries[rng.choice(len(queries), size=max_queries, replace=False)]
    targets = nearest_points(used, queries)
    info = {"preset": preset, "k": k, "points_used": int(len(used)), "rounds": recipe,
            "queries": int(len(queries)), "median_sigma": float(np.median(sigma))}
    return QuerySet(queries, targets, used.astype(np.float32), sigma, info)
