"""Pix3D-style synthetic tree: photos of parametric furniture in clutter, with LIST's files.

``sfd data synth pix3d --out DIR --categories chair,sofa,table --models 4 --images 16`` writes
(layout in :mod:`~sfd_lightning.datamodules.pix3d_files`):

- ``model/<cat>/SYNTH_<cat>_NNN/model.obj``: a family member (:mod:`..shape_families`) in a random
  non-unit model frame, its mesh extracted from the analytic field;
- ``img/<cat>/NNNN.png``: the model rendered over a random clutter background (rectangles, discs,
  lines, gradient, noise) at a random pose, its centre pushed off the image centre, and
  ``mask/<cat>/NNNN.png`` (0/255);
- ``pix3d.json`` with Pix3D's fields (bbox from the mask; ``rot_mat``/``trans_mat`` in Pix3D's camera
  axes; ``focal_length`` in mm on a 32 mm sensor) and Total3D ``splits/{train,test}.json``;
- LIST's preprocessed files under ``data/``: bbox crops ``img/.../<stem>.npy``,
  ``sampled_points.h5`` (analytic SDF at σ-perturbed surface samples), ``isosurf_scaled.obj``,
  ``mesh_org.ply`` (the model in its own frame);
- ``.datasources.json`` (generator settings, per-model parameters and frame; never read).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sfd_lightning.datamodules.pix3d_files import Pix3DLayout, model_folder, pix3d_to_opencv
from sfd_lightning.errors import InputError
from sfd_lightning.geometry.cameras import PinholeCamera, intrinsics_from_focal_mm, spherical_camera
from sfd_lightning.geometry.io import Mesh, atomic_write, save_mesh
from sfd_lightning.render.shading import render_mesh
from sfd_lightning.render.textures import KINDS, SolidTexture
from sfd_lightning.synthetic.shape_families import in_frame, make_shape, original_frame, sample_params
from sfd_lightning.synthetic.writers.shape_writer import SampleSpec, write_list_files
from sfd_lightning.synthetic.writers.shapenet import shape_mesh
from sfd_lightning.synthetic.writers.shapenet_layout import write_png, write_text

PIX3D_CATEGORIES = ("chair", "sofa", "table")
SPLIT_PREFIX = "./data/pix3d/train_test_data/"


def configure_parser(parser) -> None:
    """Options of ``sfd data synth pix3d`` (``--out`` and ``--seed`` are added by the caller)."""
    parser.add_argument("--categories", type=str, default="chair,sofa,table",
                        help=f"comma-separated categories among {list(PIX3D_CATEGORIES)}")
    parser.add_argument("--models", type=int, default=4, help="models per category")
    parser.add_argument("--images", type=int, default=16, help="photos per category")
    parser.add_argument("--image_size", type=int, default=320, help="long side of the photos in pixels")
    parser.add_argument("--list_points", type=int, default=50_000, help="LIST surface samples per model (per sigma)")
    parser.add_argument("--test_fraction", type=float, default=0.25, help="fraction of photos in the test split")
    parser.add_argument("--mesh_resolution", type=int, default=128, help="marching-cubes grid of the GT mesh")


def clutter_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Random indoor-ish clutter ``(H, W, 3)`` uint8: gradient, rectangles, discs, lines, noise."""
    import cv2

    top, bottom = rng.uniform(0.2, 0.9, 3), rng.uniform(0.1, 0.8, 3)
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    image = ((1 - ramp) * top + ramp * bottom) * np.ones((1, width, 1))
    image = np.ascontiguousarray((image * 255).astype(np.uint8))
    scale = max(height, width)
    for _ in range(int(rng.integers(15, 35))):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        kind = rng.integers(3)
        if kind == 0:
            w, h = (rng.uniform(0.04, 0.35, 2) * scale).astype(int)
            cv2.rectangle(image, (x, y), (x + int(w), y + int(h)), color, -1 if rng.random() < 0.7 else 2)
        elif kind == 1:
            cv2.circle(image, (x, y), int(rng.uniform(0.02, 0.15) * scale), color, -1)
        else:
            x2, y2 = int(rng.integers(0, width)), int(rng.integers(0, height))
            cv2.line(image, (x, y), (x2, y2), color, int(rng.integers(1, 5)))
    noise = rng.normal(0.0, 6.0, image.shape)
    image = np.clip(image.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(image, (3, 3), 0)


def sample_pose(vertices: np.ndarray, width: int, height: int, rng: np.random.Generator,
                max_tries: int = 50) -> tuple[PinholeCamera, float]:
    """An OpenCV camera seeing the whole model, its centre off the image centre.

    Azimuth uniform, elevation 5–35°, focal length 28–50 mm (32 mm sensor); the distance makes the
    model span 35–70% of the short image side; the translation then moves its centre to a random
    pixel in the central 20–80% box, at least 6% of the image away from the centre.

    Returns:
        camera and its focal length in mm.
    """
    center = (vertices.min(0) + vertices.max(0)) / 2
    radius = float(np.linalg.norm(vertices - center, axis=1).max())
    for attempt in range(max_tries):
        focal_mm = float(rng.uniform(28.0, 50.0))
        K = intrinsics_from_focal_mm(focal_mm, 32.0, width, height)
        fraction = rng.uniform(0.35, 0.7) * (0.97 ** attempt)
        dist = 2 * radius * K[0, 0] / (fraction * min(width, height))
        cam = spherical_camera(rng.uniform(0, 360), rng.uniform(5, 35), dist, K, width, height, target=center)
        target = np.array([rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height])
        offset = target - K[:2, 2]
        if np.abs(offset / [width, height]).max() < 0.06:
            continue
        t = cam.t + np.array([offset[0] * dist / K[0, 0], offset[1] * dist / K[1, 1], 0.0])
        cam = PinholeCamera(K, cam.R, t, width, height)
        pixels, depth = cam.project(vertices)
        if (depth > 0).all() and (pixels.min(0) >= 2).all() and (pixels.max(0) <= [width - 3, height - 3]).all():
            return cam, focal_mm
    raise RuntimeError("no camera pose keeps the model inside the image")


def _bbox(mask: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])]


def _write_model(layout: Pix3DLayout, category: str, index: int, seed: int, list_points: int,
                 mesh_resolution: int) -> tuple[str, Mesh, dict[str, Any]]:
    rng = np.random.default_rng([seed, 1000 + index, PIX3D_CATEGORIES.index(category)])
    params = sample_params(category, rng)
    scale, offset = original_frame(rng, scale_range=(0.6, 1.6), offset_range=0.2)
    field = in_frame(make_shape(category, params), scale, offset)
    mesh = shape_mesh(field, mesh_resolution)
    model = f"model/{category}/SYNTH_{category}_{index:03d}/model.obj"
    save_mesh(layout.file(model), mesh)
    entry = {"category": category, "model": model}
    save_mesh(layout.mesh_org(entry), mesh)
    stats = write_list_files(layout.isosurface(entry), layout.sampled_points(entry), None, mesh, field,
                             SampleSpec(list_points=list_points), int(rng.integers(2**31 - 1)))
    record = {"params": params, "frame": {"scale": scale, "offset": offset.tolist()},
              "texture_seed": int(rng.integers(2**31 - 1)), "texture": KINDS[int(rng.integers(len(KINDS)))], **stats}
    return model, mesh, record


def write_pix3d(root: str | Path, categories: Sequence[str] = PIX3D_CATEGORIES, models: int = 4, images: int = 16,
                image_size: int = 320, list_points: int = 50_000, test_fraction: float = 0.25, seed: int = 0,
                mesh_resolution: int = 128) -> Path:
    """Write a synthetic Pix3D-style tree into ``root`` and return it (deterministic in its arguments)."""
    root = Path(root)
    unknown = [c for c in categories if c not in PIX3D_CATEGORIES]
    if unknown:
        raise InputError(None, f"unknown Pix3D categories {unknown}", f"use some of {list(PIX3D_CATEGORIES)}")
    layout = Pix3DLayout(root)
    entries: list[dict[str, Any]] = []
    records: dict[str, Any] = {}
    for category in categories:
        built = [_write_model(layout, category, m, seed, list_points, mesh_resolution) for m in range(max(models, 1))]
        for model, _, record in built:
            records[model] = record
        rng = np.random.default_rng([seed, 2000, PIX3D_CATEGORIES.index(category)])
        for number in range(1, images + 1):
            model, mesh, record = built[int(rng.integers(len(built)))]
            long_side, short_side = image_size, int(round(image_size * rng.uniform(0.7, 1.0)))
            width, height = (long_side, short_side) if rng.random() < 0.7 else (short_side, long_side)
            cam, focal_mm = sample_pose(mesh.vertices, width, height, rng)
            texture = SolidTexture(record["texture_seed"], kind=record["texture"])
            out = render_mesh(mesh, cam, texture=texture, background=clutter_background(rng, height, width))
            stem = f"{number:04d}"
            entry = {"img": f"img/{category}/{stem}.png", "category": category, "img_size": [width, height],
                     "mask": f"mask/{category}/{stem}.png", "model": model, "bbox": _bbox(out["mask"])}
            write_png(layout.file(entry["img"]), out["rgb"])
            write_png(layout.file(entry["mask"]), np.repeat((out["mask"] * 255).astype(np.uint8)[..., None], 3, 2))
            x0, y0, x1, y1 = entry["bbox"]
            crop = np.ascontiguousarray(out["rgb"][y0:y1 + 1, x0:x1 + 1])
            atomic_write(layout.crop_npy(entry), lambda tmp, c=crop: np.save(tmp, c))
            rot, trans = pix3d_to_opencv(cam.R, cam.t)
            entry.update({"rot_mat": rot.tolist(), "trans_mat": trans.tolist(), "focal_length": focal_mm,
                          "cam_position": cam.center.tolist(), "inplane_rotation": 0.0, "2d_keypoints": [],
                          "3d_keypoints": "", "voxel": "", "truncated": False, "occluded": False,
                          "slightly_occluded": False, "img_source": "sfd-synth", "model_source": "sfd-synth",
                          "model_raw": model})
            entries.append(entry)
    write_text(layout.annotations, json.dumps(entries, indent=1) + "\n")
    order = np.random.default_rng([seed, 3000]).permutation(len(entries))
    n_test = min(max(int(round(len(entries) * test_fraction)), 1 if test_fraction > 0 else 0), len(entries) - 1)
    test = sorted(order[:n_test].tolist())
    train = sorted(order[n_test:].tolist())
    for kind, ids in (("train", train), ("test", test)):
        write_text(layout.split(kind), json.dumps([f"{SPLIT_PREFIX}{i}.pkl" for i in ids], indent=1) + "\n")
    meta = {"generator": "sfd data synth pix3d", "seed": seed, "categories": list(categories), "models": models,
            "images": images, "image_size": image_size, "list_points": list_points, "model_records": records,
            "model_folders": {m: model_folder(m) for m in records}}
    write_text(root / ".datasources.json", json.dumps(meta, indent=1) + "\n")
    return root


def run(args) -> Path:
    """``sfd data synth pix3d`` entry point."""
    categories = [c.strip() for c in str(args.categories).split(",") if c.strip()]
    return write_pix3d(args.out, categories, models=args.models, images=args.images, image_size=args.image_size,
                       list_points=args.list_points, test_fraction=args.test_fraction, seed=args.seed,
                       mesh_resolution=args.mesh_resolution)
