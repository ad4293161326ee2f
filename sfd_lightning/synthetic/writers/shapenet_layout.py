"""Atomic file writers for ShapeNet-style trees (both layouts; paths in ``shapenet_files``).

Every writer goes through :func:`~sfd_lightning.geometry.io.atomic_write` (temp file + rename),
so an interrupted run never leaves a half-written file. A shape is finished when its done marker
(:func:`done_marker`, written last) exists; ``prepare-sdf`` resumes by skipping those shapes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from sfd_lightning.datamodules.shapenet_files import (DATASET_KEY, FPS_KEY_PREFIX, QUERY_KEY_PREFIX,
                                                      ShapeNetLayout)
from sfd_lightning.geometry.io import atomic_write

#: LIST's fixed evaluation view (``testlist_all.lst``).
LIST_TEST_VIEW = 32


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    """Uncompressed ``.npz`` (DeepSDF's format) written atomically."""

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    return atomic_write(path, _write)


def write_surface_ply(path: Path, points: np.ndarray) -> Path:
    """DeepSDF SurfaceSamples: ASCII PLY of ``points (N, 3)`` plus dummy faces ``3 i i+1 i+2``.

    One face per consecutive vertex triple (i = 0, 3, 6, ...), so mesh loaders return every vertex;
    only the vertices carry data.
    """
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    starts = np.arange(0, len(points) - 2, 3)
    header = ("ply\nformat ascii 1.0\n"
              f"element vertex {len(points)}\nproperty float x\nproperty float y\nproperty float z\n"
              f"element face {len(starts)}\nproperty list uchar int vertex_indices\nend_header\n")

    def _write(tmp: Path) -> None:
        with open(tmp, "w") as handle:
            handle.write(header)
            np.savetxt(handle, points, fmt="%.7g")
            if len(starts):
                np.savetxt(handle, np.stack([np.full_like(starts, 3), starts, starts + 1, starts + 2], 1),
                           fmt="%d")

    return atomic_write(path, _write)


def write_h5(path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """HDF5 file of named arrays with gzip compression (LIST's ``sampled_points.h5`` style)."""
    import h5py

    def _write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as handle:
            for key, value in arrays.items():
                handle.create_dataset(key, data=value, compression="gzip")

    return atomic_write(path, _write)


def write_list_samples(path: Path, grid_points: np.ndarray, queries: Mapping[float, np.ndarray]) -> Path:
    """LIST ``sampled_points.h5``: ``grid_points (N, 3)`` f64 and ``query_points_sigma_<s> (N, 4)``."""
    arrays = {"grid_points": np.asarray(grid_points, dtype=np.float64)}
    for sigma, rows in queries.items():
        arrays[f"{QUERY_KEY_PREFIX}{sigma}"] = np.asarray(rows, dtype=np.float64)
    return write_h5(path, arrays)


def write_farthest_points(path: Path, points: np.ndarray) -> Path:
    """LIST ``farthest_pointclouds.h5`` with key ``points_<k>`` ``(k, 3)`` float32."""
    points = np.asarray(points, dtype=np.float32)
    return write_h5(path, {f"{FPS_KEY_PREFIX}{len(points)}": points})


def write_png(path: Path, image: np.ndarray) -> Path:
    """``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA uint8 image as PNG."""
    import cv2

    image = np.asarray(image)
    order = [2, 1, 0, 3] if image.shape[2] == 4 else [2, 1, 0]
    ok, data = cv2.imencode(".png", np.ascontiguousarray(image[:, :, order]))
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    return atomic_write(path, lambda tmp: tmp.write_bytes(data.tobytes()))


def format_metadata(rows: np.ndarray) -> str:
    """``rendering_metadata.txt`` text: one ``[az, el, 0, dist, 35, 32, 1.75, x, y, z]`` per view."""
    lines = []
    for row in np.asarray(rows, dtype=np.float64).reshape(-1, 10):
        values = [f"{v:.6g}" for v in row[:2]] + ["0", f"{row[3]:.6g}"]
        values += [f"{v:g}" for v in row[4:7]] + [f"{v:.6g}" for v in row[7:10]]
        lines.append("[" + ", ".join(values) + "]")
    return "\n".join(lines) + "\n"


def write_split_files(layout: ShapeNetLayout, splits: Mapping[str, Mapping[str, Iterable[str]]],
                      views: int, test_view: int = LIST_TEST_VIEW) -> list[Path]:
    """Both layouts' splits from ``{synset: {"train": ids, "test": ids}}``.

    DeepSDF JSONs ``splits/sv2_<name>_{train,test}.json``, DISN ``<synset>_{train,test}.lst`` and
    ``testlist_all.lst`` (``synset id view`` triples at ``test_view``, or the last view when the
    renders have fewer views; not written without views).
    """
    written = []
    test_lines = []
    view = test_view if test_view < views else max(views - 1, 0)
    for synset, parts in sorted(splits.items()):
        for kind in ("train", "test"):
            ids = sorted(parts.get(kind, []))
            payload = json.dumps({DATASET_KEY: {synset: ids}}, indent=2)
            written.append(write_text(layout.split_json(synset, kind), payload + "\n"))
            written.append(write_text(layout.lst(synset, kind), "".join(f"{i}\n" for i in ids)))
        test_lines += [f"{synset} {i} {view}\n" for i in sorted(parts.get("test", []))]
    if views > 0:
        written.append(write_text(layout.testlist_all, "".join(test_lines)))
    return written


def done_marker(layout: ShapeNetLayout, synset: str, instance: str) -> Path:
    """Per-shape marker written after all of the shape's files (resumability)."""
    return layout.root / ".done" / synset / instance


def mark_done(layout: ShapeNetLayout, synset: str, instance: str, info: Mapping | None = None) -> Path:
    return write_text(done_marker(layout, synset, instance), json.dumps(dict(info or {}), default=str))
