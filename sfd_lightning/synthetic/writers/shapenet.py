"""ShapeNet-style synthetic tree: DeepSDF/DIT and LIST layouts from parametric CSG shapes.

``sfd data synth shapenet --out DIR --categories chair,airplane --shapes 8 --views 36`` writes, for
every shape of every category (CONTRACTS §5.1), from ONE analytic field per shape:

- the DeepSDF/DIT layout (``SdfSamples``, ``NormalizationParameters``, ``SurfaceSamples``,
  ``splits/sv2_<name>_{train,test}.json``, ``<synset>/<id>/easy[/hard]/{image,image_rgb}/NN.png``
  + ``rendering_metadata.txt``),
- the LIST layout (``isosurface/.../isosurf_scaled.obj``, ``sampled_points/.../sampled_points.h5``
  and ``farthest_pointclouds.h5``, ``images/<synset>/<id>/easy/NN.png``, ``DISN_split/*.lst``),
- ``.datasources.json``: generator settings and, per shape, its category, family parameters and
  original frame (``x_original = scale · x_canonical + offset``) — never read by the readers,
  used by tests and floors to rebuild the analytic field.

Shapes come from :mod:`sfd_lightning.synthetic.shape_families` and are stored in a random
non-unit original frame. The analytic field gives every SDF value (evaluation.md §3 rule 8); the
mesh (isosurface, surface samples, renders) is extracted from it by marching cubes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sfd_lightning.datamodules.shapenet_files import ShapeNetLayout
from sfd_lightning.errors import InputError
from sfd_lightning.geometry.extraction import extract_mesh
from sfd_lightning.geometry.io import Mesh
from sfd_lightning.render.textures import KINDS, SolidTexture
from sfd_lightning.synthetic.shape_families import (SYNSETS, in_frame, make_shape, original_frame,
                                                    sample_params)
from sfd_lightning.synthetic.primitives import SDF
from sfd_lightning.synthetic.writers.shape_writer import SampleSpec, write_deepsdf_shape, write_list_shape
from sfd_lightning.synthetic.writers.shapenet_layout import mark_done, write_split_files, write_text
from sfd_lightning.synthetic.writers.views import write_views


def configure_parser(parser) -> None:
    """Options of ``sfd data synth shapenet`` (``--out`` and ``--seed`` are added by the caller)."""
    parser.add_argument("--categories", type=str, default="chair",
                        help=f"comma-separated categories among {sorted(SYNSETS)}")
    parser.add_argument("--shapes", type=int, default=8, help="shapes per category")
    parser.add_argument("--views", type=int, default=36, help="easy views per shape (36: views 30 and 32 exist)")
    parser.add_argument("--hard_views", type=int, default=0, help="hard views per shape (DIT v2 / contrastive)")
    parser.add_argument("--image_size", type=int, default=224, help="render size in pixels")
    parser.add_argument("--samples", type=int, default=100_000,
                        help="DeepSDF SDF samples per train shape (test shapes: half; DeepSDF uses 500000)")
    parser.add_argument("--list_points", type=int, default=50_000, help="LIST surface samples per shape (per sigma)")
    parser.add_argument("--surface_points", type=int, default=30_000, help="SurfaceSamples points per shape")
    parser.add_argument("--fps_points", type=int, default=5000, help="farthest points per shape (LIST)")
    parser.add_argument("--test_fraction", type=float, default=0.2, help="fraction of shapes in the test split")
    parser.add_argument("--mesh_resolution", type=int, default=128, help="marching-cubes grid of the GT mesh")
    parser.add_argument("--dominant_only", type=bool, default=False,
                        help="vary only the 2-3 dominant family parameters")


def instance_id(seed: int, category: str, index: int) -> str:
    """A ShapeNet-looking 32-hex-digit id, deterministic in (seed, category, index)."""
    return hashlib.md5(f"sfd-synth/{seed}/{category}/{index}".encode()).hexdigest()


def split_indices(count: int, test_fraction: float, rng: np.random.Generator) -> set[int]:
    """Indices of the test shapes: ``round(count · fraction)``, at least one when both splits can exist."""
    n_test = int(round(count * test_fraction))
    if test_fraction > 0 and count > 1:
        n_test = min(max(n_test, 1), count - 1)
    return set(rng.permutation(count)[:n_test].tolist())


def shape_mesh(sdf: SDF, resolution: int) -> Mesh:
    """Marching-cubes mesh of an analytic field over its padded bounds (outward faces)."""
    lo, hi = sdf.bounds()
    pad = 0.04 * float(np.max(hi - lo))
    mesh = extract_mesh(sdf, lo - pad, hi + pad, resolution=resolution)
    if mesh.is_empty:
        raise RuntimeError("analytic shape produced an empty mesh")
    return mesh


def write_shapenet(root: str | Path, categories: Sequence[str] = ("chair",), shapes: int = 8, views: int = 36,
                   image_size: int = 224, samples: int = 100_000, seed: int = 0, test_fraction: float = 0.2,
                   hard_views: int = 0, list_points: int = 50_000, surface_points: int = 30_000,
                   fps_points: int = 5000, mesh_resolution: int = 128, dominant_only: bool = False) -> Path:
    """Write a synthetic ShapeNet-style tree (both layouts) into ``root`` and return it.

    Deterministic in its arguments. Every file is written atomically, and a shape's done marker
    last; views ``<= 0`` skips rendering.
    """
    root = Path(root)
    unknown = [c for c in categories if c not in SYNSETS]
    if unknown:
        raise InputError(None, f"unknown categories {unknown}", f"use some of {sorted(SYNSETS)}")
    layout = ShapeNetLayout(root)
    spec = SampleSpec(samples=samples, surface_points=surface_points, list_points=list_points,
                      fps_points=fps_points)
    splits: dict[str, dict[str, list[str]]] = {}
    records: dict[str, Any] = {}
    for c_index, category in enumerate(categories):
        synset = SYNSETS[category]
        test_ids = split_indices(shapes, test_fraction, np.random.default_rng([seed, c_index, 7]))
        splits[synset] = {"train": [], "test": []}
        for index in range(shapes):
            rng = np.random.default_rng([seed, c_index, index])
            params = sample_params(category, rng, dominant_only=dominant_only)
            scale, offset = original_frame(rng)
            field = in_frame(make_shape(category, params), scale, offset)
            mesh = shape_mesh(field, mesh_resolution)
            instance = instance_id(seed, category, index)
            split = "test" if index in test_ids else "train"
            shape_seed = int(rng.integers(0, 2**31 - 1))
            stats = write_deepsdf_shape(layout, synset, instance, mesh, field, spec, split, shape_seed)
            stats.update(write_list_shape(layout, synset, instance, mesh, field, spec, shape_seed + 10))
            if views > 0 or hard_views > 0:
                texture = SolidTexture(shape_seed, kind=KINDS[int(rng.integers(len(KINDS)))])
                write_views(layout, synset, instance, mesh, texture, views, image_size, shape_seed + 20,
                            hard_views=hard_views)
            splits[synset][split].append(instance)
            records[f"{synset}/{instance}"] = {
                "category": category, "split": split, "params": params,
                "frame": {"scale": scale, "offset": offset.tolist()}, "faces": int(len(mesh.faces)), **stats}
            mark_done(layout, synset, instance, records[f"{synset}/{instance}"])
    write_split_files(layout, splits, views)
    meta = {"generator": "sfd data synth shapenet", "seed": seed, "categories": list(categories),
            "shapes": shapes, "views": views, "hard_views": hard_views, "image_size": image_size,
            "samples": samples, "list_points": list_points, "mesh_resolution": mesh_resolution,
            "dominant_only": dominant_only, "instances": records}
    write_text(root / ".datasources.json", json.dumps(meta, indent=1) + "\n")
    return root


def run(args) -> Path:
    """``sfd data synth shapenet`` entry point."""
    categories = [c.strip() for c in str(args.categories).split(",") if c.strip()]
    return write_shapenet(args.out, categories, shapes=args.shapes, views=args.views, image_size=args.image_size,
                          samples=args.samples, seed=args.seed, test_fraction=args.test_fraction,
                          hard_views=args.hard_views, list_points=args.list_points,
                          surface_points=args.surface_points, fps_points=args.fps_points,
                          mesh_resolution=args.mesh_resolution, dominant_only=args.dominant_only)
