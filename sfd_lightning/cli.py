"""The ``sfd`` entry point (CONTRACTS §1).

``sfd fit|validate|test|predict|export`` go to LightningCLI (subclass mode over
:class:`BaseReconSystem` / :class:`BaseReconDataModule`, Trainer subclass with ``export``); the
tool groups ``evaluate``, ``data``, ``preprocess``, ``umr`` and ``demo`` go to their own parsers.

Run folders: every invocation writes under ``<trainer.default_root_dir>/<run_name>/`` (default
``runs/<system>-<timestamp>``): ``config.yaml``, ``metrics.csv``, ``checkpoints/`` (incl.
``last.ckpt``), ``wandb/``, ``images/``, ``meshes/``, ``metrics.json``. ``fit --ckpt_path
runs/X/checkpoints/last.ckpt`` resumes into ``runs/X``. Bad input prints one line, exit code 2.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

TOOL_GROUPS = {
    "evaluate": "sfd_lightning.tools.evaluate",
    "data": "sfd_lightning.tools.data",
    "preprocess": "sfd_lightning.tools.preprocess",
    "umr": "sfd_lightning.tools.umr",
    "demo": "sfd_lightning.tools.demo",
}
TRAINER_COMMANDS = ("fit", "validate", "test", "predict", "export")
RUN_DIR_ENV = "SFD_RUN_DIR"


def _checkpoint_hparams(ckpt_path: str) -> dict[str, Any]:
    import torch

    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception:
        return {}
    return {"model": checkpoint.get("hyper_parameters") or {},
            "data": checkpoint.get("datamodule_hyper_parameters") or {}}


def _configs_define(argv: list[str], key: str) -> bool:
    """Whether any ``--config`` file in ``argv`` has a top-level ``key`` section."""
    import yaml

    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg == "--config" and i + 1 < len(argv) else (
            arg.split("=", 1)[1] if arg.startswith("--config=") else None)
        if path and Path(path).is_file():
            content = yaml.safe_load(Path(path).read_text()) or {}
            if isinstance(content, dict) and content.get(key) is not None:
                return True
    return False


def _restore_classes_from_checkpoint(argv: list[str]) -> list[str]:
    """Add ``--model``/``--data`` from a checkpoint's stored class paths when not given.

    Lightning stores ``_class_path`` next to the init args (subclass mode); LightningCLI still
    requires the class on the command line. CONTRACTS §1: the class comes from the checkpoint.
    """
    if not argv or argv[0] not in TRAINER_COMMANDS:
        return argv
    ckpt = next((argv[i + 1] for i, a in enumerate(argv) if a == "--ckpt_path" and i + 1 < len(argv)),
                next((a.split("=", 1)[1] for a in argv if a.startswith("--ckpt_path=")), None))
    if not ckpt or not Path(ckpt).is_file():
        return argv
    stored = _checkpoint_hparams(ckpt)
    extra: list[str] = []
    for key in ("model", "data"):
        hparams = dict(stored.get(key) or {})
        class_path = hparams.pop("_class_path", None)
        hparams.pop("_instantiator", None)
        given = any(a == f"--{key}" or a.startswith(f"--{key}=") or a.startswith(f"--{key}.class_path")
                    for a in argv)
        if class_path and not given and not _configs_define(argv, key):
            extra += [f"--{key}", json.dumps({"class_path": class_path, "init_args": hparams}, default=str)]
    # right after the subcommand, so later --model.init_args.* overrides still apply
    return argv[:1] + extra + argv[1:]


def _default_run_name(model_class: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    job = os.environ.get("SLURM_JOB_ID")
    name = model_class.rsplit(".", 1)[-1].lower()
    return f"{name}-slurm{job}" if job else f"{name}-{stamp}"


def resolve_run_dir(root: str, run_name: Optional[str], model_class: str, subcommand: str,
                    ckpt_path: Optional[str]) -> Path:
    """The folder of this run; a resumed fit continues in its checkpoint's run folder."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and os.environ.get("LOCAL_RANK", "0") != "0":
        return Path(inherited)  # a DDP rank relaunched by rank 0: same folder
    if subcommand == "fit" and ckpt_path and Path(ckpt_path).parent.name == "checkpoints" and run_name is None:
        return Path(ckpt_path).resolve().parent.parent
    name = run_name or _default_run_name(model_class)
    run_dir = Path(root) / name
    suffix = 1
    while run_name is None and run_dir.exists():
        suffix += 1
        run_dir = Path(root) / f"{name}-{suffix}"
    return run_dir


def _build_cli(args: list[str], model_from_checkpoint: bool = False):
    from lightning.pytorch.cli import LightningCLI

    from sfd_lightning.datamodules.base import BaseReconDataModule
    from sfd_lightning.modules.base import BaseReconSystem
    from sfd_lightning.run_setup import RunConfigSaver, default_loggers, ensure_checkpointing
    from sfd_lightning.trainer import ReconTrainer

    class ReconCLI(LightningCLI):
        """LightningCLI with run folders, default loggers and the ``export`` subcommand."""

        @staticmethod
        def subcommands() -> dict[str, set[str]]:
            commands = dict(LightningCLI.subcommands())
            commands["export"] = {"model", "datamodule"}
            return commands

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--run_name", type=Optional[str], default=None,
                                help="name of the run folder under trainer.default_root_dir")
            parser.set_defaults({"trainer.inference_mode": False, "trainer.default_root_dir": "runs"})

        def _parse_ckpt_path(self) -> None:
            # Lightning re-applies the checkpoint's hyperparameters over the parsed config, which
            # silently drops command-line overrides (`sfd test --ckpt_path K --model.init_args.x v`).
            # When the model came from the checkpoint (_restore_classes_from_checkpoint), its
            # hyperparameters already sit in front of the user's arguments, so skip the re-application.
            if not model_from_checkpoint:
                super()._parse_ckpt_path()

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand]
            model_class = str(config.model.class_path) if config.get("model") else "run"
            run_dir = resolve_run_dir(config.trainer.default_root_dir or "runs", config.get("run_name"),
                                      model_class, self.subcommand, config.get("ckpt_path"))
            run_dir.mkdir(parents=True, exist_ok=True)
            os.environ[RUN_DIR_ENV] = str(run_dir)
            config.trainer.default_root_dir = str(run_dir)
            self.run_dir = run_dir

        def instantiate_trainer(self, **kwargs: Any):
            trainer_config = self._get(self.config_init, "trainer", default={})
            if trainer_config.get("logger") in (None, True):
                kwargs["logger"] = default_loggers(self.run_dir, self.subcommand)
            trainer = super().instantiate_trainer(**kwargs)
            ensure_checkpointing(trainer, self.run_dir)
            return trainer

    return ReconCLI(BaseReconSystem, BaseReconDataModule, subclass_mode_model=True, subclass_mode_data=True,
                    trainer_class=ReconTrainer, save_config_callback=RunConfigSaver,
                    save_config_kwargs={"overwrite": True}, parser_kwargs={"default_env": True},
                    auto_configure_optimizers=False, args=args)


def _remove_unfinished_run(previous_run: Optional[str]) -> None:
    """Delete the run folder this call created when it failed before writing any checkpoint."""
    import shutil

    current = os.environ.get(RUN_DIR_ENV)
    if not current or current == previous_run:
        return
    run_dir = Path(current)
    if run_dir.is_dir() and not (run_dir / "checkpoints").exists():
        _finish_wandb()
        shutil.rmtree(run_dir, ignore_errors=True)


def _finish_wandb() -> None:
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def main(argv: Optional[list[str]] = None) -> int:
    """``sfd`` entry point; returns the exit code (0 success, 1 failure, 2 bad input)."""
    from sfd_lightning.errors import InputError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: sfd {fit,validate,test,predict,export} --config C [...]\n"
              "       sfd {evaluate,data,preprocess,umr,demo} [...]\n"
              "Run 'sfd <command> --help' for the options of a command.")
        return 0
    try:
        if argv[0] in TOOL_GROUPS:
            module = importlib.import_module(TOOL_GROUPS[argv[0]])
            return int(module.main(argv[1:]) or 0)
        previous_run = os.environ.get(RUN_DIR_ENV)
        try:
            restored = _restore_classes_from_checkpoint(argv)
            _build_cli(restored, model_from_checkpoint=len(restored) > len(argv) and restored[1] == "--model")
        except InputError:
            _remove_unfinished_run(previous_run)
            raise
        return 0
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("sfd_lightning.tools."):
            print(f"error: 'sfd {argv[0]}' is not available in this version", file=sys.stderr)
            return 2
        raise
    finally:
        _finish_wandb()


def console_main() -> None:
    """Console-script wrapper: exits with :func:`main`'s code."""
    argv = sys.argv[1:]
    sys.argv = sys.argv[:1]  # LightningCLI warns when it sees both sys.argv and args
    sys.exit(main(argv))


if __name__ == "__main__":
    console_main()
