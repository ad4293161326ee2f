"""Test-time latent optimisation (DeepSDF/DIT reconstruction of unseen shapes), methods/dit.md §4.

The network is frozen and in eval mode; only the codes ``(B, C)`` are optimised, each scene from
its own SDF sample pool ``(M_b, 4)``. Scenes are optimised jointly with the per-scene losses
summed, which gives each code exactly the Adam trajectory it would get alone. Works inside
Lightning's validate/test/predict when ``trainer.inference_mode`` is False: all tensors are fresh
and gradients are enabled locally.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from sfd_lightning.modules.dit.networks import DITNetwork


@dataclass
class ReconstructionResult:
    """Optimised codes ``(B, C)`` and the mean per-scene loss at the first and last iteration."""

    codes: Tensor
    loss_start: float
    loss_end: float


def split_pool(pool: Tensor) -> tuple[Tensor, Tensor]:
    """Rows ``(M, 4)`` -> (outside rows with sdf > 0, inside rows with sdf ≤ 0); NaN rows dropped."""
    pool = pool[torch.isfinite(pool).all(dim=1)]
    pos, neg = pool[pool[:, 3] > 0], pool[pool[:, 3] <= 0]
    if len(pos) == 0:
        pos = neg
    if len(neg) == 0:
        neg = pos
    return pos, neg


def draw_samples(pools: Sequence[tuple[Tensor, Tensor]], count: int, generator: torch.Generator | None) -> Tensor:
    """``count`` rows per scene (half outside, half inside, with replacement) -> ``(B, count, 4)``."""
    half = count // 2
    rows = []
    for pos, neg in pools:
        ip = torch.randint(len(pos), (count - half,), generator=generator).to(pos.device)
        ineg = torch.randint(len(neg), (half,), generator=generator).to(neg.device)
        rows.append(torch.cat([pos[ip], neg[ineg]]))
    return torch.stack(rows)


def reconstruct_codes(net: DITNetwork, pools: Sequence[Tensor], iterations: int = 800, samples: int = 8000,
                      lr: float = 5e-3, decay_at: float = 0.5, code_std: float = 0.01, reg: float = 1e-4,
                      clamp: float = 0.1, seed: int = 0, init: Tensor | None = None,
                      max_norm: float | None = None) -> ReconstructionResult:
    """Optimise one code per pool.

    Args:
        net: trained DIT network (put in eval mode here, restored afterwards).
        pools: per scene SDF rows ``(M_b, 4)`` (x, y, z, sdf) in the normalised frame.
        iterations, samples, lr: Adam iterations, rows per iteration (half in/out), learning rate.
        decay_at: LR ×0.1 at this fraction of ``iterations`` (DIT: 400 of 800).
        code_std: init N(0, std²) (DIT 0.01); ``init`` ``(B, C)`` overrides it.
        reg: weight of mean(z²). clamp: SDF clamp δ on prediction and target.
        max_norm: project each code back into the training code ball after every step (the
            training codes are capped by ``Embedding(max_norm)``); ``None`` = the original (no cap).
    Returns:
        :class:`ReconstructionResult` with detached codes.
    """
    device = next(net.parameters()).device
    generator = torch.Generator().manual_seed(int(seed))
    decay_step = int(round(decay_at * iterations))
    was_training = net.training
    net.eval()
    losses: list[float] = []
    try:
        # Fresh (non-inference) tensors: works even when called under torch.inference_mode().
        with torch.inference_mode(False), torch.enable_grad(), \
                torch.autocast(device_type=device.type, enabled=False):
            split = [split_pool(p.detach().to(device=device, dtype=torch.float32).clone()) for p in pools]
            count = len(split)
            dim = net.config["code_dim"]
            if init is None:
                codes = torch.randn(count, dim, generator=generator).mul_(code_std).to(device)
            else:
                codes = init.detach().clone().float().to(device)
            codes.requires_grad_(True)
            optimizer = torch.optim.Adam([codes], lr=lr)
            for it in range(iterations):
                if it == decay_step and it > 0:
                    for group in optimizer.param_groups:
                        group["lr"] = lr * 0.1
                rows = draw_samples(split, samples, generator)
                xyz, gt = rows[..., :3].reshape(-1, 3), rows[..., 3].reshape(-1)
                pred = net.sdf(codes.repeat_interleave(samples, dim=0), xyz)
                err = (pred.clamp(-clamp, clamp) - gt.clamp(-clamp, clamp)).abs().view(count, samples).mean(1)
                per_scene = err + reg * codes.pow(2).mean(1)
                loss = per_scene.sum()
                (grad,) = torch.autograd.grad(loss, codes)
                codes.grad = grad
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if max_norm is not None:
                    with torch.no_grad():
                        norms = codes.norm(dim=1, keepdim=True).clamp_min(1e-12)
                        codes.mul_(norms.clamp(max=max_norm) / norms)
                losses.append(float(per_scene.detach().mean()))
            codes = codes.detach().clone()
    finally:
        net.train(was_training)
    return ReconstructionResult(codes, losses[0] if losses else float("nan"),
                                losses[-1] if losses else float("nan"))


@torch.no_grad()
def sdf_error(net: DITNetwork, code: Tensor, rows: Tensor, clamp: float = 0.1, chunk: int = 65536) -> float:
    """Mean clamped L1 between the SDF of ``code (C,)`` and the rows ``(M, 4)`` (eval mode)."""
    was_training = net.training
    net.eval()
    try:
        rows = rows[torch.isfinite(rows).all(dim=1)].float()
        total = 0.0
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            pred = net.sdf(code.float().expand(len(part), -1), part[:, :3])
            total += float((pred.clamp(-clamp, clamp) - part[:, 3].clamp(-clamp, clamp)).abs().sum())
        return total / max(1, len(rows))
    finally:
        net.train(was_training)
