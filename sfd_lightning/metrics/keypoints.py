"""Keypoint-transfer PCK for single-view mesh methods (UMR, methods/umr.md §5).

Coordinates are crop NDC (x right, y down, pixel centres at ``(2i + 1)/S − 1``). A transfer error
(NDC) is multiplied by 0.55 (= (1 + 2·0.05)/2: units of the max bbox side) and a keypoint counts
as correct below ``alpha`` (0.1, also 0.15). Pairs: ``RandomState(N)`` draws ``n_pairs`` index
pairs with replacement; both directions are scored; a keypoint counts when visible in both
images; the accuracy is averaged over the keypoints (each keypoint: correct / scored).

Modes:
* ``flow``: a source Gaussian heatmap per keypoint (σ in NDC) sampled at each face's
  texel-flow points and averaged; the arg-max face's mean target flow is the prediction.
* ``cam``: the template vertex nearest to the source keypoint under the source camera, projected
  with the target camera, snapped to the nearest pixel of the target's predicted mask. When the
  store holds ``vis_tpl (N, V)`` (vertices visible in each image's hard render), only the source's
  visible vertices are candidates (a keypoint is on the visible surface; without this, a vertex on
  the far side that projects to the same pixel can win and lands on the wrong side in the target).
Baselines on the same pairs: ``identity`` (prediction = source location; the flow-mode baseline)
and ``mean_cam`` (every image under one camera: cam mode with identical projections, i.e. the source
keypoint moved onto the nearest template vertex under that camera). The one camera is the store's
``proj_mean_cam (V, 2)`` (the systems pass the template under the mean predicted camera); without it,
the mean of the per-image projections (which shrinks towards the centre when the cameras differ).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["keypoint_faces", "pck_pairs", "transfer_flow", "transfer_cam", "pck_from_predictions", "transfer_pck"]

PCK_SCALE = 0.55


def keypoint_faces(kp: Tensor, tex_flow: Tensor, sigma: float) -> Tensor:
    """Arg-max face ``(B, K)`` (−1 for invisible keypoints) of Gaussian heatmaps around ``kp (B, K, 3)``
    sampled at the texel-flow points ``tex_flow (B, F, T, 2)`` and averaged per face.

    The mean is taken in log space (``logsumexp``), so the arg-max is defined even where every
    flow point lies beyond the heatmap's 3σ support (the truncated map would be 0 everywhere)."""
    pts = tex_flow.float().flatten(1, 2)  # (B, F·T, 2)
    d2 = torch.cdist(kp[..., :2].float(), pts).pow(2)  # (B, K, F·T)
    log_heat = (-d2 / (2 * sigma**2)).view(*d2.shape[:2], tex_flow.shape[1], tex_flow.shape[2])
    best = torch.logsumexp(log_heat, -1).argmax(-1)  # (B, K)
    return torch.where(kp[..., 2] > 0, best, torch.full_like(best, -1))


def pck_pairs(n: int, n_pairs: int = 10000) -> np.ndarray:
    """Deterministic ``(n_pairs, 2)`` index pairs (``RandomState(n)``, with replacement)."""
    return np.random.RandomState(n).randint(0, n, size=(n_pairs, 2))


def transfer_flow(src_faces: Tensor, tgt_mean_flow: Tensor) -> Tensor:
    """Flow mode: ``src_faces (P, K)`` face ids (−1 none), ``tgt_mean_flow (P, F, 2)`` -> ``(P, K, 2)``."""
    idx = src_faces.clamp_min(0).unsqueeze(-1).expand(-1, -1, 2)
    return tgt_mean_flow.gather(1, idx)


def transfer_cam(src_kp: Tensor, src_proj: Tensor, tgt_proj: Tensor, tgt_mask: Tensor | None,
                 src_visible: Tensor | None = None) -> Tensor:
    """Camera mode: ``src_kp (P, K, 2)``, projected template vertices ``(P, V, 2)`` of source and
    target, target predicted masks ``(P, S, S)`` bool (``None``: no snapping), optional source
    vertex visibility ``(P, V)`` bool (``None``: every vertex is a candidate) -> ``(P, K, 2)``."""
    dist = torch.cdist(src_kp.float(), src_proj.float())  # (P, K, V)
    if src_visible is not None:
        allowed = src_visible | ~src_visible.any(-1, keepdim=True)  # no visible vertex at all: every vertex
        dist = dist.masked_fill(~allowed.unsqueeze(1), float("inf"))
    nearest = dist.argmin(-1)  # (P, K)
    pred = tgt_proj.float().gather(1, nearest.unsqueeze(-1).expand(-1, -1, 2))
    if tgt_mask is None:
        return pred
    return torch.stack([snap_to_mask(pred[p], tgt_mask[p]) for p in range(len(pred))])


def snap_to_mask(points: Tensor, mask: Tensor) -> Tensor:
    """Move NDC ``points (..., 2)`` to the centre of the nearest pixel with ``mask (S, S)`` True
    (nearest to the pixel holding the point; Euclidean distance transform). Empty mask: unchanged."""
    from scipy.ndimage import distance_transform_edt

    m = mask.cpu().numpy().astype(bool)
    if not m.any():
        return points
    size = m.shape[-1]
    _, (rows, cols) = distance_transform_edt(~m, return_indices=True)
    pix = ((points.detach().cpu() + 1) * size - 1) / 2
    j = pix[..., 0].round().long().clamp(0, size - 1).numpy()
    i = pix[..., 1].round().long().clamp(0, size - 1).numpy()
    snapped = np.stack([cols[i, j], rows[i, j]], -1)
    return torch.from_numpy((2 * snapped + 1) / size - 1).to(points)


def pck_from_predictions(pred: Tensor, gt: Tensor, valid: Tensor, alpha: float) -> float:
    """Mean over keypoints of per-keypoint accuracy; ``pred, gt (P, K, 2)``, ``valid (P, K)``."""
    err = (pred - gt).norm(dim=-1) * PCK_SCALE
    correct = ((err < alpha) & valid).sum(0).float()
    count = valid.sum(0).float()
    scored = count > 0
    if not bool(scored.any()):
        return float("nan")
    return float((correct[scored] / count[scored]).mean())


def transfer_pck(store: dict[str, Tensor], n_pairs: int = 10000, alphas: tuple[float, ...] = (0.1, 0.15),
                 chunk: int = 512) -> dict[str, float]:
    """PCK of all modes and baselines from per-image predictions.

    ``store``: ``kp (N, K, 3)``, ``kp_faces (N, K)``, ``mean_flow (N, F, 2)``, ``proj_tpl (N, V, 2)``,
    ``pred_mask (N, S, S)`` bool, optional ``vis_tpl (N, V)`` bool and ``proj_mean_cam (V, 2)``
    (see the module doc). Returns ``{"pck{a}_{mode}": value}`` for mode in flow, cam,
    identity, mean_cam (``a`` as ``0.1`` -> ``10``).
    """
    n = len(store["kp"])
    pairs = pck_pairs(n, n_pairs)
    pairs = np.concatenate([pairs, pairs[:, ::-1]])  # both directions
    preds: dict[str, list[Tensor]] = {m: [] for m in ("flow", "cam", "identity", "mean_cam")}
    gts, valids = [], []
    kp = store["kp"]
    if "proj_mean_cam" in store:
        mean_proj = store["proj_mean_cam"].float().reshape(1, -1, 2)
    else:
        mean_proj = store["proj_tpl"].float().mean(0, keepdim=True)
    for c0 in range(0, len(pairs), chunk):
        s, t = (torch.from_numpy(np.ascontiguousarray(pairs[c0:c0 + chunk, k])) for k in (0, 1))
        src_kp, tgt_kp = kp[s], kp[t]
        valid = (src_kp[..., 2] > 0) & (tgt_kp[..., 2] > 0)
        preds["flow"].append(transfer_flow(store["kp_faces"][s], store["mean_flow"][t]))
        vis = store["vis_tpl"][s] if "vis_tpl" in store else None
        preds["cam"].append(transfer_cam(src_kp[..., :2], store["proj_tpl"][s], store["proj_tpl"][t], None, vis))
        preds["identity"].append(src_kp[..., :2])
        mp = mean_proj.expand(len(s), -1, -1)
        preds["mean_cam"].append(transfer_cam(src_kp[..., :2], mp, mp, None))
        gts.append(tgt_kp[..., :2])
        valids.append(valid & (store["kp_faces"][s] >= 0))
    # camera mode: snap to the target's predicted mask, one distance transform per target image
    cam = torch.cat(preds["cam"])
    targets = torch.from_numpy(np.ascontiguousarray(pairs[:, 1]))
    for t_id in torch.unique(targets).tolist():
        sel = targets == t_id
        cam[sel] = snap_to_mask(cam[sel], store["pred_mask"][t_id])
    preds["cam"] = [cam]
    gt, valid = torch.cat(gts), torch.cat(valids)
    out = {}
    for mode, chunks in preds.items():
        pred = torch.cat(chunks)
        for a in alphas:
            out[f"pck{int(round(a * 100))}_{mode}"] = pck_from_predictions(pred, gt, valid, a)
    return out
