"""``sfd umr build-template``: the semantic UV template of UMR from a stage-1 checkpoint and part maps.

Usage::

    sfd umr build-template --config configs/umr/tiny_stage1.yaml --ckpt_path runs/<s1>/checkpoints/last.ckpt \\
        [--out runs/<s1>/semantic_template.npz] [--per_batch 5] [--root PATH] [--part_maps DIR]

The data section of ``--config`` gives the train images (deterministic: no flip, no jitter); part
maps come from ``--part_maps`` or the config (synthetic birds: their ground-truth ``part_maps``).
Writes one ``.npz`` (format: :mod:`sfd_lightning.modules.umr.semantic`) and prints a JSON summary.
Stage 2 reads it: ``--model.init_args.template_path <npz>``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Optional

from jsonargparse import ArgumentParser

from sfd_lightning.errors import InputError


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="sfd umr", description="UMR tools")
    sub = parser.add_subcommands(dest="command")
    build = ArgumentParser(description="semantic template from a stage-1 checkpoint and part maps")
    build.add_argument("--config", type=str, required=True, help="the stage-1 config (its data section is used)")
    build.add_argument("--ckpt_path", type=str, required=True, help="stage-1 checkpoint")
    build.add_argument("--out", type=Optional[str], default=None,
                       help="output .npz (default: <run>/semantic_template.npz beside checkpoints/)")
    build.add_argument("--per_batch", type=int, default=5, help="instances averaged per batch")
    build.add_argument("--root", type=Optional[str], default=None, help="override data.init_args.root")
    build.add_argument("--part_maps", type=Optional[str], default=None, help="override data.init_args.part_maps")
    build.add_argument("--batch_size", type=int, default=16, help="images per batch")
    build.add_argument("--label_sampling", type=str, default="nearest", help="nearest | bilinear (released code)")
    sub.add_subcommand("build-template", build)
    return parser


def _datamodule(config: Path, root: Optional[str], part_maps: Optional[str]):
    import yaml

    if not config.is_file():
        raise InputError(config, "config not found", "pass the stage-1 config file")
    content = yaml.safe_load(config.read_text()) or {}
    data = content.get("data") or {}
    if "class_path" not in data:
        raise InputError(config, "config has no data section with class_path", "pass the stage-1 config")
    module_name, _, cls_name = data["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    args = dict(data.get("init_args") or {})
    if root is not None:
        args["root"] = root
    if part_maps is not None:
        args["part_maps"] = part_maps
    if args.get("part_maps") is None and args.get("root") is None:
        args["part_maps"] = "part_maps"  # synthetic birds carry ground-truth part maps
    if args.get("part_maps") is None:
        raise InputError(config, "no part maps configured", "pass --part_maps <SCOPS folder>")
    return cls(**args)


def build_template_command(args) -> Path:
    import torch
    from torch.utils.data import DataLoader

    from sfd_lightning.modules.umr.semantic import PART_NAMES, build_semantic_template, save_template

    ckpt = Path(args.ckpt_path)
    if not ckpt.is_file():
        raise InputError(ckpt, "checkpoint not found", "pass runs/<stage-1 run>/checkpoints/last.ckpt")
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    class_path = (stored.get("hyper_parameters") or {}).get("_class_path")
    if not class_path or ".umr." not in class_path:
        raise InputError(ckpt, f"not a UMR checkpoint (model {class_path})", "pass a UMR stage-1 checkpoint")
    module_name, _, cls_name = class_path.rpartition(".")
    model = getattr(importlib.import_module(module_name), cls_name).load_from_checkpoint(ckpt, map_location="cpu")
    model.eval()
    dm = _datamodule(Path(args.config), args.root, args.part_maps)
    dm.setup("fit")
    dataset = dm.datasets["train"]
    dataset.jitter, dataset.flip = 0.0, False  # deterministic crops
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=0)
    result = build_semantic_template(model, loader, per_batch=args.per_batch)
    out = Path(args.out) if args.out else ckpt.resolve().parent.parent / "semantic_template.npz"
    path = save_template(out, result["mean_v"], result["uv_prob"], model.tpl, args.label_sampling,
                         extra={"exemplar_index": result["exemplar_index"]})
    import numpy as np

    saved = np.load(path)
    summary = {"template": str(path), "exemplar_index": result["exemplar_index"], "averaged": result["averaged"],
               "mesh_level": model.tpl.level,
               "part_vertices": {n: int(len(saved[f"{n}_vertices"])) for n in PART_NAMES},
               "uv_label_fractions": [float((saved["uv_label"] == k).mean()) for k in range(5)]}
    print(json.dumps(summary))
    return path


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "build-template":
        build_template_command(args["build-template"])
    return 0
