"""Piles of identical objects for SfD: readers of the raw and processed layouts, and the DataModule.

- :class:`RawPile`: ``raw/000_color.png`` (or ``000_rgb.png``) + ``raw/000_instance_seg.png``, the
  input of ``sfd preprocess pile`` (CONTRACTS §5.2).
- :class:`PileScene`: the processed layout the SfD trainer reads (methods/sfd.md §2.1; the shared
  sample ``piles/airplane`` is one). The OpenGL camera is converted to OpenCV at load time
  (``c2w_cv = c2w_gl · diag(1, −1, −1, 1)``); the normal prior likewise (``n_cv = (x, −y, −z)``).
- :class:`PileDataModule`: an infinite iterable of random ray batches from the one photo (train)
  and the full image in one batch (validation).

Pixel centres: the framework's are at integer coordinates. ``pixel_center="half_pixel"``
(default, sfd.md §6) reproduces COLMAP's optimisation convention, i.e. the original's rays through
``u + 0.5`` with ``cx = W/2``: ``K`` gets ``cx = W/2 − 0.5``. ``"legacy_integer"`` gives the
original trainer's ``cx = W/2`` (half a pixel off).

Instances: label ``k`` (1-based, 0 = background) ↔ pose row ``pose_index[k]`` among the registered
instances (``-1`` for background and unregistered). Pixels of unregistered instances are flagged
``ignore`` and must not enter any loss.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from sfd_lightning.datamodules import pile_files as files
from sfd_lightning.datamodules.base import BaseReconDataModule, ensure_synthetic, seed_worker
from sfd_lightning.errors import InputError
from sfd_lightning.geometry.cameras import opengl_c2w_to_opencv_w2c
from sfd_lightning.synthetic.instance_labels import (decode_instance_labels, infer_instance_count,
                                                     read_instance_labels, validate_instance_labels)

PixelCenter = Literal["half_pixel", "legacy_integer"]
SceneBoundsMode = Literal["auto", "sfm_points", "poses"]


def _check_same_size(photo: np.ndarray, labels: np.ndarray, photo_path: Path, seg_path: Path) -> None:
    if photo.shape[:2] != labels.shape[:2]:
        raise InputError(seg_path, f"mask is {labels.shape[1]}x{labels.shape[0]} but the photo {photo_path.name} "
                         f"is {photo.shape[1]}x{photo.shape[0]}",
                         "resize the mask to the photo with nearest-neighbour interpolation")


@dataclass
class RawPile:
    """A raw pile: photo ``(H, W, 3)`` uint8 RGB, grey labels ``(H, W)`` uint8, decoded ``instance``
    ``(H, W)`` int64 (0 = background, k = instance k) and the count ``num_instances``.
    ``warnings`` lists non-fatal findings (e.g. an inferred count)."""

    root: Path
    photo_path: Path
    seg_path: Path
    image: np.ndarray
    labels: np.ndarray
    instance: np.ndarray
    num_instances: int
    warnings: list[str]

    @classmethod
    def load(cls, root: str | Path, instances: int | None = None) -> "RawPile":
        """Read ``root/raw`` (or ``root`` itself when it holds the files); ``instances=None`` infers
        the count from the distinct labels.

        Raises:
            InputError: missing photo or mask, size mismatch, labels that do not match the count.
        """
        root = Path(root)
        photo_path, seg_path = files.raw_paths(root)
        if photo_path is None:
            raise InputError(seg_path.parent / "000_color.png", "photo not found (also looked for 000_rgb.png)",
                             "put the photo at raw/000_color.png")
        image = files.read_rgb(photo_path)
        labels = read_instance_labels(seg_path)
        _check_same_size(image, labels, photo_path, seg_path)
        notes = []
        if instances is None:
            n, follows = infer_instance_count(labels)
            if not follows:
                raise InputError(seg_path, f"{n} distinct labels do not follow k·255//N for N={n}",
                                 "pass --instances N, or re-encode the mask as grey k·255//N")
            notes.append(f"{seg_path}: instance count inferred from the mask: {n}")
        n = validate_instance_labels(labels, instances if instances is not None else n, seg_path)
        return cls(root, photo_path, seg_path, image, labels, decode_instance_labels(labels, n), n, notes)


@dataclass
class PileScene:
    """A processed pile in framework conventions (OpenCV cameras, integer pixel centres).

    Attributes:
        image: ``(H, W, 3)`` float32 sRGB in [0, 1]. labels: ``(H, W)`` uint8 grey labels.
        instance: ``(H, W)`` int64, 0 = background, k = instance k (1-based).
        mask: ``(H, W)`` bool foreground. ignore: ``(H, W)`` bool pixels of unregistered instances.
        num_instances: N of the label encoding. registered_ids: sorted 0-based ids with a pose.
        pose_index: ``(N + 1,)`` int64 label -> pose row, -1 for background/unregistered.
        K: ``(3, 3)``. c2w, w2c: ``(4, 4)`` OpenCV camera<->world.
        object_to_world: ``(R, 4, 4)`` rigid, rows in ``registered_ids`` order.
        object_to_camera: ``(R, 4, 4)`` rigid object->camera (OpenCV) = ``w2c · object_to_world``.
        scale_matrix: ``S (4, 4)``: ``x_world = O_i · S · x_norm``.
        bounds: near/far and the scene sphere. points_world: ``(M, 3)`` SfM points or None.
        normal_prior: ``(H, W, 3)`` float32 unit normals in OpenCV camera axes (0 on background) or None.
    """

    root: Path
    name: str
    image: np.ndarray
    labels: np.ndarray
    instance: np.ndarray
    mask: np.ndarray
    ignore: np.ndarray
    num_instances: int
    registered_ids: list[int]
    pose_index: np.ndarray
    focal: float
    K: np.ndarray
    c2w: np.ndarray
    w2c: np.ndarray
    object_to_world: np.ndarray
    object_to_camera: np.ndarray
    scale_matrix: np.ndarray
    bounds: files.SceneBounds
    points_world: np.ndarray | None
    normal_prior: np.ndarray | None

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @classmethod
    def load(cls, root: str | Path, pixel_center: PixelCenter = "half_pixel",
             scene_bounds: SceneBoundsMode = "auto") -> "PileScene":
        """Read a processed pile folder (every problem an :class:`InputError` naming the file)."""
        if pixel_center not in ("half_pixel", "legacy_integer"):
            raise ValueError(f"pixel_center must be 'half_pixel' or 'legacy_integer', got {pixel_center!r}")
        if scene_bounds not in ("auto", "sfm_points", "poses"):
            raise ValueError(f"scene_bounds must be 'auto', 'sfm_points' or 'poses', got {scene_bounds!r}")
        root = Path(root)
        if not root.is_dir():
            raise InputError(root, "pile folder not found", "check the path (it holds transforms_train.json)")
        focal, c2w_gl = files.read_camera(root / files.TRANSFORMS)
        rgb = files.read_rgb(root / files.RGB)
        labels = read_instance_labels(root / files.SEG)
        _check_same_size(rgb, labels, root / files.RGB, root / files.SEG)
        meta = files.read_json(root / files.SCENE) if (root / files.SCENE).is_file() else {}
        n = validate_instance_labels(labels, meta.get("num_instances"), root / files.SEG, require_all=False)
        registered = files.read_registered_ids(root / files.INDEXES)
        if registered[-1] >= n:
            raise InputError(root / files.INDEXES, f"id {registered[-1]} but the mask holds {n} instances",
                             "ids are 0-based labels k - 1")
        name, poses = files.parse_pose_keys(files.read_json(root / files.POSES), registered, root / files.POSES)
        scale = files.read_scale_matrix(root / files.SCALE)
        w2c = opengl_c2w_to_opencv_w2c(c2w_gl)
        c2w = np.linalg.inv(w2c)
        object_to_world = np.stack([poses[i] for i in registered])
        height, width = labels.shape
        shift = 0.5 if pixel_center == "half_pixel" else 0.0
        K = np.array([[focal, 0.0, width / 2.0 - shift], [0.0, focal, height / 2.0 - shift], [0.0, 0.0, 1.0]])
        points = None
        if scene_bounds in ("auto", "sfm_points") and (root / files.POINTS).is_file():
            points = files.load_points_world(root / files.POINTS)["points_world_all"]
            bounds = files.bounds_from_points(points, c2w[:3, 3])
        elif scene_bounds == "sfm_points":
            raise InputError(root / files.POINTS, "file not found (scene_bounds='sfm_points')",
                             "use scene_bounds='poses' (or 'auto') to derive bounds from the poses")
        else:
            if scene_bounds == "auto":
                warnings.warn(f"{root / files.POINTS} not found: near/far and the scene sphere come from "
                              "the instance poses (methods/sfd.md §2.1 fallback)", stacklevel=2)
            bounds = files.bounds_from_poses(object_to_world, scale, c2w[:3, 3])
        instance = decode_instance_labels(labels, n)
        pose_index = np.full(n + 1, -1, dtype=np.int64)
        pose_index[np.asarray(registered) + 1] = np.arange(len(registered))
        return cls(root=root, name=name, image=rgb.astype(np.float32) / 255.0, labels=labels,
                   instance=instance, mask=instance > 0, ignore=(instance > 0) & (pose_index[instance] < 0),
                   num_instances=n, registered_ids=registered, pose_index=pose_index, focal=focal, K=K,
                   c2w=c2w, w2c=w2c, object_to_world=object_to_world,
                   object_to_camera=np.einsum("ij,njk->nik", w2c, object_to_world), scale_matrix=scale,
                   bounds=bounds, points_world=points, normal_prior=_read_normal_prior(root, instance > 0))

    def camera_directions(self) -> np.ndarray:
        """Unit ray directions ``(H*W, 3)`` in the OpenCV camera frame, row-major (v*W + u)."""
        v, u = np.meshgrid(np.arange(self.height, dtype=np.float64), np.arange(self.width, dtype=np.float64),
                           indexing="ij")
        homog = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1) @ np.linalg.inv(self.K).T
        return homog / np.linalg.norm(homog, axis=1, keepdims=True)


def _read_normal_prior(root: Path, foreground: np.ndarray) -> np.ndarray | None:
    """Optional ``train/000_normal_pretrain.png``: decode 2x/255 − 1 (OpenGL camera axes) -> OpenCV."""
    path = root / files.NORMAL
    if not path.is_file():
        return None
    encoded = files.read_rgb(path).astype(np.float32) / 255.0
    if encoded.shape[:2] != foreground.shape:
        raise InputError(path, f"normal prior is {encoded.shape[1]}x{encoded.shape[0]}, the mask "
                         f"{foreground.shape[1]}x{foreground.shape[0]}", "re-run the normal-prior step")
    normals = (2.0 * encoded - 1.0) * np.array([1.0, -1.0, -1.0], dtype=np.float32)
    normals /= np.maximum(np.linalg.norm(normals, axis=2, keepdims=True), 1e-6)
    return np.where(foreground[..., None], normals, 0.0).astype(np.float32)


def scene_tensors(scene: PileScene, linear_rgb: bool = True) -> dict[str, torch.Tensor]:
    """Per-pixel tensors of a scene, row-major (index v*W + u), for ray batches.

    Returns:
        ``pixels (P, 2)`` float32 (u, v); ``rgb (P, 3)`` float32 (linear ``x^2.2`` if ``linear_rgb``);
        ``instance (P,)`` int64 (0 = bg); ``pose_index (P,)`` int64 (-1 bg/unregistered);
        ``ignore (P,)`` bool; ``rays_o (P, 3)`` zeros and ``rays_d (P, 3)`` unit, camera frame;
        ``normal_prior (P, 3)`` when the scene has one.
    """
    v, u = np.meshgrid(np.arange(scene.height), np.arange(scene.width), indexing="ij")
    rgb = scene.image.reshape(-1, 3)
    out = {"pixels": torch.from_numpy(np.stack([u.ravel(), v.ravel()], 1).astype(np.float32)),
           "rgb": torch.from_numpy((rgb ** 2.2 if linear_rgb else rgb).astype(np.float32)),
           "instance": torch.from_numpy(scene.instance.reshape(-1).astype(np.int64)),
           "pose_index": torch.from_numpy(scene.pose_index[scene.instance].reshape(-1)),
           "ignore": torch.from_numpy(scene.ignore.reshape(-1)),
           "rays_d": torch.from_numpy(scene.camera_directions().astype(np.float32))}
    out["rays_o"] = torch.zeros_like(out["rays_d"])
    if scene.normal_prior is not None:
        out["normal_prior"] = torch.from_numpy(scene.normal_prior.reshape(-1, 3))
    return out


def perturb_poses(root: Path, degrees: float, seed: int = 0) -> None:
    """Rotate every pose of ``object_pred_pose.json`` but the first by ``degrees`` about a random
    axis through the instance centre (the centre of ``object_scale_matrix.json``), in place."""
    import json

    from scipy.spatial.transform import Rotation

    path = Path(root) / files.POSES
    poses = files.read_json(path)
    centre = files.read_scale_matrix(Path(root) / files.SCALE)[:3, 3]
    rng = np.random.default_rng([seed, 7])
    for key in sorted(poses)[1:]:
        axis = rng.normal(size=3)
        rot = Rotation.from_rotvec(np.radians(degrees) * axis / np.linalg.norm(axis)).as_matrix()
        about = np.eye(4)
        about[:3, :3], about[:3, 3] = rot, centre - rot @ centre
        poses[key] = (np.asarray(poses[key]) @ about).tolist()
    path.write_text(json.dumps(poses, indent=4))


class PileRayDataset(IterableDataset):
    """Infinite random ray batches (``rays_per_batch`` pixels drawn uniformly with replacement).

    Each item is a dict of :func:`scene_tensors` fields with leading dimension ``rays_per_batch``.
    Workers (and DDP ranks) draw from distinct, reproducible generators.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], rays_per_batch: int, seed: int = 0) -> None:
        super().__init__()
        if rays_per_batch < 1:
            raise ValueError(f"rays_per_batch must be >= 1, got {rays_per_batch}")
        self.tensors, self.rays_per_batch, self.seed = tensors, int(rays_per_batch), int(seed)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if distributed else 0
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + rank * 1_009 + worker)
        count = len(self.tensors["rgb"])
        while True:
            index = torch.randint(count, (self.rays_per_batch,), generator=generator)
            yield {key: value[index] for key, value in self.tensors.items()}


class _FullImage(torch.utils.data.Dataset):
    """One item: every pixel of the image (row-major), for validation renders."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return dict(self.tensors)


class PileDataModule(BaseReconDataModule):
    """One photo of a pile of identical objects, as random ray batches (methods/sfd.md §2, §7.6).

    Args:
        root: processed pile folder; None generates a small synthetic pile once and caches it
            (``synthetic_instances`` at ``synthetic_image_size`` px, CONTRACTS §5.4).
        rays_per_batch: rays per training batch.
        pixel_center: "half_pixel" (default) or "legacy_integer" (see module docstring).
        scene_bounds: "auto" (SfM points when present, else poses), "sfm_points" or "poses".
        linear_rgb: batch colours as linear ``x^2.2`` (the original's loss space) instead of sRGB.
        relight_envmap: equirectangular environment map (.npy HDR or PNG) that ``sfd predict``
            relights the pile under (SfD material stage); a predict-time input, so it is a data
            argument (``--data.init_args.relight_envmap PATH``).
        synthetic_pose_noise_deg: rotate every synthetic instance but the first by this many
            degrees (random axis, about its centre) in ``object_pred_pose.json`` — SfM-like pose
            error for measuring pose refinement; ``gt/`` keeps the exact poses.
    """

    def __init__(self, root: str | None = None, rays_per_batch: int = 1024, pixel_center: PixelCenter = "half_pixel",
                 scene_bounds: SceneBoundsMode = "auto", linear_rgb: bool = True, num_workers: int = 0,
                 seed: int = 0, synthetic_instances: int = 4, synthetic_image_size: int = 160,
                 synthetic_object: str = "airplane", relight_envmap: str | None = None,
                 synthetic_pose_noise_deg: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root = root
        self.scene: PileScene | None = None
        self._tensors: dict[str, torch.Tensor] | None = None

    def synthetic_params(self) -> dict[str, Any]:
        hp = self.hparams
        params = {"instances": hp.synthetic_instances, "image_size": hp.synthetic_image_size,
                  "object": hp.synthetic_object, "seed": hp.seed}
        if hp.synthetic_pose_noise_deg:
            params["pose_noise_deg"] = float(hp.synthetic_pose_noise_deg)
        return params

    def resolve_root(self) -> Path:
        """The pile folder: ``root``, or the cached synthetic pile (generated on first use)."""
        if self.root is not None:
            return Path(self.root)
        params = self.synthetic_params()

        def generate(folder: Path) -> None:
            from sfd_lightning.synthetic.writers.pile import write_pile

            write_pile(folder / "pile", params["instances"], params["image_size"], params["seed"],
                       object_name=params["object"])
            if params.get("pose_noise_deg"):
                perturb_poses(folder / "pile", params["pose_noise_deg"], params["seed"])

        return ensure_synthetic("pile", params, generate) / "pile"

    def prepare_data(self) -> None:
        self.resolve_root()

    def setup(self, stage: str | None = None) -> None:
        if self.scene is None:
            self.scene = PileScene.load(self.resolve_root(), self.hparams.pixel_center, self.hparams.scene_bounds)
            self._tensors = scene_tensors(self.scene, self.hparams.linear_rgb)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        dataset = PileRayDataset(self._tensors, self.hparams.rays_per_batch, self.hparams.seed)
        return DataLoader(dataset, batch_size=None, num_workers=self.hparams.num_workers,
                          worker_init_fn=seed_worker, persistent_workers=self.hparams.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(_FullImage(self._tensors), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        """The full image (one batch), as in validation."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """The full image (one batch): ``sfd predict`` re-renders it."""
        return self.val_dataloader()

    def describe(self) -> dict[str, Any]:
        self.setup()
        scene = self.scene
        return {"pile": str(scene.root), "num_instances": scene.num_instances,
                "registered_ids": scene.registered_ids, "width": scene.width, "height": scene.height,
                "focal": scene.focal, "near": scene.bounds.near, "far": scene.bounds.far,
                "scene_radius": scene.bounds.radius, "bounds_source": scene.bounds.source}
