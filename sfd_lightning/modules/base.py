"""BaseReconSystem: the LightningCLI ``model`` base class of every method.

Surface methods implement :meth:`surface` (CONTRACTS §3) and get mesh export for free through
:meth:`export_meshes`; UMR overrides ``export_meshes`` with its own ``mesh(batch)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from sfd_lightning.geometry.io import Mesh, atomic_write, save_mesh
from sfd_lightning.geometry.surface import SurfaceHandle


class BaseReconSystem(pl.LightningModule):
    """Common plumbing: run folder, surface export, results files."""

    def surface(self, item: Any = None) -> SurfaceHandle:
        """The SDF of shape ``item`` (None for single-shape systems) and where to mesh it."""
        raise NotImplementedError(f"{type(self).__name__} does not expose an SDF surface")

    def export_items(self) -> list[Any]:
        """Items :meth:`export_meshes` writes one mesh for (``[None]`` for one shape)."""
        return [None]

    def item_name(self, item: Any) -> str:
        return "mesh" if item is None else str(item)

    @property
    def run_dir(self) -> Path:
        """The folder of this run (``trainer.default_root_dir``, one folder per run)."""
        trainer = self._trainer
        root = trainer.default_root_dir if trainer is not None else "runs"
        return Path(root)

    #: Gradient-norm bound assumed by coarse-to-fine extraction (1 for true SDFs); systems whose
    #: fields are not eikonal-regularised raise it so no thin part is skipped.
    extraction_lipschitz: float = 1.0

    def extract(self, item: Any = None, resolution: int = 256, level: float = 0.0,
                mode: str = "coarse_to_fine") -> Mesh:
        """Mesh of ``item`` in the data's original frame."""
        from sfd_lightning.geometry.extraction import extract_surface

        was_training = self.training
        self.eval()
        try:
            return extract_surface(self.surface(item), resolution=resolution, level=level, mode=mode,
                                   lipschitz=self.extraction_lipschitz)
        finally:
            self.train(was_training)

    def export_meshes(self, output: str | Path | None = None, resolution: int = 256, level: float = 0.0,
                      mode: str = "coarse_to_fine") -> list[Path]:
        """Write one mesh per export item; ``output`` is a file for one item, else a folder."""
        items = self.export_items()
        output = Path(output) if output is not None else self.run_dir / "meshes"
        single = len(items) == 1 and output.suffix.lower() in (".ply", ".obj", ".off", ".stl", ".glb")
        written = []
        for item in items:
            mesh = self.extract(item, resolution, level, mode)
            path = output if single else output / f"{self.item_name(item)}.ply"
            written.append(save_mesh(path, mesh))
        return written

    def write_results(self, results: dict[str, Any], name: str = "metrics.json") -> Path:
        """Write a results JSON (protocol, units, per-object values) into the run folder."""
        path = self.run_dir / name
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(results, indent=2, default=_json_default)))
        return path


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
