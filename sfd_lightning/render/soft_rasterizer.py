"""Pure-PyTorch soft rasteriser with the SoftRas aggregation (Liu et al., ICCV 2019).

For a pixel centre ``p`` and a projected face ``f`` (screen triangle, vertex depths ``z``):

* coverage ``D = sigmoid(δ·d²/σ)``, ``d`` the distance from ``p`` to the triangle's edges (NDC),
  ``δ = +1`` inside, ``−1`` outside; outside pairs with ``D < dist_eps`` are culled (``D = 0``);
* clipped barycentrics ``w̃ = clamp(w, 1e-5, 1 − 1e-5)`` renormalised; depth ``z`` interpolated
  linearly or perspective-correctly (``1/z``); pairs with ``z ∉ [near, far]`` are ignored;
  normalised depth ``ẑ = (far − z)/(far − near)`` (1 at ``near``, larger = nearer);
* silhouette ``α = 1 − Π_f (1 − D_f)`` (as ``1 − exp Σ log(1 − D)`` with the stable
  ``log(1 − D) = −softplus(±d²/σ)``);
* colour ``C = (Σ_f ω_f c_f + ω_bg c_bg) / (Σ_f ω_f + ω_bg)`` with ``ω_f = D_f exp((ẑ_f − m)/γ)``,
  ``ω_bg = exp((bg_eps − m)/γ)``, ``m = max(bg_eps, max_f ẑ_f)`` (detached; the ratio does not
  depend on it); ``background=None`` drops the background term;
* ``c_f`` = the face colour, or its ``res × res`` texels interpolated at ``w̃``
  (layout in :func:`~sfd_lightning.render.soft_raster_math.texel_gather`);
* optional: hard face index (nearest face whose triangle holds the pixel centre, −1 if none) and
  per-face soft centroids ``q_f = Σ_p W_pf p / Σ_p W_pf``, ``W_pf = ω_pf / (Σ_f ω_pf + ω_bg)``.

Screen convention: NDC, x right, y **down**, pixel ``(i, j)`` centred at
``((2j + 1)/W − 1, (2i + 1)/H − 1)`` (see :mod:`sfd_lightning.render.mesh_camera`; an OpenCV
pixel ``(u, v)`` maps to ``x = (2u + 1)/W − 1``, ``y = (2v + 1)/H − 1``). Faces are double-sided
unless ``cull_backfaces``: then only front faces count, counter-clockwise on screen, i.e. with the
normal ``(v1 − v0) × (v2 − v0)`` towards the camera (outward-oriented closed meshes).

Two paths compute the same numbers: ``mode="dense"`` evaluates all ``B·F·H·W`` pairs (reference,
small images only), ``mode="lean"`` only the pairs inside each face's σ-grown pixel box, chunked
(:mod:`sfd_lightning.render.soft_raster_lean`). Inputs in fp16/bf16 are cast to fp32 and autocast
is disabled inside (σ, γ ≈ 1e-4 need fp32); fp64 stays fp64 (gradient checks).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from sfd_lightning.errors import InputError
from sfd_lightning.render.mesh_camera import image_hw
from sfd_lightning.render.soft_raster_dense import rasterize_dense
from sfd_lightning.render.soft_raster_lean import rasterize_lean
from sfd_lightning.render.soft_raster_math import Accum, SoftSettings, pixel_normaliser

__all__ = ["SoftRasterizer", "RasterOutput"]


class RasterOutput(NamedTuple):
    """image: ``(B, C + 1, H, W)`` colour channels then alpha (``(B, 1, H, W)`` alpha only without
    textures); face_index: ``(B, H, W)`` int64 or ``None``; centroids: ``(B, F, 2)`` NDC and
    centroid_mass: ``(B, F)`` (Σ_p W_pf, the face's share of the image) or ``None``."""

    image: Tensor
    face_index: Tensor | None = None
    centroids: Tensor | None = None
    centroid_mass: Tensor | None = None


class SoftRasterizer(nn.Module):
    """Batched differentiable soft rasteriser (no parameters; buffers only for the background).

    Args:
        image_size: ``S`` or ``(H, W)``.
        sigma: coverage sharpness in squared NDC units (UMR: 1e-5 at 512², ×(512/S)² at S).
        gamma: depth-softmax temperature (UMR: 1e-4).
        background: colour ``(C,)`` (or one value for all channels) mixed in with weight ``ω_bg``;
            ``None`` = no background term (empty pixels get colour 0).
        near, far: valid depth range (SoftRas: 1, 100).
        dist_eps: coverage below which outside pairs are culled (SoftRas 1e-4; UMR 1e-10).
        bg_eps: background's normalised depth (SoftRas 1e-3).
        perspective_correct: ``1/z`` interpolation (perspective input); ``False`` for weak perspective.
        cull_backfaces: skip faces facing away from the camera (default double-sided).
        mode: ``"lean"`` (pairs in σ-grown boxes, chunked) or ``"dense"`` (all pairs, tests only).
        chunk_pairs: pairs per chunk in the lean path (transient memory ≈ 0.4 kB per pair in fp32).
        checkpoint: recompute lean chunks in backward instead of storing them (when there are
            several chunks; one chunk is always stored).
        dense_pixel_chunk: dense mode only: pixels per block (all faces each, recomputed in
            backward) to bound its memory by ``B·F·dense_pixel_chunk`` pairs; ``None`` = one block.
    """

    def __init__(self, image_size: int | tuple[int, int] = 64, sigma: float = 1e-4, gamma: float = 1e-4,
                 background: Sequence[float] | float | None = (0.0, 0.0, 0.0), near: float = 1.0,
                 far: float = 100.0, dist_eps: float = 1e-4, bg_eps: float = 1e-3,
                 perspective_correct: bool = True, cull_backfaces: bool = False, mode: str = "lean",
                 chunk_pairs: int = 1 << 19, checkpoint: bool = True,
                 dense_pixel_chunk: int | None = None) -> None:
        super().__init__()
        self.height, self.width = image_hw(image_size)
        checks = [
            (self.height > 0 and self.width > 0, f"image_size {image_size} must be positive"),
            (sigma > 0 and gamma > 0, f"sigma ({sigma}) and gamma ({gamma}) must be > 0"),
            (0 <= near < far, f"need 0 <= near < far, got near={near}, far={far}"),
            (0 < dist_eps < 1, f"dist_eps {dist_eps} must be in (0, 1)"),
            (mode in ("lean", "dense"), f"mode {mode!r} must be 'lean' or 'dense'"),
            (chunk_pairs > 0, f"chunk_pairs {chunk_pairs} must be > 0"),
            (dense_pixel_chunk is None or dense_pixel_chunk > 0, f"dense_pixel_chunk {dense_pixel_chunk} must be > 0"),
        ]
        for ok, problem in checks:
            if not ok:
                raise InputError(None, f"SoftRasterizer: {problem}", "fix the renderer settings in the config")
        self.settings = SoftSettings(sigma, gamma, near, far, dist_eps, bg_eps, perspective_correct, cull_backfaces)
        self.mode = mode
        self.chunk_pairs = int(chunk_pairs)
        self.checkpoint = checkpoint
        self.dense_pixel_chunk = dense_pixel_chunk
        bg = None if background is None else torch.as_tensor(background, dtype=torch.float32).reshape(-1)
        self.register_buffer("background", bg, persistent=False)

    def extra_repr(self) -> str:
        return f"size=({self.height}, {self.width}), mode={self.mode}, {self.settings}"

    def forward(self, vertices: Tensor, faces: Tensor, textures: Tensor | None = None) -> Tensor:
        """Render ``(B, C + 1, H, W)`` colour + alpha (``(B, 1, H, W)`` alpha without textures).

        Args:
            vertices: ``(B, V, 3)`` NDC ``x, y`` (y down) and depth ``z`` (see module docstring).
            faces: ``(F, 3)`` or ``(B, F, 3)`` int64 vertex indices.
            textures: ``None``, per-face colours ``(B, F, C)`` or per-face texels ``(B, F, T, C)``
                with ``T = res²`` (layout in :func:`texel_gather`).
        """
        return self.rasterize(vertices, faces, textures).image

    def rasterize(self, vertices: Tensor, faces: Tensor, textures: Tensor | None = None,
                  return_face_index: bool = False, return_centroids: bool = False) -> RasterOutput:
        """Like :meth:`forward`, optionally with the hard face index and soft face centroids."""
        with torch.autocast(device_type=vertices.device.type, enabled=False):
            tri_xy, tri_z, tex_flat, res = self._prepare(vertices, faces, textures)
            args = (tri_xy, tri_z, tex_flat, res, self.height, self.width, self.settings,
                    self.background is not None, return_face_index, return_centroids)
            if self.mode == "dense":
                acc = rasterize_dense(*args, pixel_chunk=self.dense_pixel_chunk)
            else:
                acc = rasterize_lean(*args, chunk_pairs=self.chunk_pairs, checkpoint=self.checkpoint)
            return self._compose(acc, tex_flat is not None)

    def _prepare(self, vertices: Tensor, faces: Tensor, textures: Tensor | None
                 ) -> tuple[Tensor, Tensor, Tensor | None, int]:
        if vertices.dim() != 3 or vertices.shape[-1] != 3:
            raise ValueError(f"vertices must be (B, V, 3), got {tuple(vertices.shape)}")
        if not vertices.is_floating_point():
            raise ValueError("vertices must be floating point")
        if vertices.dtype in (torch.float16, torch.bfloat16):
            vertices = vertices.float()
        bsz, n_vert = vertices.shape[:2]
        if faces.dim() == 2:
            faces = faces.unsqueeze(0).expand(bsz, -1, -1)
        if faces.dim() != 3 or faces.shape[0] != bsz or faces.shape[-1] != 3:
            raise ValueError(f"faces must be (F, 3) or (B, F, 3) with B={bsz}, got {tuple(faces.shape)}")
        faces = faces.long()
        if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= n_vert):
            raise ValueError(f"face indices must lie in [0, {n_vert})")
        n_faces = faces.shape[1]
        idx = faces.reshape(bsz, n_faces * 3, 1).expand(-1, -1, 3)
        tri = vertices.gather(1, idx).view(bsz, n_faces, 3, 3)
        tex_flat, res = None, 1
        if textures is not None:
            if textures.dim() == 3:
                textures = textures.unsqueeze(2)
            n_tex = textures.shape[2] if textures.dim() == 4 else -1
            res = int(round(max(n_tex, 0) ** 0.5))
            if textures.dim() != 4 or textures.shape[:2] != (bsz, n_faces) or res * res != n_tex:
                raise ValueError(f"textures must be (B, F, C) or (B, F, R*R, C) with B={bsz}, F={n_faces}, "
                                 f"got {tuple(textures.shape)}")
            if self.background is not None and self.background.numel() not in (1, textures.shape[-1]):
                raise ValueError(f"background has {self.background.numel()} values for {textures.shape[-1]} channels")
            tex_flat = textures.to(vertices.dtype).reshape(-1, textures.shape[-1])
        return tri[..., :2], tri[..., 2], tex_flat, res

    def _compose(self, acc: Accum, textured: bool) -> RasterOutput:
        bsz = acc.den.shape[0]
        alpha = -torch.expm1(acc.log_1m)  # 1 − Π(1 − D), (B, P)
        chans = [alpha.unsqueeze(-1)]
        if textured:
            z_norm, w_bg = pixel_normaliser(acc.den, acc.zmax, self.settings, self.background is not None)
            num = acc.num
            if self.background is not None:
                num = num + w_bg.unsqueeze(-1) * self.background.to(num)
            chans.insert(0, num / z_norm.unsqueeze(-1))
        image = torch.cat(chans, dim=-1).view(bsz, self.height, self.width, -1).permute(0, 3, 1, 2)
        fidx = None if acc.face_index is None else acc.face_index.view(bsz, self.height, self.width)
        return RasterOutput(image.contiguous(), fidx, acc.centroids, acc.mass)
