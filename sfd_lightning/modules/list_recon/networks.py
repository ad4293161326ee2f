"""Networks of LIST (methods/list.md §3): image encoder, voxel branch, spatial transformer, heads.

Frames and axis order (pitfall 2): queries ``q (B, N, 3)`` are (x, y, z) in [−0.5, 0.5]³; voxel
volumes ``(B, C, R, R, R)`` are indexed ``[x][y][z]`` = (D, H, W); ``grid_sample`` takes its last
coordinate axis as (W, H, D), so queries are passed as ``(z, y, x)·2`` with ``align_corners=True``
(node ``i`` of ``linspace(−0.5, 0.5, R)`` sits at normalised ``−1 + 2i/(R−1)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sfd_lightning.errors import InputError
from sfd_lightning.nn.resnet import ResNetEncoder

#: ResNet-18 layers taken from pretrained weights; conv1 is a fresh stride-1 conv (LIST).
PRETRAINED_LAYERS = "bn1,layer1,layer2,layer3,layer4,fc"


class ImageEncoder(nn.Module):
    """LIST ResEncoder: ResNet-18 with a stride-1 conv1, global 128-d code and five feature maps.

    ``(B, 3, H, W)`` -> ``(global (B, latent_dim), maps [f0 (B,64,H,W), f1 (B,64,H/2,W/2),
    f2 (B,128,H/4,..), f3 (B,256,H/8,..), f4 (B,512,H/16,..)])``; global = Linear(1000 -> latent)
    of the ImageNet fc logits (no nonlinearity). ``weights_path``: local torchvision checkpoint
    (conv1 stays random) or ``None``.
    """

    def __init__(self, latent_dim: int = 128, weights_path: str | None = None) -> None:
        super().__init__()
        self.backbone = ResNetEncoder("resnet18", weights_path=weights_path, pretrained_layers=PRETRAINED_LAYERS,
                                      conv1_stride=1, include_fc=True, num_classes=1000)
        self.head = nn.Linear(1000, latent_dim)
        self.map_channels = sum(self.backbone.out_channels)

    def forward(self, image: Tensor) -> tuple[Tensor, list[Tensor]]:
        features = self.backbone(image)
        return self.head(features.logits), [features.c1, features.c2, features.c3, features.c4, features.c5]


def check_vox_res(vox_res: int) -> int:
    """The voxel encoder pools 5 times after storing 5 levels: R must be a power of two >= 32."""
    res = int(vox_res)
    if res < 32 or res & (res - 1):
        raise InputError(None, f"vox_res {vox_res} is not a power of two >= 32 (the last MaxPool3d of the "
                         "voxel encoder needs a 2^k grid at the 5th level)", "use 32, 64 or 128")
    return res


def voxel_indices(points: Tensor, res: int) -> Tensor:
    """Nearest node of ``linspace(−0.5, 0.5, R)`` per axis: ``round((p + 0.5)(R − 1))`` clamped,
    ``(B, N, 3)`` float -> ``(B, N, 3)`` long."""
    return torch.round((points.detach().float() + 0.5) * (res - 1)).long().clamp_(0, res - 1)


def voxelize(points: Tensor, res: int) -> Tensor:
    """Binary occupancy ``(B, 1, R, R, R)`` float32 indexed [x][y][z] of points ``(B, N, 3)``
    (non-differentiable; flat index ``i·R² + j·R + k``, x slowest)."""
    batch = points.shape[0]
    idx = voxel_indices(points, res)
    flat = (idx[..., 0] * res + idx[..., 1]) * res + idx[..., 2]
    grid = torch.zeros(batch, res ** 3, device=points.device, dtype=torch.float32)
    grid.scatter_(1, flat, 1.0)
    return grid.view(batch, 1, res, res, res)


class VoxelEncoder(nn.Module):
    """Binary grid ``(B, 1, R, R, R)`` -> refined occupancy ``(B, 1, R, R, R)`` (sigmoid) and the
    feature pyramid ``[occ, 16 @ R, 32 @ R/2, 64 @ R/4, 128 @ R/8, 128 @ R/16]`` (369 channels)."""

    def __init__(self, channels: Sequence[int] = (16, 32, 64, 128, 128)) -> None:
        super().__init__()
        if len(channels) != 5:
            raise InputError(None, f"vox_channels needs 5 widths (one per stored level), got {list(channels)}",
                             "use e.g. [16, 32, 64, 128, 128]")
        self.refine = nn.Sequential(
            nn.Conv3d(1, 1, 3, padding=1), nn.ReLU(), nn.BatchNorm3d(1),
            nn.Conv3d(1, 1, 3, padding=1), nn.ReLU(), nn.BatchNorm3d(1),
            nn.Conv3d(1, 1, 3, padding=1))
        blocks, c_in = [], 1
        for c in channels:
            blocks.append(nn.Sequential(nn.Conv3d(c_in, c, 3, padding=1), nn.ReLU(),
                                        nn.Conv3d(c, c, 3, padding=1), nn.ReLU(), nn.BatchNorm3d(c)))
            c_in = c
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.MaxPool3d(2)
        self.channels = 1 + sum(channels)

    def forward(self, grid: Tensor) -> tuple[Tensor, list[Tensor]]:
        occupancy = torch.sigmoid(self.refine(grid))
        pyramid, x = [occupancy], occupancy
        for block in self.blocks:
            x = block(x)
            pyramid.append(x)
            x = self.pool(x)  # after the last level it feeds nothing, but runs (as the original)
        return occupancy, pyramid


def voxel_offsets(displacement: float, device: torch.device | None = None) -> Tensor:
    """The 7 sampling offsets ``(7, 3)`` in normalised grid units: 0 and ±d per axis."""
    offsets = torch.zeros(7, 3, device=device)
    for axis in range(3):
        offsets[1 + 2 * axis, axis] = -displacement
        offsets[2 + 2 * axis, axis] = displacement
    return offsets


def sample_voxel_features(pyramid: Sequence[Tensor], queries: Tensor, displacement: float = 0.0722) -> Tensor:
    """Trilinear features at ``q`` and ``q ± d`` per axis from every pyramid level.

    Args:
        pyramid: volumes ``(B, C_l, R_l, R_l, R_l)`` indexed [x][y][z].
        queries: ``(B, N, 3)`` xyz in [−0.5, 0.5]³.
        displacement: ``d`` in normalised grid units ([−1, 1] spans the box).
    Returns:
        ``(B, 7·ΣC_l, N)``, channel-major (each channel's 7 samples adjacent).
    """
    batch, count, _ = queries.shape
    grid = queries.flip(-1) * 2.0  # (z, y, x)·2 -> grid_sample's (W, H, D)
    offsets = voxel_offsets(displacement, queries.device).flip(-1).to(grid.dtype)
    grid = (grid[:, None, :, :] + offsets[None, :, None, :]).unsqueeze(1)  # (B, 1, 7, N, 3)
    features = [F.grid_sample(level, grid.to(level.dtype), mode="bilinear", padding_mode="border",
                              align_corners=True) for level in pyramid]  # (B, C, 1, 7, N)
    return torch.cat(features, dim=1).reshape(batch, -1, count)


def project(queries: Tensor, transform: Tensor, eps: float = 1e-8) -> Tensor:
    """Perspective projection ``uv = h_xy / (h_z + eps)`` with ``h = [q, 1]·M``.

    ``queries (B, N, 3)``, ``transform (B, 4, 3)`` -> ``(B, N, 2)`` in map pixels (unclamped).
    """
    homogeneous = torch.cat([queries, torch.ones_like(queries[..., :1])], dim=-1)
    h = torch.bmm(homogeneous, transform)
    return h[..., :2] / (h[..., 2:] + eps)


def perceptual_pool(maps: Sequence[Tensor], queries: Tensor, transform: Tensor, map_size: int = 137) -> Tensor:
    """Local image features of the projected queries.

    Every map is resized to ``map_size²`` (bilinear, align_corners=True); ``uv`` from
    :func:`project` is clamped to ``[0, S − 1]`` and normalised by ``(uv − c)/c``, ``c = (S − 1)/2``;
    ``grid_sample`` bilinear, zero padding, align_corners=True. Returns ``(B, ΣC, N)``.
    """
    centre = (map_size - 1) / 2.0
    uv = project(queries.float(), transform.float()).clamp(0.0, map_size - 1.0)
    grid = ((uv - centre) / centre).unsqueeze(2)  # (B, N, 1, 2)
    pooled = []
    for feature in maps:
        resized = F.interpolate(feature, size=(map_size, map_size), mode="bilinear", align_corners=True)
        pooled.append(F.grid_sample(resized, grid.to(resized.dtype), mode="bilinear", padding_mode="zeros",
                                    align_corners=True)[..., 0])
    return torch.cat(pooled, dim=1)


class PointMLP(nn.Module):
    """Coarse points ``(B, P, 3)`` -> global feature ``(B, 512)``: 1×1 convs 3→64→256→512 with BN +
    ReLU (Xavier-normal), max over points."""

    def __init__(self, widths: Sequence[int] = (64, 256, 512)) -> None:
        super().__init__()
        layers, c_in = [], 3
        for c in widths:
            conv = nn.Conv2d(c_in, c, 1)
            nn.init.xavier_normal_(conv.weight)
            layers += [conv, nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        self.net = nn.Sequential(*layers)
        self.out_dim = c_in

    def forward(self, points: Tensor) -> Tensor:
        x = self.net(points.transpose(1, 2).unsqueeze(-1))  # (B, C, P, 1)
        return x.amax(dim=(2, 3))


#: ``st_bias_init`` choices: ``none`` (LIST: default init, no prior) or ``disn_camera``.
ST_BIAS_INITS = ("none", "disn_camera")
#: The prior camera of ``disn_camera``: a mean DISN "easy" view (methods/list.md §2.1): 35 mm lens on
#: a 32 mm sensor, elevation 25°, distance 0.825·1.75, azimuth 45° (views cover all azimuths; 45°
#: keeps every axis visible), looking at the origin with +y up.
DISN_PRIOR = {"focal_mm": 35.0, "sensor_mm": 32.0, "elevation": 25.0, "azimuth": 45.0, "distance": 0.825 * 1.75,
              "frame_scale": 1.0 / 1.5}


def disn_camera_matrix(map_size: int, focal_mm: float = 35.0, sensor_mm: float = 32.0, elevation: float = 25.0,
                       azimuth: float = 45.0, distance: float = 0.825 * 1.75, frame_scale: float = 1.0 / 1.5) -> Tensor:
    """Projective matrix ``M (4, 3)`` of a DISN-style camera in perceptual-map pixels.

    ``h = [q, 1]·M``, ``uv = h_xy / h_z`` as in :func:`project`: ``M = (K·[R | t]·diag(s, s, s, 1))ᵀ``
    with ``K`` for a ``map_size²`` map (``f = focal/sensor·(S − 1)``, principal point ``(S − 1)/2``,
    the map pixel grid of ``align_corners=True``), ``R, t`` of
    :func:`~sfd_lightning.geometry.cameras.spherical_camera` (OpenCV: x right, y down, z forward), and
    ``s = frame_scale`` mapping LIST's longest-side-1 frame to the renders' diagonal-1 frame
    (≈ 1/1.5 for a typical ShapeNet bounding box; a prior, not a calibration). Every query of
    [−0.5, 0.5]³ has depth ≥ ``distance − s·√3/2`` > 0, so the perspective divide is well defined.
    """
    import numpy as np

    from sfd_lightning.geometry.cameras import intrinsics_from_focal_mm, spherical_camera

    size = int(map_size)
    K = intrinsics_from_focal_mm(focal_mm, sensor_mm, size - 1, size - 1)
    K[0, 2] = K[1, 2] = (size - 1) / 2.0
    cam = spherical_camera(azimuth, elevation, distance, K, size, size)
    P = K @ np.concatenate([cam.R, np.asarray(cam.t, dtype=np.float64).reshape(3, 1)], axis=1)  # (3, 4)
    P = P @ np.diag([frame_scale, frame_scale, frame_scale, 1.0])
    return torch.from_numpy(P.T.copy()).float()


class SpatialTransformer(nn.Module):
    """``[coarse feature, image code]`` ``(B, in_dim)`` -> projective matrix ``M (B, 4, 3)``
    (never supervised). BatchNorm1d: training batches need >= 2 items.

    ``bias_init`` (``(4, 3)`` or None): prior matrix put into the last layer's bias, whose weights are
    scaled by ``weight_scale``, so every image starts near the prior projection (spec §6
    ``st_bias_init: disn_camera``). None keeps PyTorch's default init (LIST: no prior; the predicted
    depth ``h_z`` then takes either sign per image and most queries project off the map).
    """

    def __init__(self, in_dim: int = 640, hidden: int = 128, bias_init: Tensor | None = None,
                 weight_scale: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2), nn.BatchNorm1d(hidden),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.BatchNorm1d(hidden),
                                 nn.Linear(hidden, 12))
        if bias_init is not None:
            last = self.net[-1]
            with torch.no_grad():
                last.weight.mul_(weight_scale)
                last.bias.copy_(bias_init.reshape(12).to(last.bias.dtype))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features).view(-1, 4, 3)


class SDFDecoder(nn.Module):
    """Per-query features ``(B, C, N)`` -> ``sdf_scale · SDF`` ``(B, N)``: Conv1d C→512→256→256→1, ReLU."""

    def __init__(self, in_channels: int = 3610, widths: Sequence[int] = (512, 256, 256)) -> None:
        super().__init__()
        layers, c_in = [], in_channels
        for c in widths:
            layers += [nn.Conv1d(c_in, c, 1), nn.ReLU()]
            c_in = c
        layers.append(nn.Conv1d(c_in, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)[:, 0]


def weights_path_or_none(path: str | None) -> str | None:
    """Validate an optional local weights path early (one-line error naming the file)."""
    if path is None:
        return None
    if not Path(path).is_file():
        raise InputError(path, "ResNet-18 weights file not found", "pass a local torchvision resnet18 .pth or null")
    return path
