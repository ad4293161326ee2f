"""SfD through the ``sfd`` CLI: three stages chained, test, export and predict (relight).

The three fits run in ONE subprocess each (the per-method subprocess smoke); test, export and
predict run in-process through :func:`sfd_lightning.cli.main`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sfd_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "sfd"
SMALL = ["--data.init_args.synthetic_image_size", "40", "--data.init_args.rays_per_batch", "64",
         "--trainer.limit_val_batches", "0", "--model.init_args.mesh_resolution", "24",
         "--model.init_args.chamfer_samples", "2000", "--model.init_args.novel_views", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _fit(config: str, root: Path, name: str, *extra: str) -> Path:
    env = dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "sfd_lightning.cli", "fit", "--config", str(CONFIGS / config),
                           "--trainer.default_root_dir", str(root), "--run_name", name, "--trainer.max_steps", "3",
                           *SMALL, *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = root / name / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (root / name / "config.yaml").is_file()
    return ckpt


def test_three_stages_chained_then_test_export_predict(tmp_path, capsys):
    root = tmp_path / "runs"
    geo = _fit("tiny.yaml", root, "geo")
    vis = _fit("tiny_visibility.yaml", root, "vis", "--model.init_args.previous_stage_checkpoint", str(geo))
    mat = _fit("tiny_material.yaml", root, "mat", "--model.init_args.previous_stage_checkpoint", str(vis))
    states = [torch.load(p, map_location="cpu", weights_only=True)["state_dict"] for p in (geo, vis, mat)]
    alpha = "model.sdf.encoding.alpha"
    assert float(states[0][alpha]) == float(states[1][alpha]) == float(states[2][alpha])
    first_sdf = "model.sdf.layers.0.parametrizations.weight.original1"
    assert torch.equal(states[0][first_sdf], states[2][first_sdf])  # geometry frozen after Geo
    vis_key = "model.visibility.out.weight"
    assert not torch.equal(states[0][vis_key], states[1][vis_key])  # trained in Vis
    assert torch.equal(states[1][vis_key], states[2][vis_key])  # frozen in Mat

    # test: model and data classes come back from the checkpoint
    assert main(["test", "--ckpt_path", str(geo), "--trainer.default_root_dir", str(root), "--run_name", "geo-test"]) == 0
    record = json.loads((root / "geo-test" / "metrics.json").read_text())
    metrics = record["metrics"]
    assert {"psnr", "ssim", "mask_iou", "normal_err_deg", "rot_err_median_deg"} <= set(metrics)
    assert metrics["rot_err_median_deg"] < 1e-3  # synthetic piles carry exact poses
    assert metrics["chamfer"]["protocol"] == "neuralpull"

    out = tmp_path / "export"
    assert main(["export", "--ckpt_path", str(mat), "--resolution", "24", "--output", str(out),
                 "--trainer.default_root_dir", str(root)]) == 0
    assert {p.name for p in out.iterdir()} == {"object.ply", "instances.json", "envmap.npy", "envmap.png"}

    envmap = tmp_path / "env.npy"
    np.save(envmap, np.ones((16, 32, 3), np.float32) * np.linspace(0.2, 1.0, 16)[:, None, None])
    assert main(["predict", "--ckpt_path", str(mat), "--data.init_args.relight_envmap", str(envmap),
                 "--trainer.default_root_dir", str(root), "--run_name", "mat-pred"]) == 0
    files = {p.name for p in (root / "mat-pred" / "predictions").iterdir()}
    assert {"rerender.png", "rerender.npy", "novel_view_0.png", "relit.png", "relit.npy"} <= files
    relit = np.load(root / "mat-pred" / "predictions" / "relit.npy")
    assert np.isfinite(relit).all() and relit.max() > 0

    # relighting a geometry-stage checkpoint is a one-line error
    capsys.readouterr()
    code = main(["predict", "--ckpt_path", str(geo), "--data.init_args.relight_envmap", str(envmap),
                 "--trainer.default_root_dir", str(root), "--run_name", "geo-pred"])
    assert code == 2 and "material-stage" in capsys.readouterr().err
