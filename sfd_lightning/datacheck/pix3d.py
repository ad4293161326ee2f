"""``sfd data check --format pix3d``: validate a Pix3D tree (``pix3d.json``, files, splits, LIST data).

One line ``"<path>: <problem> — <fix>"`` per problem. Checked: ``pix3d.json`` parses with the
required keys; per entry the photo exists with the size of ``img_size``, the mask exists with the
same size, ``bbox`` lies inside the image and is non-empty, ``rot_mat`` is a rotation, the model file
exists; per model the LIST files (``sampled_points.h5`` finite with its keys, ``isosurf_scaled.obj``
in [−0.5, 0.5]³, ``mesh_org.ply``) exist when a ``data/`` folder is present; the Total3D splits index
existing entries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sfd_lightning.datacheck.shapenet import ISOSURFACE_TOLERANCE
from sfd_lightning.datamodules.pix3d_files import Pix3DLayout, read_pix3d_json, read_total3d_split
from sfd_lightning.datamodules.shapenet_files import read_list_samples
from sfd_lightning.errors import InputError
from sfd_lightning.geometry.io import load_mesh


def _problem(path: Path, problem: str, fix: str) -> str:
    return str(InputError(path, problem, fix))


def _image_size(path: Path) -> tuple[int, int] | None:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return None if image is None else (image.shape[1], image.shape[0])


def _check_entry(layout: Pix3DLayout, index: int, entry: dict) -> list[str]:
    problems = []
    width, height = (int(v) for v in entry["img_size"])
    for key in ("img", "mask"):
        path = layout.file(entry[key])
        if not path.is_file():
            problems.append(_problem(path, f"{key} of entry {index} not found", "restore the file or the entry"))
            continue
        size = _image_size(path)
        if size is None:
            problems.append(_problem(path, "not a readable image", "re-save it"))
        elif size != (width, height):
            problems.append(_problem(path, f"size {size} differs from img_size {(width, height)} of entry {index}",
                                     "fix img_size or the file"))
    x0, y0, x1, y1 = (float(v) for v in entry["bbox"])
    if not (0 <= x0 < x1 <= width - 1 + 1e-6 and 0 <= y0 < y1 <= height - 1 + 1e-6):
        problems.append(_problem(layout.annotations, f"entry {index} bbox {entry['bbox']} is empty or outside "
                                 f"the {width}x{height} image", "fix the bbox [x0, y0, x1, y1]"))
    rot = np.asarray(entry["rot_mat"], dtype=np.float64)
    if rot.shape != (3, 3) or not np.allclose(rot @ rot.T, np.eye(3), atol=1e-4) or abs(np.linalg.det(rot) - 1) > 1e-4:
        problems.append(_problem(layout.annotations, f"entry {index} rot_mat is not a 3x3 rotation", "fix rot_mat"))
    if not layout.file(entry["model"]).is_file():
        problems.append(_problem(layout.file(entry["model"]), f"model of entry {index} not found", "restore the model"))
    return problems


def _check_list_model(layout: Pix3DLayout, entry: dict) -> list[str]:
    samples = layout.sampled_points(entry)
    if not samples.is_file():
        return [_problem(samples, f"LIST samples of {entry['model']} not found", "regenerate the LIST data")]
    problems = []
    try:
        read_list_samples(samples)
    except InputError as exc:
        problems.append(str(exc))
    iso = layout.isosurface(entry)
    try:
        extent = float(np.abs(load_mesh(iso).vertices).max())
        if extent > 0.5 + ISOSURFACE_TOLERANCE:
            problems.append(_problem(iso, f"vertices reach {extent:.4f}, outside [-0.5, 0.5]^3",
                                     "rescale: centre the bbox, divide by the longest side"))
    except InputError as exc:
        problems.append(str(exc))
    if not layout.mesh_org(entry).is_file():
        problems.append(_problem(layout.mesh_org(entry), "mesh_org.ply not found", "write the model as mesh_org.ply"))
    return problems


def check(root: Path) -> list[str]:
    """Every problem of a Pix3D tree (empty list: usable)."""
    layout = Pix3DLayout(Path(root))
    try:
        entries = read_pix3d_json(layout.annotations)
    except InputError as exc:
        return [str(exc)]
    problems: list[str] = []
    seen_models: set[str] = set()
    for index, entry in enumerate(entries):
        problems += _check_entry(layout, index, entry)
        if (layout.root / "data").is_dir() and entry["model"] not in seen_models:
            seen_models.add(entry["model"])
            problems += _check_list_model(layout, entry)
    for kind in ("train", "test"):
        try:
            indices = read_total3d_split(layout.split(kind))
        except InputError as exc:
            problems.append(str(exc))
            continue
        bad = [i for i in indices if not 0 <= i < len(entries)]
        if bad:
            problems.append(_problem(layout.split(kind), f"indices {bad[:5]} outside pix3d.json (0..{len(entries) - 1})",
                                     "use the split that matches this pix3d.json"))
    return problems
