"""Step 3 of ``sfd preprocess pile``: a pycolmap database of the instance views and geometric
verification (pycolmap 4.x API, methods/sfd.md §9).

One image per instance (``instance_XX.png``: the full photo with the other instances blacked out;
per-crop cameras with shifted principal points are rejected by the mapper), ONE shared PINHOLE
camera with the known focal length, keypoints in COLMAP's convention (``+0.5``), no descriptors.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sfd_lightning.preprocess.matchers.base import PairMatches, ViewFeatures
from sfd_lightning.preprocess.views import PileViews


def image_name(i: int) -> str:
    """File name of 0-based instance ``i``'s virtual view."""
    return f"instance_{i:02d}.png"


def instance_of(name: str) -> int:
    """Inverse of :func:`image_name`."""
    return int(Path(name).stem.rsplit("_", 1)[1])


@dataclass
class VerifiedPair:
    """A geometrically verified pair: inlier matches ``(K, 2)`` and, when COLMAP estimated it, the
    relative rotation ``R_ji`` (``cam_j_from_cam_i``, 3x3) of the virtual cameras."""

    i: int
    j: int
    inliers: np.ndarray
    rotation: np.ndarray | None


def write_views(views: PileViews, image_dir: Path) -> list[str]:
    """Write every instance's masked full view; returns the file names in instance order."""
    from sfd_lightning.datamodules.pile_files import write_png

    image_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(views.num_instances):
        names.append(image_name(i))
        write_png(image_dir / names[-1], views.masked_image(i))
    return names


def build_database(db_path: Path, image_dir: Path, views: PileViews, features: list[ViewFeatures],
                   pairs: list[PairMatches], min_matches: int = 8) -> dict[int, int]:
    """Create ``db_path`` (replacing it) with camera, images, keypoints and putative matches.

    Returns:
        ``{0-based instance id: COLMAP image id}``.
    """
    import pycolmap

    names = write_views(views, image_dir)
    tmp = db_path.with_name(db_path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    options = pycolmap.ImageReaderOptions()
    options.camera_model = "PINHOLE"
    f = views.focal
    options.camera_params = f"{f},{f},{views.width / 2.0},{views.height / 2.0}"
    db = pycolmap.Database.open(str(tmp))
    db.close()
    pycolmap.import_images(str(tmp), str(image_dir), camera_mode=pycolmap.CameraMode.SINGLE,
                           image_names=names, options=options)
    db = pycolmap.Database.open(str(tmp))
    try:
        ids = {instance_of(image.name): int(image.image_id) for image in db.read_all_images()}
        for i, feats in enumerate(features):
            db.write_keypoints(ids[i], np.ascontiguousarray(feats.keypoints + 0.5, dtype=np.float32))
        for pair in pairs:
            if len(pair.matches) >= min_matches:
                db.write_matches(ids[pair.i], ids[pair.j], np.ascontiguousarray(pair.matches, dtype=np.uint32))
    finally:
        db.close()
    shutil.move(str(tmp), str(db_path))
    return ids


def verify(db_path: Path, ids: dict[int, int], pairs: list[PairMatches], seed: int,
           max_error: float = 4.0, min_inliers: int = 15) -> list[VerifiedPair]:
    """Run pycolmap's geometric verification on the matched pairs (single thread, seeded).

    Returns:
        the pairs that passed, with inlier matches and the relative rotation of the virtual cameras.
    """
    import pycolmap

    names = {v: k for k, v in ids.items()}
    pairs_txt = db_path.with_name("pairs.txt")
    pairs_txt.write_text("".join(f"{image_name(p.i)} {image_name(p.j)}\n" for p in pairs))
    options = pycolmap.TwoViewGeometryOptions()
    options.min_num_inliers = min_inliers
    options.compute_relative_pose = True
    options.ransac.max_error = max_error
    options.ransac.random_seed = seed
    options.ransac.num_threads = 1
    options.detect_watermark = False
    pycolmap.verify_matches(str(db_path), str(pairs_txt), options=options)
    db = pycolmap.Database.open(str(db_path))
    out = []
    try:
        pair_ids, geometries = db.read_two_view_geometries()
        for pair_id, geometry in zip(pair_ids, geometries):
            a, b = pycolmap.pair_id_to_image_pair(pair_id) if hasattr(pycolmap, "pair_id_to_image_pair") \
                else _split_pair_id(pair_id)
            inliers = np.asarray(geometry.inlier_matches, dtype=np.int64).reshape(-1, 2)
            if len(inliers) == 0:
                continue
            i, j = names[int(a)], names[int(b)]
            rotation = None
            try:
                rotation = np.asarray(geometry.cam2_from_cam1.rotation.matrix(), dtype=np.float64)
            except (AttributeError, TypeError):
                rotation = None
            if i > j:
                i, j, inliers = j, i, inliers[:, ::-1]
                rotation = None if rotation is None else rotation.T
            out.append(VerifiedPair(i, j, np.ascontiguousarray(inliers), rotation))
    finally:
        db.close()
    return sorted(out, key=lambda p: (p.i, p.j))


def _split_pair_id(pair_id: int) -> tuple[int, int]:
    """COLMAP pair id -> (image_id1, image_id2) (``id1 * 2147483647 + id2``)."""
    maximum = 2147483647
    return int(pair_id // maximum), int(pair_id % maximum)
