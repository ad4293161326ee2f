"""SDF MLP and positional encoding."""

import torch

from sfd_lightning.nn.positional_encoding import PositionalEncoding
from sfd_lightning.nn.sdf_mlp import SDFMLP, sdf_with_gradient


def test_geometric_init_is_a_sphere_sdf():
    torch.manual_seed(0)
    net = SDFMLP(width=256, depth=8, skip_layers=(4,))
    x = torch.rand(20000, 3) * 2 - 1
    radius = x.norm(dim=1)
    with torch.no_grad():
        f = net(x)
    # Loose: the Neural-Pull init gives f ≈ a·‖x‖ − 0.5 with a ≈ 0.8 (the skip's 1/√2 shrinks it).
    A = torch.stack([radius, torch.ones_like(radius)], 1)
    slope, intercept = torch.linalg.lstsq(A, f[:, None]).solution.flatten().tolist()
    assert 0.6 < slope < 1.2 and abs(intercept + 0.5) < 0.05
    assert torch.corrcoef(torch.stack([f, radius]))[0, 1] > 0.95
    assert (f[radius < 0.2] < 0).float().mean() > 0.99
    assert (f[radius > 1.0] > 0).float().mean() > 0.99


def test_skip_layer_keeps_width_and_weight_norm_keys():
    net = SDFMLP(width=32, depth=4, skip_layers=(2,))
    assert net.layers[1].out_features == 32 - 3
    assert net.layers[2].in_features == 32
    keys = set(net.state_dict())
    assert "layers.0.parametrizations.weight.original0" in keys
    assert "layers.0.parametrizations.weight.original1" in keys
    assert net(torch.zeros(5, 3)).shape == (5,)


def test_positional_encoding_shapes_and_ramp():
    pe = PositionalEncoding(4)
    x = torch.rand(7, 3)
    assert pe(x).shape == (7, pe.out_dim) == (7, 27)
    pe.alpha.fill_(0.0)
    assert torch.allclose(pe(x)[:, 3:], torch.zeros(7, 24))
    pe.alpha.fill_(4.0)
    assert torch.allclose(pe.band_weights(), torch.ones(4))


def test_encoded_net_starts_as_function_of_xyz_only():
    torch.manual_seed(0)
    net = SDFMLP(width=64, depth=4, skip_layers=(2,), num_frequencies=6, weight_norm=False)
    x = torch.rand(100, 3)
    with torch.no_grad():
        f1 = net(x)
        net.encoding.alpha.fill_(0.0)  # silence every band: output must not change
        f2 = net(x)
    assert torch.allclose(f1, f2, atol=1e-6)


def test_sdf_with_gradient_matches_analytic_sphere():
    class Sphere(torch.nn.Module):
        def forward(self, p):
            return p.norm(dim=-1) - 0.5

    x = torch.randn(50, 3)
    f, g = sdf_with_gradient(Sphere(), x, create_graph=False)
    assert torch.allclose(g, x / x.norm(dim=1, keepdim=True), atol=1e-6)
    assert torch.allclose(f, x.norm(dim=1) - 0.5)


def test_weight_norm_matches_torch_parametrization_and_pickles():
    import pickle

    from torch.nn.utils.parametrizations import weight_norm

    from sfd_lightning.nn.weight_norm import WeightNormLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(5, 4)
    ours = WeightNormLinear(linear)
    reference = weight_norm(torch.nn.Linear(5, 4))
    reference.load_state_dict(ours.state_dict())  # identical keys and shapes
    x = torch.randn(3, 5)
    assert torch.allclose(ours(x), reference(x), atol=1e-6)
    assert torch.allclose(ours(x), linear(x), atol=1e-6)
    clone = pickle.loads(pickle.dumps(ours))
    assert torch.allclose(clone(x), ours(x))
