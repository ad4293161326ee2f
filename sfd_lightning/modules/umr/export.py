"""Per-image UMR outputs: textured ``.obj`` (+ ``.mtl`` + UV texture PNG), turntable strip, camera JSON.

The UV texture image is the input image sampled by the predicted UV flow (``grid_sample``), the
per-corner texture coordinates come from the template's UV sampler (left faces reuse the mirrored
right faces' coordinates), ``vt = ((u + 1)/2, (1 − v)/2)`` (OBJ's v axis points up).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from sfd_lightning.geometry.io import atomic_write
from sfd_lightning.modules.umr.cameras import rotate_about_y, to_opencv_orthographic

if TYPE_CHECKING:
    from sfd_lightning.modules.umr.system import UMRBase, UMROutput

__all__ = ["write_prediction", "corner_uvs", "obj_text"]


def corner_uvs(model: "UMRBase") -> np.ndarray:
    """Texture coordinates ``(F, 3, 2)`` in [0, 1] of every face corner (OBJ convention)."""
    tpl = model.tpl
    t = tpl.texels
    uv = tpl.uv_sampler  # (Q + M, T·T, 2)
    corners = uv[:, [(t - 1) * t, t - 1, 0]]  # texels at v0, v1, v2
    q, m = tpl.n_plane_faces, tpl.n_face_pairs
    left = corners[q:q + m][:, [0, 2, 1]]  # left face (m(a), m(c), m(b)) of right face (a, b, c)
    allc = np.concatenate([corners, left])
    return np.stack([(allc[..., 0] + 1) / 2, (1 - allc[..., 1]) / 2], -1)


def obj_text(verts: np.ndarray, faces: np.ndarray, uvs: np.ndarray, mtl_name: str) -> str:
    """OBJ with one ``vt`` per face corner and a material library."""
    lines = [f"mtllib {mtl_name}", "usemtl material0"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in verts]
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in uvs.reshape(-1, 2)]
    for i, (a, b, c) in enumerate(faces):
        k = 3 * i + 1
        lines.append(f"f {a + 1}/{k} {b + 1}/{k + 1} {c + 1}/{k + 2}")
    return "\n".join(lines) + "\n"


def _png(path: Path, image: np.ndarray) -> Path:
    arr = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))


def write_prediction(model: "UMRBase", folder: Path, name: str, img: Tensor, out: "UMROutput", i: int,
                     cam: Tensor) -> list[Path]:
    """Write the files of image ``i`` of ``out`` (see the module doc); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    verts = out.verts[i].detach().float()
    faces = model.faces.cpu().numpy()
    uv_img = F.grid_sample(img[None].float(), out.flow[i:i + 1].float().permute(0, 2, 3, 1), mode="bilinear",
                           padding_mode="border", align_corners=False)[0].permute(1, 2, 0).cpu().numpy()
    paths = [_png(folder / f"{name}_texture.png", uv_img)]
    (folder / f"{name}.mtl").write_text(f"newmtl material0\nKa 1 1 1\nKd 1 1 1\nmap_Kd {name}_texture.png\n")
    paths.append(folder / f"{name}.mtl")
    text = obj_text(verts.cpu().numpy(), faces, corner_uvs(model), f"{name}.mtl")
    paths.append(atomic_write(folder / f"{name}.obj", lambda tmp: tmp.write_text(text)))
    # turntable: the input, then renders rotated about y in equal steps (white background)
    n_views = int(model.hparams.turntable_views)
    angles = torch.arange(n_views, device=verts.device, dtype=torch.float32) * (360.0 / max(n_views, 1))
    cams = rotate_about_y(cam[None].expand(n_views, -1).float(), angles)
    tex = out.texture[i:i + 1].expand(n_views, -1, -1, -1)
    with torch.no_grad():
        views = model.render(verts[None].expand(n_views, -1, -1), cams, tex, white=True).image[:, :3]
    size = views.shape[-1]
    inp = F.interpolate(img[None].float(), size=(size, size), mode="bilinear", align_corners=False)
    strip = torch.cat([inp, views], 0).permute(2, 0, 3, 1).reshape(size, -1, 3).cpu().numpy()
    paths.append(_png(folder / f"{name}_turntable.png", strip))
    ocv = {k: v.detach().cpu().tolist() for k, v in to_opencv_orthographic(cam.detach(), model.img_size).items()}
    record = {"umr_camera": {"scale": float(cam[0]), "trans": cam[1:3].tolist(), "quat_wxyz": cam[3:7].tolist()},
              "opencv_orthographic": ocv, "image_size": model.img_size,
              "frame": "object frame of the template (mirror plane y = 0)"}
    paths.append(atomic_write(folder / f"{name}_camera.json", lambda tmp: tmp.write_text(json.dumps(record, indent=1))))
    return paths
