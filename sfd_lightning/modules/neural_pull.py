"""Neural-Pull (Ma et al., ICML 2021): an SDF from a raw point cloud by pulling queries onto it.

Per step, for queries ``q (B, 3)`` near the cloud with precomputed nearest input points
``t (B, 3)``: ``q' = q - f(q) · ∇f(q)/‖∇f(q)‖`` and ``L = mean ‖q' - t‖₂`` (or its square).
Gradients flow through ``f`` and through the normalised gradient (second order). The SDF network
and the loss always run in fp32 (autocast disabled): under ``bf16-mixed`` nothing here computes
in bf16 (methods/neuralpull.md §7.3).

Frames: the network lives in the data module's normalised unit cube; ``data_center`` and
``data_scale`` (buffers, saved in checkpoints) map meshes back to the input's frame, so
``sfd export`` needs no data.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from sfd_lightning.geometry.surface import SurfaceHandle, similarity_matrix
from sfd_lightning.modules.base import BaseReconSystem
from sfd_lightning.nn.sdf_mlp import SDFMLP, sdf_with_gradient


def pull_points(network: torch.nn.Module, queries: Tensor, create_graph: bool = True,
                eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """Pull ``queries (B, 3)`` along the normalised SDF gradient; returns ``(pulled (B,3), sdf (B,))``."""
    sdf, gradient = sdf_with_gradient(network, queries, create_graph=create_graph)
    direction = gradient / gradient.norm(dim=-1, keepdim=True).clamp_min(eps)
    return queries - sdf[:, None] * direction, sdf


def pull_loss(pulled: Tensor, targets: Tensor, loss: str = "l2") -> Tensor:
    """Mean Euclidean (``l2``) or squared (``l2_squared``) distance between pulled points and targets."""
    if loss == "l2":
        return (pulled - targets).norm(dim=-1).mean()
    if loss == "l2_squared":
        return (pulled - targets).pow(2).sum(dim=-1).mean()
    raise ValueError(f"loss must be 'l2' or 'l2_squared', got {loss!r}")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR factor: linear warm-up from 0 over ``warmup_steps``, then cosine to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class NeuralPull(BaseReconSystem):
    """Neural-Pull system (one network per shape).

    Args:
        width, depth, skip_layers, weight_norm, activation, init_radius, num_frequencies: SDF MLP
            (defaults = the official PyTorch port: 8×256 ReLU, skip at 4, weight norm, r = 0.5).
        lr: Adam learning rate (1e-3).
        warmup_steps: linear warm-up length; given as a fraction of ``trainer.max_steps`` when < 1
            (the reference: 1000 of 40,000 steps = 0.025).
        loss: ``l2`` (official code) or ``l2_squared``.
        val_resolution / test_resolution: marching-cubes grid in validation / test.
        mc_level: extraction level (f = level).
        extraction_mode: ``coarse_to_fine`` or ``dense``.
        protocol: evaluation protocol name for test metrics (``neuralpull``).
        val_samples: points per surface for the cheaper validation metrics.
        test_samples: override of the protocol's sample count in test (None = protocol's).
        log_mesh: log the validation mesh to W&B as a 3D object.
        extraction_lipschitz: gradient bound for coarse-to-fine extraction (Neural-Pull has no
            eikonal term, so |∇f| may exceed 1; 1.5 keeps the mesh identical to dense — tested).
    """

    def __init__(self, width: int = 256, depth: int = 8, skip_layers: Sequence[int] = (4,),
                 weight_norm: bool = True, activation: str = "relu", init_radius: float = 0.5,
                 num_frequencies: int = 0, lr: float = 1e-3, warmup_steps: float = 0.025,
                 loss: str = "l2", val_resolution: int = 64, test_resolution: int = 128,
                 mc_level: float = 0.0, extraction_mode: str = "coarse_to_fine",
                 protocol: str = "neuralpull", val_samples: int = 20_000, test_samples: int | None = None,
                 bbox_padding: float = 0.05, log_mesh: bool = True, extraction_lipschitz: float = 1.5) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.extraction_lipschitz = extraction_lipschitz
        self.network = SDFMLP(width=width, depth=depth, skip_layers=skip_layers, weight_norm=weight_norm,
                              activation=activation, init_radius=init_radius, num_frequencies=num_frequencies)
        self.register_buffer("data_center", torch.zeros(3))
        self.register_buffer("data_scale", torch.ones(()))
        self.register_buffer("bbox_min", torch.full((3,), -0.55))
        self.register_buffer("bbox_max", torch.full((3,), 0.55))
        self._step_start: float | None = None

    # ------------------------------------------------------------------ data frame
    def setup(self, stage: str) -> None:
        """Copy the data frame (centre, scale, extraction box) from the data module, if any."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "normalized_bbox"):
            return
        datamodule.setup(stage)
        lo, hi = datamodule.normalized_bbox(self.hparams.bbox_padding)
        with torch.no_grad():
            self.data_center.copy_(torch.as_tensor(datamodule.center))
            self.data_scale.fill_(float(datamodule.scale))
            self.bbox_min.copy_(torch.as_tensor(lo))
            self.bbox_max.copy_(torch.as_tensor(hi))

    def sdf(self, points: Tensor) -> Tensor:
        """Signed distance ``(N,)`` at normalised points ``(N, 3)``, always in fp32."""
        with torch.autocast(device_type=points.device.type, enabled=False):
            return self.network(points.float())

    def surface(self, item: Any = None) -> SurfaceHandle:
        return SurfaceHandle(sdf=self.sdf, bbox=(self.bbox_min.detach(), self.bbox_max.detach()),
                             to_original=similarity_matrix(self.data_center.cpu(), float(self.data_scale)))

    # ------------------------------------------------------------------ training
    def forward(self, queries: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast(device_type=queries.device.type, enabled=False):
            return pull_points(self.network, queries.float(), create_graph=self.training)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        queries = batch["queries"].float().requires_grad_(True)
        with torch.autocast(device_type=queries.device.type, enabled=False):
            pulled, sdf = pull_points(self.network, queries, create_graph=True)
            loss = pull_loss(pulled, batch["targets"].float(), self.hparams.loss)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/sdf_abs_mean", sdf.detach().abs().mean())
        self.log("train/lr", self.optimizers().param_groups[0]["lr"] if self._trainer else self.hparams.lr)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.hparams.lr)
        total = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 \
            else int(self.trainer.estimated_stepping_batches)
        warmup = self.hparams.warmup_steps
        warmup_steps = int(round(warmup * total)) if warmup < 1 else int(warmup)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup_steps, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ evaluation
    def _score(self, resolution: int, samples: int | None, stage: str) -> dict[str, Any]:
        from sfd_lightning.callbacks.logging_utils import log_image, log_mesh
        from sfd_lightning.geometry.extraction import sdf_slice_image
        from sfd_lightning.metrics.evaluate import evaluate

        datamodule = getattr(self.trainer, "datamodule", None)
        start = time.perf_counter()
        mesh = self.extract(None, resolution, self.hparams.mc_level, self.hparams.extraction_mode)
        extraction_s = time.perf_counter() - start
        self.log(f"{stage}/extraction_s", extraction_s, batch_size=1, sync_dist=True)
        self.log(f"{stage}/mesh_vertices", float(len(mesh.vertices)), batch_size=1, sync_dist=True)
        result: dict[str, Any] = {"mesh": mesh, "extraction_s": extraction_s}
        gt = datamodule.load_ground_truth() if datamodule is not None and hasattr(datamodule, "load_ground_truth") else None
        if gt is not None:
            scores = evaluate(mesh, gt, self.hparams.protocol, samples=samples, seed=0)
            result["evaluation"] = scores
            for key, value in scores["metrics"].items():
                if value is not None:
                    self.log(f"{stage}/{key}", float(value), batch_size=1, prog_bar=key == "cd_l1", sync_dist=True)
        if self.trainer.is_global_zero:
            bbox = (self.bbox_min, self.bbox_max)
            center = float((self.bbox_min[2] + self.bbox_max[2]) / 2)
            log_image(self.trainer, f"{stage}/sdf_slice", sdf_slice_image(self.sdf, *bbox, axis=2, offset=center),
                      self.global_step)
            if self.hparams.log_mesh and not mesh.is_empty:
                log_mesh(self.trainer, f"{stage}/mesh", mesh, self.global_step)
        return result

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._score(self.hparams.val_resolution, self.hparams.val_samples, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        from sfd_lightning.geometry.io import save_mesh

        result = self._score(self.hparams.test_resolution, self.hparams.test_samples, "test")
        if not self.trainer.is_global_zero:
            return
        mesh_path = save_mesh(self.run_dir / "meshes" / "test_mesh.ply", result["mesh"])
        record = {"mesh": str(mesh_path), "resolution": self.hparams.test_resolution,
                  "mc_level": self.hparams.mc_level, "extraction_s": result["extraction_s"],
                  "frame": "input's original coordinates"}
        if "evaluation" in result:
            record["evaluation"] = result["evaluation"]
        path = self.write_results(record)
        print(f"test mesh: {mesh_path}\nmetrics:   {path}")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> str:
        paths = self.export_meshes(resolution=self.hparams.test_resolution, level=self.hparams.mc_level,
                                   mode=self.hparams.extraction_mode)
        return str(paths[0])
