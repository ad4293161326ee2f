"""The `sfd` CLI end to end with Neural-Pull: fit -> test -> export -> evaluate, configs, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sfd_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "neuralpull" / "tiny.yaml")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    return env


def _sfd(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sfd_lightning.cli", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_fit_test_export_evaluate_in_a_subprocess(tmp_path):
    root = tmp_path / "runs"
    fit = _sfd("fit", "--config", TINY, "--trainer.default_root_dir", str(root), "--run_name", "np")
    assert fit.returncode == 0, fit.stderr[-3000:]
    run = root / "np"
    for name in ("config.yaml", "metrics.csv", "checkpoints/last.ckpt"):
        assert (run / name).exists(), name
    assert list((run / "wandb").glob("offline-run-*")), "W&B offline run missing"
    assert list((run / "images").glob("val_sdf_slice_*.png"))
    ckpt = str(run / "checkpoints" / "last.ckpt")
    # test: model + data classes come back from the checkpoint (no --config, no --model)
    test = _sfd("test", "--ckpt_path", ckpt, "--trainer.default_root_dir", str(root), "--run_name", "np-test",
                "--model.init_args.test_resolution", "40")
    assert test.returncode == 0, test.stderr[-3000:]
    # a command-line override beats the checkpoint's stored hyperparameters
    saved = yaml.safe_load((root / "np-test" / "config_test.yaml").read_text())
    assert saved["model"]["init_args"]["test_resolution"] == 40
    record = json.loads((root / "np-test" / "metrics.json").read_text())
    assert record["evaluation"]["protocol"] == "neuralpull"
    assert record["evaluation"]["metrics"]["cd_l1"] < 0.1
    out = tmp_path / "mesh.ply"
    export = _sfd("export", "--ckpt_path", ckpt, "--resolution", "48", "--output", str(out),
                  "--trainer.default_root_dir", str(root))
    assert export.returncode == 0, export.stderr[-3000:]
    import trimesh

    mesh = trimesh.load(out)
    shape_json = json.loads(next(Path(os.environ["SFD_CACHE"]).glob("synth/pointcloud-*/shape.json")).read_text())
    lo, hi = (map(lambda v: __import__("numpy").asarray(v), shape_json["bounds"]))
    # the exported mesh is in the input's original (non-unit) frame
    assert (mesh.bounds[0] > lo - 0.1).all() and (mesh.bounds[1] < hi + 0.1).all()
    gt = next(Path(os.environ["SFD_CACHE"]).glob("synth/pointcloud-*/gt_mesh.ply"))
    ev = _sfd("evaluate", "--pred", str(out), "--gt", str(gt), "--protocol", "neuralpull", "--samples", "20000")
    assert ev.returncode == 0, ev.stderr[-2000:]
    result = json.loads(ev.stdout.strip().splitlines()[-1])
    assert result["protocol"] == "neuralpull" and result["metrics"]["cd_l1"] < 0.1


@pytest.mark.parametrize("config", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_config_parses(config, capsys):
    if config.parent.name == "trainer":
        args = ["fit", "--config", TINY, "--config", str(config), "--print_config"]
    else:
        args = ["fit", "--config", str(config), "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert "trainer" in printed and printed["trainer"]["inference_mode"] is False


def test_resume_after_sigkill(tmp_path):
    """A fit killed mid-run (SIGKILL) resumes from last.ckpt and completes."""
    root = tmp_path / "runs"
    args = [sys.executable, "-m", "sfd_lightning.cli", "fit", "--config", TINY,
            "--trainer.default_root_dir", str(root), "--run_name", "killed", "--trainer.max_steps", "150",
            "--trainer.val_check_interval", "150"]
    proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt_dir = root / "killed" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not (list(ckpt_dir.glob("*step=50.ckpt")) and (ckpt_dir / "last.ckpt").exists()):
        time.sleep(0.2)
    time.sleep(0.3)  # let last.ckpt finish writing
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (ckpt_dir / "last.ckpt").exists(), "no checkpoint before the kill"
    import torch

    step_before = torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < step_before < 150
    resumed = _sfd("fit", "--config", TINY, "--trainer.default_root_dir", str(root), "--trainer.max_steps", "150",
                   "--trainer.val_check_interval", "150", "--ckpt_path", str(ckpt_dir / "last.ckpt"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert final["global_step"] == 150
    assert (root / "killed" / "config.yaml").exists()


def test_two_runs_never_collide(tmp_path):
    root = tmp_path / "runs"
    common = ["fit", "--config", TINY, "--trainer.default_root_dir", str(root), "--trainer.max_steps", "2",
              "--trainer.limit_val_batches", "0"]
    assert main(common) == 0
    assert main(common) == 0
    runs = sorted(p for p in root.iterdir() if p.is_dir())
    assert len(runs) == 2 and all((r / "config.yaml").exists() for r in runs)
