"""Step 4 of ``sfd preprocess pile``: incremental SfM with pycolmap in-process, several seeds.

The instance views are narrow (each instance spans ~10° of the field of view) and often flat, so
pose and relief trade off: the mapper can land on a wrong solution with the SAME reprojection error
(methods/sfd.md §9). We therefore run the mapper with several random seeds and keep the solution
most seeds agree on (:mod:`sfd_lightning.preprocess.consistency`), instead of trusting one model.
Focal length and principal point are known and fixed (one shared camera).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sfd_lightning.preprocess.tracks.database import instance_of


@dataclass
class SfmSolution:
    """One reconstruction in the COLMAP world (= the shared object's frame, OpenCV axes).

    Attributes:
        seed: the mapper's random seed.
        object_to_camera: ``{instance id: (4, 4)}`` COLMAP ``cam_from_world`` (x_cam = P x_obj).
        points: ``(M, 3)`` object-frame points. observers: ``{instance id: (M_i,) point indices}``.
        reprojection_error: mean reprojection error in pixels.
    """

    seed: int
    object_to_camera: dict[int, np.ndarray]
    points: np.ndarray
    observers: dict[int, np.ndarray]
    reprojection_error: float
    notes: list[str] = field(default_factory=list)
    init_pair: tuple[int, int] | None = None

    @property
    def registered(self) -> list[int]:
        return sorted(self.object_to_camera)

    def to_npz(self) -> dict[str, np.ndarray]:
        ids = self.registered
        out = {"seed": np.array(self.seed), "ids": np.array(ids, dtype=np.int64),
               "poses": np.stack([self.object_to_camera[i] for i in ids]) if ids else np.zeros((0, 4, 4)),
               "points": self.points, "reprojection_error": np.array(self.reprojection_error),
               "init_pair": np.array(self.init_pair if self.init_pair else (-1, -1), dtype=np.int64)}
        for i in ids:
            out[f"observers_{i}"] = self.observers.get(i, np.zeros(0, dtype=np.int64))
        return out

    @classmethod
    def from_npz(cls, data) -> "SfmSolution":
        ids = [int(i) for i in data["ids"]]
        pair = tuple(int(v) for v in data["init_pair"]) if "init_pair" in data else (-1, -1)
        return cls(int(data["seed"]), {i: np.asarray(p) for i, p in zip(ids, data["poses"])},
                   np.asarray(data["points"]), {i: np.asarray(data[f"observers_{i}"]) for i in ids},
                   float(data["reprojection_error"]), init_pair=None if pair[0] < 0 else pair)


def mapper_options(seed: int, min_inliers: int = 15, min_tri_angle: float = 12.0):
    """pycolmap incremental pipeline options for instance views (§9's settings; fixed intrinsics,
    one thread, seeded)."""
    import pycolmap

    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = 1
    options.random_seed = seed
    options.min_model_size = 3
    options.min_num_matches = min_inliers
    options.extract_colors = False
    options.ba_refine_focal_length = False
    options.ba_refine_principal_point = False
    options.ba_refine_extra_params = False
    options.mapper.num_threads = 1
    options.mapper.random_seed = seed
    options.mapper.init_min_num_inliers = min_inliers
    options.mapper.init_min_tri_angle = min_tri_angle
    options.mapper.abs_pose_min_num_inliers = min_inliers
    options.mapper.abs_pose_refine_focal_length = False
    options.mapper.abs_pose_refine_extra_params = False
    options.triangulation.ignore_two_view_tracks = False
    options.triangulation.random_seed = seed
    return options


def image_ids(db_path: Path) -> dict[int, int]:
    """``{0-based instance id: COLMAP image id}`` read from the database."""
    import pycolmap

    db = pycolmap.Database.open(str(db_path))
    try:
        return {instance_of(image.name): int(image.image_id) for image in db.read_all_images()}
    finally:
        db.close()


def run_mapping(db_path: Path, image_dir: Path, out_dir: Path, seed: int, min_inliers: int = 15,
                min_tri_angle: float = 12.0, init_pair: tuple[int, int] | None = None) -> SfmSolution | None:
    """One incremental mapping run; the largest model as an :class:`SfmSolution` (None: no model).

    ``init_pair`` (0-based instance ids) forces the mapper's initial pair (one model only); the
    mapper's own choice of initial pair often lands on the depth-reversed ("Necker") solution of
    narrow instance views, so the pipeline also starts from several well-matched pairs.
    """
    import pycolmap

    pycolmap.set_random_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = mapper_options(seed, min_inliers, min_tri_angle)
    if init_pair is not None:
        ids = image_ids(db_path)
        options.multiple_models = False
        options.init_image_id1, options.init_image_id2 = ids[init_pair[0]], ids[init_pair[1]]
    models = pycolmap.incremental_mapping(str(db_path), str(image_dir), str(out_dir), options=options)
    if not models:
        return None
    recon = max(models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))
    solution = solution_from_reconstruction(recon, seed)
    solution.init_pair = None if init_pair is None else (int(init_pair[0]), int(init_pair[1]))
    return solution


def solution_from_reconstruction(recon, seed: int) -> SfmSolution:
    """Read poses, points and per-instance observers out of a ``pycolmap.Reconstruction``."""
    poses = {}
    image_to_instance = {}
    for image_id, image in recon.images.items():
        if not image.has_pose:
            continue
        i = instance_of(image.name)
        image_to_instance[image_id] = i
        pose = np.eye(4)
        rigid = image.cam_from_world()
        pose[:3, :3] = np.asarray(rigid.rotation.matrix())
        pose[:3, 3] = np.asarray(rigid.translation)
        poses[i] = pose
    point_ids = sorted(recon.points3D)
    points = np.array([recon.points3D[p].xyz for p in point_ids], dtype=np.float64).reshape(-1, 3)
    observers: dict[int, list[int]] = {i: [] for i in poses}
    for row, pid in enumerate(point_ids):
        seen = {image_to_instance.get(el.image_id) for el in recon.points3D[pid].track.elements}
        for i in seen:
            if i is not None:
                observers[i].append(row)
    error = float(recon.compute_mean_reprojection_error()) if point_ids else float("nan")
    return SfmSolution(seed, poses, points, {i: np.asarray(v, dtype=np.int64) for i, v in observers.items()}, error)
