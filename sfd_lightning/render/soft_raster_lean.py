"""Memory-lean SoftRas path: only (face, pixel) pairs inside each face's σ-expanded bounding box.

A face can only reach pixels whose centre lies within ``r = sqrt(σ·ln(1/dist_eps − 1))`` (NDC) of
it; further pairs are culled to exactly 0 by :func:`pair_terms`, in the dense path too, so skipping
them changes nothing. The pairs of all faces are numbered ``0 .. N−1`` (face-major, row-major inside
each face's pixel box); a chunk ``[k0, k1)`` of those numbers is turned back into (face, pixel)
indices on the fly, so memory is bounded by ``chunk_pairs`` and never by ``B·F·H·W``.

Passes (each over all chunks):
1. grad: per-pixel sums Σω·c, Σω, Σlog(1 − D) by ``index_add``, with a running (detached)
   softmax shift per pixel: when a chunk raises a pixel's ``max ẑ`` the earlier sums are rescaled
   by ``exp((m_old − m_new)/γ)`` (online softmax); with ``checkpoint`` and more than one chunk,
   each chunk is recomputed in backward, so autograd keeps no per-pair tensors (a single chunk is
   kept: its memory is within the same bound and recomputing costs ~5 ms of overhead per call);
2. (if asked) no grad, twice: nearest covering depth, then the nearest covering face index;
3. (if asked) grad: per-face soft centroids Σ_p W_pf·p / Σ_p W_pf with W = ω / Z_pixel.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

from sfd_lightning.render.soft_raster_math import (
    Accum,
    PairTerms,
    SoftSettings,
    centroids_from_sums,
    face_table,
    interpolate_texels,
    pair_terms,
    pixel_centers_ndc,
    pixel_normaliser,
    texel_gather,
)

__all__ = ["rasterize_lean", "PairPlan", "plan_pairs", "run_chunk"]


class PairPlan(NamedTuple):
    """Per-face pixel boxes (flattened faces ``B·F``): first row/column, box width, pair count and
    the inclusive cumulative count; ``total`` = number of pairs."""

    i0: Tensor
    j0: Tensor
    width: Tensor
    count: Tensor
    cum: Tensor
    total: int


def plan_pairs(tri_xy: Tensor, height: int, width: int, s: SoftSettings) -> PairPlan:
    """Pixel boxes of the faces ``tri_xy (B·F, 3, 2)`` grown by the cull radius (no grad)."""
    xy = tri_xy.detach().double()
    if not bool(torch.isfinite(xy).all()):
        raise ValueError("soft rasteriser: vertices contain NaN or inf")
    r = math.sqrt(s.cull_d2) * (1 + 1e-6) + 1e-9
    lo = xy.amin(1) - r
    hi = xy.amax(1) + r
    size = xy.new_tensor([float(width), float(height)])
    # pixel k has its centre at (2k + 1)/S − 1  <=>  k = (x + 1)·S/2 − 1/2; 1e-3 px slack
    k_lo = torch.ceil((lo + 1) * size / 2 - 0.5 - 1e-3)
    k_hi = torch.floor((hi + 1) * size / 2 - 0.5 + 1e-3)
    k_lo = torch.maximum(k_lo, torch.zeros_like(k_lo)).clamp_max(size.max()).long()
    k_hi = torch.minimum(k_hi, size - 1).clamp_min(-1).long()
    n = (k_hi - k_lo + 1).clamp_min(0)
    count = n[:, 0] * n[:, 1]
    cum = torch.cumsum(count, 0)
    total = int(cum[-1]) if cum.numel() else 0
    return PairPlan(k_lo[:, 1], k_lo[:, 0], n[:, 0].clamp_min(1), count, cum, total)


def _pairs(plan: PairPlan, k0: int, k1: int, height: int, width: int,
           n_faces: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Global pair numbers ``[k0, k1)`` -> flat face row ``g``, flat pixel ``b·H·W + i·W + j``,
    row ``i`` and column ``j`` (all ``(k1 − k0,)`` int64)."""
    k = torch.arange(k0, k1, device=plan.cum.device)
    g = torch.searchsorted(plan.cum, k, right=True)
    local = k - (plan.cum[g] - plan.count[g])
    wd = plan.width[g]
    i = plan.i0[g] + torch.div(local, wd, rounding_mode="floor")
    j = plan.j0[g] + local % wd
    pix = (torch.div(g, n_faces, rounding_mode="floor") * height + i) * width + j
    return g, pix, i, j


def rasterize_lean(tri_xy: Tensor, tri_z: Tensor, tex_flat: Tensor | None, res: int, height: int, width: int,
                   s: SoftSettings, with_background: bool, want_index: bool = False,
                   want_centroids: bool = False, chunk_pairs: int = 1 << 19, checkpoint: bool = True) -> Accum:
    """Lean SoftRas sums for faces ``tri_xy (B, F, 3, 2)``, depths ``tri_z (B, F, 3)``, optional
    flattened texture ``tex_flat (B·F·res², C)``; returns :class:`Accum` like the dense path."""
    bsz, n_faces = tri_xy.shape[:2]
    dt, dev = tri_xy.dtype, tri_xy.device
    n_pix = bsz * height * width
    xy_f = tri_xy.reshape(bsz * n_faces, 3, 2)
    z_f = tri_z.reshape(bsz * n_faces, 3)
    plan = plan_pairs(xy_f, height, width, s)
    chunks = [(k0, min(k0 + chunk_pairs, plan.total)) for k0 in range(0, plan.total, chunk_pairs)]

    table = face_table(xy_f, z_f, s.perspective_correct)  # (B·F, 19), once per face

    def terms(k0: int, k1: int, tab: Tensor) -> tuple[PairTerms, Tensor, Tensor, Tensor, Tensor]:
        g, pix, i, j = _pairs(plan, k0, k1, height, width, n_faces)
        px, py = pixel_centers_ndc(i, j, height, width, dt)
        return pair_terms(tab.index_select(0, g), px, py, s), g, pix, px, py

    neg_inf = torch.tensor(float("-inf"), dtype=dt, device=dev)
    face_index = _face_index(terms, chunks, n_pix, n_faces, table).view(bsz, -1) if want_index else None

    def omega_of(t: PairTerms, pix: Tensor, zmax: Tensor) -> Tensor:
        arg = torch.where(t.valid, (t.zn - zmax[pix]) / s.gamma, neg_inf)
        return t.prob * torch.exp(arg)

    n_ch = 0 if tex_flat is None else tex_flat.shape[1]

    def pixel_sums(k0: int, k1: int, tab: Tensor, tex: Tensor | None, zmax_old: Tensor) -> tuple[Tensor, Tensor]:
        t, g, pix, _, _ = terms(k0, k1, tab)
        with torch.no_grad():  # running softmax shift, as in an online softmax
            zmax = zmax_old.scatter_reduce(0, pix, torch.where(t.valid, t.zn, neg_inf), "amax")
        omega = omega_of(t, pix, zmax)
        cols = [omega.unsqueeze(-1), t.log_1m.unsqueeze(-1)]
        if tex is not None:
            rows, wts = texel_gather(t.w0, t.w1, g, res)
            cols.insert(0, omega.unsqueeze(-1) * interpolate_texels(tex, rows, wts))
        src = torch.cat(cols, dim=-1)
        return src.new_zeros(n_pix, n_ch + 2).index_add(0, pix, src), zmax

    use_ckpt = checkpoint and len(chunks) > 1
    zmax = torch.full((n_pix,), s.bg_eps, dtype=dt, device=dev)
    acc = torch.zeros(n_pix, n_ch + 2, dtype=dt, device=dev)
    if not chunks:  # nothing in view: keep the output connected to the inputs (zero gradients)
        acc = acc + sum(x.sum() * 0.0 for x in (table, tex_flat) if x is not None)
    for k0, k1 in chunks:
        part, zmax_new = run_chunk(use_ckpt, pixel_sums, k0, k1, table, tex_flat, zmax)
        # rescale the earlier softmax sums (all columns but Σ log(1 − D)) to the new shift
        rescale = torch.exp((zmax - zmax_new) / s.gamma).unsqueeze(-1)
        acc = torch.cat((acc[:, : n_ch + 1] * rescale, acc[:, n_ch + 1 :]), dim=-1) + part
        zmax = zmax_new
    num = acc[:, :n_ch].view(bsz, -1, n_ch) if tex_flat is not None else None
    den = acc[:, n_ch].view(bsz, -1)
    out = Accum(num, den, acc[:, n_ch + 1].view(bsz, -1), zmax.view(bsz, -1), face_index)
    if not want_centroids:
        return out

    z_norm, _ = pixel_normaliser(den, out.zmax, s, with_background)
    z_norm = z_norm.reshape(-1)

    def face_sums(k0: int, k1: int, tab: Tensor, zn: Tensor) -> Tensor:
        t, g, pix, px, py = terms(k0, k1, tab)
        w = omega_of(t, pix, zmax) / zn.index_select(0, pix)
        src = torch.stack((w * px, w * py, w), dim=-1)
        return src.new_zeros(bsz * n_faces, 3).index_add(0, g, src)

    fac = torch.zeros(bsz * n_faces, 3, dtype=dt, device=dev)
    if not chunks:
        fac = fac + z_norm.sum() * 0.0
    for k0, k1 in chunks:
        fac = fac + run_chunk(use_ckpt, face_sums, k0, k1, table, z_norm)
    mass = fac[:, 2]
    cen = centroids_from_sums(fac[:, :2], mass)
    return out._replace(centroids=cen.view(bsz, n_faces, 2), mass=mass.view(bsz, n_faces))


def run_chunk(use_checkpoint: bool, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, through activation checkpointing (recomputed in backward) when asked and a
    tensor argument needs gradients."""
    needs_grad = torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args)
    if use_checkpoint and needs_grad:
        return _checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)
    return fn(*args)


def _face_index(terms: Callable[..., tuple], chunks: list[tuple[int, int]], n_pix: int, n_faces: int,
                table: Tensor) -> Tensor:
    """Nearest covering face per pixel ``(n_pix,)`` (lowest index on ties, −1 for none), in two
    no-grad passes: the nearest covering depth, then the faces that reach it."""
    with torch.no_grad():
        zin = torch.full((n_pix,), float("-inf"), dtype=table.dtype, device=table.device)
        for k0, k1 in chunks:
            t, _, pix, _, _ = terms(k0, k1, table)
            zin.scatter_reduce_(0, pix, torch.where(t.inside, t.zn, float("-inf")), "amax")
        fid = torch.full((n_pix,), n_faces, dtype=torch.long, device=table.device)
        for k0, k1 in chunks:
            t, g, pix, _, _ = terms(k0, k1, table)
            hit = t.inside & (t.zn == zin[pix])
            fid.scatter_reduce_(0, pix, torch.where(hit, g % n_faces, n_faces), "amin")
        return torch.where(fid == n_faces, -1, fid)
