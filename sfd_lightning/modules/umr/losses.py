"""UMR losses (methods/umr.md §4). Every function returns a scalar; batch means unless stated.

The texture appearance loss is the documented substitute for the AlexNet perceptual distance
(no local AlexNet weights in this project): masked ``mean|a − b| + (1 − SSIM(a, b))/2`` with an
11×11 Gaussian window, σ 1.5 (``kornia.losses.ssim_loss``); systems log ``texture_loss=l1_dssim``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mask_loss", "laplacian_loss", "flatten_loss", "deform_loss", "ori_loss", "entropy_loss",
           "texture_l1_dssim", "dt_barrier", "texture_dt_loss", "cycle_loss", "part_map_loss",
           "vertex_chamfer_loss", "sample_part_points", "gan_loss", "uniform_laplacian", "soft_iou"]


def soft_iou(pred: Tensor, target: Tensor) -> Tensor:
    """Per-sample soft IoU ``(B,)`` of ``(B, H, W)`` masks: Σ(p·m)/(Σ(p + m − p·m) + 1e-6)."""
    inter = (pred * target).flatten(1).sum(1)
    union = (pred + target - pred * target).flatten(1).sum(1)
    return inter / (union + 1e-6)


def mask_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Per-sample ``1 − soft IoU`` ``(B,)`` (callers weight/average)."""
    return 1.0 - soft_iou(pred, target)


def uniform_laplacian(faces: Tensor, n_vert: int) -> Tensor:
    """Dense uniform Laplacian ``(V, V)``: L_ii = 1, L_ij = −1/deg(i) for neighbours."""
    adj = torch.zeros(n_vert, n_vert)
    f = faces.cpu()
    for a, b in ((0, 1), (1, 2), (2, 0)):
        adj[f[:, a], f[:, b]] = 1.0
        adj[f[:, b], f[:, a]] = 1.0
    deg = adj.sum(1, keepdim=True).clamp_min(1.0)
    return torch.eye(n_vert) - adj / deg


def laplacian_loss(verts: Tensor, lap: Tensor) -> Tensor:
    """Mean over the batch of Σ_i ‖(L V)_i‖² for ``verts (B, V, 3)``."""
    return (lap @ verts).pow(2).sum(-1).sum(-1).mean()


def flatten_loss(verts: Tensor, edges: Tensor, opposite: Tensor) -> Tensor:
    """Mean over the batch of Σ_edges (cos dihedral + 1)² (0 for a flat surface)."""
    v0, v1 = verts[:, edges[:, 0]], verts[:, edges[:, 1]]
    a, b = verts[:, opposite[:, 0]], verts[:, opposite[:, 1]]
    e = v1 - v0
    e = e / e.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    # components of (a − v0), (b − v0) orthogonal to the edge
    pa = (a - v0) - ((a - v0) * e).sum(-1, keepdim=True) * e
    pb = (b - v0) - ((b - v0) * e).sum(-1, keepdim=True) * e
    cos = (pa * pb).sum(-1) / (pa.norm(dim=-1) * pb.norm(dim=-1)).clamp_min(1e-8)
    return (cos + 1.0).pow(2).sum(-1).mean()


def deform_loss(delta: Tensor) -> Tensor:
    """Mean over batch and predicted vertices of ‖δv‖₂ (not squared)."""
    return delta.norm(dim=-1).mean()


def ori_loss(verts: Tensor, n_plane: int) -> Tensor:
    """Mean ``|v_y|`` of the on-plane vertices (keeps the symmetry plane at y = 0; see module notes)."""
    return verts[:, :n_plane, 1].abs().mean()


def entropy_loss(probs: Tensor) -> Tensor:
    """Mean over the batch of the hypothesis entropy −Σ p log(p + 1e-9) (a positive weight sharpens)."""
    return -(probs * torch.log(probs + 1e-9)).sum(-1).mean()


def texture_l1_dssim(render: Tensor, target: Tensor) -> Tensor:
    """Per-sample ``(B,)`` mean|a − b| + (1 − SSIM(a, b))/2 (11×11 Gaussian window, σ 1.5)."""
    from kornia.losses import ssim_loss

    l1 = (render - target).abs().flatten(1).mean(1)
    dssim = ssim_loss(render, target, window_size=11, reduction="none").flatten(1).mean(1)
    return l1 + dssim


def dt_barrier(mask: Tensor) -> Tensor:
    """Barrier ``(B, 1, H, W)`` = sigmoid(50·(EDT_outside − EDT_inside)/max(H, W)) of GT masks ``(B, 1, H, W)``."""
    from scipy.ndimage import distance_transform_edt

    m = (mask.detach().float().cpu().numpy()[:, 0] > 0.5)
    out = np.empty(m.shape, dtype=np.float32)
    scale = 50.0 / max(m.shape[1:])
    for i, mi in enumerate(m):
        outside = distance_transform_edt(~mi)
        inside = distance_transform_edt(mi)
        out[i] = 1.0 / (1.0 + np.exp(-scale * (outside - inside)))
    return torch.from_numpy(out).to(mask.device).unsqueeze(1)


def texture_dt_loss(tex_flow: Tensor, barrier: Tensor) -> Tensor:
    """Mean barrier at all flow points ``tex_flow (B, F, T, 2)`` (bilinear, align_corners=False)."""
    vals = F.grid_sample(barrier, tex_flow.float(), mode="bilinear", padding_mode="border", align_corners=False)
    return vals.mean()


def cycle_loss(tex_flow: Tensor, centroids: Tensor, visible: Tensor) -> Tensor:
    """MSE over ``B×F×2`` of (mean flow point − soft centroid), both masked by ``visible (B, F)``."""
    mean_flow = tex_flow.mean(2)
    vis = visible.unsqueeze(-1).to(mean_flow.dtype)
    return ((mean_flow - centroids) * vis).pow(2).mean()


def _centres(p: Tensor) -> Tensor:
    """Expected (x, y) NDC ``(B, K, 2)`` of per-channel pdfs ``(B, K, H, W)``."""
    b, k, h, w = p.shape
    ys = (2 * torch.arange(h, device=p.device, dtype=p.dtype) + 1) / h - 1
    xs = (2 * torch.arange(w, device=p.device, dtype=p.dtype) + 1) / w - 1
    cx = (p.sum(2) * xs).sum(-1)
    cy = (p.sum(3) * ys).sum(-1)
    return torch.stack([cx, cy], -1)


def part_map_loss(rendered: Tensor, target: Tensor) -> Tensor:
    """Semantic part loss: ``rendered (B, 4, H, W)`` part renders m_1..m_4, ``target (B, 5, H, W)`` SCOPS maps.

    P̂ = [0.1, m_1..m_4]; centre term: softmax over channels of P̂ and P, channels 1..4 + 1e-3,
    normalised to pdfs, MSE of the 4×2 expected positions; map term: each channel / its spatial max
    (≥ 1e-5), squared error weighted [0, 5, 0, 0, 5], mean over B×5×H×W; loss = (map + centre)/4.
    """
    pred = torch.cat([torch.full_like(rendered[:, :1], 0.1), rendered], 1)

    def pdf(x: Tensor) -> Tensor:
        s = torch.softmax(x, 1)[:, 1:] + 1e-3
        return s / s.flatten(2).sum(-1)[..., None, None]

    centre = (_centres(pdf(pred)) - _centres(pdf(target))).pow(2).mean()

    def norm(x: Tensor) -> Tensor:
        return x / x.flatten(2).amax(-1).clamp_min(1e-5)[..., None, None]

    weights = pred.new_tensor([0.0, 5.0, 0.0, 0.0, 5.0]).view(1, 5, 1, 1)
    maps = (weights * (norm(pred) - norm(target)).pow(2)).mean()
    return (maps + centre) / 4.0


def sample_part_points(part_prob: Tensor, mask: Tensor, counts: tuple[int, ...] = (10, 10, 30, 30),
                       generator: torch.Generator | None = None) -> list[Tensor]:
    """SCOPS part points per part 1..4: ``[(B, N_k, 2)]`` NDC (y down).

    pdf = channel × GT mask; centre = expected position; draw 1.5·N pixels (multinomial, with
    replacement), keep the N closest to the centre.
    """
    b, _, h, w = part_prob.shape
    ys = (2 * torch.arange(h, device=mask.device, dtype=torch.float32) + 1) / h - 1
    xs = (2 * torch.arange(w, device=mask.device, dtype=torch.float32) + 1) / w - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1).view(-1, 2)  # (HW, 2) x, y
    out = []
    for k, n in enumerate(counts, start=1):
        p = (part_prob[:, k] * mask[:, 0]).flatten(1).float() + 1e-12
        p = p / p.sum(1, keepdim=True)
        centre = p @ grid  # (B, 2)
        idx = torch.multinomial(p.cpu(), int(1.5 * n), replacement=True, generator=generator).to(p.device)
        pts = grid[idx]  # (B, 1.5N, 2)
        d = (pts - centre[:, None]).pow(2).sum(-1)
        keep = d.topk(n, dim=1, largest=False).indices
        out.append(pts.gather(1, keep.unsqueeze(-1).expand(-1, -1, 2)))
    return out


def vertex_chamfer_loss(projected: list[Tensor], points: list[Tensor], weights: tuple[float, ...]) -> Tensor:
    """One-directional squared distance of projected template part vertices to the nearest part point.

    ``projected[k] (B, V_k, 2)`` and ``points[k] (B, N_k, 2)`` per part; ``weights[k]`` per part;
    per sample: mean over all listed vertices of the weighted distances. Returns ``(B,)``.
    """
    num, den = 0.0, 0
    for proj, pts, wt in zip(projected, points, weights):
        if proj.shape[1] == 0:
            continue
        d = torch.cdist(proj.float(), pts.float()).pow(2).amin(-1)  # (B, V_k)
        num = num + wt * d.sum(1)
        den += proj.shape[1]
    if den == 0:
        return projected[0].new_zeros(projected[0].shape[0])
    return num / den


def gan_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """BCE-with-logits: real → 1, fake → 0 (the generator gets reversed gradients through the GRL)."""
    return F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real)) + \
        F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
