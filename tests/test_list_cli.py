"""LIST through the `sfd` CLI: coarse fit -> fine fit (warm start) -> resume -> test -> predict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from sfd_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
COARSE = str(REPO / "configs" / "list" / "tiny_coarse.yaml")
FINE = str(REPO / "configs" / "list" / "tiny_fine.yaml")
#: Cheapest settings (CPU seconds, not minutes): a 4-shape / 2-view synthetic tree at 32 px (cached
#: under SFD_CACHE), 16 px inputs, a 32-point TreeGCN, 2-channel voxel levels, one validation batch.
DATA_SMALL = ["--data.init_args.image_size", "16", "--data.init_args.sample_point_density", "128",
              "--data.init_args.batch_size", "2", "--data.init_args.eval_view", "1",
              "--data.init_args.synthetic", '{"shapes": 4, "views": 2, "image_size": 32, "samples": 2000, '
              '"list_points": 512, "surface_points": 1000, "fps_points": 128, "mesh_resolution": 32, "test_fraction": 0.5}',
              "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "2"]
TREE_SMALL = ["--model.init_args.latent_dim", "32", "--model.init_args.tree_features", "[32, 16, 3]",
              "--model.init_args.tree_degrees", "[4, 8]", "--model.init_args.tree_support", "2"]
SMALL = DATA_SMALL + TREE_SMALL
FINE_SMALL = ["--model.init_args.map_size", "10", "--model.init_args.vox_channels", "[2, 2, 2, 2, 2]",
              "--model.init_args.test_resolution", "16", "--model.init_args.test_pointnum", "4096"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(WANDB_MODE="disabled", WANDB_SILENT="true", OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    return env


def _sfd(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sfd_lightning.cli", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_coarse_fine_warm_start_resume_test_predict(tmp_path):
    root = tmp_path / "runs"
    common = ["--trainer.default_root_dir", str(root)]
    coarse = _sfd("fit", "--config", COARSE, *common, "--run_name", "coarse", "--trainer.max_steps", "2", *SMALL)
    assert coarse.returncode == 0, coarse.stderr[-3000:]
    coarse_ckpt = root / "coarse" / "checkpoints" / "last.ckpt"
    fine = _sfd("fit", "--config", FINE, *common, "--run_name", "fine", "--trainer.max_steps", "2", *SMALL,
                *FINE_SMALL, "--model.init_args.coarse_checkpoint", str(coarse_ckpt))
    assert fine.returncode == 0, fine.stderr[-3000:]
    fine_ckpt = root / "fine" / "checkpoints" / "last.ckpt"
    c_state, f_state = _state(coarse_ckpt), _state(fine_ckpt)
    # frozen branch identical to stage 1 after training; the trainable copy moved
    for key, value in c_state.items():
        if key.startswith("encoder."):
            assert torch.equal(f_state["im_encoder." + key[8:]], value), key
        if key.startswith("decoder."):
            assert torch.equal(f_state["point_decoder." + key[8:]], value), key
    moved = [k for k in c_state if k.startswith("encoder.backbone.layer") and k.endswith("weight")
             and not torch.equal(f_state["im_encoder2." + k[8:]], c_state[k])]
    assert moved, "im_encoder2 did not train"

    # resume (in-process): freezing re-applied, frozen weights still equal, step counter continues
    assert main(["fit", "--config", FINE, *common, "--trainer.max_steps", "3", *SMALL,
                 *FINE_SMALL, "--ckpt_path", str(fine_ckpt)]) == 0
    resumed = torch.load(fine_ckpt, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 3
    for key, value in c_state.items():
        if key.startswith("decoder."):
            assert torch.equal(resumed["state_dict"]["point_decoder." + key[8:]], value), key

    # test: classes and hparams from the checkpoint; `list` protocol numbers in metrics.json
    assert main(["test", "--ckpt_path", str(fine_ckpt), *common, "--run_name", "fine-test",
                 *DATA_SMALL[:10], "--model.init_args.test_resolution", "16",
                 "--model.init_args.test_samples", "2000", "--model.init_args.test_iou_points", "5000"]) == 0
    record = json.loads((root / "fine-test" / "metrics.json").read_text())
    assert record["protocol"] == "list" and record["n_objects"] == 2
    assert {"list_cd_l2_x1e4", "fscore_0.5", "fscore_1.0", "fscore_5.0", "list_iou"} <= set(record["metrics"])
    assert 0 <= record["n_failed"] <= 2

    # export: one mesh per test image of the data module (trainer.export attaches it)
    exported = tmp_path / "exported"
    assert main(["export", "--ckpt_path", str(fine_ckpt), *common, "--run_name", "fine-export",
                 *DATA_SMALL[:10], "--resolution", "16", "--output", str(exported)]) == 0
    assert len(list(exported.glob("*.ply"))) == 2

    # predict on a folder of images -> one mesh per image
    images = tmp_path / "images"
    images.mkdir()
    import cv2

    for name in ("a", "b"):
        cv2.imwrite(str(images / f"{name}.png"), (np.random.default_rng(0).random((24, 24, 3)) * 255).astype(np.uint8))
    assert main(["predict", "--ckpt_path", str(fine_ckpt), *common, "--run_name", "pred",
                 "--data", "sfd_lightning.datamodules.image_folder.ImageFolderDataModule",
                 "--data.init_args.root", str(images), "--data.init_args.image_size", "16",
                 "--model.init_args.test_resolution", "16"]) == 0
    assert sorted(p.name for p in (root / "pred" / "meshes").iterdir()) == ["a.ply", "b.ply"]


def test_missing_coarse_checkpoint_is_one_line_error(tmp_path, capsys):
    code = main(["fit", "--config", FINE, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "1",
                 *SMALL, "--model.init_args.coarse_checkpoint", str(tmp_path / "nope.ckpt")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "nope.ckpt" in err and "coarse checkpoint not found" in err
