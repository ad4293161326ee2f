"""``sfd export`` for SfD: the shared object mesh with per-vertex material, the SG environment map.

Outputs (``output`` a folder, or a ``.ply`` path whose siblings get the other files):

- ``object.ply``: marching cubes of the shared SDF, vertices in the processed scene's world units
  (instance 0's frame, ``x = T_0 · x_norm``); binary PLY with per-vertex ``nx ny nz``, ``red green
  blue`` (sRGB of the albedo), ``albedo_r albedo_g albedo_b`` (linear) and ``roughness`` (material
  stage; −1 when the geometry/visibility stage has no roughness);
- ``instances.json``: per-instance ``norm -> world`` transforms ``T_i`` and ``object -> world``
  ``T_i · T_0⁻¹`` (place copies of ``object.ply``), with the camera (OpenCV camera->world, K);
- ``envmap.npy`` (float32 HDR, ``(H, W, 3)``, +z up, see render/spherical_gaussians.py) and
  ``envmap.png`` (``clip(x)^(1/2.2)``): material stage only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sfd_lightning.geometry.io import atomic_write


def write_ply(path: Path, vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray, albedo: np.ndarray,
              roughness: np.ndarray) -> Path:
    """Binary little-endian PLY with normals, sRGB colours, linear albedo and roughness per vertex."""
    count = len(vertices)
    vertex = np.zeros(count, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("nx", "<f4"), ("ny", "<f4"),
                                    ("nz", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
                                    ("albedo_r", "<f4"), ("albedo_g", "<f4"), ("albedo_b", "<f4"),
                                    ("roughness", "<f4")])
    for i, axis in enumerate("xyz"):
        vertex[axis] = vertices[:, i]
        vertex["n" + axis] = normals[:, i]
    srgb = np.round(np.clip(albedo, 0, 1) ** (1 / 2.2) * 255).astype(np.uint8)
    for i, channel in enumerate(("red", "green", "blue")):
        vertex[channel] = srgb[:, i]
    for i, channel in enumerate(("albedo_r", "albedo_g", "albedo_b")):
        vertex[channel] = albedo[:, i]
    vertex["roughness"] = roughness
    face = np.zeros(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    face["n"] = 3
    face["i"] = faces
    header = ("ply\nformat binary_little_endian 1.0\ncomment sfd_lightning SfD export: scene units, "
              "linear albedo, roughness -1 = not estimated\n"
              f"element vertex {count}\n" + "".join(
                  f"property {'uchar' if name in ('red', 'green', 'blue') else 'float'} {name}\n"
                  for name in vertex.dtype.names) + f"element face {len(faces)}\n"
              "property list uchar int vertex_indices\nend_header\n")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(header.encode("ascii"))
            handle.write(vertex.tobytes())
            handle.write(face.tobytes())

    return atomic_write(path, write)


def vertex_material(system, vertices_norm: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, ...]:
    """Normals (norm frame), linear albedo ``(V, 3)`` and roughness ``(V,)`` at mesh vertices."""
    m = system.model
    device = m.scale_matrix.device
    normals, albedos, roughs = [], [], []
    for start in range(0, len(vertices_norm), chunk):
        x = torch.as_tensor(vertices_norm[start:start + chunk], dtype=torch.float32, device=device)
        with torch.enable_grad():
            x = x.requires_grad_(True)
            out = m.sdf_features(x)
            (grad,) = torch.autograd.grad(out[:, 0].sum(), x)
        with torch.no_grad():
            n = F.normalize(grad, dim=-1)
            if system.hparams.stage == "material":
                albedo, rough = m.material.decode(m.material.encode(x.detach()))
                rough = rough[:, 0]
            else:
                albedo = m.color.albedo(x.detach(), n, out[:, 1:].detach()).float()
                rough = torch.full((len(x),), -1.0, device=device)
        normals.append(n.cpu().numpy())
        albedos.append(albedo.float().cpu().numpy())
        roughs.append(rough.float().cpu().numpy())
    return np.concatenate(normals), np.concatenate(albedos), np.concatenate(roughs)


def write_envmap(system, stem: Path, height: int = 128, width: int = 256) -> list[Path]:
    """Equirectangular image of the learned SG environment: ``<stem>.npy`` (HDR) + ``<stem>.png``."""
    import cv2

    from sfd_lightning.render.spherical_gaussians import sg_to_envmap

    with torch.no_grad():
        env = sg_to_envmap(*system.model.light.params(), height, width).float().cpu().numpy()
    npy = atomic_write(stem.with_suffix(".npy"), lambda tmp: np.save(tmp, env.astype(np.float32)))
    png = np.round(np.clip(env, 0, 1) ** (1 / 2.2) * 255).astype(np.uint8)[..., ::-1]
    image = atomic_write(stem.with_suffix(".png"), lambda tmp: cv2.imwrite(str(tmp), np.ascontiguousarray(png)))
    return [npy, image]


def export_object(system, output: Path, resolution: int = 256, level: float = 0.0,
                  mode: str = "coarse_to_fine") -> list[Path]:
    """Write the files listed in the module docstring; returns their paths."""
    from sfd_lightning.geometry.extraction import extract_mesh

    output = Path(output)
    if output.suffix.lower() == ".ply":
        mesh_path, folder, prefix = output, output.parent, output.stem + "_"
    else:
        mesh_path, folder, prefix = output / "object.ply", output, ""
    handle = system.surface()
    mesh = extract_mesh(handle.sdf, handle.bbox[0], handle.bbox[1], resolution, level, mode,
                        device=system.model.scale_matrix.device)
    if mesh.is_empty:
        raise RuntimeError("the SDF has no zero crossing in [-1.1, 1.1]^3: nothing to export "
                           "(train longer or check the checkpoint)")
    normals, albedo, roughness = vertex_material(system, mesh.vertices)
    transforms = handle.to_original.double().numpy()
    t0 = transforms[0]
    vertices = mesh.vertices @ t0[:3, :3].T + t0[:3, 3]
    normals_world = normals @ t0[:3, :3].T
    normals_world /= np.linalg.norm(normals_world, axis=1, keepdims=True) + 1e-12
    written = [write_ply(mesh_path, vertices, mesh.faces, normals_world, albedo, roughness)]
    info = {"frame": "processed scene world (instance 0's frame), scene units",
            "norm_to_world": transforms.tolist(),
            "object_to_world": np.einsum("nij,jk->nik", transforms, np.linalg.inv(t0)).tolist(),
            "camera_to_world_opencv": system.model.c2w.double().cpu().numpy().tolist(),
            "K": system.model.K.double().cpu().numpy().tolist(), "stage": system.hparams.stage,
            "resolution": resolution}
    written.append(atomic_write(folder / f"{prefix}instances.json",
                                lambda tmp: tmp.write_text(json.dumps(info, indent=2))))
    if system.hparams.stage == "material":
        written += write_envmap(system, folder / f"{prefix}envmap")
    return written
