"""``sfd data check --format shapenet``: validate a ShapeNet-style tree (DeepSDF/DIT and LIST layouts).

Each problem is one line ``"<path>: <problem> — <fix>"``; one problem per broken file or split
entry (an entry with no data at all is one line, not one per missing file). Checked:

- DeepSDF/DIT (when ``splits/`` or ``SdfSamples/`` exists): every split JSON parses; every entry has
  ``SdfSamples`` with finite float ``(n, 4)`` ``pos``/``neg`` (NaN rows are tolerated as in real
  DeepSDF data, up to :data:`MAX_NAN_FRACTION`); test entries also have valid
  ``NormalizationParameters`` and ``SurfaceSamples``; rendered shapes have one ``image_rgb`` PNG
  per ``rendering_metadata.txt`` row and a readable first image.
- LIST (when ``DISN_split/`` or ``sampled_points/`` exists): every ``.lst`` id has
  ``sampled_points.h5`` (``grid_points`` + ``query_points_sigma_*``, finite), ``farthest_pointclouds.h5``,
  ``isosurf_scaled.obj`` inside [−0.5, 0.5]³ and easy views (one line when ``images/`` is missing
  altogether, e.g. ``prepare-sdf`` without ``--render``); ``testlist_all.lst`` views exist.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sfd_lightning.datamodules.shapenet_files import (ShapeNetLayout, read_farthest_points, read_image,
                                                      read_list_samples, read_lst, read_normalization,
                                                      read_render_metadata, read_sdf_samples, read_split_json,
                                                      read_surface_samples, read_testlist)
from sfd_lightning.errors import InputError
from sfd_lightning.geometry.io import load_mesh

MAX_NAN_FRACTION = 0.1
ISOSURFACE_TOLERANCE = 1e-3


def _problem(path: Path, problem: str, fix: str) -> str:
    return str(InputError(path, problem, fix))


def _check_sdf_samples(path: Path) -> list[str]:
    try:
        read_sdf_samples(path)
        with np.load(path, allow_pickle=False) as data:
            rows = np.concatenate([np.asarray(data["pos"]), np.asarray(data["neg"])])
    except InputError as exc:
        return [str(exc)]
    bad = float((~np.isfinite(rows).all(axis=1)).mean())
    if bad > MAX_NAN_FRACTION:
        return [_problem(path, f"{bad:.0%} of the rows are NaN/inf", "regenerate the SDF samples")]
    return []


def _check_views(folder: Path) -> list[str]:
    """Rendered level folder: metadata rows match the image_rgb PNGs; the first one is readable."""
    try:
        rows = read_render_metadata(folder / "rendering_metadata.txt")
    except InputError as exc:
        return [str(exc)]
    images = sorted((folder / "image_rgb").glob("*.png"))
    if len(images) != len(rows):
        return [_problem(folder / "image_rgb", f"{len(images)} images for {len(rows)} metadata rows",
                         "re-render the views of this shape")]
    try:
        if images:
            read_image(images[0])
    except InputError as exc:
        return [str(exc)]
    return []


def check_deepsdf(root: Path) -> list[str]:
    layout = ShapeNetLayout(root)
    problems: list[str] = []
    split_files = sorted((root / "splits").glob("*.json"))
    if not split_files:
        return [_problem(root / "splits", "no split JSON files", "add splits/sv2_<name>_{train,test}.json")]
    for split in split_files:
        try:
            pairs = read_split_json(split)
        except InputError as exc:
            problems.append(str(exc))
            continue
        is_test = split.stem.endswith("_test")
        for synset, instance in pairs:
            sdf = layout.sdf_samples(synset, instance)
            if not sdf.is_file():
                problems.append(_problem(sdf, f"missing for entry '{instance}' of {split.name}",
                                         "generate the shape's data or remove the id from the split"))
                continue
            problems += _check_sdf_samples(sdf)
            norm, surf = layout.normalization(synset, instance), layout.surface_samples(synset, instance)
            for path, reader in ((norm, read_normalization), (surf, read_surface_samples)):
                if is_test or path.exists():
                    try:
                        reader(path)
                    except InputError as exc:
                        problems.append(str(exc))
            for level in ("easy", "hard"):
                folder = layout.render_dir(synset, instance, level)
                if folder.is_dir():
                    problems += _check_views(folder)
    return problems


def _check_list_shape(layout: ShapeNetLayout, synset: str, instance: str, lst: Path) -> list[str]:
    samples = layout.sampled_points(synset, instance)
    if not samples.is_file():
        return [_problem(samples, f"missing for entry '{instance}' of {lst.name}",
                         "generate the shape's data or remove the id from the list")]
    problems = []
    try:
        read_list_samples(samples)
    except InputError as exc:
        problems.append(str(exc))
    try:
        read_farthest_points(layout.farthest_points(synset, instance))
    except InputError as exc:
        problems.append(str(exc))
    iso = layout.isosurface(synset, instance)
    try:
        vertices = load_mesh(iso).vertices
        if np.abs(vertices).max() > 0.5 + ISOSURFACE_TOLERANCE:
            problems.append(_problem(iso, f"vertices reach {np.abs(vertices).max():.4f}, outside [-0.5, 0.5]^3",
                                     "rescale: centre the bbox, divide by the longest side"))
    except InputError as exc:
        problems.append(str(exc))
    folder = layout.list_image_dir(synset, instance)
    if (layout.root / "images").is_dir() and not any(folder.glob("*.png")):
        problems.append(_problem(folder, "no rendered views", "render the views (images/<synset>/<id>/easy/NN.png)"))
    return problems


def check_list(root: Path) -> list[str]:
    layout = ShapeNetLayout(root)
    problems: list[str] = []
    lists = sorted(p for p in (root / "DISN_split").glob("*.lst") if p.name != "testlist_all.lst")
    if not lists:
        return [_problem(root / "DISN_split", "no <synset>_{train,test}.lst files", "add the DISN split lists")]
    if not (root / "images").is_dir():
        problems.append(_problem(root / "images", "no rendered views (LIST trains on images/<synset>/<id>/easy/NN.png)",
                                 "render them (`sfd data prepare-sdf --render` or `sfd data synth shapenet`)"))
    for lst in lists:
        synset = lst.stem.rsplit("_", 1)[0]
        for instance in read_lst(lst):
            problems += _check_list_shape(layout, synset, instance, lst)
    if layout.testlist_all.is_file():
        try:
            triples = read_testlist(layout.testlist_all)
        except InputError as exc:
            return problems + [str(exc)]
        for synset, instance, view in triples:
            image = layout.list_image(synset, instance, view)
            if not image.is_file():
                problems.append(_problem(image, f"view {view} listed in testlist_all.lst is missing",
                                         "render it or fix testlist_all.lst"))
    return problems


def check(root: Path) -> list[str]:
    """Every problem of a ShapeNet-style tree (empty list: usable)."""
    root = Path(root)
    has_deepsdf = (root / "splits").is_dir() or (root / "SdfSamples").is_dir()
    has_list = (root / "DISN_split").is_dir() or (root / "sampled_points").is_dir()
    if not (has_deepsdf or has_list):
        return [_problem(root, "neither the DeepSDF/DIT layout (splits/, SdfSamples/) nor the LIST layout "
                         "(DISN_split/, sampled_points/) was found", "point to a ShapeNet-style root")]
    return (check_deepsdf(root) if has_deepsdf else []) + (check_list(root) if has_list else [])
