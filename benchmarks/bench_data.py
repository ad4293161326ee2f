"""Data generation cost: SDF samples of one ~10k-face mesh and 24 renders at 224², per shape.

``run()`` returns one dict per measurement ``{"name", "value", "unit", "baseline", "ratio", ...}``
(no published baseline exists for these steps: ``baseline``/``ratio`` are ``None``). The mesh is
the default chair of :mod:`sfd_lightning.synthetic.shape_families`, extracted from its analytic
field at the grid resolution whose face count is closest to 10,000 (watertight).

Measured, one process on this machine (numpy/torch/Embree may use both cores):

- ``deepsdf_samples_mesh``: 500,000 DeepSDF samples (47%/47% near-surface + 6% uniform) with the
  signed distance to the MESH (the ``sfd data prepare-sdf`` path), plus NormalizationParameters and
  30,000 SurfaceSamples;
- ``deepsdf_samples_analytic``: the same with the analytic field (``sfd data synth`` path);
- ``list_samples_mesh``: LIST's 3 x 50,000 σ-queries to the mesh + 5,000 FPS points + isosurface;
  ``fps_5000_of_50000``: the farthest-point sampling alone (the torch loop is sensitive to CPU
  contention: its intra-op threads spin when other processes load the cores);
- ``render_24_views_224``: 24 easy views at 224² (RGBA + RGB + LIST copy, PNG encoding included);
- ``prepare_sdf_per_shape`` (sum of the mesh rows) and ``shapes_per_hour`` / ``chairs_hours``:
  the throughput of ``prepare-sdf --render --views 24`` and the time for the 4,113 chairs of the
  DeepSDF splits (3,281 train + 832 test) at that rate, one process (2 cores). With
  ``OMP_NUM_THREADS=1`` the process is single-threaded and the ``*_2_processes`` rows give the rate
  of two such processes side by side on the 2 cores.

Measured here (2 cores shared with other jobs, OMP_NUM_THREADS=1, two runs): 14.8–17.8 s per shape
(mesh SDF 5.3 s, LIST 7.2 s of which FPS 6.5 s, 24 renders 2.2 s) -> 400–490 shapes/h with two
processes, the chairs in 8.4–10.2 h. With 2 threads under contention the torch FPS loop slowed to
16–180 s (threads spinning), so single-threaded processes are the better layout.

Run: ``[OMP_NUM_THREADS=1] .venv/bin/python benchmarks/bench_data.py`` (prints JSON lines).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sfd_lightning.datamodules.shapenet_files import ShapeNetLayout
from sfd_lightning.geometry.fps import farthest_point_sampling
from sfd_lightning.geometry.io import Mesh
from sfd_lightning.geometry.sdf_sampling import mesh_signed_distance
from sfd_lightning.render.textures import SolidTexture
from sfd_lightning.synthetic.shape_families import make_shape
from sfd_lightning.synthetic.writers.shape_writer import SampleSpec, write_deepsdf_shape, write_list_shape
from sfd_lightning.synthetic.writers.shapenet import shape_mesh
from sfd_lightning.synthetic.writers.views import write_views

TARGET_FACES = 10_000
CHAIRS_IN_DEEPSDF_SPLITS = 3281 + 832


def _mesh_near(target_faces: int) -> tuple[Mesh, int]:
    field = make_shape("chair")
    best: tuple[Mesh, int] | None = None
    for resolution in range(24, 80, 4):
        mesh = shape_mesh(field, resolution)
        if best is None or abs(len(mesh.faces) - target_faces) < abs(len(best[0].faces) - target_faces):
            best = (mesh, resolution)
        if len(mesh.faces) > target_faces:
            break
    assert best is not None
    return best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _row(name: str, value: float, unit: str, **extra) -> dict:
    return {"name": name, "value": round(float(value), 3), "unit": unit, "baseline": None, "ratio": None, **extra}


def run() -> list[dict]:
    mesh, resolution = _mesh_near(TARGET_FACES)
    field = make_shape("chair")
    spec = SampleSpec()  # 500k DeepSDF samples, 30k surface, 3 x 50k LIST, 5000 FPS

    def mesh_sdf(points: np.ndarray) -> np.ndarray:
        return mesh_signed_distance(mesh, points)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        layout = ShapeNetLayout(Path(tmp))
        t_mesh = _timed(lambda: write_deepsdf_shape(layout, "03001627", "mesh", mesh, mesh_sdf, spec, "train", 0))
        t_analytic = _timed(lambda: write_deepsdf_shape(layout, "03001627", "field", mesh, field, spec, "train", 0))
        t_list = _timed(lambda: write_list_shape(layout, "03001627", "mesh", mesh, mesh_sdf, spec, 1))
        t_render = _timed(lambda: write_views(layout, "03001627", "mesh", mesh, SolidTexture(0, "marble"), 24, 224, 2))
    grid = np.random.default_rng(0).normal(size=(spec.list_points, 3))
    t_fps = _timed(lambda: farthest_point_sampling(grid, spec.fps_points))
    info = {"faces": int(len(mesh.faces)), "grid": resolution}
    per_shape = t_mesh + t_list + t_render
    rows.append(_row("deepsdf_samples_mesh", t_mesh, "s/shape", samples=spec.samples, **info))
    rows.append(_row("deepsdf_samples_analytic", t_analytic, "s/shape", samples=spec.samples, **info))
    rows.append(_row("list_samples_mesh", t_list, "s/shape", points=3 * spec.list_points, fps=spec.fps_points, **info))
    rows.append(_row("fps_5000_of_50000", t_fps, "s", torch_threads=torch.get_num_threads()))
    rows.append(_row("render_24_views_224", t_render, "s/shape", per_view_s=round(t_render / 24, 3), **info))
    rows.append(_row("prepare_sdf_per_shape", per_shape, "s/shape", **info))
    rows.append(_row("shapes_per_hour", 3600.0 / per_shape, "shapes/h", processes=1))
    rows.append(_row("chairs_hours", CHAIRS_IN_DEEPSDF_SPLITS * per_shape / 3600.0, "h",
                     shapes=CHAIRS_IN_DEEPSDF_SPLITS, processes=1))
    if torch.get_num_threads() == 1:  # one single-threaded process per core: two run side by side
        rows.append(_row("shapes_per_hour_2_processes", 2 * 3600.0 / per_shape, "shapes/h", processes=2))
        rows.append(_row("chairs_hours_2_processes", CHAIRS_IN_DEEPSDF_SPLITS * per_shape / 7200.0, "h",
                         shapes=CHAIRS_IN_DEEPSDF_SPLITS, processes=2))
    return rows


if __name__ == "__main__":
    for result in run():
        print(json.dumps(result))
