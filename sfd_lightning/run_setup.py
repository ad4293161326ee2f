"""Run-folder plumbing for the CLI: config saving, default loggers, checkpoint location.

Fixes the traps of lightning.md §6: config.yaml is written into the run's own folder (never a
shared ``save_dir``), the full config reaches W&B, W&B is offline unless ``WANDB_MODE=online``
(``disabled`` turns it off), and a CSV logger always writes ``metrics.csv`` locally.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}/{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


class RunConfigSaver(SaveConfigCallback):
    """Writes ``config.yaml`` (``config_<stage>.yaml`` outside fit) into the run folder and
    sends the full resolved config to every W&B logger."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            stage = getattr(stage, "value", stage)  # TrainerFn enum in predict/test -> "predict"/"test"
            name = "config.yaml" if stage == "fit" else f"config_{stage}.yaml"
            path = Path(trainer.default_root_dir) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=False)
            wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
            if wandb_loggers:
                import yaml

                flat: dict[str, Any] = {}
                _flatten("", yaml.safe_load(path.read_text()), flat)
                for logger in wandb_loggers:
                    logger.experiment.config.update(flat, allow_val_change=True)
        self.already_saved = True


def default_loggers(run_dir: Path, subcommand: str) -> list[Logger]:
    """CSV logger (always) + W&B (offline by default; ``WANDB_MODE`` respected)."""
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="", version="")]
    mode = os.environ.get("WANDB_MODE", "offline").lower()
    if mode not in ("disabled", "false", "off"):
        loggers.append(WandbLogger(save_dir=str(run_dir), project=os.environ.get("WANDB_PROJECT", "sfd_lightning"),
                                   name=f"{run_dir.name}-{subcommand}" if subcommand != "fit" else run_dir.name,
                                   offline=mode != "online"))
    return loggers


def ensure_checkpointing(trainer, run_dir: Path) -> None:
    """Checkpoints go to ``<run>/checkpoints``; ``last.ckpt`` is always kept for resuming."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            if callback.dirpath is None:
                callback.dirpath = str(run_dir / "checkpoints")
            if callback.save_last is None:
                callback.save_last = True
