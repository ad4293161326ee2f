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


def log_and_summarise(module: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Log per-category means/medians of ``records`` on ``module`` and return the results body.

    Shared by the auto-decoder (test-time optimisation) and the image models. Each record holds
    ``synset``, ``metrics`` (deepsdf protocol), optionally ``mean_code_metrics``, ``sdf_l1`` and
    ``sdf_l1_mean_code``. Returns ``protocol``, ``summary``, ``mean_code_baseline``, ``sdf_l1_mean``,
    ``sdf_l1_mean_code_mean`` and ``resolution`` for ``write_results``.
    """
    summary = aggregate([r for r in records if "metrics" in r])
    baseline = aggregate([{"synset": r["synset"], "metrics": r["mean_code_metrics"]}
                          for r in records if "mean_code_metrics" in r])
    for group, values in summary.items():
        for key, value in values.items():
            if value is not None and key.endswith(("_mean", "_median")):
                module.log(f"test/{group}/{key}", float(value), batch_size=1)
    sdf = [r["sdf_l1"] for r in records if "sdf_l1" in r]
    base_sdf = [r["sdf_l1_mean_code"] for r in records if "sdf_l1_mean_code" in r]
    sdf_mean = float(np.mean(sdf)) if sdf else None
    if sdf_mean is not None:
        module.log("test/sdf_l1_mean", sdf_mean, batch_size=1)
    return {"protocol": module.hparams.protocol, "summary": summary, "mean_code_baseline": baseline,
            "sdf_l1_mean": sdf_mean, "sdf_l1_mean_code_mean": float(np.mean(base_sdf)) if base_sdf else None,
            "resolution": module.hparams.test_resolution}
