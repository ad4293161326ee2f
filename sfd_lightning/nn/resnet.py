"""ResNet-18/34/50 written from the architecture (He et al. 2016; torchvision's "v1.5" Bottleneck
with the stride on the 3×3 conv), with torchvision's parameter names so that a local torchvision
checkpoint (``resnet18-f37072fd.pth`` …) loads with ``load_state_dict(strict=True)``.

Weights come only from a local file (``torch.load(path, map_location="cpu", weights_only=True)``);
nothing is ever downloaded. ``weights_path=None`` means random (Kaiming) initialisation.

Shapes: input ``(B, 3, H, W)``; stage strides 2 (conv1), 4 (maxpool + layer1), 8, 16, 32; the
global average pool is adaptive, so any ``H, W >= 1`` works (small images give 1×1 maps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from sfd_lightning.errors import InputError

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "build_resnet",
    "load_weights_file",
    "ARCHS",
    "ResNetEncoder",
    "ResNetFeatures",
    "check_and_load",
]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual connection (ResNet-18/34). ``(B,cin,H,W) -> (B,planes,H/s,W/s)``."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand ×4 (ResNet-50). ``(B,cin,H,W) -> (B,4·planes,H/s,W/s)``."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


ARCHS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nn.Module):
    """ImageNet ResNet trunk + classifier with torchvision parameter names.

    Modules: ``conv1, bn1, relu, maxpool, layer1..layer4, avgpool`` and ``fc`` (absent when
    ``include_fc=False``; then :meth:`forward` returns the pooled ``(B, 512·expansion)`` vector).
    """

    def __init__(
        self,
        block: type[nn.Module],
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        include_fc: bool = True,
    ) -> None:
        super().__init__()
        self.block = block
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], 1)
        self.layer2 = self._make_layer(128, layers[1], 2)
        self.layer3 = self._make_layer(256, layers[2], 2)
        self.layer4 = self._make_layer(512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.out_dim = 512 * block.expansion  # type: ignore[attr-defined]
        self.fc = nn.Linear(self.out_dim, num_classes) if include_fc else None
        self._init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        expansion = self.block.expansion  # type: ignore[attr-defined]
        downsample = None
        if stride != 1 or self.inplanes != planes * expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * expansion, stride), nn.BatchNorm2d(planes * expansion)
            )
        mods = [self.block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * expansion
        mods += [self.block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, num_classes)`` logits, or ``(B, out_dim)`` without ``fc``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return x if self.fc is None else self.fc(x)


def load_weights_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from a local ``.pth`` file (``weights_only=True``, CPU).

    Accepts a plain state dict or a dict holding one under ``"state_dict"``/``"model"``; strips a
    leading ``"module."`` (DataParallel). Raises :class:`InputError` when the file is missing,
    unreadable or holds no tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "ResNet weights file not found",
                         "pass a local torchvision checkpoint path, or weights_path=None for random init")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors come in many types
        raise InputError(p, f"cannot read ResNet weights ({type(exc).__name__}: {exc})",
                         "use a state dict saved with torch.save(model.state_dict(), path)") from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise InputError(p, "file does not hold a state dict of tensors",
                         "use a state dict saved with torch.save(model.state_dict(), path)")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def check_and_load(module: nn.Module, state: Mapping[str, Tensor], path: str | Path,
                   ignore: tuple[str, ...] = ()) -> None:
    """``module.load_state_dict(state, strict=True)`` after dropping keys starting with ``ignore``;
    any missing/unexpected key or shape mismatch becomes one :class:`InputError` line."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"shape mismatch ({'; '.join(shapes[:3])})")
        raise InputError(path, "weights do not match the architecture: " + ", ".join(parts),
                         "pass a torchvision checkpoint of the same arch (num_classes/include_fc must match)")
    module.load_state_dict(state, strict=True)


def build_resnet(arch: str, weights_path: str | Path | None = None, num_classes: int = 1000,
                 include_fc: bool = True) -> ResNet:
    """Build ``arch`` in ``ARCHS``; load a local torchvision state dict when ``weights_path`` is set.

    With ``include_fc=False`` the checkpoint's ``fc.*`` entries are ignored; otherwise they must
    match ``num_classes`` exactly (strict loading).
    """
    if arch not in ARCHS:
        raise InputError(None, f"unknown ResNet arch {arch!r}", f"use one of {sorted(ARCHS)}")
    block, layers = ARCHS[arch]
    model = ResNet(block, layers, num_classes=num_classes, include_fc=include_fc)
    if weights_path is not None:
        state = load_weights_file(weights_path)
        check_and_load(model, state, weights_path, ignore=() if include_fc else ("fc.",))
    return model


def resnet18(weights_path: str | Path | None = None, num_classes: int = 1000, include_fc: bool = True) -> ResNet:
    """ResNet-18 (BasicBlock ×[2,2,2,2], 11,689,512 parameters with the 1000-way fc)."""
    return build_resnet("resnet18", weights_path, num_classes, include_fc)


def resnet34(weights_path: str | Path | None = None, num_classes: int = 1000, include_fc: bool = True) -> ResNet:
    """ResNet-34 (BasicBlock ×[3,4,6,3], 21,797,672 parameters with the 1000-way fc)."""
    return build_resnet("resnet34", weights_path, num_classes, include_fc)


def resnet50(weights_path: str | Path | None = None, num_classes: int = 1000, include_fc: bool = True) -> ResNet:
    """ResNet-50 (Bottleneck ×[3,4,6,3], 25,557,032 parameters with the 1000-way fc)."""
    return build_resnet("resnet50", weights_path, num_classes, include_fc)


class ResNetFeatures(NamedTuple):
    """Multi-scale outputs of :class:`ResNetEncoder` for an input ``(B, 3, H, W)`` (``s`` = conv1 stride).

    c1: ``relu(bn1(conv1(x)))`` ``(B, 64, H/s, W/s)``; c2: ``layer1(maxpool(c1))`` ``(B, 64e, H/2s, W/2s)``;
    c3 ``(B, 128e, H/4s, ..)``; c4 ``(B, 256e, H/8s, ..)``; c5 ``(B, 512e, H/16s, ..)`` (e = block
    expansion: 1 for ResNet-18/34, 4 for ResNet-50; sizes rounded up); pooled: global average of c5
    ``(B, 512e)``; logits: ``fc(pooled)`` ``(B, num_classes)`` or ``None`` without ``fc``.
    """

    c1: Tensor
    c2: Tensor
    c3: Tensor
    c4: Tensor
    c5: Tensor
    pooled: Tensor
    logits: Tensor | None


class ResNetEncoder(ResNet):
    """ResNet trunk returning :class:`ResNetFeatures` (C1..C5, pooled vector, optional logits).

    Its ``state_dict`` keys are torchvision's (``conv1.weight``, ``layer1.0.conv1.weight`` …;
    ``fc.*`` only with ``include_fc=True``), so checkpoints move between this class and
    :func:`resnet18` unchanged.

    Args:
        arch: ``"resnet18" | "resnet34" | "resnet50"``.
        weights_path: local torchvision checkpoint or ``None`` (random init, never a download).
        pretrained_layers: ``"all"`` or comma-separated top-level names among ``conv1, bn1,
            layer1..layer4, fc`` that take their values from ``weights_path``; the others keep their
            random init (LIST: a fresh stride-1 ``conv1`` → ``"bn1,layer1,layer2,layer3,layer4,fc"``).
        conv1_stride: 2 (ImageNet) or 1 (LIST's full-resolution stem; same weight shape).
        include_fc: keep the ``fc`` classifier and return its logits.
        num_classes: classifier width when ``include_fc``.
    """

    LAYER_NAMES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc")

    def __init__(self, arch: str = "resnet18", weights_path: str | Path | None = None,
                 pretrained_layers: str | Sequence[str] = "all", conv1_stride: int = 2,
                 include_fc: bool = False, num_classes: int = 1000) -> None:
        if arch not in ARCHS:
            raise InputError(None, f"unknown ResNet arch {arch!r}", f"use one of {sorted(ARCHS)}")
        block, layers = ARCHS[arch]
        super().__init__(block, layers, num_classes=num_classes, include_fc=include_fc)
        if conv1_stride not in (1, 2):
            raise InputError(None, f"conv1_stride must be 1 or 2, got {conv1_stride}", "use 1 or 2")
        self.conv1.stride = (conv1_stride, conv1_stride)
        e = block.expansion  # type: ignore[attr-defined]
        self.out_channels = (64, 64 * e, 128 * e, 256 * e, 512 * e)
        names = self._parse_layers(pretrained_layers)
        if weights_path is not None:
            state = load_weights_file(weights_path)
            keep = tuple(f"{n}." for n in names if n != "fc" or include_fc)
            own = {k: v for k, v in self.state_dict().items() if not k.startswith(keep)}
            requested = {k: v for k, v in state.items() if k.startswith(keep)}
            # Strict on the requested layers (missing/unexpected/shape errors); others stay random.
            check_and_load(self, {**own, **requested}, weights_path)

    @classmethod
    def _parse_layers(cls, spec: str | Sequence[str]) -> tuple[str, ...]:
        items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
        items = [s for s in items if s]
        if items == ["all"]:
            return cls.LAYER_NAMES
        bad = [s for s in items if s not in cls.LAYER_NAMES]
        if bad:
            raise InputError(None, f"unknown pretrained_layers {bad}",
                             f"use 'all' or a comma list of {', '.join(cls.LAYER_NAMES)}")
        return tuple(items)

    def forward(self, x: Tensor) -> ResNetFeatures:  # type: ignore[override]
        """``(B, 3, H, W)`` (ImageNet-normalised) -> :class:`ResNetFeatures`."""
        c1 = self.relu(self.bn1(self.conv1(x)))
        c2 = self.layer1(self.maxpool(c1))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        pooled = torch.flatten(self.avgpool(c5), 1)
        logits = None if self.fc is None else self.fc(pooled)
        return ResNetFeatures(c1, c2, c3, c4, c5, pooled, logits)
