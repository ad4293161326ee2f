"""Per (face, pixel) terms of the SoftRas aggregation, shared by the dense and the lean path.

Every function here is elementwise over broadcastable leading dimensions ``...``: the dense path
calls :func:`pair_terms` with per-face tables ``(B, F, 1, 19)`` against pixels ``(1, 1, P)``, the
lean path with table rows gathered per pair ``(N, 19)`` against ``(N,)``. Running the very same
operations in both paths is what makes them agree to rounding.

Conventions (see :mod:`sfd_lightning.render.soft_rasterizer`): screen coordinates are NDC with x to
the right and y **down**, pixel ``(i, j)`` (row, column) has its centre at
``((2j + 1)/W − 1, (2i + 1)/H − 1)``; depth ``z`` grows away from the camera (smaller = nearer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "SoftSettings",
    "PairTerms",
    "Accum",
    "pair_terms",
    "face_table",
    "FACE_COLUMNS",
    "texel_gather",
    "interpolate_texels",
    "pixel_centers_ndc",
    "pixel_normaliser",
    "centroids_from_sums",
]

_AREA_EPS = 1e-10  # |2·area| floor (keeps barycentrics finite for degenerate faces)
_BARY_CLIP = 1e-5  # clipped barycentrics w̃ ∈ [1e-5, 1 − 1e-5] for depth and texture
# (``clamp_min().clamp_max()`` below: same values and gradients as ``clamp(lo, hi)``, ~6× faster on CPU)


@dataclass(frozen=True)
class SoftSettings:
    """Scalar parameters of the soft rasteriser.

    sigma: sharpness of the coverage sigmoid, in squared NDC units (scale with 1/S²).
    gamma: softmax temperature of the depth aggregation (normalised-depth units).
    near, far: depth range; pairs whose interpolated depth is outside are ignored.
    dist_eps: pairs outside a face with ``D < dist_eps`` are culled (``D := 0``), i.e.
        ``d² ≥ sigma·ln(1/dist_eps − 1)``.
    bg_eps: normalised depth of the background in the softmax.
    perspective_correct: interpolate depth (and texture barycentrics) with ``1/z`` weights
        (perspective input); ``False`` = linear in screen space (orthographic / weak perspective).
    cull_backfaces: drop faces whose screen winding is clockwise in the y-down image, i.e. whose
        normal ``(v1 − v0) × (v2 − v0)`` points away from the camera (``False`` = double-sided).
    """

    sigma: float = 1e-4
    gamma: float = 1e-4
    near: float = 1.0
    far: float = 100.0
    dist_eps: float = 1e-4
    bg_eps: float = 1e-3
    perspective_correct: bool = True
    cull_backfaces: bool = False

    @property
    def cull_d2(self) -> float:
        """Squared-distance threshold beyond which an outside pair is culled."""
        return self.sigma * max(math.log(1.0 / self.dist_eps - 1.0), 0.0)


class PairTerms(NamedTuple):
    """Per-pair outputs, each of the broadcast shape ``...``.

    prob: coverage ``D = sigmoid(±d²/σ)`` (0 for invalid pairs); log_1m: ``log(1 − D)`` (0 for
    invalid pairs); zn: normalised depth ``(far − z)/(far − near)`` (larger = nearer); valid: pair
    takes part; inside: pixel centre strictly inside the projected triangle (and valid);
    w0, w1: clipped (and, if set, perspective-corrected) barycentrics of vertices 0 and 1.
    """

    prob: Tensor
    log_1m: Tensor
    zn: Tensor
    valid: Tensor
    inside: Tensor
    w0: Tensor
    w1: Tensor


def pixel_centers_ndc(i: Tensor, j: Tensor, height: int, width: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """NDC centres ``(x, y)``, each ``(...)``, of pixel rows ``i`` and columns ``j`` (integer tensors)."""
    x = (2 * j + 1).to(dtype) / width - 1.0
    y = (2 * i + 1).to(dtype) / height - 1.0
    return x, y


#: columns of :func:`face_table`
FACE_COLUMNS = 19


def face_table(tri_xy: Tensor, tri_z: Tensor, perspective_correct: bool) -> Tensor:
    """Per-face quantities ``(..., 19)`` computed once per face (differentiable):
    vertices ``ax, ay, bx, by, cx, cy``, depths ``z_a, z_b, z_c`` (their inverses with
    ``perspective_correct``), edges ``ab, bc, ca`` (x, y each), their inverse squared lengths and
    ``1/area2`` (signed; ``area2 = (b − a) × (c − a)``, ``|area2|`` floored at 1e-10)."""
    a, b, c = tri_xy.unbind(-2)
    e_ab, e_bc, e_ca = b - a, c - b, a - c
    area = e_ab[..., 0] * (-e_ca[..., 1]) - e_ab[..., 1] * (-e_ca[..., 0])
    floor = torch.where(area < 0, -_AREA_EPS, _AREA_EPS).to(area.dtype)
    area = torch.where(area.abs() < _AREA_EPS, floor, area)
    zq = 1.0 / tri_z.clamp_min(1e-12) if perspective_correct else tri_z
    edges = torch.cat((e_ab, e_bc, e_ca), dim=-1)  # (..., 6)
    inv_ee = 1.0 / torch.stack([(e * e).sum(-1) for e in (e_ab, e_bc, e_ca)], -1).clamp_min(1e-30)
    return torch.cat((a, b, c, zq, edges, inv_ee, (1.0 / area).unsqueeze(-1)), dim=-1)


def _seg_dist2(dx: Tensor, dy: Tensor, ex: Tensor, ey: Tensor, inv_ee: Tensor) -> Tensor:
    """Squared distance from a pixel to the segment ``[u, u + e]`` given ``d = u − p``."""
    t = (-(dx * ex + dy * ey) * inv_ee).clamp_min(0.0).clamp_max(1.0)
    qx = dx + t * ex
    qy = dy + t * ey
    return qx * qx + qy * qy


def _log1m_sigmoid(x: Tensor) -> Tensor:
    """``log(1 − sigmoid(x)) = −softplus(x) = −(max(x, 0) + log1p(exp(−|x|)))``; ``|x|`` is capped at
    60 inside the exponential (error < 1e-26) so no subnormal numbers reach ``exp``/``log1p``
    (they are ~100× slower on CPUs; ``F.softplus`` hits them for the typical ``|d²/σ| ≈ 100``)."""
    return -(x.clamp_min(0.0) + torch.log1p(torch.exp(-x.abs().clamp_max(60.0))))


def pair_terms(table: Tensor, px: Tensor, py: Tensor, s: SoftSettings) -> PairTerms:
    """SoftRas terms for faces ``table (..., 19)`` (:func:`face_table`) against pixel centres
    ``px, py (...)`` (shapes broadcast; see :class:`PairTerms`)."""
    ax, ay, bx, by, cx, cy, za, zb, zc, abx, aby, bcx, bcy, cax, cay, iab, ibc, ica, inv_area = table.unbind(-1)
    dax, day, dbx, dby, dcx, dcy = ax - px, ay - py, bx - px, by - py, cx - px, cy - py
    w0 = (dbx * dcy - dby * dcx) * inv_area
    w1 = (dcx * day - dcy * dax) * inv_area
    w2 = (dax * dby - day * dbx) * inv_area
    inside = (w0 > 0) & (w1 > 0) & (w2 > 0)

    d2 = torch.minimum(
        torch.minimum(_seg_dist2(dax, day, abx, aby, iab), _seg_dist2(dbx, dby, bcx, bcy, ibc)),
        _seg_dist2(dcx, dcy, cax, cay, ica),
    )
    x = torch.where(inside, d2, -d2) / s.sigma
    valid = inside | (d2 < s.cull_d2)

    lo, hi = _BARY_CLIP, 1.0 - _BARY_CLIP
    w0, w1, w2 = (w.clamp_min(lo).clamp_max(hi) for w in (w0, w1, w2))
    if s.perspective_correct:  # za.. hold 1/z: z = 1/Σ w̃_i/z_i, w'_i = (w̃_i/z_i)·z
        w0, w1, w2 = w0 * za, w1 * zb, w2 * zc
        z = 1.0 / (w0 + w1 + w2)
        w0, w1 = w0 * z, w1 * z
    else:
        norm = 1.0 / (w0 + w1 + w2)
        w0, w1, w2 = w0 * norm, w1 * norm, w2 * norm
        z = w0 * za + w1 * zb + w2 * zc
    valid = valid & (z >= s.near) & (z <= s.far)
    if s.cull_backfaces:
        valid = valid & (inv_area < 0)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    prob = torch.where(valid, torch.sigmoid(x), zero)
    log_1m = torch.where(valid, _log1m_sigmoid(x), zero)
    zn = (s.far - z) / (s.far - s.near)
    return PairTerms(prob, log_1m, zn, valid, inside & valid, w0, w1)


def texel_gather(w0: Tensor, w1: Tensor, face_flat: Tensor, res: int) -> tuple[Tensor, Tensor]:
    """Texel rows and weights that interpolate a face texture at barycentrics ``(w0, w1, 1 − w0 − w1)``.

    Texture layout (``res × res`` texels per face, ``T = res²``): texel ``t = a·res + b`` holds the
    value at the surface point ``(a/(res−1))·v0 + (b/(res−1))·v1 + (1 − (a+b)/(res−1))·v2``
    (rows with ``a + b > res − 1`` lie outside the face and are never read). The grid of texels is
    split into triangles and interpolated linearly inside the one that holds ``(w0, w1)``, so the
    colour is continuous and piecewise linear in the barycentrics. ``res == 1`` = one colour per face.

    Args:
        w0, w1: ``(...)`` barycentrics of vertices 0 and 1.
        face_flat: ``(...)`` integer row of the face in the flattened ``(B·F)`` face list.
        res: texels per face side.

    Returns:
        rows ``(..., K)`` into the flattened ``(B·F·T, C)`` texture and weights ``(..., K)``
        (``K = 3``, or ``K = 1`` with the face's shape for ``res == 1``).
    """
    base = face_flat * (res * res)
    if res == 1:  # one colour per face: a single row with weight 1
        rows = base.unsqueeze(-1)
        return rows, torch.ones(rows.shape, dtype=w0.dtype, device=w0.device)
    u = w0 * (res - 1)
    v = w1 * (res - 1)
    i = u.detach().floor().clamp_min(0).clamp_max(res - 2)
    j = v.detach().floor().clamp_min(0).clamp_max(res - 2)
    fu, fv = u - i, v - j
    i, j = i.long(), j.long()
    upper = (fu + fv) > 1.0
    r00 = base + i * res + j
    r10 = r00 + res
    r01 = r00 + 1
    r11 = r10 + 1
    rows = torch.stack((torch.where(upper, r11, r00), r10, r01), dim=-1)
    wts = torch.stack(
        (
            torch.where(upper, fu + fv - 1.0, 1.0 - fu - fv),
            torch.where(upper, 1.0 - fv, fu),
            torch.where(upper, 1.0 - fu, fv),
        ),
        dim=-1,
    )
    return rows, wts


class Accum(NamedTuple):
    """Per-pixel sums produced by either path (``P = H·W`` pixels, row-major).

    num ``(B, P, C)`` Σ ω·colour (``None`` without textures); den ``(B, P)`` Σ ω; log_1m ``(B, P)``
    Σ log(1 − D); zmax ``(B, P)`` the detached softmax shift ``max(bg_eps, max ẑ)``; face_index
    ``(B, P)`` int64 nearest covering face or −1; centroids ``(B, F, 2)`` and mass ``(B, F)``.
    """

    num: Tensor | None
    den: Tensor
    log_1m: Tensor
    zmax: Tensor
    face_index: Tensor | None = None
    centroids: Tensor | None = None
    mass: Tensor | None = None


def pixel_normaliser(den: Tensor, zmax: Tensor, s: SoftSettings, with_background: bool) -> tuple[Tensor, Tensor]:
    """Softmax denominator ``Z = Σω + ω_bg`` and ``ω_bg = exp((bg_eps − zmax)/γ)`` per pixel.

    Without a background term ``ω_bg = 0`` and ``Z`` is ``Σω`` (1 where no face contributes, so
    empty pixels get colour 0 and finite gradients).
    """
    if with_background:
        w_bg = torch.exp((s.bg_eps - zmax) / s.gamma)
        return den + w_bg, w_bg
    return torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den)


#: faces whose total soft weight Σ_p W_pf is below this get the centroid Σ_p W_pf·p (≈ 0); it keeps
#: 1/mass² finite in backward (fp32 masses reach subnormals for hidden faces).
MIN_CENTROID_MASS = 1e-12


def centroids_from_sums(weighted_xy: Tensor, mass: Tensor) -> Tensor:
    """Soft centroids ``(..., 2)`` = Σ_p W_pf·p / Σ_p W_pf from the sums ``(..., 2)`` and ``(...)``."""
    safe = torch.where(mass > MIN_CENTROID_MASS, mass, torch.ones_like(mass))
    return weighted_xy / safe.unsqueeze(-1)


def interpolate_texels(tex_flat: Tensor, rows: Tensor, wts: Tensor) -> Tensor:
    """Colour ``(..., C)`` = Σ_k wts[..., k]·tex_flat[rows[..., k]] for :func:`texel_gather`'s
    ``rows, wts (..., K)`` and the flattened texture ``(B·F·T, C)`` (unrolled over the small K:
    reductions over a size-3 axis are slow on CPU)."""
    texels = tex_flat.index_select(0, rows.reshape(-1)).view(*rows.shape, tex_flat.shape[-1])
    colour = texels[..., 0, :] * wts[..., 0:1]
    for k in range(1, rows.shape[-1]):
        colour = colour + texels[..., k, :] * wts[..., k : k + 1]
    return colour
