"""LIST stage 1, CoarseNet: image -> coarse point cloud (ResNet-18 encoder + TreeGCN decoder).

Loss: ``1000 · mean_batch(mean acc² + mean comp²)`` between ``prod(degrees)`` predicted points and
the GT farthest points (ShapeNet ``fps_points``) or ``coarse_points`` (Pix3D). Validation logs
``val/chamfer_l2`` = ½(mean acc² + mean comp²) against the first ``val_points`` GT farthest points
(the best-checkpoint metric). Test: the predicted points scored under the ``list`` protocol
against the GT isosurface (Chamfer-L2 ×10⁴ and F-scores; IoU needs a mesh, so it is skipped).
Predict: one ``.ply`` point cloud per image. Submodule names ``encoder``/``decoder`` are what the
fine stage reads from this checkpoint (``coarse_checkpoint``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from sfd_lightning.modules.base import BaseReconSystem
from sfd_lightning.modules.list_recon.common import (ListEvaluationMixin, chamfer_squared, coarse_loss,
                                                     coarse_target, item_names, normalize_images, save_points)
from sfd_lightning.modules.list_recon.networks import ImageEncoder, weights_path_or_none
from sfd_lightning.nn.tree_gcn import TreeGCNDecoder


class ListCoarse(ListEvaluationMixin, BaseReconSystem):
    """CoarseNet (methods/list.md §3-4).

    Args:
        latent_dim: image code width (128) = ``tree_features[0]``.
        tree_features, tree_degrees, tree_support: TreeGCN (LIST: [128,128,256,256,256,128,128,3],
            [2,2,2,2,2,2,64], 10 -> 4096 points).
        weights_path: local torchvision ResNet-18 checkpoint (conv1 stays random) or None.
        lr, betas, weight_decay: Adam (1e-4, (0.9, 0.999), 1e-5), constant.
        loss_weight: Chamfer multiplier (1000).
        imagenet_normalize: ImageNet mean/std on inputs (LIST: identity).
        val_points: GT points used by ``val/chamfer_l2``.
        protocol, test_samples, test_iou_points: test scoring (``list``; None = protocol's counts).
        save_test_outputs: write predicted clouds of the test set to ``<run>/points/``.
    """

    def __init__(self, latent_dim: int = 128,
                 tree_features: Sequence[int] = (128, 128, 256, 256, 256, 128, 128, 3),
                 tree_degrees: Sequence[int] = (2, 2, 2, 2, 2, 2, 64), tree_support: int = 10,
                 weights_path: str | None = None, lr: float = 1e-4, betas: Sequence[float] = (0.9, 0.999),
                 weight_decay: float = 1e-5, loss_weight: float = 1000.0, imagenet_normalize: bool = False,
                 val_points: int = 4096, protocol: str = "list", test_samples: int | None = None,
                 test_iou_points: int | None = None, save_test_outputs: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        if int(tree_features[0]) != int(latent_dim):
            raise ValueError(f"tree_features[0] ({tree_features[0]}) must equal latent_dim ({latent_dim})")
        self.encoder = ImageEncoder(latent_dim, weights_path_or_none(weights_path))
        self.decoder = TreeGCNDecoder(tree_features, tree_degrees, tree_support)

    @property
    def num_points(self) -> int:
        return self.decoder.num_points

    def forward(self, image: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> points ``(B, prod(degrees), 3)`` in [−0.5, 0.5]³ (fp32)."""
        code, _ = self.encoder(normalize_images(image, self.hparams.imagenet_normalize))
        return self.decoder(code).float()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        pred = self(batch["image"])
        loss = coarse_loss(pred, coarse_target(batch), self.hparams.loss_weight)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(pred))
        return loss

    def _chamfer_l2(self, pred: Tensor, gt: Tensor) -> Tensor:
        gt = gt[:, :min(gt.shape[1], self.hparams.val_points)]
        return 0.5 * chamfer_squared(pred, gt)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pred = self(batch["image"])
        gt = coarse_target(batch)
        self.log("val/chamfer_l2", self._chamfer_l2(pred, gt).mean(), prog_bar=True, batch_size=len(pred))
        self.log("val/loss", coarse_loss(pred, gt, self.hparams.loss_weight), batch_size=len(pred))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pred = self(batch["image"])
        gt = coarse_target(batch)
        self.log("test/list_coarse_cd_x1e3", 1e3 * chamfer_squared(pred, gt).mean(), batch_size=len(pred))
        names = item_names(batch)
        for i, name in enumerate(names):
            points = pred[i].detach().cpu().numpy()
            if self.hparams.save_test_outputs and self.trainer.is_global_zero:
                save_points(self.run_dir / "points" / f"{name}.ply", points)
            if "mesh_path" in batch:
                self.score_item(points, batch["mesh_path"][i], name)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[str]:
        pred = self(batch["image"]).detach().cpu().numpy()
        return [str(save_points(self.run_dir / "points" / f"{name}.ply", points))
                for name, points in zip(item_names(batch), pred)]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return torch.optim.Adam(self.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)

    def predict_points(self, image: Tensor) -> np.ndarray:
        """Convenience: one image ``(3, H, W)`` -> points ``(P, 3)`` numpy (eval mode)."""
        was = self.training
        self.eval()
        with torch.no_grad():
            out = self(image[None].to(self.device))[0].cpu().numpy()
        self.train(was)
        return out
