"""Loss terms of the three SfD stages (methods/sfd.md §4). Shapes: ``R`` rays, ``S`` samples."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values (R, ...)`` over rays where ``mask (R,)``; 0 (with graph) when empty."""
    if values.dim() > 1:
        values = values.flatten(1).mean(1)
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def rgb_loss(rgb: Tensor, target: Tensor, foreground: Tensor, net_mask: Tensor, background_weight: float = 0.5) -> Tensor:
    """``MSE(c, c_gt)`` on ``foreground ∧ net_mask`` + ``background_weight · MSE(c, 0)`` on GT background."""
    fg = masked_mean((rgb - target) ** 2, foreground & net_mask)
    bg = masked_mean(rgb ** 2, ~foreground)
    return fg + background_weight * bg


def eikonal_loss(grad_norm: Tensor, x_world: Tensor, center: Tensor, radius: Tensor, factor: float = 1.2) -> Tensor:
    """``mean (‖∇f‖ − 1)²`` over samples within ``factor · radius`` of the scene centre.

    ``grad_norm (R, S, 3)`` gradients in the SDF's own (normalised) frame.
    """
    inside = ((x_world - center).norm(dim=-1) < factor * radius).to(grad_norm.dtype)
    err = (grad_norm.norm(dim=-1) - 1.0) ** 2
    return (err * inside).sum() / inside.sum().clamp_min(1.0)


def mask_loss(weights_sum: Tensor, foreground: Tensor) -> Tensor:
    """``BCE(clip(weights_sum, 1e-3, 1 − 1e-4), gt_mask)``."""
    return F.binary_cross_entropy(weights_sum.float().clamp(1e-3, 1.0 - 1e-4), foreground.float())


def normal_prior_loss(normal_cam: Tensor, prior: Tensor, mask: Tensor) -> Tensor:
    """Unit-vector normal prior (sfd.md §6 default): ``(3·smoothL1 + (1 − cos)) · 0.05`` on ``mask``."""
    n = F.normalize(normal_cam, dim=-1)
    p = F.normalize(prior, dim=-1)
    l1 = F.smooth_l1_loss(n, p, reduction="none").sum(-1)
    cos = 1.0 - (n * p).sum(-1)
    return 0.05 * masked_mean(3.0 * l1 + cos, mask)


def distill_loss(weights: Tensor, proxy_sdf: Tensor, sdf: Tensor) -> Tensor:
    """``MSE(Σ w·proxy, (Σ w·sdf).detach())`` per ray; all ``(R, S)``."""
    return F.mse_loss((weights * proxy_sdf).sum(-1), (weights * sdf).sum(-1).detach())


def seg_hinge(weighted_sdf: Tensor, true_index: Tensor) -> Tensor:
    """Instance-segmentation hinge ``mean_j relu(s_k − s_j)``.

    Args:
        weighted_sdf: ``(R, N)`` weighted SDF of each ray in every instance frame.
        true_index: ``(R,)`` GT instance ``k`` of each ray.
    Zero when the true instance has the lowest value, positive otherwise.
    """
    s_k = weighted_sdf.gather(1, true_index[:, None])
    return F.relu(s_k - weighted_sdf).mean()


def kl_sparsity(latent: Tensor, rho: float = 0.05) -> Tensor:
    """``KL(ρ ‖ ρ̂)`` summed over latent dims, ``ρ̂`` the batch mean of ``latent (P, D)`` in (0, 1)."""
    rho_hat = latent.float().mean(0).clamp(1e-6, 1 - 1e-6)
    return (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()
