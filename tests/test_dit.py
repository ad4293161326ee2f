"""DIT units: warper/template shapes and init, code cap, losses, schedule, NT-Xent, legacy keys,
image encoder, and the bf16-mixed smoke (which submodules ran in bf16)."""

from __future__ import annotations

import math

import pytest
import torch

from sfd_lightning.modules.dit.contrastive import nt_xent
from sfd_lightning.modules.dit.losses import (DITSchedule, huber, point_pair_loss, pointwise_warp_loss, sdf_loss,
                                              soft_l1)
from sfd_lightning.modules.dit.networks import DITNetwork, LSTMWarper, TemplateDecoder, map_legacy_state_dict


def _net(**kw) -> DITNetwork:
    torch.manual_seed(0)
    return DITNetwork(**{"code_dim": 16, "warper_hidden": 32, "steps": 8, "template_dims": (32, 32), **kw})


def test_shapes_train_and_eval():
    net = _net()
    code, xyz = torch.randn(50, 16), torch.rand(50, 3) * 2 - 1
    out = net(code, xyz)
    assert len(out.stages) == 4 and len(out.sdfs) == 4
    assert all(s.shape == (50, 3) for s in out.stages) and all(s.shape == (50,) for s in out.sdfs)
    net.eval()
    final = net.sdf(code, xyz)
    assert final.shape == (50,)
    assert torch.allclose(final, net.sdf_decoder(out.stages[-1]))  # stages[-1] is the final point
    with pytest.raises(ValueError):
        LSTMWarper(16, 32, steps=6)


@pytest.mark.parametrize("hidden", [64, 512])
def test_warper_starts_as_identity(hidden):
    torch.manual_seed(1)
    warper = LSTMWarper(256, hidden, 8)
    code = torch.nn.functional.normalize(torch.randn(200, 256), dim=1)
    xyz = torch.rand(200, 3) * 2 - 1
    assert (warper(code, xyz)[-1] - xyz).abs().max() < 1e-3
    n = warper.lstm.bias_ih.numel()
    assert torch.all(warper.lstm.bias_ih[n // 4:n // 2] == 1) and torch.all(warper.lstm.bias_hh[n // 4:n // 2] == 1)
    params = sum(p.numel() for p in LSTMWarper(256, 512, 8).parameters())
    assert params == 1_583_104 + 3_078  # dit.md §3


def test_template_gets_no_latent():
    template = TemplateDecoder((256,) * 5)
    assert template.lin0.in_features == 3
    assert sum(p.numel() for p in template.parameters()) == 265_729  # dit.md §3
    net = _net()
    net.eval()
    # the code only acts through the warper: with the warper removed, codes change nothing
    xyz = torch.rand(20, 3)
    a = net.sdf_decoder(xyz)
    net.warper.forward = lambda code, x: [x] * 4  # type: ignore[assignment]
    assert torch.equal(net.sdf(torch.randn(20, 16), xyz), a)
    assert torch.equal(net.sdf(torch.randn(20, 16) * 5, xyz), a)


def test_code_norms_capped_and_own_lr_group():
    from sfd_lightning.modules.dit import DITAutoDecoder

    model = DITAutoDecoder(code_dim=8, warper_hidden=16, template_dims=(16,), num_scenes=5, lr_codes=0.123)
    with torch.no_grad():
        model.codes.weight.mul_(50.0)
    assert (model.codes.weight.norm(dim=1) > 1.5).all()
    looked_up = model.code(torch.arange(5))
    assert (looked_up.norm(dim=1) <= 1.0 + 1e-5).all()

    opt = model.configure_optimizers()["optimizer"]
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["codes"]["lr"] == pytest.approx(0.123)
    assert groups["codes"]["params"][0] is model.codes.weight
    assert len(groups) == 3


def test_soft_l1_asymmetry_all_sign_combinations():
    eps, lam = 0.01, 0.5
    for gt, pred in [(0.05, 0.02), (0.05, 0.08), (-0.05, -0.02), (-0.05, -0.08), (0.05, -0.05), (-0.05, 0.05)]:
        g, p = torch.tensor([gt]), torch.tensor([pred])
        expected = max(abs(pred - gt) - eps, 0) * (1 + lam * math.copysign(1, gt) * math.copysign(1, gt - pred))
        assert float(soft_l1(p, g, eps, lam)) == pytest.approx(expected, abs=1e-7)
    # clamping both sides: saturated pred and gt beyond ±δ -> zero loss
    assert float(sdf_loss([torch.tensor([0.5])] * 4, torch.tensor([0.3]), 0.1, 1)) == 0.0
    # curriculum off: plain clamped L1 summed / N
    assert float(sdf_loss([torch.tensor([0.0, 0.05])] * 4, torch.tensor([0.02, 0.0]), 0.1, 2, curriculum=False)) \
        == pytest.approx(0.035)


def test_huber_and_pointwise():
    n = torch.tensor([0.1, 0.25, 1.0])
    assert torch.allclose(huber(n), torch.tensor([0.005, 0.25 * 0.25 - 0.5 * 0.0625, 0.25 - 0.5 * 0.0625]))
    xyz = torch.zeros(4, 3)
    stages = [xyz + torch.tensor([0.1, 0, 0])] * 4
    assert float(pointwise_warp_loss(stages, xyz, 4)) == pytest.approx(0.005)


def test_point_pair_rigid_and_scale():
    torch.manual_seed(0)
    x = torch.rand(2, 64, 3)
    assert float(point_pair_loss(x + torch.tensor([0.3, -0.2, 0.1]), x, 128)) == pytest.approx(0.0, abs=1e-6)
    s = 2.0
    a = 64 // 8
    value = float(point_pair_loss(s * x, x, 1))
    expected = 2 * a * (64 - a) * (abs(s - 1) - 0.5)  # per pair relu(|s-1| - 0.5), up to the 1e-3 guard
    assert value == pytest.approx(expected, rel=2e-2)
    assert float(point_pair_loss(s * x, x, 1, clamp=0.1)) == pytest.approx(2 * a * (64 - a) * 0.1, rel=1e-4)


def test_schedule_ramps_and_lr():
    sch = DITSchedule()
    assert sch.pointwise_weight(1) == pytest.approx(0.005 * 9.9)
    assert sch.pointwise_weight(50) == pytest.approx(0.005 * 5)
    assert sch.pointwise_weight(100) == pytest.approx(0.005) and sch.pointwise_weight(200) == pytest.approx(0.005)
    assert sch.code_weight(1) == pytest.approx(1e-6) and sch.code_weight(50) == pytest.approx(5e-5)
    assert sch.code_weight(200) == pytest.approx(1e-4) and sch.pointpair_weight(100) == pytest.approx(1e-4)
    assert sch.lr_factor(499) == 1.0 and sch.lr_factor(500) == 0.5 and sch.lr_factor(1000) == 0.25
    assert sch.epoch(4, 123, 1000) == 5.0
    step = DITSchedule(ramp_unit="step")
    assert step.epoch(0, 999, 1000) == pytest.approx(2001)
    assert step.epoch(0, 49, 1000) == pytest.approx(100.05)  # a 100-epoch ramp ~ 5% of max_steps


def test_nt_xent_matches_direct_formula():
    torch.manual_seed(0)
    z1, z2 = torch.randn(3, 5), torch.randn(3, 5)
    tau = 0.07
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    total = 0.0
    for i in range(6):
        j = (i + 3) % 6
        sims = [float(z[i] @ z[k]) / tau for k in range(6) if k != i]
        total += -(float(z[i] @ z[j]) / tau - math.log(sum(math.exp(v) for v in sims)))
    assert float(nt_xent(z1, z2, tau)) == pytest.approx(total / 6, rel=1e-5)


def test_legacy_checkpoint_mapping():
    net = _net(template_dims=(8, 8))
    legacy = {}
    for key, value in net.state_dict().items():
        key = key.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v")
        legacy["module." + key] = value.clone() + 1.0
    fresh = _net(template_dims=(8, 8))
    fresh.load_state_dict(map_legacy_state_dict(legacy))
    assert torch.equal(fresh.sdf_decoder.lin0.parametrizations["weight"].original0,
                       net.sdf_decoder.lin0.parametrizations["weight"].original0 + 1)


def test_code_encoder_batch_of_one_and_small_images():
    from sfd_lightning.modules.dit.image_encoder import CodeEncoder

    enc = CodeEncoder(16, head="mlp").eval()
    assert enc(torch.rand(1, 3, 32, 32)).shape == (1, 16)


def test_bf16_mixed_step_runs_encoder_in_bf16_and_dit_in_fp32(tmp_path):
    import lightning.pytorch as pl

    from sfd_lightning.datamodules.dit_data import DITImageDataModule
    from sfd_lightning.modules.dit import DITImageEndToEnd

    net = {"code_dim": 16, "warper_hidden": 16, "steps": 4, "template_dims": [16, 16], "dropout": 0.0}
    model = DITImageEndToEnd(net=net, jitter=0.0, hue=0.0, freeze_trunk=False)
    seen: dict[str, torch.dtype] = {}

    def hook(name):
        def fn(module, inputs, output):
            seen[name] = (output[0] if isinstance(output, (list, tuple)) else output).dtype
        return fn
    model.encoder.trunk.layer2.register_forward_hook(hook("trunk"))
    model.encoder.head.register_forward_hook(hook("head"))
    model.net.warper.register_forward_hook(hook("warper"))
    model.net.sdf_decoder.register_forward_hook(hook("template"))
    original = model.training_step

    def step(batch, batch_idx):
        loss = original(batch, batch_idx)
        seen["loss"] = loss.dtype
        return loss
    model.training_step = step  # type: ignore[method-assign]
    dm = DITImageDataModule(categories=["chair"], image_size=32, batch_size=2, samples_per_scene=64,
                            train_views=[0], load_samples=True, val_split="none",
                            synthetic={"shapes": 16, "dominant_only": True})
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", precision="bf16-mixed", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path))
    trainer.fit(model, dm)
    assert seen["trunk"] == torch.bfloat16 and seen["head"] == torch.bfloat16
    assert seen["warper"] == torch.float32 and seen["template"] == torch.float32 and seen["loss"] == torch.float32


def test_two_micro_batches_average_to_the_full_batch():
    """Lightning divides each micro-batch loss by the accumulation factor: the mean of two halves'
    per-N losses must equal the full batch's (every term is a per-point or per-scene sum / N)."""
    from sfd_lightning.modules.dit.auto_decoder import dit_objective

    net = _net(template_dims=(16,), dropout=0.0)  # no dropout: both passes see the same network
    torch.manual_seed(3)
    codes = torch.randn(4, 16) * 0.3
    samples = torch.cat([torch.rand(4, 64, 3) * 2 - 1, torch.rand(4, 64, 1) * 0.2 - 0.1], dim=2)
    sch = DITSchedule()

    def grads(loss):
        net.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])

    full = grads(sum(dit_objective(net, codes, samples, sch, 30.0).values()))
    halves = [sum(dit_objective(net, codes[i:i + 2], samples[i:i + 2], sch, 30.0).values()) / 2 for i in (0, 2)]
    accumulated = grads(halves[0] + halves[1])
    assert torch.allclose(full, accumulated, atol=1e-6, rtol=1e-5)


def test_clip_to_ball_removes_surface_outside_the_frame_ball():
    """``bound_radius``: a slab that runs into the box corners stays inside the DeepSDF ball."""
    import numpy as np

    from sfd_lightning.geometry.extraction import extract_mesh
    from sfd_lightning.modules.dit.networks import DEEPSDF_BALL_RADIUS, clip_to_ball

    def slab(points: torch.Tensor) -> torch.Tensor:
        return points[:, 1].abs() - 0.1

    pts = torch.rand(500, 3) * 2 - 1
    assert torch.equal(clip_to_ball(slab(pts), pts, None), slab(pts))
    inside = pts[pts.norm(dim=1) < 0.5]
    assert torch.equal(clip_to_ball(slab(inside), inside, DEEPSDF_BALL_RADIUS), slab(inside))
    raw = extract_mesh(slab, [-1.0] * 3, [1.0] * 3, 24, mode="dense")
    clipped = extract_mesh(lambda p: clip_to_ball(slab(p), p, DEEPSDF_BALL_RADIUS), [-1.0] * 3, [1.0] * 3, 24,
                           mode="dense")
    assert np.linalg.norm(raw.vertices, axis=1).max() > 1.3
    assert np.linalg.norm(clipped.vertices, axis=1).max() <= DEEPSDF_BALL_RADIUS + 2.0 / 23
