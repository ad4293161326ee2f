"""ReconTrainer: Lightning's Trainer plus the ``export`` subcommand (lightning.md §9)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import torch

from sfd_lightning.errors import InputError


def load_weights(model: pl.LightningModule, ckpt_path: str | Path) -> dict:
    """Load a Lightning checkpoint's ``state_dict`` into ``model`` (weights only, no code runs)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found", "pass --ckpt_path runs/<run>/checkpoints/last.ckpt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(path, f"not a readable checkpoint ({type(exc).__name__})", "pass a .ckpt written by sfd fit") from None
    if "state_dict" not in checkpoint:
        raise InputError(path, "has no state_dict", "pass a .ckpt written by sfd fit")
    model.load_state_dict(checkpoint["state_dict"])
    return checkpoint


class ReconTrainer(pl.Trainer):
    """Trainer with an ``export`` method: the ``sfd export`` subcommand."""

    def export(self, model: pl.LightningModule, datamodule: Optional[pl.LightningDataModule] = None,
               ckpt_path: Optional[str] = None, resolution: int = 256, output: Optional[str] = None,
               level: float = 0.0, mode: str = "coarse_to_fine") -> list[str]:
        """Export meshes from a checkpoint (mapped back to the data's original frame).

        Args:
            model: the system (class and hyper-parameters restored from the checkpoint).
            datamodule: attached to the trainer (``trainer.datamodule``) for systems whose export
                items come from data (LIST: one mesh per test image); others ignore it.
            ckpt_path: checkpoint to load weights from (required).
            resolution: marching-cubes grid resolution per axis.
            output: a mesh file (one shape) or a folder (several); default ``<run>/meshes/``.
            level: iso-level (surface f = level).
            mode: ``coarse_to_fine`` (fast, same mesh) or ``dense``.
        """
        if ckpt_path is None:
            raise InputError(None, "sfd export needs a checkpoint", "pass --ckpt_path runs/<run>/checkpoints/last.ckpt")
        load_weights(model, ckpt_path)
        model.eval()
        model.to(self.strategy.root_device)
        model.trainer = self  # gives the model its run folder
        if datamodule is not None:
            self._data_connector.attach_datamodule(model, datamodule=datamodule)
        output_path = Path(output) if output is not None else Path(self.default_root_dir) / "meshes"
        written = [str(p) for p in model.export_meshes(output_path, resolution, level, mode)]
        for path in written:
            print(f"exported mesh: {path}")
        return written
