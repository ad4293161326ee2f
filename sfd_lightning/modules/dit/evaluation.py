"""Scoring DIT reconstructions under a named protocol (``deepsdf`` by default), per category.

Meshes live in the normalised frame; they are mapped back with ``x = p / scale − offset`` and
compared with the SurfaceSamples (original frame). Failed (empty) meshes score NaN; aggregation
uses nanmean / nanmedian with ``n_failed`` beside them (methods/dit.md §5).
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from sfd_lightning.geometry.io import Mesh, PointCloud


def to_original(mesh: Mesh, offset: np.ndarray, scale: float) -> Mesh:
    """Normalised-frame mesh -> original frame (``p / scale − offset``)."""
    if mesh.is_empty:
        return mesh
    return Mesh(mesh.vertices / float(scale) - np.asarray(offset, dtype=np.float64), mesh.faces, mesh.vertex_colors)


def name_seed(name: str) -> int:
    """A per-shape sampling seed, independent of evaluation order (DeepSDF #57)."""
    return zlib.crc32(name.encode()) % (2**31)


def score_mesh(mesh_original: Mesh, gt_points: np.ndarray, protocol: str, name: str,
               samples: int | None = None) -> dict[str, Any]:
    """``evaluate`` one mesh against GT points ``(N, 3)`` (original frame)."""
    from sfd_lightning.metrics.evaluate import evaluate

    return evaluate(mesh_original, PointCloud(np.asarray(gt_points, dtype=np.float32)), protocol,
                    samples=samples, seed=name_seed(name))


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per category (synset) and overall: nanmean / nanmedian of every metric, ``n`` and ``n_failed``."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[record.get("synset", "all")].append(record)
    groups_all = dict(groups)
    if len(groups) > 1:
        groups_all["all"] = list(records)
    out: dict[str, Any] = {}
    for group, items in groups_all.items():
        keys = sorted({k for r in items for k in r.get("metrics", {}) if k != "n_failed"})
        summary: dict[str, Any] = {"n": len(items), "n_failed": int(sum(r.get("failed", False) for r in items))}
        for key in keys:
            values = np.array([np.nan if r["metrics"].get(key) is None else float(r["metrics"][key])
                               for r in items], dtype=np.float64)
            finite = np.isfinite(values)
            summary[f"{key}_mean"] = float(np.nanmean(values)) if finite.any() else None
            summary[f"{key}_median"] = float(np.nanmedian(values)) if finite.any() else None
        out[group] = summary
    return out


def safe_name(name: str) -> str:
    """File-name form of ``synset/instance``."""
    return str(name).replace("/", "_").replace("\\", "_")


def mesh_path(folder: Path, name: str) -> Path:
    return Path(folder) / f"{safe_name(name)}.ply"
