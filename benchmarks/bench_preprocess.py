"""``sfd preprocess pile`` on the real 800² airplane pile (6 instances), per matcher.

Rows per matcher: seconds of every step and the total, registered instances, mean reprojection error
(px) and the pose error against the original pipeline's poses (full relative-rotation error in the
camera frame, median and max over pairs; :func:`sfd_lightning.geometry.pose_metrics.pose_error_stats`).
The raw input is ``shared/data/piles/airplane/train/000_rgb.png`` + ``000_instance_seg.png`` with the
reference focal length. ``baseline`` is the original's 6/6 registered instances where it applies.

The default run uses SIFT only (~30 s on 2 idle cores); DISK+LightGlue with its in-plane rotation
search costs minutes on 2 CPU cores, so it runs only with ``SFD_BENCH_DISK=1`` (or ``run(["sift",
"disk-lightglue"])``). Without ``../shared/data`` the benchmark falls back to a synthetic 6-instance
800² pile scored against its ground truth.

Run: ``.venv/bin/python benchmarks/bench_preprocess.py`` (prints JSON lines).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "piles" / "airplane"
REAL_FOCAL = 1296.8803916710694


def _inputs(tmp: Path) -> tuple[Path, float, dict, str]:
    from sfd_lightning.geometry.pose_metrics import object_to_camera_from_layout, object_to_camera_from_synthetic_gt

    if (REAL / "train" / "000_rgb.png").is_file():
        raw = tmp / "airplane" / "raw"
        raw.mkdir(parents=True)
        shutil.copy(REAL / "train" / "000_rgb.png", raw / "000_rgb.png")
        shutil.copy(REAL / "train" / "000_instance_seg.png", raw / "000_instance_seg.png")
        return raw.parent, REAL_FOCAL, object_to_camera_from_layout(REAL), "real_airplane"
    from sfd_lightning.synthetic.writers.pile import write_pile

    pile = write_pile(tmp / "synthetic", instances=6, image_size=800, seed=0)
    focal = json.loads((pile / "gt" / "poses.json").read_text())["K"][0][0]
    return pile, focal, object_to_camera_from_synthetic_gt(pile), "synthetic_6"


def run(matchers: list[str] | None = None) -> list[dict]:
    """Preprocess the pile once per matcher; one dict per measurement."""
    from sfd_lightning.geometry.pose_metrics import object_to_camera_from_layout, pose_error_stats
    from sfd_lightning.preprocess.pipeline import PreprocessOptions, preprocess_pile

    os.environ.setdefault("GLOG_minloglevel", "2")
    if matchers is None:
        matchers = ["sift"] + (["disk-lightglue"] if os.environ.get("SFD_BENCH_DISK") == "1" else [])
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as folder:
        pile, focal, reference, data = _inputs(Path(folder))
        for matcher in matchers:
            out = Path(folder) / f"out_{matcher}"
            tag = f"preprocess_{data}_{matcher.replace('-', '_')}"
            try:
                result = preprocess_pile(PreprocessOptions(input=str(pile), out=str(out), matcher=matcher,
                                                           focal=focal, quiet=True))
            except Exception as exc:  # a failed registration is a result too
                rows.append({"name": f"{tag}_failed", "value": 1, "unit": "bool", "baseline": 0, "ratio": None,
                             "notes": str(exc)[:300]})
                continue
            for step, seconds in result.timings.items():
                rows.append({"name": f"{tag}_{step}_s", "value": round(seconds, 3), "unit": "s", "baseline": None,
                             "ratio": None, "notes": "2 CPU cores, wall time of the step"})
            stats = pose_error_stats(object_to_camera_from_layout(out), reference)
            rows.append({"name": f"{tag}_registered", "value": len(result.registered), "unit": "instances",
                         "baseline": len(reference), "ratio": len(result.registered) / len(reference),
                         "notes": f"registered {result.registered}, excluded {result.excluded}"})
            rows.append({"name": f"{tag}_reprojection_px", "value": round(result.reprojection_error, 4),
                         "unit": "px", "baseline": None, "ratio": None, "notes": "COLMAP mean reprojection error"})
            for key in ("median_deg", "max_deg"):
                rows.append({"name": f"{tag}_rotation_error_{key}", "value": round(stats[key], 3), "unit": "deg",
                             "baseline": None, "ratio": None,
                             "notes": f"{stats['protocol']} over {stats['pairs']} pairs vs the reference poses"})
    return rows


if __name__ == "__main__":
    for row in run():
        print(json.dumps(row))
