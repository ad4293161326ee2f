"""SimCLR pre-training of the ResNet-18 trunk on two views of one shape (methods/dit.md §4).

Items from :class:`~sfd_lightning.datamodules.dit_data.DITImageDataModule` with ``mode: pairs``:
``image``, ``image2`` ``(B, 3, H, W)`` in [0, 1], jittered independently. NT-Xent over the 2B
views (diagonal removed), τ = 0.07; SGD without momentum, lr 1e-3, wd 1e-4, ×0.1 at 60% and 80%
of ``max_steps`` (original: epochs 120 and 160 of 200). The trunk lives at ``encoder.*`` so image
models load it with ``encoder_checkpoint: <this run>/checkpoints/last.ckpt`` (head dropped).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sfd_lightning.modules.base import BaseReconSystem
from sfd_lightning.modules.dit.image_encoder import IMAGENET_MEAN, IMAGENET_STD, color_jitter
from sfd_lightning.nn.resnet import ResNetEncoder


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.07) -> Tensor:
    """NT-Xent for projections ``z1, z2 (B, D)``: view i's positive is its partner, the other
    2B − 2 views are negatives; mean cross-entropy over the 2B rows (fp32)."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


class DITContrastive(BaseReconSystem):
    """SimCLR trunk + projection head (512 -> 512 -> ReLU -> 128, L2-normalised in the loss).

    Args:
        encoder_weights: local torchvision ImageNet ResNet-18 weights (optional).
        temperature: τ (0.07). lr, weight_decay: SGD (1e-3, 1e-4, no momentum).
        milestones: LR ×``gamma`` at these fractions of ``max_steps`` (0.6, 0.8).
        jitter, hue: colour jitter per view (0.4, 0.4).
    """

    def __init__(self, encoder_weights: str | None = None, projection_dim: int = 128, temperature: float = 0.07,
                 lr: float = 1e-3, weight_decay: float = 1e-4, momentum: float = 0.0,
                 milestones: Sequence[float] = (0.6, 0.8), gamma: float = 0.1, jitter: float = 0.4,
                 hue: float = 0.4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = ResNetEncoder("resnet18", weights_path=encoder_weights, include_fc=False)
        self.projection = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, projection_dim))

    def embed(self, images: Tensor, augment: bool = True) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> projections ``(B, projection_dim)``."""
        if augment:
            images = color_jitter(images, self.hparams.jitter, self.hparams.hue)
        mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return self.projection(torch.flatten(self.encoder((images - mean) / std).pooled, 1))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        z1, z2 = self.embed(batch["image"]), self.embed(batch["image2"])
        with torch.autocast(device_type=z1.device.type, enabled=False):
            loss = nt_xent(z1, z2, self.hparams.temperature)
        self.log("train/nt_xent", loss.detach(), prog_bar=True, batch_size=len(z1))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if "image2" in batch:
            with torch.no_grad():
                loss = nt_xent(self.embed(batch["image"], False), self.embed(batch["image2"], False),
                               self.hparams.temperature)
            self.log("val/nt_xent", loss, batch_size=len(batch["image"]))

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        total = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else 1000
        milestones = [max(1, int(round(m * total))) for m in hp.milestones]
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, hp.gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
