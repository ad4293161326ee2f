"""Logger-agnostic image and mesh logging.

Images always land as PNG files under ``<run>/images/`` (readable without any service) and go
to every W&B logger of the trainer; meshes go to W&B as 3D point objects.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sfd_lightning.geometry.io import Mesh, atomic_write


def _wandb_loggers(trainer) -> list:
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in getattr(trainer, "loggers", []) if isinstance(lg, WandbLogger)]


def log_image(trainer, key: str, image: np.ndarray, step: int) -> Path | None:
    """Save ``image (H, W, 3) uint8`` as ``<run>/images/<key>_<step>.png`` and log it to W&B."""
    import cv2

    if trainer is None:
        return None
    path = Path(trainer.default_root_dir) / "images" / f"{key.replace('/', '_')}_{step:07d}.png"
    atomic_write(path, lambda tmp: cv2.imwrite(str(tmp), np.ascontiguousarray(image[..., ::-1])))
    for logger in _wandb_loggers(trainer):
        logger.log_image(key=key, images=[image], step=step)
    return path


def log_mesh(trainer, key: str, mesh: Mesh, step: int, max_points: int = 20_000) -> None:
    """Log a mesh's vertices (subsampled to ``max_points``) to W&B as a 3D object."""
    loggers = _wandb_loggers(trainer)
    if not loggers or mesh.is_empty:
        return
    import wandb

    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    if len(vertices) > max_points:
        vertices = vertices[np.random.default_rng(0).choice(len(vertices), max_points, replace=False)]
    for logger in loggers:
        logger.experiment.log({key: wandb.Object3D(vertices), "trainer/global_step": step})
