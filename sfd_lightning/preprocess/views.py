"""Step 0 of ``sfd preprocess pile``: the photo, its instance mask and one virtual view per instance.

Every instance is a virtual view of one shared object seen by one camera (methods/sfd.md §2.3).
This module loads and validates the raw pile (:class:`~sfd_lightning.datamodules.pile.RawPile`),
resizes it to the working resolution (mask with nearest neighbour), and cuts square, masked,
upsampled and optionally rotated crops of each instance for feature detection, with the affine
map back to full-image pixels.

Pixel convention: integer pixel centres (the framework's, CONTRACTS §6) everywhere in this
package; the COLMAP database gets ``+0.5``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sfd_lightning.datamodules.pile import RawPile
from sfd_lightning.errors import InputError
from sfd_lightning.synthetic.instance_labels import encode_instance_labels

DEFAULT_FOV_DEG = 35.0
MIN_INSTANCE_PIXELS = 150


@dataclass
class PileViews:
    """The pile at working resolution.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB. labels: ``(H, W)`` uint8 grey labels ``k·255//N``.
        instance: ``(H, W)`` int64, 0 = background, k = instance k (1-based).
        num_instances: N. focal: focal length in pixels at this resolution.
        seg_path: the mask file (named in errors). warnings: non-fatal findings.
    """

    image: np.ndarray
    labels: np.ndarray
    instance: np.ndarray
    num_instances: int
    focal: float
    seg_path: Path
    warnings: list[str] = field(default_factory=list)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def K(self) -> np.ndarray:
        """``(3, 3)`` intrinsics, OpenCV, integer pixel centres (cx = W/2 − 0.5)."""
        return np.array([[self.focal, 0.0, self.width / 2 - 0.5], [0.0, self.focal, self.height / 2 - 0.5],
                         [0.0, 0.0, 1.0]])

    def mask(self, i: int) -> np.ndarray:
        """``(H, W)`` bool mask of 0-based instance ``i``."""
        return self.instance == i + 1

    def bbox(self, i: int) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` inclusive pixel bounds of instance ``i``."""
        ys, xs = np.nonzero(self.mask(i))
        return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())

    def masked_image(self, i: int) -> np.ndarray:
        """``(H, W, 3)`` uint8 photo with everything but instance ``i`` black."""
        return np.where(self.mask(i)[..., None], self.image, 0).astype(np.uint8)


@dataclass
class Crop:
    """A square crop of one instance: ``image (h, w, 3)`` uint8, ``mask (h, w)`` bool and the
    ``(2, 3)`` affine ``to_full`` mapping crop pixels to full-image pixels (integer centres)."""

    image: np.ndarray
    mask: np.ndarray
    to_full: np.ndarray
    angle_deg: float

    def map_to_full(self, points: np.ndarray) -> np.ndarray:
        """``(M, 2)`` crop pixels -> ``(M, 2)`` full-image pixels."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return pts @ self.to_full[:, :2].T + self.to_full[:, 2]

    def inside_mask(self, points: np.ndarray) -> np.ndarray:
        """``(M,)`` bool: crop pixels that fall on the instance mask."""
        pts = np.round(np.asarray(points).reshape(-1, 2)).astype(np.int64)
        h, w = self.mask.shape
        ok = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
        out = np.zeros(len(pts), dtype=bool)
        out[ok] = self.mask[pts[ok, 1], pts[ok, 0]]
        return out


def load_views(root: str | Path, instances: int | None = None, resolution: int = 800,
               focal: float | None = None, min_pixels: int = MIN_INSTANCE_PIXELS) -> PileViews:
    """Read ``root/raw`` and build the working-resolution pile.

    Args:
        root: pile folder (holding ``raw/``) or the raw folder itself.
        instances: N, or None to infer it from the mask (a warning is recorded).
        resolution: the longest image side is scaled down to this (never up).
        focal: focal length in pixels of the ORIGINAL photo, or None for a 35° horizontal FoV.
        min_pixels: an instance with fewer pixels (at working resolution) is an input error.

    Raises:
        InputError: missing files, photo/mask size mismatch, labels that do not match the count,
            an instance too small to match.
    """
    import cv2

    raw = load_raw(root, instances)
    image, labels = raw.image, raw.labels
    height, width = labels.shape
    scale = min(1.0, resolution / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        instance = cv2.resize(raw.instance.astype(np.int32), size, interpolation=cv2.INTER_NEAREST)
        labels = encode_instance_labels(instance.astype(np.int64), raw.num_instances, zero_based=False)
    f = focal * scale if focal is not None else 0.5 * image.shape[1] / math.tan(math.radians(DEFAULT_FOV_DEG / 2))
    notes = list(raw.warnings)
    if focal is None:
        notes.append(f"focal length unknown: assuming a {DEFAULT_FOV_DEG:.0f}° horizontal field of view "
                     f"(f = {f:.1f} px); pass --focal for a known camera")
    from sfd_lightning.synthetic.instance_labels import decode_instance_labels

    views = PileViews(np.ascontiguousarray(image), labels, decode_instance_labels(labels, raw.num_instances),
                      raw.num_instances, float(f), raw.seg_path, notes)
    areas = np.bincount(views.instance.ravel(), minlength=views.num_instances + 1)[1:]
    small = [k for k, a in enumerate(areas, 1) if a < min_pixels]
    if small:
        raise InputError(raw.seg_path, f"instance(s) {small} cover only {[int(areas[k - 1]) for k in small]} "
                         f"pixels at {views.width}x{views.height} (need >= {min_pixels} to match features)",
                         "use a higher-resolution photo (--resolution), or remove those instances from the mask")
    return views


def decode_inferred_labels(labels: np.ndarray, path: str | Path | None) -> tuple[np.ndarray, int, str]:
    """Decode a mask whose labels do not follow ``k·255//N``: N = the number of distinct non-zero
    values, each decoded by ``round(v·N/255)`` (e.g. a ``round(k·255/N)`` encoding: 128 for k = 3 of 6).

    Returns:
        ``(instance (H, W) int64, N, warning)``.

    Raises:
        InputError: the N values do not decode to N distinct instances ``1..N``.
    """
    from sfd_lightning.synthetic.instance_labels import decode_instance_labels, label_values

    present = np.unique(np.asarray(labels))
    present = present[present != 0].astype(np.int64)
    n = int(len(present))
    if n == 0:
        raise InputError(path, "instance mask has no foreground (all pixels are 0)",
                         "label each instance k as grey k·255//N on a black background")
    ids = decode_instance_labels(present, n) if n <= 255 else np.zeros(0, np.int64)
    if n > 255 or sorted(ids.tolist()) != list(range(1, n + 1)):
        expected = _short(label_values(min(n, 255)))
        raise InputError(path, f"{n} distinct labels {_short(present)} cannot be decoded as {n} instances "
                         f"(round(v·{n}/255) gives ids {_short(ids)}; expected grey {expected})",
                         "re-encode the mask as grey k·255//N (`sfd data import-masks`), or pass --instances N")
    warning = (f"{path}: labels {_short(present)} do not follow k·255//N; inferred {n} instances "
               f"(decoded by round(v·{n}/255)); pass --instances {n} to silence this")
    return decode_instance_labels(labels, n), n, warning


def _short(values: np.ndarray, limit: int = 8) -> str:
    items = [int(v) for v in np.asarray(values).ravel()]
    return "[" + ", ".join(str(v) for v in items[:limit]) + (", ..." if len(items) > limit else "") + "]"


def load_raw(root: str | Path, instances: int | None = None) -> RawPile:
    """:meth:`RawPile.load`, except that without ``instances`` a mask whose labels do not follow
    ``k·255//N`` is decoded with the inferred count (:func:`decode_inferred_labels`) and a warning
    instead of an error (the labels are re-encoded canonically)."""
    from sfd_lightning.datamodules import pile_files as files
    from sfd_lightning.datamodules.pile import _check_same_size
    from sfd_lightning.synthetic.instance_labels import (encode_instance_labels, infer_instance_count,
                                                         read_instance_labels)

    if instances is not None:
        return RawPile.load(root, instances)
    photo_path, seg_path = files.raw_paths(Path(root))
    if photo_path is None or not seg_path.is_file():
        return RawPile.load(root, instances)  # its one-line error names the missing file
    labels = read_instance_labels(seg_path)
    n, follows = infer_instance_count(labels)
    if follows or n == 0:
        return RawPile.load(root, instances)
    image = files.read_rgb(photo_path)
    _check_same_size(image, labels, photo_path, seg_path)
    instance, n, warning = decode_inferred_labels(labels, seg_path)
    return RawPile(Path(root), photo_path, seg_path, image, encode_instance_labels(instance, n, zero_based=False),
                   instance, n, [warning])


def instance_crop(views: PileViews, i: int, upsample: float = 2.0, angle_deg: float = 0.0,
                  max_side: int = 1024, pad: float = 0.08) -> Crop:
    """Masked square crop of instance ``i``, scaled by ``upsample`` and rotated by ``angle_deg``
    (counter-clockwise in the image) about its centre; the canvas holds the whole rotated square.

    Returns:
        a :class:`Crop` whose ``to_full`` maps crop pixels back to the full image.
    """
    import cv2

    x0, y0, x1, y1 = views.bbox(i)
    side = max(x1 - x0 + 1, y1 - y0 + 1) * (1.0 + 2 * pad) + 4
    centre = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])
    scale = min(upsample, max_side / (side * math.sqrt(2.0)))
    out = int(math.ceil(side * scale * (math.sqrt(2.0) if angle_deg % 90 else 1.0)))
    out_centre = (out - 1) / 2.0
    theta = math.radians(angle_deg)
    rot = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])  # CCW on screen
    linear = scale * rot
    forward = np.concatenate([linear, (out_centre - linear @ centre)[:, None]], axis=1)  # full -> crop
    inv_linear = np.linalg.inv(linear)
    to_full = np.concatenate([inv_linear, (centre - inv_linear @ np.full(2, out_centre))[:, None]], axis=1)
    mask = views.mask(i)
    image = cv2.warpAffine(views.masked_image(i), forward, (out, out), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    crop_mask = cv2.warpAffine(mask.astype(np.uint8), forward, (out, out), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0
    return Crop(image, crop_mask, to_full, float(angle_deg))
