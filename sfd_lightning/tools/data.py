"""``sfd data``: synthetic data in real layouts, dataset checks, real-mesh preparation.

Formats plug in through two registries, so each dataset lives in its own module:

- ``SYNTH_FORMATS[name]`` is a module with ``configure_parser(parser)`` (adds its options; ``--out``
  and ``--seed`` are already there) and ``run(args) -> Path`` (writes the tree, returns its root).
- ``CHECK_FORMATS[name]`` is a module with ``check(root: Path) -> list[str]``: every problem as
  ``"<path>: <problem> — <fix>"``; an empty list means the tree is usable.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from jsonargparse import ArgumentParser

SYNTH_FORMATS: dict[str, str] = {
    "shapenet": "sfd_lightning.synthetic.writers.shapenet",
    "pix3d": "sfd_lightning.synthetic.writers.pix3d",
    "cub": "sfd_lightning.synthetic.writers.cub",
    "pile": "sfd_lightning.synthetic.writers.pile",
    "pointcloud": "sfd_lightning.synthetic.writers.pointcloud",
}
CHECK_FORMATS: dict[str, str] = {
    "shapenet": "sfd_lightning.datacheck.shapenet",
    "pix3d": "sfd_lightning.datacheck.pix3d",
    "cub": "sfd_lightning.datacheck.cub",
    "pile": "sfd_lightning.datacheck.pile",
    "pointcloud": "sfd_lightning.datacheck.pointcloud",
}
PREPARE_SDF_MODULE = "sfd_lightning.synthetic.writers.prepare_sdf"
IMPORT_MASKS_MODULE = "sfd_lightning.preprocess.import_masks"


def _optional_module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            return None
        raise


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="sfd data", description=__doc__.splitlines()[0])
    commands = parser.add_subcommands(dest="command", required=True)

    synth = ArgumentParser(description="Write synthetic data in a real dataset layout.")
    commands.add_subcommand("synth", synth)  # jsonargparse: parent levels first
    formats = synth.add_subcommands(dest="format", required=True)
    for name, module_name in SYNTH_FORMATS.items():
        module = _optional_module(module_name)
        if module is None:
            continue
        sub = ArgumentParser(description=(module.__doc__ or name).strip().splitlines()[0])
        sub.add_argument("--out", type=str, required=True, help="output root folder")
        sub.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
        module.configure_parser(sub)
        formats.add_subcommand(name, sub)

    check = ArgumentParser(description="Validate a dataset tree; list every problem with its path.")
    check.add_argument("root", type=str)
    check.add_argument("--format", type=str, required=True, choices=sorted(CHECK_FORMATS))
    commands.add_subcommand("check", check)

    for name, module_name, help_text in (
        ("prepare-sdf", PREPARE_SDF_MODULE, "Real meshes -> SDF-sample layouts (resumable)."),
        ("import-masks", IMPORT_MASKS_MODULE, "Users' instance masks -> raw/000_instance_seg.png."),
    ):
        module = _optional_module(module_name)
        if module is None:
            continue
        sub = ArgumentParser(description=help_text)
        module.configure_parser(sub)
        commands.add_subcommand(name, sub)
    return parser


def run_check(root: str | Path, fmt: str) -> list[str]:
    """Problems found in ``root`` for dataset format ``fmt`` (empty: the tree is usable)."""
    module = _optional_module(CHECK_FORMATS[fmt])
    if module is None:
        raise NotImplementedError(f"no checker for format '{fmt}' is installed in this version")
    root = Path(root)
    if not root.exists():
        return [f"{root}: folder not found — check the path"]
    return list(module.check(root))


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    command = args.command
    sub = args[command]
    if command == "synth":
        fmt = sub.format
        module = importlib.import_module(SYNTH_FORMATS[fmt])
        root = module.run(sub[fmt])
        print(f"wrote synthetic {fmt} data to {root}")
        return 0
    if command == "check":
        problems = run_check(sub.root, sub.format)
        for problem in problems:
            print(problem)
        if problems:
            print(f"{len(problems)} problem(s) in {sub.root} ({sub.format})", file=sys.stderr)
            return 1
        print(f"{sub.root}: OK ({sub.format})")
        return 0
    module_name = PREPARE_SDF_MODULE if command == "prepare-sdf" else IMPORT_MASKS_MODULE
    return int(importlib.import_module(module_name).run(sub) or 0)
