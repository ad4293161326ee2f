"""ResNet-18/34/50 (nn/resnet.py): torchvision key names and shapes, output shapes, strict
round-trip of saved weights, clear errors for bad weight files."""

from __future__ import annotations

import pytest
import torch

from sfd_lightning.errors import InputError
from sfd_lightning.nn.resnet import ResNetEncoder, resnet18, resnet34, resnet50

# torchvision resnet18's 62 parameter tensors, written from the architecture:
# stem conv+bn (3), layer1 2 blocks x (2 conv + 2 bn x 2) (12), layer2..4 with a 1x1 downsample
# conv+bn in block 0 (15 each), fc (2).
_RESNET18_PARAMS: list[tuple[str, tuple[int, ...]]] = [
    ("conv1.weight", (64, 3, 7, 7)), ("bn1.weight", (64,)), ("bn1.bias", (64,)),
    ("layer1.0.conv1.weight", (64, 64, 3, 3)), ("layer1.0.bn1.weight", (64,)), ("layer1.0.bn1.bias", (64,)),
    ("layer1.0.conv2.weight", (64, 64, 3, 3)), ("layer1.0.bn2.weight", (64,)), ("layer1.0.bn2.bias", (64,)),
    ("layer1.1.conv1.weight", (64, 64, 3, 3)), ("layer1.1.bn1.weight", (64,)), ("layer1.1.bn1.bias", (64,)),
    ("layer1.1.conv2.weight", (64, 64, 3, 3)), ("layer1.1.bn2.weight", (64,)), ("layer1.1.bn2.bias", (64,)),
    ("layer2.0.conv1.weight", (128, 64, 3, 3)), ("layer2.0.bn1.weight", (128,)), ("layer2.0.bn1.bias", (128,)),
    ("layer2.0.conv2.weight", (128, 128, 3, 3)), ("layer2.0.bn2.weight", (128,)), ("layer2.0.bn2.bias", (128,)),
    ("layer2.0.downsample.0.weight", (128, 64, 1, 1)),
    ("layer2.0.downsample.1.weight", (128,)), ("layer2.0.downsample.1.bias", (128,)),
    ("layer2.1.conv1.weight", (128, 128, 3, 3)), ("layer2.1.bn1.weight", (128,)), ("layer2.1.bn1.bias", (128,)),
    ("layer2.1.conv2.weight", (128, 128, 3, 3)), ("layer2.1.bn2.weight", (128,)), ("layer2.1.bn2.bias", (128,)),
    ("layer3.0.conv1.weight", (256, 128, 3, 3)), ("layer3.0.bn1.weight", (256,)), ("layer3.0.bn1.bias", (256,)),
    ("layer3.0.conv2.weight", (256, 256, 3, 3)), ("layer3.0.bn2.weight", (256,)), ("layer3.0.bn2.bias", (256,)),
    ("layer3.0.downsample.0.weight", (256, 128, 1, 1)),
    ("layer3.0.downsample.1.weight", (256,)), ("layer3.0.downsample.1.bias", (256,)),
    ("layer3.1.conv1.weight", (256, 256, 3, 3)), ("layer3.1.bn1.weight", (256,)), ("layer3.1.bn1.bias", (256,)),
    ("layer3.1.conv2.weight", (256, 256, 3, 3)), ("layer3.1.bn2.weight", (256,)), ("layer3.1.bn2.bias", (256,)),
    ("layer4.0.conv1.weight", (512, 256, 3, 3)), ("layer4.0.bn1.weight", (512,)), ("layer4.0.bn1.bias", (512,)),
    ("layer4.0.conv2.weight", (512, 512, 3, 3)), ("layer4.0.bn2.weight", (512,)), ("layer4.0.bn2.bias", (512,)),
    ("layer4.0.downsample.0.weight", (512, 256, 1, 1)),
    ("layer4.0.downsample.1.weight", (512,)), ("layer4.0.downsample.1.bias", (512,)),
    ("layer4.1.conv1.weight", (512, 512, 3, 3)), ("layer4.1.bn1.weight", (512,)), ("layer4.1.bn1.bias", (512,)),
    ("layer4.1.conv2.weight", (512, 512, 3, 3)), ("layer4.1.bn2.weight", (512,)), ("layer4.1.bn2.bias", (512,)),
    ("fc.weight", (1000, 512)), ("fc.bias", (1000,)),
]


def _expected_state() -> dict[str, tuple[int, ...]]:
    """Parameters plus each BatchNorm's running_mean/var (C,) and num_batches_tracked ()."""
    out = dict(_RESNET18_PARAMS)
    for name, shape in _RESNET18_PARAMS:
        is_bn = name.endswith(".bias") and not name.startswith("fc.")
        if is_bn:
            prefix = name[: -len(".bias")]
            out[prefix + ".running_mean"] = shape
            out[prefix + ".running_var"] = shape
            out[prefix + ".num_batches_tracked"] = ()
    return out


def test_resnet18_keys_and_shapes_match_torchvision() -> None:
    assert len(_RESNET18_PARAMS) == 62
    model = resnet18()
    params = {k: tuple(v.shape) for k, v in model.named_parameters()}
    assert params == dict(_RESNET18_PARAMS)
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = _expected_state()
    assert len(expected) == 62 + 20 * 3  # 20 BatchNorms x 3 buffers
    assert state == expected
    # torchvision's published parameter counts
    assert sum(v.numel() for v in model.parameters()) == 11_689_512


def test_resnet34_50_parameter_counts() -> None:
    assert sum(p.numel() for p in resnet34().parameters()) == 21_797_672
    r50 = resnet50()
    assert sum(p.numel() for p in r50.parameters()) == 25_557_032
    state = r50.state_dict()
    assert tuple(state["layer1.0.conv3.weight"].shape) == (256, 64, 1, 1)
    assert tuple(state["layer1.0.downsample.0.weight"].shape) == (256, 64, 1, 1)
    assert tuple(state["layer2.0.conv2.weight"].shape) == (128, 128, 3, 3)  # v1.5: stride on the 3x3
    assert r50.layer2[0].conv2.stride == (2, 2) and r50.layer2[0].conv1.stride == (1, 1)


@pytest.mark.parametrize("size", [224, 64])
def test_output_shapes(size: int) -> None:
    x = torch.randn(1, 3, size, size)
    enc = ResNetEncoder("resnet18", include_fc=True, num_classes=10).eval()
    with torch.no_grad():
        feats = enc(x)
        # the classifier path of ResNet.forward gives the encoder's logits (same weights)
        assert torch.allclose(super(ResNetEncoder, enc).forward(x), feats.logits, atol=1e-5)
    s = size
    assert feats.c1.shape == (1, 64, s // 2, s // 2)
    assert feats.c2.shape == (1, 64, s // 4, s // 4)
    assert feats.c3.shape == (1, 128, s // 8, s // 8)
    assert feats.c4.shape == (1, 256, s // 16, s // 16)
    assert feats.c5.shape == (1, 512, s // 32, s // 32)
    assert feats.pooled.shape == (1, 512) and feats.logits.shape == (1, 10)


def test_encoder_variants_shapes() -> None:
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        f = ResNetEncoder("resnet18", conv1_stride=1).eval()(x)
        assert f.c1.shape == (1, 64, 32, 32) and f.c5.shape == (1, 512, 2, 2) and f.logits is None
        assert resnet18(include_fc=False).eval()(x).shape == (1, 512)
        f50 = ResNetEncoder("resnet50").eval()(torch.randn(1, 3, 64, 64))
    assert f50.c2.shape == (1, 256, 16, 16) and f50.c5.shape == (1, 2048, 2, 2)
    assert f50.pooled.shape == (1, 2048)


def test_saved_state_round_trips_strictly(tmp_path) -> None:
    src = resnet18()
    with torch.no_grad():  # make BN buffers non-default so they are checked too
        src.bn1.running_mean.uniform_()
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    dst = resnet18(weights_path=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    x = torch.randn(1, 3, 64, 64)
    src.eval(), dst.eval()
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
        enc = ResNetEncoder("resnet18", weights_path=str(path), include_fc=True).eval()
        assert torch.allclose(enc(x).logits, src(x))
    # without fc the checkpoint's fc entries are ignored
    trunk = resnet18(weights_path=str(path), include_fc=False)
    assert torch.equal(trunk.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    # partial: a fresh conv1, everything else pretrained
    part = ResNetEncoder("resnet18", weights_path=str(path),
                         pretrained_layers="bn1,layer1,layer2,layer3,layer4", conv1_stride=1)
    assert torch.equal(part.bn1.running_mean, src.bn1.running_mean)
    assert not torch.equal(part.conv1.weight, src.conv1.weight)
    assert set(part.state_dict()) == set(src.state_dict()) - {"fc.weight", "fc.bias"}
    # DataParallel prefix and {"state_dict": ...} wrapping are accepted
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, wrapped)
    assert torch.equal(resnet18(weights_path=str(wrapped)).fc.bias, src.fc.bias)


def test_bad_weight_files_raise_input_error(tmp_path) -> None:
    with pytest.raises(InputError, match="not found"):
        resnet18(weights_path=str(tmp_path / "missing.pth"))
    with pytest.raises(InputError, match="not found"):
        ResNetEncoder(weights_path=str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read"):
        resnet18(weights_path=str(junk))
    r34 = tmp_path / "r34.pth"
    torch.save(resnet34().state_dict(), r34)
    with pytest.raises(InputError, match="unexpected"):
        resnet18(weights_path=str(r34))
    r18 = tmp_path / "r18.pth"
    torch.save(resnet18().state_dict(), r18)
    with pytest.raises(InputError, match="shape mismatch"):
        resnet18(weights_path=str(r18), num_classes=10)
    with pytest.raises(InputError, match="unknown ResNet arch"):
        ResNetEncoder("resnet19")
    with pytest.raises(InputError, match="pretrained_layers"):
        ResNetEncoder(pretrained_layers="layer5")
