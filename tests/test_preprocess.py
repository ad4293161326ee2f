"""``sfd preprocess pile`` (issue 4): pose metric, consistency checks, pose formulas, mask import,
bad inputs, and one 3-instance SIFT pile end to end (with resume and determinism)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sfd_lightning.cli import main
from sfd_lightning.geometry.pose_metrics import (object_to_camera_from_layout, object_to_camera_from_synthetic_gt,
                                                 pose_error_stats, relative_rotation_errors, rotation_angle_deg)
from sfd_lightning.preprocess import consistency
from sfd_lightning.preprocess.import_masks import import_masks, rle_decode
from sfd_lightning.preprocess.pose_io import geometry_from_solution
from sfd_lightning.synthetic.instance_labels import decode_instance_labels, label_values


def _pose(rotvec, t) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    pose[:3, 3] = t
    return pose


def _random_poses(rng, n=4) -> dict[int, np.ndarray]:
    return {i: _pose(rng.normal(size=3), rng.normal(size=3) + [0, 0, 10]) for i in range(n)}


# ---------------------------------------------------------------------------------------- metric
def test_pose_error_zero_under_object_and_world_frame_changes():
    rng = np.random.default_rng(0)
    ref = _random_poses(rng)
    object_change = _pose(rng.normal(size=3), rng.normal(size=3))  # another object frame: P_i G
    pred = {i: p @ object_change for i, p in ref.items()}
    assert pose_error_stats(pred, ref)["max_deg"] < 1e-6
    assert rotation_angle_deg(Rotation.from_rotvec([0, 0, np.radians(30)]).as_matrix()) == pytest.approx(30)


def test_pose_error_sees_wrong_axis_with_same_angle():
    """Same relative angle about a different axis is a large error (angle-only comparison hides it)."""
    ref = {0: np.eye(4), 1: _pose([np.radians(80), 0, 0], [0, 0, 10])}
    pred = {0: np.eye(4), 1: _pose([0, np.radians(80), 0], [0, 0, 10])}
    stats = pose_error_stats(pred, ref)
    assert stats["pairs"] == 1 and stats["median_deg"] > 100
    one_off = {0: np.eye(4), 1: _pose([np.radians(85), 0, 0], [0, 0, 10])}
    assert relative_rotation_errors(one_off, ref)[(0, 1)] == pytest.approx(5.0, abs=1e-6)
    assert np.isnan(pose_error_stats({0: np.eye(4)}, ref)["median_deg"])


# ---------------------------------------------------------------------------------- consistency
def test_seed_consensus_prefers_the_majority():
    rng = np.random.default_rng(1)
    good = _random_poses(rng)
    wrong = dict(good)
    wrong[2] = good[2] @ _pose([0.5, 0, 0], [0, 0, 0])  # one instance rotated by ~29°
    solutions = [good, {i: p @ _pose([0.1, 0.2, 0.3], [1, 2, 3]) for i, p in good.items()}, wrong, good]
    support = consistency.seed_consensus(solutions, tol_deg=3.0)
    assert support[0] == support[1] == support[3] == 2 and support[2] == 0


def test_center_must_project_inside_own_mask():
    K = np.array([[100.0, 0, 31.5], [0, 100.0, 31.5], [0, 0, 1]])
    instance = np.zeros((64, 64), dtype=np.int64)
    instance[20:40, 5:25] = 1  # instance 0, left
    instance[20:40, 40:60] = 2  # instance 1, right
    left, right = np.eye(4), np.eye(4)
    left[:3, 3] = [-0.165, 0.0, 1.0]  # centre at u = 15
    right[:3, 3] = [0.185, 0.0, 1.0]  # centre at u = 50
    assert consistency.centers_outside_masks({0: left, 1: right}, np.zeros(3), K, instance) == []
    assert consistency.centers_outside_masks({0: right, 1: left}, np.zeros(3), K, instance) == [0, 1]
    behind = right.copy()
    behind[2, 3] = -1.0
    assert consistency.centers_outside_masks({1: behind}, np.zeros(3), K, instance) == [1]


def test_rotation_loops_and_two_view_disagreement():
    rng = np.random.default_rng(2)
    poses = _random_poses(rng, 4)
    rel = {(i, j): poses[j][:3, :3] @ poses[i][:3, :3].T for i in range(4) for j in range(i + 1, 4)}
    assert max(consistency.rotation_loop_errors(rel).values()) < 1e-6
    bent = dict(rel)
    bent[(0, 1)] = Rotation.from_rotvec([0, 0, 0.5]).as_matrix() @ rel[(0, 1)]
    errors = consistency.rotation_loop_errors(bent)
    assert errors[(0, 1, 2)] == pytest.approx(np.degrees(0.5), abs=1e-4) and errors[(1, 2, 3)] < 1e-6
    assert consistency.loop_inconsistent_instances(poses, rel) == {}
    wrong = dict(poses)
    wrong[3] = poses[3] @ _pose([0, 0.9, 0], [0, 0, 0])  # instance 3 off by ~52° in the solution
    assert set(consistency.loop_inconsistent_instances(wrong, rel)) == {3}


# ------------------------------------------------------------------------------------ pose formula
def test_pose_formula_reproduces_object_poses():
    """O_i = V_0·V_i⁻¹ with V_i = (F·W2C_i·F)⁻¹ reproduces known poses (methods/sfd.md §8)."""
    rng = np.random.default_rng(3)
    w2c = _random_poses(rng, 3)  # COLMAP cam_from_world of each instance (world = object)
    points = rng.normal(size=(50, 3))
    geometry = geometry_from_solution(w2c, points, {i: np.arange(50) for i in range(3)})
    flip = np.diag([1.0, -1, -1, 1])
    for i in range(3):
        assert np.allclose(geometry.object_to_world[0], np.eye(4))
        # camera (OpenGL) of instance i's view: c2w⁻¹·O_i·(F p) = F·W2C_i·p
        lhs = np.linalg.inv(geometry.c2w) @ geometry.object_to_world[i] @ flip
        assert np.allclose(lhs, flip @ w2c[i], atol=1e-9)
    world_pts = geometry.points_world[2]
    cam = (np.c_[world_pts, np.ones(50)] @ np.linalg.inv(geometry.c2w).T)[:, :3]
    assert np.allclose(cam * [1, -1, -1], points @ w2c[2][:3, :3].T + w2c[2][:3, 3])
    assert geometry.scale_matrix[0, 0] > 0


# ------------------------------------------------------------------------------------ import masks
def _rle_encode(mask: np.ndarray) -> str:
    flat = mask.T.ravel().astype(np.int8)
    counts, value, run = [], 0, 0
    for bit in flat:
        if bit != value:
            counts.append(run)
            run, value = 0, bit
        run += 1
    counts.append(run)
    out = []
    for i, x in enumerate(counts):
        x = x - counts[i - 2] if i > 2 else x
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            out.append(chr((c | (0x20 if more else 0)) + 48))
    return "".join(out)


def test_import_masks_coco_labelme_pngs(tmp_path):
    import cv2

    h, w = 40, 50
    a = np.zeros((h, w), bool)
    a[5:15, 5:20] = True
    b = np.zeros((h, w), bool)
    b[20:35, 25:45] = True
    b[22, 10] = True
    assert np.array_equal(rle_decode(_rle_encode(b), h, w), b)
    coco = {"images": [{"id": 7, "height": h, "width": w}],
            "annotations": [{"id": 1, "image_id": 7, "segmentation": [[5, 5, 19, 5, 19, 14, 5, 14]]},
                            {"id": 2, "image_id": 7, "segmentation": {"counts": _rle_encode(b), "size": [h, w]}}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    out = import_masks(tmp_path / "coco.json", "coco", tmp_path / "pile_coco")
    labels = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(labels)) == {0, *label_values(2).tolist()}
    ids = decode_instance_labels(labels, 2)
    assert np.array_equal(ids == 2, b) and (ids == 1).sum() == a.sum()

    labelme = {"imageHeight": h, "imageWidth": w, "shapes": [
        {"shape_type": "rectangle", "points": [[5, 5], [19, 14]]},
        {"shape_type": "polygon", "points": [[25, 20], [44, 20], [44, 34], [25, 34]]}]}
    (tmp_path / "lm.json").write_text(json.dumps(labelme))
    ids = decode_instance_labels(cv2.imread(str(import_masks(tmp_path / "lm.json", "labelme", tmp_path / "p2")),
                                            cv2.IMREAD_UNCHANGED), 2)
    assert (ids == 1).sum() == a.sum() and (ids == 2).sum() == 15 * 20

    folder = tmp_path / "pngs"
    folder.mkdir()
    for k, m in enumerate([a, b, np.zeros((h, w), bool)]):
        cv2.imwrite(str(folder / f"m{k}.png"), m.astype(np.uint8) * 255)
    assert main(["data", "import-masks", "--input", str(folder), "--format", "pngs", "--out",
                 str(tmp_path / "p3")]) == 2  # the third mask is empty
    (folder / "m2.png").unlink()
    assert main(["data", "import-masks", "--input", str(folder), "--format", "pngs", "--out",
                 str(tmp_path / "p3")]) == 0


# -------------------------------------------------------------------------------------- bad inputs
def _raw_pile(root, size=(120, 120), instances=3, area=30):
    import cv2

    raw = root / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(raw / "000_color.png"), rng.integers(0, 255, size=(*size, 3), dtype=np.uint8))
    ids = np.zeros(size, dtype=np.int64)
    for k in range(instances):
        ids[10 + 35 * k:10 + 35 * k + area, 10:10 + area] = k + 1
    labels = np.zeros(size, np.uint8)
    labels[ids > 0] = label_values(instances)[ids[ids > 0] - 1]
    cv2.imwrite(str(raw / "000_instance_seg.png"), labels)
    return raw


@pytest.mark.parametrize("case", ["size", "count", "small"])
def test_bad_inputs_are_one_line_errors(tmp_path, capsys, case):
    import cv2

    raw = _raw_pile(tmp_path / "pile", area=30 if case != "small" else 8)
    args = ["preprocess", "pile", "--input", str(tmp_path / "pile"), "--matcher", "sift", "--quiet", "true"]
    if case == "size":
        cv2.imwrite(str(raw / "000_color.png"), np.zeros((100, 120, 3), np.uint8))
    if case == "count":
        args += ["--instances", "4"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "000_instance_seg.png" in err[0], err
    expected = {"size": "mask is 120x120 but the photo", "count": "do not match 4 instances",
                "small": "cover only"}[case]
    assert expected in err[0]


def test_inferred_count_with_off_rule_labels_warns(tmp_path, capsys):
    """No --instances and labels round(k·255/N) (64, 128 instead of 63, 127): the count is inferred with
    a warning and the labels decode exactly; labels that do not decode are still a one-line error."""
    import cv2

    from sfd_lightning.preprocess.views import load_views

    raw = _raw_pile(tmp_path / "pile", size=(160, 160), instances=4)
    floor = cv2.imread(str(raw / "000_instance_seg.png"), cv2.IMREAD_UNCHANGED)
    expected = decode_instance_labels(floor, 4)
    off_rule = floor.copy()
    off_rule[floor == 63], off_rule[floor == 127] = 64, 128
    cv2.imwrite(str(raw / "000_instance_seg.png"), off_rule)
    views = load_views(tmp_path / "pile")
    assert views.num_instances == 4 and np.array_equal(views.instance, expected)
    assert np.array_equal(views.labels, floor)  # re-encoded canonically
    assert any("do not follow" in w and "inferred 4 instances" in w for w in views.warnings), views.warnings
    with pytest.raises(Exception, match="do not match 4 instances"):  # an explicit count stays strict
        load_views(tmp_path / "pile", instances=4)

    ids = off_rule.copy()
    for k, v in enumerate((64, 128, 191, 255), 1):
        ids[off_rule == v] = k  # labels 1..4: round(v·4/255) = 0, no consistent decoding
    cv2.imwrite(str(raw / "000_instance_seg.png"), ids)
    assert main(["preprocess", "pile", "--input", str(tmp_path / "pile"), "--matcher", "sift", "--quiet", "true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "000_instance_seg.png" in err[0] and "cannot be decoded as 4 instances" in err[0], err


def test_visibility_separates_depth_reversed_twin():
    """Observed points in front -> negative scores; the depth-reversed twin (same orthographic images)
    -> positive scores, i.e. implausible."""
    rng = np.random.default_rng(4)
    points = rng.normal(size=(400, 3))
    poses = {i: _pose(rng.normal(size=3) * 0.6, [0.0, 0.0, 20.0]) for i in range(4)}
    observers = {}
    for i, pose in poses.items():
        depth = points @ pose[2, :3] + pose[2, 3]
        observers[i] = np.nonzero(depth < np.median(depth))[0]
    scores = consistency.visibility_scores(poses, points, observers)
    assert len(scores) == 4 and max(scores.values()) < -0.5 and consistency.plausible_visibility(scores)
    flip = np.diag([1.0, 1.0, -1.0])
    twin = {}
    for i, pose in poses.items():
        twin[i] = pose.copy()
        twin[i][:3, :3] = flip @ pose[:3, :3] @ flip
    twin_points = points @ flip
    for i in poses:  # same image coordinates up to the (small) perspective change
        assert np.allclose((twin_points @ twin[i][:3, :3].T)[:, :2], (points @ poses[i][:3, :3].T)[:, :2])
    twin_scores = consistency.visibility_scores(twin, twin_points, observers)
    assert min(twin_scores.values()) > 0.5 and not consistency.plausible_visibility(twin_scores)


# --------------------------------------------------------------------------- end to end (3 instances)
@pytest.fixture(scope="module")
def synthetic_pile(tmp_path_factory):
    from sfd_lightning.synthetic.writers.pile import write_pile

    root = tmp_path_factory.mktemp("pile") / "plane3"
    return write_pile(root, instances=3, image_size=800, seed=3)


def test_sift_pile_end_to_end_resume_and_determinism(synthetic_pile, tmp_path, capsys):
    """3-instance synthetic pile, SIFT: all registered, median error <= 2° (measured 0.59°)."""
    focal = json.loads((synthetic_pile / "gt" / "poses.json").read_text())["K"][0][0]
    out = tmp_path / "out"
    args = ["preprocess", "pile", "--input", str(synthetic_pile), "--out", str(out), "--matcher", "sift",
            "--focal", str(focal), "--num-seeds", "3", "--quiet", "true"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["registered"] == [0, 1, 2] and summary["excluded"] == {}
    pred = object_to_camera_from_layout(out)
    stats = pose_error_stats(pred, object_to_camera_from_synthetic_gt(synthetic_pile))
    assert stats["common"] == 3 and stats["median_deg"] <= 2.0, stats
    for name in ("transforms_train.json", "object_pred_pose.json", "object_scale_matrix.json",
                 "non_empty_indexes.txt", "points_world.npy", "scene.json", "pose_visualization.png",
                 "train/000_rgb.png", "train/000_instance_seg.png", "train/000_mask.png"):
        assert (out / name).is_file(), name
    assert sorted(json.loads((out / "object_pred_pose.json").read_text())) == ["out_00", "out_01", "out_02"]
    scene = json.loads((out / "scene.json").read_text())
    assert scene["matcher"] == "sift" and scene["near"] < scene["far"]
    from sfd_lightning.datamodules.pile import PileScene

    assert PileScene.load(out).registered_ids == [0, 1, 2]

    # resume: every cached step is reused; --from-step sfm recomputes and gives the same poses
    steps_before = json.loads((out / "preprocess" / "steps.json").read_text())
    assert main(args) == 0
    steps_after = json.loads((out / "preprocess" / "steps.json").read_text())
    cached = ("views", "features", "matches", "verify", "sfm", "select")  # `write` always runs
    assert {k: steps_after[k] for k in cached} == {k: steps_before[k] for k in cached}
    poses_before = (out / "object_pred_pose.json").read_text()
    assert main(args + ["--from-step", "sfm"]) == 0
    assert (out / "object_pred_pose.json").read_text() == poses_before
    shutil.rmtree(out / "preprocess" / "sfm")  # a missing artifact forces a rerun, not a crash
    assert main(args) == 0
    assert (out / "object_pred_pose.json").read_text() == poses_before
