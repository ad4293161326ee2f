"""DIT through the `sfd` CLI: fit -> test (test-time optimisation) -> export in a subprocess, then
phase 2 (image encoder) fit -> predict on a folder of images in-process, and SimCLR -> trunk carry-over."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sfd_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "dit"


def _sfd(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "sfd_lightning.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def phase1(tmp_path_factory) -> Path:
    """A 4-step tiny auto-decoder run, then `sfd test` and `sfd export` on its checkpoint (subprocess)."""
    root = tmp_path_factory.mktemp("dit_cli") / "runs"
    # model overrides go in at fit: Lightning re-applies checkpoint hyper-parameters over the command line
    fit = _sfd("fit", "--config", str(CONFIGS / "tiny.yaml"), "--trainer.max_steps", "4",
               "--model.init_args.tto_iterations", "5", "--model.init_args.test_resolution", "24",
               "--trainer.default_root_dir", str(root), "--run_name", "dit")
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = root / "dit" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    hparams = torch.load(ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hparams["num_scenes"] == 12 and len(hparams["scene_names"]) == 12
    # held-out shapes by test-time optimisation: classes and data come back from the checkpoint
    test = _sfd("test", "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(root), "--run_name", "dit-test")
    assert test.returncode == 0, test.stderr[-3000:]
    record = json.loads((root / "dit-test" / "metrics.json").read_text())
    assert record["protocol"] == "deepsdf" and len(record["shapes"]) == 4
    summary = record["summary"]["03001627"]
    assert summary["n"] == 4 and "deepsdf_cd_x1e3_mean" in summary and "deepsdf_cd_x1e3_median" in summary
    assert all(math.isfinite(r["tto_loss_end"]) and math.isfinite(r["sdf_l1"]) for r in record["shapes"])
    assert all(Path(r["mesh"]).is_file() for r in record["shapes"])
    out = root / "exported"
    export = _sfd("export", "--ckpt_path", str(ckpt), "--resolution", "24", "--output", str(out),
                  "--trainer.default_root_dir", str(root))
    assert export.returncode == 0, export.stderr[-3000:]
    names = sorted(p.name for p in out.glob("*.ply"))
    assert "template.ply" in names and len(names) == 1 + 4  # export_max_shapes: 4 in tiny.yaml
    return ckpt


def test_fit_test_export_subprocess(phase1):
    assert phase1.is_file()


def test_two_phase_fit_and_predict_folder(phase1, tmp_path):
    root = tmp_path / "runs"
    code = main(["fit", "--config", str(CONFIGS / "image_tiny.yaml"), "--model.init_args.dit_checkpoint", str(phase1),
                 "--trainer.max_steps", "2", "--data.init_args.batch_size", "8",
                 "--model.init_args.test_resolution", "24",
                 "--trainer.default_root_dir", str(root), "--run_name", "enc"])
    assert code == 0
    ckpt = root / "enc" / "checkpoints" / "last.ckpt"
    from sfd_lightning.datamodules.shapenet import default_shapenet_root

    tree = default_shapenet_root({"shapes": 16, "dominant_only": True})
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, png in enumerate(sorted(tree.glob("*/*/easy/image_rgb/07.png"))[:2]):
        shutil.copy(png, folder / f"photo{i}.png")
    code = main(["predict", "--ckpt_path", str(ckpt), "--data.init_args.predict_dir", str(folder),
                 "--trainer.default_root_dir", str(root),
                 "--run_name", "pred"])
    assert code == 0
    assert sorted(p.name for p in (root / "pred" / "meshes").glob("*.ply")) == ["photo0.ply", "photo1.ply"]


def test_contrastive_trunk_carries_over_by_config(tmp_path):
    root = tmp_path / "runs"
    assert main(["fit", "--config", str(CONFIGS / "contrastive_tiny.yaml"), "--trainer.max_steps", "1",
                 "--data.init_args.batch_size", "4", "--trainer.default_root_dir", str(root), "--run_name", "simclr"]) == 0
    ckpt = root / "simclr" / "checkpoints" / "last.ckpt"
    from sfd_lightning.modules.dit import DITImageEndToEnd

    net = {"code_dim": 8, "warper_hidden": 8, "steps": 4, "template_dims": [8], "dropout": 0.0}
    model = DITImageEndToEnd(net=net, encoder_checkpoint=str(ckpt), head="mlp")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert torch.equal(model.encoder.trunk.layer4[1].conv2.weight, state["encoder.layer4.1.conv2.weight"])
    assert isinstance(model.encoder.head, torch.nn.Sequential)  # fresh 512-512-C head, projection dropped
