"""``sfd data prepare-sdf``: real meshes -> the ShapeNet-style layouts (DeepSDF/DIT and LIST), headless.

Input (``--meshes DIR``): a ShapeNetCore.v2 tree ``<synset>/<id>/models/model_normalized.obj``, and/or
plain ``*.obj``/``*.off``/``*.ply`` files anywhere below DIR (synset = the parent folder when it is
an 8-digit synset id, else ``--synset``; id = the file stem).

Per mesh (see :mod:`.shape_writer` for frames and sampling): SurfaceSamples, NormalizationParameters,
SdfSamples (signed distance to the mesh, negative inside), LIST isosurface/samples/FPS and, with
``--render``, the views of :mod:`.views`. Signed distances need a watertight mesh: without
``--repair`` a non-watertight mesh is reported and skipped; with it the mesh is oriented and its
small holes filled once (:func:`~sfd_lightning.geometry.sdf_sampling.orient_and_fill`, surface
unchanged) and used for every output; signs across larger remaining holes come from the generalised
winding number (``mesh_signed_distance(..., repair=True)``).

Resumable: a shape counts as finished when its done marker (``.done/<synset>/<id>``, written
after all its files) exists, and is then skipped. A mesh that fails (corrupt file, not watertight,
empty) is reported on one line naming it and skipped; the exit code is 1 if any failed. Splits
(both layouts) are rewritten at the end over every finished shape; a shape's split is a stable
hash of its id (``--test_fraction``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from sfd_lightning.datamodules.shapenet_files import ShapeNetLayout
from sfd_lightning.errors import InputError
from sfd_lightning.geometry.io import load_mesh
from sfd_lightning.geometry.sdf_sampling import mesh_signed_distance, orient_and_fill, watertight_problem
from sfd_lightning.render.textures import SolidTexture
from sfd_lightning.synthetic.writers.shape_writer import SampleSpec, write_deepsdf_shape, write_list_shape
from sfd_lightning.synthetic.writers.shapenet_layout import done_marker, mark_done, write_split_files
from sfd_lightning.synthetic.writers.views import write_views

MESH_GLOBS = ("*.obj", "*.off", "*.ply")


def configure_parser(parser) -> None:
    """Options of ``sfd data prepare-sdf``."""
    parser.add_argument("--meshes", type=str, required=True, help="folder of meshes (ShapeNetCore.v2 or plain files)")
    parser.add_argument("--out", type=str, required=True, help="output root (both layouts)")
    parser.add_argument("--render", type=bool, default=False, help="also render the views")
    parser.add_argument("--repair", type=bool, default=False, help="make non-watertight meshes watertight first")
    parser.add_argument("--synset", type=str, default="00000000", help="synset id for loose mesh files")
    parser.add_argument("--samples", type=int, default=500_000, help="DeepSDF SDF samples per train shape")
    parser.add_argument("--list_points", type=int, default=50_000, help="LIST surface samples per shape (per sigma)")
    parser.add_argument("--surface_points", type=int, default=30_000, help="SurfaceSamples points per shape")
    parser.add_argument("--fps_points", type=int, default=5000, help="farthest points per shape (LIST)")
    parser.add_argument("--views", type=int, default=36, help="easy views per shape with --render")
    parser.add_argument("--image_size", type=int, default=224, help="render size with --render")
    parser.add_argument("--test_fraction", type=float, default=0.2, help="fraction of shapes in the test split")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")


def find_meshes(folder: Path, loose_synset: str = "00000000") -> list[tuple[str, str, Path]]:
    """``(synset, id, path)`` of every mesh below ``folder``, sorted (ShapeNetCore.v2 ids preferred)."""
    found: dict[tuple[str, str], Path] = {}
    for path in sorted(folder.glob("*/*/models/model_normalized.obj")):
        found[(path.parents[2].name, path.parents[1].name)] = path
    for pattern in MESH_GLOBS:
        for path in sorted(folder.rglob(pattern)):
            if path.name == "model_normalized.obj" or path.name.startswith("."):
                continue
            parent = path.parent.name
            synset = parent if re.fullmatch(r"\d{8}", parent) and path.parent != folder else loose_synset
            found.setdefault((synset, path.stem), path)
    return [(s, i, p) for (s, i), p in sorted(found.items())]


def split_of(instance: str, test_fraction: float) -> str:
    """Stable split of an id: ``test`` when its md5 maps below ``test_fraction``."""
    value = int(hashlib.md5(instance.encode()).hexdigest()[:8], 16) / 2**32
    return "test" if value < test_fraction else "train"


def _seed(seed: int, synset: str, instance: str) -> int:
    return (seed * 1_000_003 + int(hashlib.md5(f"{synset}/{instance}".encode()).hexdigest()[:7], 16)) % (2**31 - 1)


def prepare_shape(layout: ShapeNetLayout, synset: str, instance: str, path: Path, args) -> None:
    """Write every file of one shape, then its done marker (raises on any problem)."""
    mesh = load_mesh(path)
    problem = watertight_problem(mesh)
    if problem is not None:  # fail before writing anything
        if not args.repair:
            raise InputError(path, f"{problem}, so the SDF sign is undefined", "pass --repair")
        mesh = orient_and_fill(mesh)  # same surface, consistent winding, small holes closed
    repair = bool(args.repair)

    def sdf_fn(points):
        return mesh_signed_distance(mesh, points, repair=repair, path=path)

    spec = SampleSpec(samples=args.samples, surface_points=args.surface_points, list_points=args.list_points,
                      fps_points=args.fps_points)
    split = split_of(instance, args.test_fraction)
    seed = _seed(args.seed, synset, instance)
    stats = write_deepsdf_shape(layout, synset, instance, mesh, sdf_fn, spec, split, seed)
    write_list_shape(layout, synset, instance, mesh, sdf_fn, spec, seed + 10)
    if args.render:
        write_views(layout, synset, instance, mesh, SolidTexture(seed, kind="smooth"), args.views,
                    args.image_size, seed + 20)
    mark_done(layout, synset, instance, {"source": str(path), "split": split, **stats})


def _finished_splits(layout: ShapeNetLayout) -> dict[str, dict[str, list[str]]]:
    splits: dict[str, dict[str, list[str]]] = {}
    for marker in sorted((layout.root / ".done").glob("*/*")):
        info = json.loads(marker.read_text() or "{}")
        splits.setdefault(marker.parent.name, {"train": [], "test": []})[info.get("split", "train")].append(marker.name)
    return splits


def run(args) -> int:
    """``sfd data prepare-sdf`` entry point; returns the exit code (1 if any mesh failed)."""
    from tqdm import tqdm

    folder = Path(args.meshes)
    if not folder.is_dir():
        raise InputError(folder, "mesh folder not found", "point --meshes at a folder of meshes")
    layout = ShapeNetLayout(Path(args.out))
    shapes = find_meshes(folder, args.synset)
    if not shapes:
        raise InputError(folder, "no meshes found", f"expected <synset>/<id>/models/model_normalized.obj or {MESH_GLOBS}")
    failed = skipped = 0
    bar = tqdm(shapes, desc="prepare-sdf", unit="shape")
    for synset, instance, path in bar:
        if done_marker(layout, synset, instance).exists():
            skipped += 1
            continue
        try:
            prepare_shape(layout, synset, instance, path, args)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # one bad mesh must not stop a long run
            failed += 1
            message = str(exc) if isinstance(exc, InputError) else f"{path}: {type(exc).__name__}: {exc}"
            bar.write(f"skipped {synset}/{instance}: {message}")
    bar.close()
    splits = _finished_splits(layout)
    if splits:
        write_split_files(layout, splits, args.views if args.render else 0)
    done = sum(len(ids) for parts in splits.values() for ids in parts.values())
    print(f"prepare-sdf: {done} shapes ready in {layout.root} ({skipped} already done, {failed} failed)")
    return 1 if failed else 0
