"""Neural-Pull pieces: query generation, the pull and its gradient, schedule, normalisation, bf16."""

import numpy as np
import pytest
import torch

from sfd_lightning.datamodules.point_cloud import PointCloudDataModule
from sfd_lightning.datamodules.query_sampling import (generate_queries, kth_neighbor_distance,
                                                      nearest_points, preset_recipe)
from sfd_lightning.modules.neural_pull import NeuralPull, pull_loss, pull_points, warmup_cosine
from sfd_lightning.nn.sdf_mlp import SDFMLP


def _sphere_points(n, radius=0.3, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal((n, 3))
    return (radius * p / np.linalg.norm(p, axis=1, keepdims=True)).astype(np.float32)


def test_sigma_and_targets_equal_brute_force():
    points = _sphere_points(1000)
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    brute_sigma = np.sort(d, axis=1)[:, 50]  # column 0 is the point itself
    assert np.allclose(kth_neighbor_distance(points, 50), brute_sigma, atol=1e-6)
    queries = points + 0.01 * np.random.default_rng(1).standard_normal(points.shape).astype(np.float32)
    brute = points[np.argmin(np.linalg.norm(queries[:, None] - points[None], axis=-1), axis=1)]
    assert np.array_equal(nearest_points(points, queries), brute)


def test_preset_formulas():
    used, recipe = preset_recipe("pytorch", 9544)
    assert used == 9540 and recipe[0][0] == 104
    assert recipe[0][1] == pytest.approx(0.25 * np.sqrt(9540 / 20000))
    assert preset_recipe("tf", 50_000) == (20_000, [(25, 2.0), (15, 1.0)])
    assert preset_recipe("paper", 777) == (777, [(25, 1.0)])
    qs = generate_queries(_sphere_points(3000), "pytorch", seed=0)
    assert qs.recipe["points_used"] == 3000 and len(qs.queries) == 3000 * (1_000_000 // 3000)
    # Per-point std is s·σ_i: check the spread of the noise around each point.
    rounds = qs.recipe["rounds"][0][0]
    offsets = qs.queries.reshape(rounds, 3000, 3) - qs.points_used[None]
    measured = offsets.std(axis=(0, 2))
    expected = recipe_scale = 0.25 * np.sqrt(3000 / 20000) * qs.sigma
    assert np.median(measured / expected) == pytest.approx(1.0, abs=0.05)
    assert recipe_scale.shape == (3000,)


def test_tf_preset_on_small_cloud_is_a_clear_error(tmp_path):
    from sfd_lightning.errors import InputError

    with pytest.raises(InputError, match="20,000"):
        generate_queries(_sphere_points(500), "tf", source=tmp_path / "x.npy")


def test_pull_gradient_gradcheck_float64():
    torch.manual_seed(0)
    net = SDFMLP(width=8, depth=3, skip_layers=(2,), weight_norm=True).double()
    queries = (torch.rand(6, 3, dtype=torch.float64) - 0.5).requires_grad_(True)
    targets = torch.rand(6, 3, dtype=torch.float64) - 0.5
    params = [p for p in net.parameters()]

    def loss_of(q, *flat):
        pulled, _ = pull_points(net, q, create_graph=True)
        return pull_loss(pulled, targets)

    assert torch.autograd.gradcheck(loss_of, (queries,), eps=1e-6, atol=1e-5)
    # Gradients reach the network through f AND through the normalised gradient direction.
    pulled, _ = pull_points(net, queries, create_graph=True)
    grads = torch.autograd.grad(pull_loss(pulled, targets), params, allow_unused=True)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_pull_moves_queries_onto_an_analytic_surface():
    class Sphere(torch.nn.Module):
        def forward(self, p):
            return p.norm(dim=-1) - 0.3

    q = torch.randn(200, 3) * 0.5
    pulled, _ = pull_points(Sphere(), q, create_graph=False)
    assert torch.allclose(pulled.norm(dim=1), torch.full((200,), 0.3), atol=1e-5)
    assert torch.allclose(pulled / pulled.norm(dim=1, keepdim=True), q / q.norm(dim=1, keepdim=True), atol=1e-5)


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 100) == 0.0
    assert warmup_cosine(5, 10, 100) == 0.5
    assert warmup_cosine(10, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100) == pytest.approx(0.0)


def test_normalisation_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    points = (rng.random((500, 3)) * [3.0, 1.0, 2.0] + [10.0, -4.0, 7.0]).astype(np.float32)
    np.save(tmp_path / "cloud.npy", points)
    dm = PointCloudDataModule(path=str(tmp_path / "cloud.npy"), max_queries=10_000, batch_size=100)
    dm.setup("fit")
    lo, hi = dm.normalized_points.min(0), dm.normalized_points.max(0)
    assert (hi - lo).max() == pytest.approx(1.0, abs=1e-6)
    assert np.allclose((lo + hi) / 2, 0, atol=1e-6)
    back = dm.normalized_points * dm.scale + dm.center
    assert np.allclose(back, points, atol=1e-5)
    batch = next(iter(dm.train_dataloader()))
    assert batch["queries"].shape == (100, 3) and batch["targets"].dtype == torch.float32
    # The model's surface handle maps the normalised frame back to the input frame.
    model = NeuralPull(width=16, depth=2, skip_layers=())
    model.data_center.copy_(torch.as_tensor(dm.center))
    model.data_scale.fill_(dm.scale)
    handle = model.surface()
    mapped = handle.map_to_original(torch.as_tensor(dm.normalized_points[:10]))
    assert torch.allclose(mapped, torch.as_tensor(points[:10]), atol=1e-4)


def test_bf16_mixed_keeps_the_sdf_network_and_pull_in_fp32(tmp_path):
    import lightning.pytorch as pl

    np.save(tmp_path / "cloud.npy", _sphere_points(2000))
    dm = PointCloudDataModule(path=str(tmp_path / "cloud.npy"), max_queries=20_000, batch_size=500,
                              steps_per_epoch=2)
    model = NeuralPull(width=32, depth=3, skip_layers=(2,))
    dtypes: set[torch.dtype] = set()
    for layer in model.network.layers:
        layer.register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype))
    losses: list[torch.Tensor] = []
    original = model.training_step

    def recording_step(batch, batch_idx):
        loss = original(batch, batch_idx)
        losses.append(loss.detach())
        return loss

    model.training_step = recording_step
    trainer = pl.Trainer(max_steps=2, precision="bf16-mixed", accelerator="cpu", logger=False,
                         enable_checkpointing=False, limit_val_batches=0, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    assert dtypes == {torch.float32}
    assert losses and all(l.dtype == torch.float32 for l in losses)
