"""``sfd evaluate``: score a predicted mesh/point cloud against ground truth under a named protocol.

Prints exactly one JSON object on stdout (protocol, version, metrics, samples, seed,
gt_self_score; NaN as ``null``). ``--output FILE`` also writes it there atomically. Bad input
raises :class:`~sfd_lightning.errors.InputError`, which ``sfd`` prints as one line.

Example::

    sfd evaluate --pred runs/horse/mesh.ply --gt data/horse.ply --protocol neuralpull
"""

from __future__ import annotations

import json
from pathlib import Path

from jsonargparse import ArgumentParser

from sfd_lightning.errors import InputError
from sfd_lightning.geometry.io import atomic_write
from sfd_lightning.metrics.evaluate import evaluate
from sfd_lightning.metrics.protocols import PROTOCOLS


def build_parser() -> ArgumentParser:
    """The ``sfd evaluate`` argument parser."""
    parser = ArgumentParser(prog="sfd evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--pred", type=str, required=True, help="predicted mesh or point cloud file")
    parser.add_argument("--gt", type=str, required=True, help="ground-truth mesh or point cloud file")
    parser.add_argument("--protocol", type=str, default="neuralpull",
                        help=f"protocol name or alias: {', '.join(sorted(PROTOCOLS))}")
    parser.add_argument("--samples", type=int | None, default=None,
                        help="override the protocol's sample counts (prediction and GT)")
    parser.add_argument("--seed", type=int | None, default=None, help="sampling seed (default: the protocol's, 0)")
    parser.add_argument("--backend", type=str, default="auto",
                        help="nearest-neighbour backend: auto, pykdtree, ckdtree, torch")
    parser.add_argument("--output", type=str | None, default=None, help="also write the JSON to this file")
    return parser


def main(argv: list[str]) -> int:
    """Run ``sfd evaluate`` with ``argv`` (without the program name); returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.backend not in ("auto", "pykdtree", "ckdtree", "torch"):
        raise InputError(None, f"unknown --backend '{args.backend}'", "use auto, pykdtree, ckdtree or torch")
    result = evaluate(args.pred, args.gt, protocol=args.protocol, samples=args.samples, seed=args.seed,
                      backend=args.backend)
    text = json.dumps(result, allow_nan=False)
    if args.output:
        atomic_write(Path(args.output), lambda tmp: tmp.write_text(text + "\n"))
    print(text)
    return 0
