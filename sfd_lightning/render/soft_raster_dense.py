"""Dense SoftRas reference path: every (face, pixel) pair, as broadcast tensors ``(B, F, P)``.

Memory is about 0.4 kB per pair in fp32 with forward + backward (``B·F·H·W`` pairs: 4 GB for
8 × 1280 faces at 32²). ``pixel_chunk`` splits the pixels into blocks (all faces each) that are
recomputed in backward, bounding memory by ``B·F·pixel_chunk`` pairs; the work stays dense.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sfd_lightning.render.soft_raster_lean import run_chunk
from sfd_lightning.render.soft_raster_math import (
    Accum,
    SoftSettings,
    centroids_from_sums,
    face_table,
    interpolate_texels,
    pair_terms,
    pixel_centers_ndc,
    pixel_normaliser,
    texel_gather,
)

__all__ = ["rasterize_dense"]


def rasterize_dense(tri_xy: Tensor, tri_z: Tensor, tex_flat: Tensor | None, res: int, height: int, width: int,
                    s: SoftSettings, with_background: bool, want_index: bool = False,
                    want_centroids: bool = False, pixel_chunk: int | None = None) -> Accum:
    """Reference path over all ``B·F·H·W`` pairs; arguments as in
    :func:`~sfd_lightning.render.soft_raster_lean.rasterize_lean`, plus ``pixel_chunk`` (pixels per
    block, ``None`` = all at once)."""
    bsz, n_faces = tri_xy.shape[:2]
    dt, dev = tri_xy.dtype, tri_xy.device
    ii, jj = torch.meshgrid(torch.arange(height, device=dev), torch.arange(width, device=dev), indexing="ij")
    px, py = pixel_centers_ndc(ii.reshape(-1), jj.reshape(-1), height, width, dt)  # (P,)
    table = face_table(tri_xy, tri_z, s.perspective_correct)  # (B, F, 19)
    n_ch = 0 if tex_flat is None else tex_flat.shape[1]
    neg_inf = torch.tensor(float("-inf"), dtype=dt, device=dev)

    def block(tab: Tensor, tex: Tensor | None, bx: Tensor, by: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Pixels ``bx, by (Pb,)`` -> per-pixel ``[Σωc, Σω, Σlog(1 − D), zmax]`` ``(B, Pb, C + 3)``,
        face index ``(B, Pb)`` (or empty) and per-face ``[ΣWx, ΣWy, ΣW]`` ``(B, F, 3)`` (or empty)."""
        t = pair_terms(tab.unsqueeze(2), bx, by, s)  # (B, F, Pb)
        zmax = torch.where(t.valid, t.zn, neg_inf).amax(1).clamp_min(s.bg_eps).detach()  # (B, Pb)
        omega = t.prob * torch.exp(torch.where(t.valid, (t.zn - zmax.unsqueeze(1)) / s.gamma, neg_inf))
        den = omega.sum(1)
        cols = [den, t.log_1m.sum(1), zmax]
        if tex is not None:
            face_flat = torch.arange(bsz * n_faces, device=dev).view(bsz, n_faces, 1)
            colour = interpolate_texels(tex, *texel_gather(t.w0, t.w1, face_flat, res))  # (B, F, Pb|1, C)
            cols = [(omega.unsqueeze(-1) * colour).sum(1)] + [c.unsqueeze(-1) for c in cols]
        else:
            cols = [c.unsqueeze(-1) for c in cols]
        fid = torch.empty(0, dtype=torch.long, device=dev)
        if want_index:
            best, idx = torch.where(t.inside, t.zn, neg_inf).max(1)
            fid = torch.where(best > neg_inf, idx, -1)
        fsum = torch.empty(0, dtype=dt, device=dev)
        if want_centroids:
            w = omega / pixel_normaliser(den, zmax, s, with_background)[0].unsqueeze(1)  # (B, F, Pb)
            fsum = torch.cat((w @ torch.stack((bx, by), -1), w.sum(2, keepdim=True)), dim=-1)
        return torch.cat(cols, dim=-1), fid, fsum

    n_pix = height * width
    step = n_pix if pixel_chunk is None else max(1, min(int(pixel_chunk), n_pix))
    spans = [(p0, min(p0 + step, n_pix)) for p0 in range(0, n_pix, step)]
    parts = [run_chunk(len(spans) > 1, block, table, tex_flat, px[p0:p1], py[p0:p1]) for p0, p1 in spans]
    pix = torch.cat([p[0] for p in parts], dim=1)
    num = pix[..., :n_ch] if tex_flat is not None else None
    out = Accum(num, pix[..., n_ch], pix[..., n_ch + 1], pix[..., n_ch + 2])
    if want_index:
        out = out._replace(face_index=torch.cat([p[1] for p in parts], dim=1))
    if want_centroids:
        fsum = parts[0][2]
        for p in parts[1:]:
            fsum = fsum + p[2]
        out = out._replace(centroids=centroids_from_sums(fsum[..., :2], fsum[..., 2]), mass=fsum[..., 2])
    return out
