"""Synthetic point cloud + ground-truth mesh of an analytic shape (Neural-Pull default data).

Writes ``<out>/points.npy`` (float32 (N, 3) area-uniform samples of the ground-truth surface,
optionally with Gaussian noise), ``<out>/gt_mesh.ply`` (the surface extracted from the analytic
SDF) and ``<out>/shape.json``, all in the shape's non-unit original frame.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sfd_lightning.geometry.io import atomic_write, sample_mesh_surface, save_mesh
from sfd_lightning.synthetic.shapes import SHAPES, padded_bounds, shape_in_original_frame


def configure_parser(parser) -> None:
    parser.add_argument("--shape", type=str, default="composite", choices=list(SHAPES))
    parser.add_argument("--points", type=int, default=20_000, help="number of input points")
    parser.add_argument("--noise", type=float, default=0.0,
                        help="Gaussian noise std, as a fraction of the bounding-box diagonal")
    parser.add_argument("--resolution", type=int, default=256, help="ground-truth mesh grid")


def write_pointcloud(root: str | Path, shape: str = "composite", points: int = 20_000,
                     noise: float = 0.0, resolution: int = 256, seed: int = 0) -> Path:
    """Write the point cloud, ground-truth mesh and description of ``shape`` into ``root``."""
    from sfd_lightning.geometry.extraction import extract_mesh

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sdf = shape_in_original_frame(shape)
    lo, hi = padded_bounds(sdf)
    mesh = extract_mesh(lambda p: sdf(p.double()).float(), torch.as_tensor(lo), torch.as_tensor(hi),
                        resolution=resolution, mode="coarse_to_fine")
    cloud, _ = sample_mesh_surface(mesh, points, seed=seed)
    if noise > 0:
        rng = np.random.default_rng(seed + 1)
        cloud = cloud + rng.normal(scale=noise * float(np.linalg.norm(hi - lo)), size=cloud.shape)
    save_mesh(root / "gt_mesh.ply", mesh)
    atomic_write(root / "points.npy", lambda tmp: np.save(tmp, cloud.astype(np.float32)))
    info = {"shape": shape, "points": points, "noise": noise, "seed": seed, "frame": "original",
            "bounds": [np.asarray(lo).tolist(), np.asarray(hi).tolist()]}
    atomic_write(root / "shape.json", lambda tmp: tmp.write_text(json.dumps(info, indent=2)))
    return root


def run(args) -> Path:
    return write_pointcloud(args.out, args.shape, args.points, args.noise, args.resolution, args.seed)
