"""LIST overfit tests and quality floors on a sphere/box family (2 parameters: kind, size).

Overfit tests: 16×16 silhouettes (tests/list_fixtures.py), GT SDFs analytic, train-mode BatchNorm.
Held-out floors (32 px, eval mode, 16 training shapes, 4 held-out sizes): CoarseNet points must beat
the mean-shape cloud (the training cloud with the lowest mean Chamfer to the others), and the fine SDF
must beat the coarse points turned into a surface (union of balls of radius = mean nearest-neighbour
spacing of the predicted cloud, meshed on the same 32³ grid: :func:`ball_union_surface`), each by a
measured margin over seeds 0/1/2. The fine stage runs with ``st_bias_init: disn_camera`` and precise
BatchNorm statistics (see :func:`train_fine`). Chamfer-L2 (list scale ×10⁴). All tests here are
``slow``: minutes on 2 shared CPU cores (ResNet-18s at 32 px, 3D convs).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from sfd_lightning.geometry.io import Mesh, PointCloud
from sfd_lightning.metrics.evaluate import evaluate
from sfd_lightning.metrics.protocols import get_protocol
from sfd_lightning.modules.list_recon import ListCoarse, ListFine
from sfd_lightning.modules.list_recon.common import ball_union_surface, chamfer_squared, coarse_loss
from tests.list_fixtures import TINY_TREE, ShapeSet, iou_on_uniform, surface_points

pytestmark = pytest.mark.slow
PIXELS = 16
FLOOR_PIXELS = 32  # held-out floors: eval-mode BatchNorm needs >= 2x2 last maps
OVERFIT_STEPS = 60
VOX = [4, 8, 8, 8, 8]  # narrow voxel levels: the 3D convs dominate CPU cost
TRAIN = [("sphere", s) for s in np.linspace(0.15, 0.4, 8)] + [("box", s) for s in np.linspace(0.12, 0.3, 8)]
HELD_OUT = [("sphere", 0.2), ("sphere", 0.33), ("box", 0.17), ("box", 0.26)]
PROTOCOL = dataclasses.replace(get_protocol("list"), pred_samples=5000, gt_samples=5000, iou_points=20000)


def _batches(shapes, batch, steps, seed, pixels, queries=256, resample=False):
    data = ShapeSet(shapes, queries=queries, fps=256, pixels=pixels, seed=seed, resample=resample)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(len(data), generator=g)[:batch]
        yield default_collate([data[int(i)] for i in idx])


def train_coarse(shapes, steps: int, seed: int, batch: int = 4, lr: float = 1e-3, pixels: int = PIXELS) -> ListCoarse:
    torch.manual_seed(seed)
    model = ListCoarse(**TINY_TREE)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for b in _batches(shapes, batch, steps, seed, pixels):
        loss = coarse_loss(model(b["image"]), b["fps_points"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def train_fine(coarse: ListCoarse | None, shapes, steps: int, seed: int, batch: int = 4, lr: float = 1e-3,
               pixels: int = PIXELS, st_bias_init: str = "disn_camera", precise_bn: bool = True,
               resample: bool = False, queries: int = 256) -> ListFine:
    """Train the fine stage (warm started from ``coarse``). ``precise_bn``: afterwards recompute the
    trainable BatchNorm statistics over 20 training batches (:meth:`ListFine.precise_batchnorm`): at
    this short, high-LR budget the momentum-0.1 running averages lag the weights and eval mode fails
    (seed 2 without it: held-out CD 106.6, two empty meshes). ``resample``: fresh queries per step."""
    torch.manual_seed(seed)
    model = ListFine(vox_res=32, vox_channels=VOX, map_size=max(10, pixels * 5 // 8), test_pointnum=8192,
                     st_bias_init=st_bias_init, **TINY_TREE)
    if coarse is not None:  # warm start, as load_coarse does from a checkpoint
        for target, source in (("im_encoder", coarse.encoder), ("im_encoder2", coarse.encoder),
                               ("point_decoder", coarse.decoder)):
            getattr(model, target).load_state_dict(source.state_dict())
        model.freeze_coarse()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    first = last = None
    for b in _batches(shapes, batch, steps, seed + 1, pixels, queries=queries, resample=resample):
        losses = model._losses(b)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        first = float(losses["sdf"].detach()) if first is None else first
        last = float(losses["sdf"].detach())
    model.sdf_drop = first / max(last, 1e-12)
    if precise_bn:
        model.precise_batchnorm(_batches(shapes, batch, 20, 123, pixels, queries=queries))
    return model.eval()


def _gt(kind: str, size: float) -> PointCloud:
    return PointCloud(surface_points(kind, size, 5000, torch.Generator().manual_seed(1)).numpy().astype(np.float32))


def _cd(pred: Mesh | np.ndarray, kind: str, size: float) -> float:
    pred = pred if isinstance(pred, Mesh) else PointCloud(np.asarray(pred, np.float32))
    return evaluate(pred, _gt(kind, size), PROTOCOL)["metrics"]["list_cd_l2_x1e4"]


def _image(kind, size, pixels=PIXELS):
    return ShapeSet([(kind, size)], pixels=pixels)[0]["image"]


COARSE_STEPS, FINE_STEPS, FLOOR_BATCH = 100, 90, 8


def mean_shape_cloud() -> np.ndarray:
    """The training cloud with the lowest mean Chamfer to the other training clouds ``(256, 3)``."""
    clouds = [surface_points(k, s, 256, torch.Generator().manual_seed(7)) for k, s in TRAIN]
    mean_cost = [np.mean([float(chamfer_squared(a[None], b[None])) for b in clouds]) for a in clouds]
    return clouds[int(np.argmin(mean_cost))].numpy()


def coarse_numbers(coarse: ListCoarse) -> dict[str, float]:
    """Mean held-out CD-L2 ×10⁴ of the coarse points, the mean-shape cloud and the ball-union surface."""
    from sfd_lightning.geometry.extraction import extract_surface

    mean_shape = mean_shape_cloud()
    out = {"coarse": [], "mean_shape": [], "coarse_surface": []}
    for kind, size in HELD_OUT:
        points = coarse.predict_points(_image(kind, size, FLOOR_PIXELS))
        out["coarse"].append(_cd(points, kind, size))
        out["mean_shape"].append(_cd(mean_shape, kind, size))
        out["coarse_surface"].append(_cd(extract_surface(ball_union_surface(torch.from_numpy(points)), 32), kind, size))
    return {k: float(np.mean(v)) for k, v in out.items()}


def fine_numbers(fine: ListFine) -> dict[str, float]:
    """Mean held-out CD-L2 ×10⁴ of the fine SDF's 32³ mesh (failed meshes score the protocol's
    penalty) and its IoU on uniform points."""
    out = {"fine": [], "fine_iou": []}
    for kind, size in HELD_OUT:
        out["fine"].append(_cd(fine.mesh_from_image(_image(kind, size, FLOOR_PIXELS), 32), kind, size))
        out["fine_iou"].append(iou_on_uniform(fine.surface(_image(kind, size, FLOOR_PIXELS)).sdf, kind, size, 5000))
    return {k: float(np.mean(v)) for k, v in out.items()}


def floor_numbers(seed: int, coarse_steps: int = COARSE_STEPS, fine_steps: int = FINE_STEPS) -> dict[str, float]:
    """Train both stages on TRAIN and score HELD_OUT; returns the mean numbers of each method."""
    coarse = train_coarse(TRAIN, coarse_steps, seed, batch=FLOOR_BATCH, pixels=FLOOR_PIXELS)
    fine = train_fine(coarse, TRAIN, fine_steps, seed, batch=FLOOR_BATCH, pixels=FLOOR_PIXELS)
    return {**coarse_numbers(coarse), **fine_numbers(fine)}


def _train_mode_batch_outputs(model, shapes):
    """Predictions for the training batch itself with BatchNorm in train mode (batch statistics).

    At 16 px ResNet-18's last maps are 1×1, so eval-mode running variances (unbiased, from 2 values
    per channel) do not match the batch statistics; the overfit tests check the optimisation path
    on the training batch, the held-out floors below use eval mode at 32 px.
    """
    images = torch.stack([_image(k, s) for k, s in shapes])
    model.train()
    with torch.no_grad():
        if isinstance(model, ListCoarse):
            return model(images)
        context = model.encode(images)
        points = torch.rand(5000, 3, generator=torch.Generator().manual_seed(3)) - 0.5
        sdf = model.decode(context, points[None].expand(len(shapes), -1, -1)) / model.hparams.sdf_scale
        return points, sdf


def test_coarse_overfits_two_shapes():
    shapes = [("sphere", 0.3), ("box", 0.25)]
    initial = _train_mode_batch_outputs(train_coarse(shapes, 0, seed=0, batch=2), shapes)
    model = train_coarse(shapes, OVERFIT_STEPS, seed=0, batch=2)
    predictions = _train_mode_batch_outputs(model, shapes)
    for (kind, size), points, before in zip(shapes, predictions, initial):
        scores = evaluate(PointCloud(points.numpy().astype(np.float32)), _gt(kind, size), PROTOCOL)["metrics"]
        start = _cd(before.numpy(), kind, size)
        # measured (60 steps, sphere / box): seed 0 CD-L2 x1e4 1033 / 591 -> 37.5 / 37.1, F@5.0 0.51 / 0.50;
        # seed 1 -> 58.8 / 55.0, F@5.0 0.39 / 0.36
        assert scores["list_cd_l2_x1e4"] < start / 5 and scores["fscore_5.0"] > 0.3, (kind, start, scores)


def overfit_one_shape(kind: str, size: float, steps: int, seed: int = 0) -> tuple[float, float]:
    """Fit the fine stage to one shape (random coarse branch, 16 px, 512 fresh queries per step, the
    image twice per batch for BatchNorm) and return the IoU of ``{SDF <= 0}`` on 20,000 uniform points
    of [−0.5, 0.5]³ and the fall of L_sdf. Scored in train mode on the training batch: with two
    identical items the batch variance of per-image features is 0, so eval-mode running statistics
    cannot reproduce the fit (the held-out floors below use eval mode)."""
    from tests.list_fixtures import shape_sdf

    torch.manual_seed(seed)
    model = ListFine(vox_res=32, vox_channels=VOX, map_size=10, test_pointnum=8192, st_bias_init="disn_camera",
                     **TINY_TREE)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    data = ShapeSet([(kind, size)], queries=512, fps=256, pixels=PIXELS, seed=seed, resample=True)
    model.train()
    history = []
    for _ in range(steps):
        losses = model._losses(default_collate([data[0], data[0]]))
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append(float(losses["sdf"].detach()))
    points = torch.rand(20000, 3, generator=torch.Generator().manual_seed(5)) - 0.5
    with torch.no_grad():
        context = model.encode(torch.stack([data[0]["image"]] * 2))
        sdf = model.decode(context, points[None].expand(2, -1, -1))[0] / model.hparams.sdf_scale
    pred, gt = sdf <= 0, shape_sdf(kind, size, points) <= 0
    drop = np.mean(history[:5]) / max(np.mean(history[-5:]), 1e-12)  # L_sdf over fresh queries: 5-step means
    return float((pred & gt).sum()) / float((pred | gt).sum()), float(drop)


OVERFIT_ONE_STEPS = 100


#: measured (16 px, 100 steps, Adam 1e-3, st_bias_init disn_camera, seed 0; IoU on 20k uniform points):
#: sphere 0.3: 0.963 after 60 steps, 0.976 after 100; box 0.25: 0.922 / 0.933 (0.943 / 0.924 after
#: 150 / 200; a cosine LR decay or 2048 queries at σ 0.01 did not lift it: the sharp edges are the limit).
#: Through pytest (2 threads): sphere 0.973 (L_sdf fell 821x), box 0.932 (222x); ~18 s each when idle.
#: The sphere case runs in ``make test`` (tests/test_list.py::test_list_overfits_one_sphere).
@pytest.mark.parametrize("kind,size,min_iou", [("box", 0.25, 0.9)])
def test_list_overfits_one_shape(kind, size, min_iou):
    iou, drop = overfit_one_shape(kind, size, OVERFIT_ONE_STEPS)
    print(f"overfit {kind} {size}: IoU {iou:.4f}, L_sdf fell {drop:.0f}x")
    assert iou > min_iou and drop >= 5.0, (iou, drop)


#: Measured with exactly these settings (100 coarse + 90 fine steps at batch 8, 32 px, Adam 1e-3,
#: st_bias_init disn_camera, precise BN over 20 training batches; held-out mean CD-L2 ×10⁴ on 32³ meshes;
#: through pytest, 2 threads, machine nearly idle; ~55 s per seed; in brackets the same code at 1 thread):
#:   seed                          0             1             2
#:   mean-shape cloud            41.0          41.0          41.0
#:   coarse points               22.8 (27.5)   20.0 (22.3)   15.7 (16.1)
#:   coarse points as a surface  15.0 (19.2)   14.1 (15.4)   10.6 (11.3)
#:   fine SDF mesh                8.3 (7.1)     6.8 (6.1)     7.1 (8.3)
#:   fine / coarse surface        0.55 (0.37)   0.48 (0.39)   0.67 (0.73)
#:   fine IoU (5k uniform pts)    0.73 (0.74)   0.78 (0.79)   0.77 (0.73)
#: With the camera prior but without precise BN the runs gave 46.9 / 6.7 / 15122.9 (seed 2: two empty
#: meshes); with precise BN but without the camera prior (st_bias_init none) seed 2 gave 14.1 (ratio
#: 1.25; 55-86% of the queries projected off the map and the predicted depth h_z changed sign between images). The old defaults
#: (neither) gave 6.6 / 16.0 / 106.6 (1-thread runs; results depend on the thread count).
COARSE_MARGIN = 0.3  # coarse CD must be < (1 - margin) x mean-shape CD
FINE_MARGIN = 0.15  # fine CD must be < (1 - margin) x coarse-points-as-surface CD
FINE_MAX_FAILED_CD = 1000.0  # and every held-out image gives a mesh (a failed one alone adds 30000 / 4)


@pytest.fixture(scope="module")
def floor_coarse() -> ListCoarse:
    return train_coarse(TRAIN, COARSE_STEPS, 0, batch=FLOOR_BATCH, pixels=FLOOR_PIXELS)


def test_coarse_floor_on_held_out_shapes(floor_coarse):
    numbers = coarse_numbers(floor_coarse)
    assert numbers["coarse"] < (1 - COARSE_MARGIN) * numbers["mean_shape"], numbers


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fine_beats_coarse_surface_on_held_out_shapes(floor_coarse, seed):
    coarse = floor_coarse if seed == 0 else train_coarse(TRAIN, COARSE_STEPS, seed, batch=FLOOR_BATCH,
                                                         pixels=FLOOR_PIXELS)
    reference = coarse_numbers(coarse)
    numbers = fine_numbers(train_fine(coarse, TRAIN, FINE_STEPS, seed, batch=FLOOR_BATCH, pixels=FLOOR_PIXELS))
    print(f"seed {seed}: {reference} {numbers}")
    assert numbers["fine"] < FINE_MAX_FAILED_CD, numbers
    assert numbers["fine"] < (1 - FINE_MARGIN) * reference["coarse_surface"], (reference, numbers)
