"""Synthetic pile: one photo of N identical textured objects on a ground plane (SfD layout).

Writes, under the output folder (CONTRACTS §5.2):

- ``raw/000_color.png`` and ``raw/000_instance_seg.png`` (grey ``k·255//N`` labels): the input of
  ``sfd preprocess pile``;
- the processed layout from the ground-truth poses, written by the same function as the
  preprocessing (:func:`~sfd_lightning.datamodules.pile_files.write_processed_layout`), so the SfD
  trainer runs without SfM: ``transforms_train.json`` (OpenGL camera->world, focal as a string),
  ``object_pred_pose.json`` (``<name>_NN`` object->world, NN = k − 1; world = instance 0's object
  frame, so ``<name>_00`` is the identity like in the original), ``object_scale_matrix.json``
  (centre and half bbox diagonal of the object mesh), ``non_empty_indexes.txt``, ``train/000_*.png``,
  ``points_world.npy`` (visible surface points per instance), ``scene.json`` (matcher "ground_truth");
- ``gt/object.ply`` (object frame), ``gt/poses.json`` (per-instance object->camera in OpenCV axes,
  ``K`` with integer pixel centres, image size) and ``gt/depth.npy`` (``(H, W)`` float32 camera z,
  inf on background).

The image is rendered gamma-encoded (``x^(1/2.2)`` of Lambert + Blinn-Phong shading with one
directional light fixed in the scene, the same for every instance) with a Voronoi-patch solid texture
evaluated in the object frame, so that features repeat across instances.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from sfd_lightning.datamodules import pile_files as files
from sfd_lightning.geometry.cameras import opencv_w2c_to_opengl_c2w
from sfd_lightning.geometry.io import atomic_write, save_mesh
from sfd_lightning.render.shading import render_instances
from sfd_lightning.render.textures import KINDS, SolidTexture
from sfd_lightning.synthetic.instance_labels import encode_instance_labels, label_values
from sfd_lightning.synthetic.pile_scene import OBJECTS, SyntheticPile, make_pile_scene

LIGHT_DIR_SCENE = (0.35, -0.25, 1.0)  # towards the light, scene frame (z up)
BACKGROUND = (0.42, 0.40, 0.37)
POINTS_PER_INSTANCE = 2000
MAX_ATTEMPTS = 20


def configure_parser(parser) -> None:
    """Options of ``sfd data synth pile`` (``--out`` and ``--seed`` already exist)."""
    parser.add_argument("--instances", type=int, default=6, help="number of identical objects N")
    parser.add_argument("--image_size", type=int, default=400, help="square image size in pixels")
    parser.add_argument("--object", type=str, default="airplane", choices=list(OBJECTS), help="object shape")
    parser.add_argument("--texture", type=str, default="patches", choices=list(KINDS), help="solid texture kind")
    parser.add_argument("--resolution", type=int, default=96, help="marching-cubes grid of the object mesh")


def run(args) -> Path:
    """Entry point of ``sfd data synth pile``; returns the written root."""
    return write_pile(args.out, args.instances, args.image_size, args.seed, object_name=args.object,
                      texture=args.texture, resolution=args.resolution)


def render_pile(scene: SyntheticPile, texture: SolidTexture) -> dict[str, np.ndarray]:
    """Render a pile (see :func:`~sfd_lightning.render.shading.render_instances` for the dict)."""
    return render_instances(scene.mesh, scene.object_to_scene, scene.camera, texture, background=BACKGROUND,
                            gamma=2.2, light_dir=LIGHT_DIR_SCENE, light_frame="world", ambient=0.45,
                            diffuse=0.55, specular=0.12, shininess=24.0)


def _visible_enough(instance: np.ndarray, count: int) -> bool:
    """Every instance has ≥ 20 pixels and ≥ half the median instance area (no heavy occlusion)."""
    areas = np.bincount(instance[instance >= 0].ravel(), minlength=count)
    return bool(areas.min() >= max(20.0, 0.5 * float(np.median(areas))))


def _visible_points(render: dict[str, np.ndarray], K: np.ndarray, count: int,
                    rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Camera-frame surface points ``{i: (M_i, 3)}`` of each instance's visible pixels (subsampled)."""
    out = {}
    for i in range(count):
        v, u = np.nonzero(render["instance"] == i)
        keep = rng.permutation(len(u))[:POINTS_PER_INSTANCE]
        z = render["depth"][v[keep], u[keep]].astype(np.float64)
        pix = np.stack([u[keep], v[keep], np.ones(len(keep))], axis=1) @ np.linalg.inv(K).T
        out[i] = pix * z[:, None]
    return out


def _transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def _write_tree(root: Path, name: str, scene: SyntheticPile, render: dict[str, np.ndarray], seed: int) -> None:
    count, K = scene.num_instances, scene.K
    labels = encode_instance_labels(render["instance"], count)
    files.write_png(root / "raw" / "000_color.png", render["rgb"])
    files.write_png(root / files.RAW_SEG, labels)
    save_mesh(root / "gt" / "object.ply", scene.mesh)
    atomic_write(root / "gt" / "depth.npy", lambda tmp: np.save(tmp, render["depth"].astype(np.float32)))
    gt = {"convention": "OpenCV camera (x right, y down, z forward), x_cam = P x_obj; pixel centres at "
                        "integer coordinates; instance k (1-based) = object_to_camera[k - 1]",
          "object": scene.object_name, "num_instances": count, "labels": label_values(count).tolist(),
          "width": scene.camera.width, "height": scene.camera.height, "K": K.tolist(),
          "object_to_camera": scene.object_to_camera.tolist(),
          "object_to_scene": scene.object_to_scene.tolist(),
          "scene_to_camera": scene.camera.world_to_camera().tolist()}
    atomic_write(root / "gt" / "poses.json", lambda tmp: tmp.write_text(json.dumps(gt, indent=2)))
    # Processed layout: world = instance 0's object frame (O_0 = I, like the original).
    p0_inv = np.linalg.inv(scene.object_to_camera[0])
    object_to_world = {i: p0_inv @ scene.object_to_camera[i] for i in range(count)}
    lo, hi = scene.mesh.vertices.min(0), scene.mesh.vertices.max(0)
    scale = np.eye(4)
    scale[:3, :3] *= 0.5 * float(np.linalg.norm(hi - lo))
    scale[:3, 3] = 0.5 * (lo + hi)
    points_cam = _visible_points(render, K, count, np.random.default_rng([seed, 1]))
    points_world = {i: _transform(p0_inv, p) for i, p in points_cam.items()}
    intrinsics = {"fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2]}
    files.write_processed_layout(root, render["rgb"], labels, float(K[0, 0]),
                                 opencv_w2c_to_opengl_c2w(scene.object_to_camera[0]), object_to_world, scale,
                                 points_world, intrinsics, count, matcher="ground_truth", name=name)


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Temporarily limit torch's intra-op threads: the SDF work here is many small tensor ops, which
    run fastest (and immune to OpenMP spin contention on a busy machine) on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def write_pile(root: str | Path, instances: int = 6, image_size: int = 400, seed: int = 0,
               object_name: str = "airplane", texture: str = "patches", resolution: int = 96) -> Path:
    """Generate and write a synthetic pile (deterministic for a seed); returns ``root``.

    A new folder is written under a temporary name and renamed into place (nothing half-written
    is left); an existing folder is updated file by file, each file atomically. Scenes where an
    instance is heavily occluded are redrawn (up to 20 times, deterministically).
    """
    if not 1 <= instances <= 255:
        raise ValueError(f"--instances must be in 1..255, got {instances}")
    if image_size < 16:
        raise ValueError(f"--image_size must be at least 16, got {image_size}")
    root = Path(root)
    tex = SolidTexture(seed, kind=texture, scale=0.1, detail=0.3)
    for attempt in range(MAX_ATTEMPTS):
        with _torch_threads(1):
            scene = make_pile_scene(instances, image_size, (seed, attempt), object_name, resolution)
        render = render_pile(scene, tex)
        if _visible_enough(render["instance"], instances):
            break
    else:
        raise RuntimeError(f"could not place {instances} visible instances in {MAX_ATTEMPTS} attempts; "
                           "use fewer instances or a larger image")
    if root.exists():
        _write_tree(root, root.name, scene, render, seed)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        _write_tree(tmp, root.name, scene, render, seed)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
