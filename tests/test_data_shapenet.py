"""ShapeNet-style and Pix3D-style data: synthetic writers, readers, DataModules, checks, prepare-sdf.

One tiny tree per module (2 categories x 3 shapes, 2 views at 32 px) is written through the
``sfd data synth shapenet`` CLI in-process and read back through the real-format readers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sfd_lightning.datamodules.shapenet import ShapeNetImageDataModule, ShapeNetSDFDataModule
from sfd_lightning.datamodules.shapenet_files import (ShapeNetLayout, read_farthest_points, read_image,
                                                      read_list_samples, read_lst, read_normalization,
                                                      read_render_metadata, read_sdf_samples, read_split_json,
                                                      read_surface_samples, read_testlist)
from sfd_lightning.errors import InputError
from sfd_lightning.geometry.io import Mesh, load_mesh, save_mesh
from sfd_lightning.synthetic.shape_families import (DOMINANT, PARAM_RANGES, SYNSETS, default_params, in_frame,
                                                    make_shape, sample_params)
from sfd_lightning.synthetic.writers.shapenet_layout import write_h5, write_npz
from sfd_lightning.tools import data as data_cli

CATEGORIES = ("chair", "airplane")
SHAPES, VIEWS, SIZE, SAMPLES, LIST_POINTS, FPS = 3, 2, 32, 4000, 1024, 128
MESH_RES = 40


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth_shapenet")
    code = data_cli.main(["synth", "shapenet", "--out", str(root), "--categories", ",".join(CATEGORIES),
                          "--shapes", str(SHAPES), "--views", str(VIEWS), "--image_size", str(SIZE),
                          "--samples", str(SAMPLES), "--list_points", str(LIST_POINTS), "--surface_points", "2000",
                          "--fps_points", str(FPS), "--mesh_resolution", str(MESH_RES), "--test_fraction", "0.34"])
    assert code == 0
    return root


def _records(root: Path) -> dict:
    return json.loads((root / ".datasources.json").read_text())["instances"]


def _field(record: dict):
    frame = record["frame"]
    return in_frame(make_shape(record["category"], record["params"]), frame["scale"], np.asarray(frame["offset"]))


# ----------------------------------------------------------------------------- shape families


def test_families_sample_within_ranges_and_vary():
    rng = np.random.default_rng(0)
    for category in SYNSETS:
        a, b = sample_params(category, rng), sample_params(category, rng, dominant_only=True)
        for name, (low, high, default) in PARAM_RANGES[category].items():
            assert low <= a[name] <= high and low <= b[name] <= high
            if name not in DOMINANT[category]:
                assert b[name] == default
        assert 2 <= len(DOMINANT[category]) <= 3
        points = np.random.default_rng(1).uniform(-0.6, 0.6, (2000, 3))
        assert np.abs(make_shape(category, a)(points) - make_shape(category, b)(points)).max() > 0.01
    with pytest.raises(InputError, match="unknown chair parameters"):
        make_shape("chair", {"wings": 1.0})


def test_chair_is_y_up_with_back_at_minus_z():
    p = default_params("chair")
    chair = make_shape("chair", p)
    lo, hi = chair.bounds()
    assert np.argmax(hi - lo) == 1  # tallest along y
    y0 = -(p["seat_height"] + p["back_height"]) / 2
    tilt = np.radians(p["back_tilt"])
    pivot = np.array([0.0, y0 + p["seat_height"] - 0.06, -p["seat_depth"] / 2 + 0.025])  # back slab's base
    top_of_back = (pivot + 0.9 * p["back_height"] * np.array([0.0, np.cos(tilt), -np.sin(tilt)]))[None]
    under_seat = np.array([[0.0, y0 + 0.3 * p["seat_height"], 0.0]])
    assert top_of_back[0, 2] < pivot[2] < 0  # leaning backwards, toward -z
    assert chair(top_of_back)[0] < 0 < chair(under_seat)[0]


# ----------------------------------------------------------------------------- layout round trip


def test_tree_has_both_layouts(tree):
    layout = ShapeNetLayout(tree)
    records = _records(tree)
    assert len(records) == SHAPES * len(CATEGORIES)
    for key, record in records.items():
        synset, instance = key.split("/")
        assert synset == SYNSETS[record["category"]] and len(instance) == 32
        pos, neg = read_sdf_samples(layout.sdf_samples(synset, instance))
        assert pos.dtype == np.float32 and pos.shape[1] == 4 and (pos[:, 3] > 0).all() and (neg[:, 3] <= 0).all()
        assert len(pos) + len(neg) == (SAMPLES if record["split"] == "train" else SAMPLES // 2)
        assert len(read_surface_samples(layout.surface_samples(synset, instance))) == 2000
        grid, queries = read_list_samples(layout.sampled_points(synset, instance))
        assert grid.shape == (LIST_POINTS, 3) and list(queries) == [0.003, 0.01, 0.07]
        fps = read_farthest_points(layout.farthest_points(synset, instance))
        assert fps.shape == (FPS, 3) and np.allclose(fps[0], grid[0])  # FPS starts at index 0
        iso = load_mesh(layout.isosurface(synset, instance)).vertices
        assert np.isclose((iso.max(0) - iso.min(0)).max(), 1.0) and np.allclose(iso.max(0) + iso.min(0), 0, atol=1e-9)
        rows = read_render_metadata(layout.render_dir(synset, instance) / "rendering_metadata.txt")
        assert rows.shape == (VIEWS, 10) and np.allclose(rows[:, 4:7], [35, 32, 1.75])
        assert ((rows[:, 1] >= 20) & (rows[:, 1] <= 30) & (rows[:, 3] >= 0.65) & (rows[:, 3] <= 1.0)).all()
        rgba = read_image(layout.render_rgba(synset, instance, 0), alpha="keep")
        rgb = read_image(layout.render_rgb(synset, instance, 0))
        assert rgba.shape == (4, SIZE, SIZE) and 0.02 < rgba[3].mean() < 0.9
        background = rgba[3] == 0
        assert np.allclose(rgb[:, background], 1.0) and np.allclose(rgba[:3, background], 0.0)
        assert layout.list_image(synset, instance, VIEWS - 1).read_bytes() == \
            layout.render_rgba(synset, instance, VIEWS - 1).read_bytes()
    for category in CATEGORIES:
        synset = SYNSETS[category]
        train = read_split_json(layout.split_json(synset, "train"))
        test = read_split_json(layout.split_json(synset, "test"))
        assert len(train) == 2 and len(test) == 1 and not set(train) & set(test)
        assert sorted(read_lst(layout.lst(synset, "train"))) == sorted(i for _, i in train)
    assert sorted(read_testlist(layout.testlist_all)) == sorted(
        (s, i, VIEWS - 1) for c in CATEGORIES for s, i in read_split_json(layout.split_json(SYNSETS[c], "test")))


def test_sdf_samples_match_analytic_field_and_signs_on_nonconvex_chair(tree):
    from scipy.spatial import ConvexHull

    layout = ShapeNetLayout(tree)
    for key, record in _records(tree).items():
        synset, instance = key.split("/")
        field = _field(record)
        offset, scale = read_normalization(layout.normalization(synset, instance))
        pos, neg = read_sdf_samples(layout.sdf_samples(synset, instance))
        rows = np.concatenate([pos, neg]).astype(np.float64)
        original = rows[:, :3] / scale - offset  # NormalizationParameters inverse
        expected = field(original) * scale
        assert np.abs(rows[:, 3] - expected).max() < 2e-5
        sigma = np.sqrt(0.05 if record["split"] == "test" else 0.005)  # DeepSDF's first variance
        assert np.abs(rows[:, :3]).max() <= 1 / 1.03 + 6 * sigma  # near-surface noise is not clipped
        if record["category"] == "chair":
            # Non-convex: many outside samples lie inside the convex hull of the surface.
            hull = ConvexHull((read_surface_samples(layout.surface_samples(synset, instance)) + offset) * scale)
            in_hull = (pos[:, :3] @ hull.equations[:, :3].T + hull.equations[:, 3] < 0).all(axis=1)
            assert in_hull.sum() > 0.1 * len(pos)
            # Signs agree with the extracted mesh (an independent inside test) away from the surface.
            import point_cloud_utils as pcu

            mesh = load_mesh(layout.isosurface(synset, instance))
            side, center = record["list_side"], np.asarray(record["list_center"])
            listed = (original - center) / side
            voxel = 1.08 / (MESH_RES - 1)  # marching-cubes cell, LIST units (bounds padded by 4% per side)
            far = np.abs(rows[:, 3] / scale / side) > 1.5 * voxel
            mesh_sdf, _, _ = pcu.signed_distance_to_mesh(np.ascontiguousarray(listed[far]), mesh.vertices,
                                                         mesh.faces.astype(np.int32))
            assert far.sum() > 0.1 * len(rows)
            assert (np.sign(mesh_sdf) == np.sign(rows[far, 3])).all()


def test_normalization_and_surface_samples_frames(tree):
    layout = ShapeNetLayout(tree)
    for key, record in _records(tree).items():
        synset, instance = key.split("/")
        field = _field(record)
        offset, scale = read_normalization(layout.normalization(synset, instance))
        surface = read_surface_samples(layout.surface_samples(synset, instance))
        voxel = np.max(field.bounds()[1] - field.bounds()[0]) * 1.08 / (MESH_RES - 1)
        assert np.abs(field(surface)).max() < voxel  # original frame: on the analytic surface
        normalized = (surface + offset) * scale
        radius = np.linalg.norm(normalized, axis=1).max()
        assert 0.9 / 1.03 < radius <= 1 / 1.03 + 1e-6
        # The frame is non-unit: the original surface is scaled/offset away from the DeepSDF frame.
        assert abs(np.log(scale)) > 0.05 or np.abs(offset).max() > 0.05
        grid, queries = read_list_samples(layout.sampled_points(synset, instance))
        side, center = record["list_side"], np.asarray(record["list_center"])
        for sigma, rows in queries.items():
            expected = field(rows[:, :3].astype(np.float64) * side + center) / side
            assert np.abs(rows[:, 3] - expected).max() < 1e-5
            assert abs(np.std(rows[:, :3] - grid) - sigma) < 0.1 * sigma  # each sample perturbed once per σ


# ----------------------------------------------------------------------------- readers / DataModules


def test_sdf_datamodule_batches(tree):
    dm = ShapeNetSDFDataModule(root=str(tree), categories=list(CATEGORIES), samples_per_scene=64, batch_size=2,
                               load_images=True, image_size=24, eval_view=30)
    dm.setup("fit")
    assert dm.describe()["num_scenes"] == 4
    batch = next(iter(dm.train_dataloader()))
    assert batch["samples"].shape == (2, 64, 4) and batch["samples"].dtype == torch.float32
    assert ((batch["samples"][..., 3] > 0).sum(1) == 32).all()
    assert batch["index"].dtype == torch.int64 and set(batch["index"].tolist()) <= set(range(4))
    assert batch["image"].shape == (2, 3, 24, 24) and 0 <= batch["image"].min() and batch["image"].max() <= 1
    with pytest.warns(UserWarning, match="view 30 not rendered"):
        item = dm.val_set[0]
    assert item["view"].item() == VIEWS - 1 and len(dm.val_set) == 2


def test_sdf_dataset_drops_nan_rows_and_resamples_short_halves(tmp_path):
    layout = ShapeNetLayout(tmp_path)
    pos = np.random.default_rng(0).uniform(0.1, 1, (50, 4)).astype(np.float32)
    neg = -np.abs(np.random.default_rng(1).uniform(0.1, 1, (3, 4))).astype(np.float32)
    pos[::10] = np.nan
    write_npz(layout.sdf_samples("03001627", "a"), pos=pos, neg=neg)
    p, n = read_sdf_samples(layout.sdf_samples("03001627", "a"))
    assert len(p) == 45 and np.isfinite(p).all() and len(n) == 3
    from sfd_lightning.datamodules.shapenet_datasets import DeepSDFSamples

    with pytest.warns(UserWarning, match="1 split entries without SDF samples"):
        ds = DeepSDFSamples(tmp_path, [("03001627", "a"), ("03001627", "missing")], samples_per_scene=40)
    rows = ds[0]["samples"]
    assert len(ds) == 1 and rows.shape == (40, 4) and torch.isfinite(rows).all()
    negatives = rows[rows[:, 3] <= 0]
    assert len(negatives) == 20 and len(torch.unique(negatives, dim=0)) <= 3
    write_npz(layout.sdf_samples("03001627", "b"), positive=pos, neg=neg)
    with pytest.raises(InputError, match="missing key 'pos'"):
        read_sdf_samples(layout.sdf_samples("03001627", "b"))


def test_image_datamodule_batches(tree):
    dm = ShapeNetImageDataModule(root=str(tree), categories=list(CATEGORIES), sample_point_density=1000,
                                 batch_size=2, image_size=SIZE)
    dm.setup("fit")
    assert dm.describe()["query_counts"] == [500, 490, 10]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, SIZE, SIZE) and batch["image"].dtype == torch.float32
    assert batch["points"].shape == (2, 1000, 3) and batch["values"].shape == (2, 1000)
    assert batch["fps_points"].shape == (2, FPS, 3)
    layout = ShapeNetLayout(tree)
    _, queries = read_list_samples(layout.sampled_points(batch["synset"][0], batch["instance"][0]))
    pool = np.concatenate(list(queries.values()))
    drawn = torch.cat([batch["points"][0], batch["values"][0, :, None]], 1).numpy()
    assert (np.abs(drawn[:, None, :] - pool[None, :, :]).max(-1).min(1) < 1e-6).all()  # rows come from the pools
    assert len(dm.test_set) == 2 and all(v == VIEWS - 1 for _, _, v in dm.test_set.items)


def test_default_synthetic_cache_is_generated_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SFD_CACHE", str(tmp_path))
    small = {"shapes": 2, "views": 1, "image_size": 16, "samples": 1000, "list_points": 256,
             "surface_points": 300, "fps_points": 32, "mesh_resolution": 24, "test_fraction": 0.5}
    dm = ShapeNetSDFDataModule(synthetic=small, samples_per_scene=16, batch_size=1)
    dm.prepare_data()
    marker = dm.root / ".complete"
    stamp = marker.stat().st_mtime_ns
    dm.setup("fit")
    assert len(dm.train_set) == 1 and dm.root.parent == tmp_path / "synth"
    again = ShapeNetImageDataModule(synthetic=small, sample_point_density=32, batch_size=1)
    again.setup("fit")
    assert again.root == dm.root and marker.stat().st_mtime_ns == stamp


# ----------------------------------------------------------------------------- data check


def _corrupt(tree: Path, tmp_path: Path, name: str):
    root = tmp_path / name
    shutil.copytree(tree, root)
    layout = ShapeNetLayout(root)
    record_key = sorted(_records(root))[0]
    synset, instance = record_key.split("/")
    test_key = next(k for k, r in _records(root).items() if r["split"] == "test")
    t_synset, t_instance = test_key.split("/")
    if name == "deleted_sdf":
        target = layout.sdf_samples(synset, instance)
        target.unlink()
    elif name == "nan_normalization":
        target = layout.normalization(t_synset, t_instance)
        write_npz(target, offset=np.array([np.nan, 0, 0], np.float32), scale=np.ones(1, np.float32))
    elif name == "wrong_key":
        target = layout.sdf_samples(synset, instance)
        pos, neg = read_sdf_samples(target)
        write_npz(target, positive=pos, neg=neg)
    elif name == "bad_split_id":
        target = layout.split_json(synset, "train")
        data = json.loads(target.read_text())
        data["ShapeNetV2"][synset].append("deadbeefdeadbeefdeadbeefdeadbeef")
        target.write_text(json.dumps(data))
        target = layout.sdf_samples(synset, "deadbeefdeadbeefdeadbeefdeadbeef")
    elif name == "nan_list_samples":
        target = layout.sampled_points(synset, instance)
        grid, queries = read_list_samples(target)
        grid[5] = np.nan
        write_h5(target, {"grid_points": grid, **{f"query_points_sigma_{s}": q for s, q in queries.items()}})
    elif name == "deleted_view":
        target = layout.render_rgb(synset, instance, 0).parent
        layout.render_rgb(synset, instance, 0).unlink()
    elif name == "bad_isosurface":
        target = layout.isosurface(synset, instance)
        mesh = load_mesh(target)
        save_mesh(target, Mesh(mesh.vertices * 1.5, mesh.faces))
    return root, target


BROKEN = ("deleted_sdf", "nan_normalization", "wrong_key", "bad_split_id", "nan_list_samples", "deleted_view",
          "bad_isosurface")


def test_data_check_passes_fresh_tree_and_flags_each_broken_tree(tree, tmp_path, capsys):
    assert data_cli.main(["check", str(tree), "--format", "shapenet"]) == 0
    assert "OK" in capsys.readouterr().out
    for name in BROKEN:
        root, target = _corrupt(tree, tmp_path, name)
        problems = data_cli.run_check(root, "shapenet")
        assert len(problems) == 1, (name, problems)
        assert str(target) in problems[0] and " — " in problems[0], (name, problems)
        assert data_cli.main(["check", str(root), "--format", "shapenet"]) == 1
    capsys.readouterr()
    assert len(data_cli.run_check(tmp_path / "nowhere", "shapenet")) == 1


# ----------------------------------------------------------------------------- prepare-sdf


def test_prepare_sdf_reports_corrupt_meshes_and_resumes(tmp_path, capsys):
    import trimesh

    from sfd_lightning.datacheck.shapenet import check_deepsdf
    from sfd_lightning.synthetic.primitives import Box

    meshes = tmp_path / "meshes"
    core = meshes / "03001627" / "1a2b3c" / "models" / "model_normalized.obj"
    core.parent.mkdir(parents=True)
    trimesh.creation.box(extents=(0.6, 0.4, 0.8), transform=trimesh.transformations.translation_matrix(
        (0.1, 0.2, -0.1))).export(core)
    (meshes / "loose").mkdir()
    trimesh.creation.icosphere(subdivisions=2, radius=0.5).export(meshes / "loose" / "ball.off")
    (meshes / "loose" / "broken.obj").write_bytes(b"\x00\x17garbage\xff" * 10)
    open_box = trimesh.creation.box(extents=(0.5, 0.5, 0.5))
    trimesh.Trimesh(open_box.vertices, open_box.faces[2:], process=False).export(meshes / "loose" / "open.obj")  # a hole
    out = tmp_path / "out"
    argv = ["prepare-sdf", "--meshes", str(meshes), "--out", str(out), "--samples", "2000", "--list_points", "400",
            "--surface_points", "500", "--fps_points", "32", "--test_fraction", "0"]
    assert data_cli.main(argv) == 1
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).splitlines()
    for name, reason in (("broken.obj", "no triangle mesh"), ("open.obj", "not watertight")):
        reported = [line for line in lines if name in line]
        assert len(reported) == 1 and reason in reported[0], (name, lines)
    assert not (out / ".done" / "00000000" / "open").exists() and not ShapeNetLayout(out).sdf_samples("00000000", "open").exists()
    layout = ShapeNetLayout(out)
    pos, neg = read_sdf_samples(layout.sdf_samples("03001627", "1a2b3c"))
    rows = np.concatenate([pos, neg]).astype(np.float64)
    offset, scale = read_normalization(layout.normalization("03001627", "1a2b3c"))
    assert np.allclose(-offset, [0.1, 0.2, -0.1], atol=1e-6) and np.isclose(scale, 1 / (1.03 * np.sqrt(0.29)))
    box = Box(half_size=(0.3, 0.2, 0.4), center=(0.1, 0.2, -0.1))
    # exact box SDF vs the mesh distance stored as float32 (measured max error 5.7e-8)
    assert np.abs(rows[:, 3] - box(rows[:, :3] / scale - offset) * scale).max() < 1e-6
    assert read_sdf_samples(layout.sdf_samples("00000000", "ball"))[0].shape[1] == 4
    assert check_deepsdf(out) == []
    written = {p: p.stat().st_mtime_ns for p in (out / "SdfSamples").rglob("*.npz")}
    assert data_cli.main(argv + ["--repair", "true"]) == 1  # the broken file still fails; finished shapes skipped
    summary = capsys.readouterr().out
    assert "3 shapes ready" in summary and "2 already done, 1 failed" in summary
    assert {p: p.stat().st_mtime_ns for p in written} == written
    opened = np.concatenate(read_sdf_samples(layout.sdf_samples("00000000", "open")))
    assert opened[np.abs(opened[:, :3]).max(1) < 0.2, 3].max() < 0  # the repaired cube's centre is inside


# ----------------------------------------------------------------------------- Pix3D


def test_pix3d_round_trip(tmp_path):
    from sfd_lightning.datamodules.pix3d import Pix3DDataModule
    from sfd_lightning.datamodules.pix3d_files import Pix3DLayout, pix3d_camera, read_mask, read_pix3d_json

    root = tmp_path / "pix3d"
    assert data_cli.main(["synth", "pix3d", "--out", str(root), "--categories", "chair,table", "--models", "1",
                          "--images", "2", "--image_size", "96", "--list_points", "512", "--mesh_resolution", "40"]) == 0
    assert data_cli.run_check(root, "pix3d") == []
    layout = Pix3DLayout(root)
    entries = read_pix3d_json(layout.annotations)
    assert len(entries) == 4 and {e["category"] for e in entries} == {"chair", "table"}
    for entry in entries:
        vertices = load_mesh(layout.file(entry["model"])).vertices
        pixels, depth = pix3d_camera(entry).project(vertices)
        assert (depth > 0).all() and np.abs(np.r_[pixels.min(0), pixels.max(0)] - entry["bbox"]).max() < 1.5
        mask = read_mask(layout.file(entry["mask"]))
        assert mask.shape == tuple(entry["img_size"][::-1])
        width, height = entry["img_size"]
        centre = np.array([(entry["bbox"][0] + entry["bbox"][2]) / 2 / width, (entry["bbox"][1] + entry["bbox"][3]) / 2 / height])
        assert np.abs(centre - 0.5).max() > 0.02  # the object is not centred
    dm = Pix3DDataModule(root=str(root), batch_size=2, image_size=48, sample_point_density=200, coarse_points=64)
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.test_set) == 4
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 48, 48) and batch["mask"].shape == (2, 1, 48, 48)
    assert batch["points"].shape == (2, 200, 3) and batch["coarse_points"].shape == (2, 64, 3)
    assert (batch["mask"].mean((1, 2, 3)) > 0.15).all()
    item = dm.train_set[0]
    entry = dm.entries[dm.train_set.indices[0]]
    cam_points = load_mesh(layout.file(entry["model"])).vertices @ item["R"].double().numpy().T + item["t"].double().numpy()
    crop_pixels = cam_points @ item["K_crop"].double().numpy().T
    crop_pixels = crop_pixels[:, :2] / crop_pixels[:, 2:]
    assert crop_pixels.min() > -1.5 and crop_pixels.max() < 48.5
    records = json.loads((root / ".datasources.json").read_text())["model_records"]
    record = {**records[entry["model"]], "category": entry["category"]}
    field = _field(record)
    _, queries = read_list_samples(layout.sampled_points(entry))
    rows = queries[0.01].astype(np.float64)
    expected = field(rows[:, :3] * record["list_side"] + np.asarray(record["list_center"])) / record["list_side"]
    assert np.abs(rows[:, 3] - expected).max() < 1e-5
    layout.file(entries[1]["mask"]).unlink()
    problems = data_cli.run_check(root, "pix3d")
    assert len(problems) == 1 and entries[1]["mask"] in problems[0]
