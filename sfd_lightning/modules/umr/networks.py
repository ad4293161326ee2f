"""UMR networks (methods/umr.md §3): encoder, "VAE" heads, shape, camera(s), texture flow, discriminator.

Every size derives from ``img_size`` and the template (never hard-coded): the encoder's flattened
width from ``S/32``, the shape output from the predicted-vertex count, the texture-flow decoder's
up-blocks from the UV image height, the discriminator's linear layer from ``S/16``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sfd_lightning.nn.resnet import build_resnet

__all__ = ["Encoder", "GaussianHeads", "ShapeMLP", "ShapeLinear", "SingleCamera", "MultiCamera",
           "TextureFlow", "Discriminator", "grad_reverse", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _lrelu(slope: float = 0.2) -> nn.LeakyReLU:
    return nn.LeakyReLU(slope)


class Encoder(nn.Module):
    """ResNet-18 conv1..layer4 -> conv 4×4 s2 (512→256) + BN + LReLU -> 2 × [FC + BN + LReLU] -> ``(B, feat_dim)``.

    Input ``(B, 3, S, S)`` in [0, 1] (ImageNet normalisation happens here). Below 64 px the layer4
    output is pooled to 2×2 so the strided conv stays valid.
    """

    def __init__(self, img_size: int, feat_dim: int = 200, weights_path: str | None = None) -> None:
        super().__init__()
        self.resnet = build_resnet("resnet18", weights_path, include_fc=False)
        grid = math.ceil(img_size / 32)
        self.pool = nn.AdaptiveAvgPool2d(2) if grid < 2 else nn.Identity()
        grid = max(grid, 2)
        self.conv = nn.Sequential(nn.Conv2d(512, 256, 4, stride=2, padding=1), nn.BatchNorm2d(256), _lrelu())
        flat = 256 * (grid // 2) ** 2
        self.fc = nn.Sequential(nn.Linear(flat, feat_dim), nn.BatchNorm1d(feat_dim), _lrelu(),
                                nn.Linear(feat_dim, feat_dim), nn.BatchNorm1d(feat_dim), _lrelu())
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, img: Tensor) -> Tensor:
        r = self.resnet
        x = (img - self.mean) / self.std
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        x = r.layer4(r.layer3(r.layer2(r.layer1(x))))
        x = self.conv(self.pool(x))
        return self.fc(torch.flatten(x, 1))


class GaussianHeads(nn.Module):
    """μ and log σ² MLPs (feat → feat → z_dim, LeakyReLU); ``z = μ + ε·exp(½ log σ²)`` when sampling."""

    def __init__(self, feat_dim: int = 200, z_dim: int = 350) -> None:
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(feat_dim, feat_dim), _lrelu(), nn.Linear(feat_dim, z_dim))
        self.logvar = nn.Sequential(nn.Linear(feat_dim, feat_dim), _lrelu(), nn.Linear(feat_dim, z_dim))

    def forward(self, feat: Tensor, sample: bool) -> Tensor:
        mu = self.mu(feat)
        if not sample:
            return mu
        return mu + torch.randn_like(mu) * torch.exp(0.5 * self.logvar(feat))


class ShapeMLP(nn.Module):
    """Stage-1 shape decoder: MLP ``z_dim → hidden… → 3·n_pred`` (LeakyReLU), output ``(B, n_pred, 3)``."""

    def __init__(self, z_dim: int, n_pred: int, hidden: Sequence[int] = (350, 700, 1400, 2800)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = z_dim
        for h in hidden:
            layers += [nn.Linear(width, h), _lrelu()]
            width = h
        layers.append(nn.Linear(width, 3 * n_pred))
        self.net = nn.Sequential(*layers)
        self.n_pred = n_pred

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(z.shape[0], self.n_pred, 3)


class ShapeLinear(nn.Module):
    """Stage-2 shape decoder: ``Linear(z_dim → 3·n_pred)``, weights N(0, 1e-4), default bias."""

    def __init__(self, z_dim: int, n_pred: int) -> None:
        super().__init__()
        self.fc = nn.Linear(z_dim, 3 * n_pred)
        nn.init.normal_(self.fc.weight, std=1e-4)
        self.n_pred = n_pred

    def forward(self, z: Tensor) -> Tensor:
        return self.fc(z).view(z.shape[0], self.n_pred, 3)


def _scale(x: Tensor) -> Tensor:
    return F.relu(x + 1.0) + 1e-12


CAMERA_INITS = ("identity", "upright")


def base_rotations(hypotheses: int, init: str) -> Tensor:
    """Start rotations ``(H, 4)`` (w, x, y, z) of the camera hypotheses.

    ``identity``: every hypothesis starts at the identity (the released code; its template's
    symmetry axis y is then the image's vertical axis, i.e. the first view looks along the
    template's up axis). ``upright``: the original's base rotations (built there but unused):
    90° about x, so the template's z axis points up in the image (NDC y down) and its symmetry
    plane faces the camera (a side view, x to the right), then 360°·h/H about the image's vertical
    axis (8 hypotheses: 45° steps) — ``R_h = R_y(360°·h/H)·R_x(90°)``.
    """
    from sfd_lightning.modules.umr.cameras import axis_angle_quat, quat_multiply

    if init not in CAMERA_INITS:
        raise ValueError(f"camera_init must be one of {CAMERA_INITS}, got {init!r}")
    if init == "identity":
        return torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(hypotheses, 1)
    upright = axis_angle_quat((1.0, 0.0, 0.0), torch.tensor(math.pi / 2))
    turns = axis_angle_quat((0.0, 1.0, 0.0), 2 * math.pi * torch.arange(hypotheses, dtype=torch.float32) / hypotheses)
    return quat_multiply(turns, upright.expand_as(turns))


class SingleCamera(nn.Module):
    """Stage-1 camera from ``feat``: ``(B, 1, 7)`` = ``[s, tx, ty, qw, qx, qy, qz]`` (unit quaternion).

    ``init="identity"``: PyTorch's default initialisation of the quaternion layer (the original);
    ``"upright"``: quaternion layer N(0, 0.02) with bias (1, 0, 0, 0), composed with the upright
    base rotation of :func:`base_rotations` (the first predictions are upright side views)."""

    def __init__(self, feat_dim: int = 200, init: str = "identity") -> None:
        super().__init__()
        self.quat = nn.Linear(feat_dim, 4)
        self.scale = nn.Linear(feat_dim, 1)
        self.trans = nn.Linear(feat_dim, 2)
        self.register_buffer("base_quat", base_rotations(1, init)[0], persistent=False)
        if init == "upright":
            nn.init.normal_(self.quat.weight, std=0.02)
            with torch.no_grad():
                self.quat.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))

    def forward(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        """Returns cameras ``(B, 1, 7)`` and probabilities ``(B, 1)`` (ones)."""
        from sfd_lightning.modules.umr.cameras import quat_multiply

        q = F.normalize(self.quat(feat), dim=-1)
        q = quat_multiply(q, self.base_quat.to(q.dtype).expand_as(q))
        cam = torch.cat([_scale(self.scale(feat)), self.trans(feat), q], dim=-1)
        return cam.unsqueeze(1), cam.new_ones(cam.shape[0], 1)


class MultiCamera(nn.Module):
    """Stage-2 ``H`` camera hypotheses: shared trunk, per-hypothesis heads; ``(B, H, 7)`` and softmax probs ``(B, H)``."""

    def __init__(self, feat_dim: int = 200, hypotheses: int = 8, azimuth_bias: bool = False,
                 init: str = "identity") -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(feat_dim, feat_dim), _lrelu(0.1), nn.Linear(feat_dim, feat_dim),
                                   _lrelu(0.1))
        self.heads = nn.ModuleList()
        for _ in range(hypotheses):
            head = nn.ModuleDict({
                "mlp": nn.Sequential(nn.Linear(feat_dim, feat_dim), nn.BatchNorm1d(feat_dim), _lrelu(),
                                     nn.Linear(feat_dim, feat_dim), nn.BatchNorm1d(feat_dim), _lrelu()),
                "quat": nn.Linear(feat_dim, 4), "logit": nn.Linear(feat_dim, 1),
                "scale": nn.Linear(feat_dim, 1), "trans": nn.Linear(feat_dim, 2)})
            self.heads.append(head)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        for head in self.heads:
            with torch.no_grad():
                head["quat"].bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        # optional (our option, CSM-style): hypothesis h starts at 360°·h/H about the template's y axis
        base = []
        for h in range(hypotheses):
            angle = 2 * math.pi * h / hypotheses if azimuth_bias else 0.0
            base.append([math.cos(angle / 2), 0.0, math.sin(angle / 2), 0.0])
        base_q = torch.tensor(base)
        if init != "identity":  # start rotations of base_rotations(), applied before the azimuth bias
            from sfd_lightning.modules.umr.cameras import quat_multiply

            base_q = quat_multiply(base_rotations(hypotheses, init), base_q)
        self.register_buffer("base_quat", base_q)

    def forward(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        from sfd_lightning.modules.umr.cameras import quat_multiply

        x = self.trunk(feat)
        cams, logits = [], []
        for h, head in enumerate(self.heads):
            y = head["mlp"](x)
            q = F.normalize(head["quat"](y), dim=-1)
            q = quat_multiply(q, self.base_quat[h].expand_as(q))
            cams.append(torch.cat([_scale(head["scale"](y)), head["trans"](y), q], dim=-1))
            logits.append(head["logit"](y))
        return torch.stack(cams, 1), torch.softmax(torch.cat(logits, -1), dim=-1)


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                 nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3), _lrelu(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), _lrelu())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TextureFlow(nn.Module):
    """``feat (B, feat_dim)`` -> flow ``(B, 2, H_uv, W_uv)`` in [−1, 1] (image coordinates, ``grid_sample`` x, y).

    FC widths ``fc_widths`` (the last is replaced by ``c0·4·8``), start grid ``c0 × 4 × 8``,
    ``log2(H_uv/4)`` up-blocks halving channels, conv3×3 → 2, tanh.
    """

    def __init__(self, feat_dim: int, uv_size: tuple[int, int], fc_widths: Sequence[int] = (8192, 8192),
                 c0: int = 256) -> None:
        super().__init__()
        widths = list(fc_widths[:-1]) + [c0 * 4 * 8]
        layers: list[nn.Module] = []
        width = feat_dim
        for w in widths:
            layers += [nn.Linear(width, w), nn.BatchNorm1d(w), _lrelu()]
            width = w
        self.fc = nn.Sequential(*layers)
        n_up = int(round(math.log2(uv_size[0] / 4)))
        if 4 * 2**n_up != uv_size[0] or uv_size[1] != 2 * uv_size[0]:
            raise ValueError(f"UV size {uv_size} must be (4·2^k, 8·2^k)")
        blocks, ch = [], c0
        for _ in range(n_up):
            blocks.append(_Up(ch, max(ch // 2, 2)))
            ch = max(ch // 2, 2)
        self.up = nn.Sequential(*blocks)
        self.out = nn.Conv2d(ch, 2, 3, padding=1)
        self.c0 = c0

    def forward(self, feat: Tensor) -> Tensor:
        x = self.fc(feat).view(feat.shape[0], self.c0, 4, 8)
        return torch.tanh(self.out(self.up(x)))


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lam: float) -> Tensor:  # noqa: ANN001
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        return -ctx.lam * grad, None


def grad_reverse(x: Tensor, lam: float) -> Tensor:
    """Identity forward, gradient × (−lam) backward (GAN through one optimiser)."""
    return _GradReverse.apply(x, lam)


class Discriminator(nn.Module):
    """conv s2 (in→32) ReLU, 32→64, 64→32, 32→32 (all s2, ReLU), conv1×1 → 1, Linear((S/16)² → 1); GRL on input."""

    def __init__(self, img_size: int, in_ch: int = 1, grl: float = 0.2) -> None:
        super().__init__()
        chans = [in_ch, 32, 64, 32, 32]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(32, 1, 1))
        self.conv = nn.Sequential(*layers)
        side = img_size
        for _ in range(4):
            side = (side + 1) // 2
        self.fc = nn.Linear(side * side, 1)
        self.grl = grl

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_ch, S, S)`` -> logits ``(B,)``."""
        x = grad_reverse(x, self.grl)
        return self.fc(torch.flatten(self.conv(x), 1)).squeeze(-1)
