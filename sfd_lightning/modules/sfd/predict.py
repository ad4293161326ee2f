"""``sfd predict`` for SfD: re-render the pile, render the object from novel views, relight.

Everything lands in ``<run>/predictions/``: ``rerender.png`` (GT | render | normals | opacity),
``rerender.npy`` (linear HDR ``(H, W, 3)``), ``novel_view_<k>.png`` (the object alone, camera
orbiting about the image's up axis through instance 0's centre), and with
``--data.init_args.relight_envmap MAP`` (material stage; a data argument because
``sfd predict --ckpt_path`` re-applies the checkpoint's model arguments over the command line) ``relit.png`` / ``relit.npy``: the pile
under the user's environment, fitted by 128 SGs (the learned environment replaced, visibility kept).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sfd_lightning.errors import InputError
from sfd_lightning.geometry.io import atomic_write


def load_envmap(path: str | Path) -> Tensor:
    """Equirectangular environment ``(H, W, 3)`` linear float: ``.npy`` (HDR) or 8/16-bit image (sRGB)."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "environment map not found", "pass --data.init_args.relight_envmap PATH (.npy or .png)")
    if path.suffix.lower() == ".exr":
        raise InputError(path, "EXR needs the optional 'openexr' package (OpenCV here cannot read EXR)",
                         "convert the map to float32 .npy (H, W, 3) or a PNG")
    if path.suffix.lower() == ".npy":
        env = np.load(path, allow_pickle=False).astype(np.float32)
    else:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise InputError(path, "not a readable image", "save the map as PNG/JPG or float32 .npy")
        scale = 65535.0 if image.dtype == np.uint16 else 255.0
        env = (image[..., :3][..., ::-1].astype(np.float32) / scale) ** 2.2 if image.ndim == 3 else None
    if env is None or env.ndim != 3 or env.shape[2] != 3 or env.shape[1] < 2 or not np.isfinite(env).all():
        raise InputError(path, "expected a finite (H, W, 3) equirectangular map", "store RGB, width = 2 × height")
    return torch.from_numpy(np.ascontiguousarray(env))


@contextmanager
def camera_override(model, c2w: Tensor, near: float, far: float) -> Iterator[None]:
    """Temporarily replace the model's camera and ray bounds."""
    saved = model.c2w.clone(), model.near.clone(), model.far.clone()
    try:
        with torch.no_grad():
            model.c2w.copy_(c2w)
            model.near.fill_(near)
            model.far.fill_(far)
        yield
    finally:
        with torch.no_grad():
            model.c2w.copy_(saved[0])
            model.near.copy_(saved[1])
            model.far.copy_(saved[2])


def orbit_camera(model, angle: float, fill: float = 0.45) -> tuple[Tensor, float, float]:
    """OpenCV camera->world looking at instance 0's centre, rotated by ``angle`` (rad) about the
    image's up axis, at a distance where the object spans ``fill`` of the image; with near/far."""
    c2w = model.c2w.detach().double().cpu()
    transform = model.transforms()[0].detach().double().cpu()
    pivot = transform[:3, 3]
    radius = float(transform[:3, :3].norm(dim=0).mean())  # the object's unit sphere in world units
    up = -c2w[:3, 1]
    skew = torch.tensor([[0, -up[2], up[1]], [up[2], 0, -up[0]], [-up[1], up[0], 0]], dtype=torch.float64)
    rot = torch.eye(3, dtype=torch.float64) + math.sin(angle) * skew + (1 - math.cos(angle)) * skew @ skew
    focal, width = float(model.K[0, 0]), float(model.image_size[1])
    distance = radius * focal / (fill * width / 2)
    eye = pivot + rot @ F.normalize(c2w[:3, 3] - pivot, dim=0) * distance
    forward = F.normalize(pivot - eye, dim=0)
    down = F.normalize(-up + (up @ forward) * forward, dim=0)
    right = torch.cross(down, forward, dim=0)
    out = torch.eye(4, dtype=torch.float64)
    out[:3, :3] = torch.stack([right, down, forward], 1)
    out[:3, 3] = eye
    return out.float().to(model.c2w.device), distance - 1.2 * radius, distance + 1.2 * radius


def _save(path: Path, image: np.ndarray) -> Path:
    import cv2

    png = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)[..., ::-1]
    return atomic_write(path, lambda tmp: cv2.imwrite(str(tmp), np.ascontiguousarray(png)))


def _srgb(values: Tensor, height: int, width: int) -> np.ndarray:
    return (values.float().clamp(0, 1) ** (1 / 2.2)).reshape(height, width, -1).cpu().numpy()


def predict_outputs(system, batch: dict[str, Tensor]) -> dict[str, str]:
    """Write the files of the module docstring; returns ``{name: path}``."""
    model = system.model
    height, width = int(model.image_size[0]), int(model.image_size[1])
    folder = system.run_dir / "predictions"
    written: dict[str, str] = {}
    datamodule = getattr(system._trainer, "datamodule", None) if system._trainer is not None else None
    envmap = getattr(getattr(datamodule, "hparams", None), "relight_envmap", None)
    if envmap and system.hparams.stage != "material":
        raise InputError(None, f"relighting needs a material-stage model (this checkpoint is '{system.hparams.stage}')",
                         "pass --ckpt_path of a run trained with configs/sfd/material.yaml")
    render = system.render_image(batch)
    normal = ((render["normal"] * 0.5 + 0.5).clamp(0, 1) * (render["weights_sum"][:, None] > 0.5)).reshape(height, width, 3)
    opacity = render["weights_sum"].clamp(0, 1)[:, None].expand(-1, 3).reshape(height, width, 3)
    panel = np.concatenate([_srgb(batch["rgb"], height, width), _srgb(render["rgb"], height, width),
                            normal.cpu().numpy(), opacity.cpu().numpy()], 1)
    written["rerender"] = str(_save(folder / "rerender.png", panel))
    hdr = render["rgb"].reshape(height, width, 3).cpu().numpy().astype(np.float32)
    written["rerender_hdr"] = str(atomic_write(folder / "rerender.npy", lambda tmp: np.save(tmp, hdr)))
    object_only = dict(batch)
    object_only["pose_index"] = torch.zeros_like(batch["pose_index"])
    for k in range(system.hparams.novel_views):
        c2w, near, far = orbit_camera(model, 2 * math.pi * k / max(system.hparams.novel_views, 1))
        with camera_override(model, c2w, near, far):
            view = system.render_image(object_only)
        written[f"novel_view_{k}"] = str(_save(folder / f"novel_view_{k}.png", _srgb(view["rgb"], height, width)))
    if envmap:
        from sfd_lightning.render.spherical_gaussians import fit_sg_to_envmap

        lobes, lam, mu = fit_sg_to_envmap(load_envmap(envmap), num_lobes=model.light.lobes.shape[0], steps=300)
        device = model.c2w.device
        relit = system.render_image(batch, light=(lobes.to(device), lam.to(device), mu.to(device)))
        written["relit"] = str(_save(folder / "relit.png", _srgb(relit["rgb"], height, width)))
        relit_hdr = relit["rgb"].reshape(height, width, 3).cpu().numpy().astype(np.float32)
        written["relit_hdr"] = str(atomic_write(folder / "relit.npy", lambda tmp: np.save(tmp, relit_hdr)))
    for name, path in written.items():
        print(f"{name}: {path}")
    return written
