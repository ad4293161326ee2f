"""Image-space metrics shared by the rendering methods (SfD re-rendering, UMR silhouettes)."""

from __future__ import annotations

import torch


def mask_iou(pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.5,
             valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image intersection over union of two masks.

    Args:
        pred: ``[B, H, W]`` (or ``[H, W]``) soft or hard mask; binarised at ``threshold``.
        target: same shape, binarised at 0.5.
        valid: optional boolean ``[B, H, W]``; pixels outside are ignored (e.g. unregistered
            instances of a pile).
    Returns:
        ``[B]`` IoU in [0, 1] (``[]`` for 2-D input); an image where both masks are empty scores 1.
    """
    squeeze = pred.dim() == 2
    if squeeze:
        pred, target = pred[None], target[None]
        valid = None if valid is None else valid[None]
    if pred.shape != target.shape:
        raise ValueError(f"mask_iou: shapes differ {tuple(pred.shape)} vs {tuple(target.shape)}")
    p = pred.detach() > threshold
    t = target.detach() > 0.5
    if valid is not None:
        p, t = p & valid, t & valid
    inter = (p & t).flatten(1).sum(1).float()
    union = (p | t).flatten(1).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    return iou[0] if squeeze else iou


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
         data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB over all (or the masked) pixels.

    Args:
        pred, target: ``[..., C]`` or ``[B, C, H, W]`` colours in ``[0, data_range]``.
        mask: optional boolean tensor broadcastable to ``pred`` selecting the pixels scored.
    """
    err = (pred.detach().float() - target.detach().float()) ** 2
    if mask is not None:
        mask = mask.expand_as(err)
        mse = err[mask].mean() if mask.any() else err.new_zeros(())
    else:
        mse = err.mean()
    return 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(1e-12))
