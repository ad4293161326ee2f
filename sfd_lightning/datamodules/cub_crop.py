"""CMR-style square crops of CUB images (methods/umr.md §2, per-sample preprocessing).

A crop box is ``(x0, y0, side)``: the square of pixels ``x0 .. x0 + side - 1`` (columns) and
``y0 .. y0 + side - 1`` (rows) of the original image, 0-based, integer; it may extend beyond the
image, where the image is white (1.0) and the mask 0. Resizing the box to ``size`` pixels maps an
original pixel-centre coordinate ``x`` to the output pixel-centre coordinate

    ``u = (x - x0 + 0.5) * size / side - 0.5``          (the ``cv2.resize`` mapping)

and to normalised device coordinates (pixel centres at ``(2i + 1) / size - 1``, umr.md §7.1)

    ``ndc = (2u + 1) / size - 1 = 2 (x - x0 + 0.5) / side - 1``,

so a horizontal flip is ``ndc -> -ndc`` (``u -> size - 1 - u``). Part maps stored on one crop box
(the deterministic one) are carried to any other box by one affine resampling
(:func:`warp_between_boxes`), so image, mask and part map stay aligned.
"""

from __future__ import annotations

import cv2
import numpy as np

PAD = 0.05
JITTER = 0.05
# Left/right keypoint permutation of the CUB order (umr.md §2).
FLIP_PERMUTATION = (0, 1, 2, 3, 4, 5, 10, 11, 12, 9, 6, 7, 8, 13, 14)


def square_box(bbox: np.ndarray, pad: float = PAD, jitter: float = 0.0,
               noise: np.ndarray | None = None) -> tuple[int, int, int]:
    """Padded, jittered and squared crop box of a 0-based inclusive ``bbox = (x1, y1, x2, y2)``.

    Steps (umr.md §2): every side moves out by ``pad`` times the box width (x) or height (y);
    every coordinate moves by ``noise_i * jitter`` times that size, ``noise (4,)`` in ``[-1, 1]``
    (zero when ``None``); coordinates are rounded; the box is squared around its centre.

    Returns:
        ``(x0, y0, side)`` integers.
    """
    x1, y1, x2, y2 = (float(v) for v in bbox)
    width, height = x2 - x1 + 1.0, y2 - y1 + 1.0
    n = np.zeros(4) if noise is None else np.asarray(noise, dtype=np.float64)
    box = np.array([x1 - pad * width + n[0] * jitter * width, y1 - pad * height + n[1] * jitter * height,
                    x2 + pad * width + n[2] * jitter * width, y2 + pad * height + n[3] * jitter * height])
    x1, y1, x2, y2 = (int(v) for v in np.round(box))
    width, height = x2 - x1 + 1, y2 - y1 + 1
    side = max(width, height, 1)
    return x1 - int(round((side - width) / 2.0)), y1 - int(round((side - height) / 2.0)), side


def crop_box(image: np.ndarray, box: tuple[int, int, int], fill: float | np.ndarray) -> np.ndarray:
    """The ``side x side`` region of ``box`` from ``image (H, W[, C])``; ``fill`` (scalar or ``(C,)``) outside."""
    x0, y0, side = box
    shape = (side, side) + image.shape[2:]
    out = np.empty(shape, dtype=image.dtype)
    out[...] = fill
    height, width = image.shape[:2]
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, width), min(y0 + side, height)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def crop_resize(image: np.ndarray, box: tuple[int, int, int], size: int,
                fill: float | np.ndarray) -> np.ndarray:
    """Crop ``image (H, W[, C])`` float32 to ``box`` (``fill`` outside), bilinear resize to ``(size, size[, C])``."""
    patch = crop_box(np.asarray(image, dtype=np.float32), box, fill)
    if patch.shape[0] == size:
        return patch
    out = cv2.resize(patch, (size, size), interpolation=cv2.INTER_LINEAR)
    return out.reshape((size, size) + patch.shape[2:])


def to_output_pixels(xy: np.ndarray, box: tuple[int, int, int], size: int) -> np.ndarray:
    """Original pixel coordinates ``(N, 2)`` -> output pixel coordinates ``(N, 2)`` of the resized box."""
    x0, y0, side = box
    return (np.asarray(xy, dtype=np.float64) - [x0, y0] + 0.5) * (size / side) - 0.5


def to_ndc(xy: np.ndarray, box: tuple[int, int, int]) -> np.ndarray:
    """Original pixel coordinates ``(N, 2)`` -> crop NDC ``(N, 2)`` in ``[-1, 1]`` (``2 (x - x0 + 0.5) / side - 1``)."""
    x0, y0, side = box
    return 2.0 * (np.asarray(xy, dtype=np.float64) - [x0, y0] + 0.5) / side - 1.0


def from_ndc(ndc: np.ndarray, box: tuple[int, int, int]) -> np.ndarray:
    """Inverse of :func:`to_ndc`: crop NDC ``(N, 2)`` -> original pixel coordinates ``(N, 2)``."""
    x0, y0, side = box
    return (np.asarray(ndc, dtype=np.float64) + 1.0) * side / 2.0 + [x0, y0] - 0.5


def flip_keypoints(kp: np.ndarray) -> np.ndarray:
    """Mirror CUB keypoints ``(15, 3)`` (NDC x, y, visibility): x -> -x, left/right swapped."""
    out = np.asarray(kp).copy()[list(FLIP_PERMUTATION)]
    out[:, 0] = -out[:, 0]
    return out


def warp_between_boxes(values: np.ndarray, src_box: tuple[int, int, int], dst_box: tuple[int, int, int],
                       size: int, border: np.ndarray) -> np.ndarray:
    """Resample a map stored on ``src_box`` (``(P, P, C)``, any ``P``) onto ``dst_box`` at ``size``.

    Both boxes are in the same original image; ``border (C,)`` fills what ``src_box`` does not
    cover (e.g. background 1, parts 0). Bilinear. Returns ``(size, size, C)`` float32.
    """
    values = np.asarray(values, dtype=np.float32)
    p_size = values.shape[0]
    (sx0, sy0, sside), (dx0, dy0, dside) = src_box, dst_box
    scale = dside * p_size / (size * sside)
    offset_x = (dx0 - sx0 + 0.5 * dside / size) * p_size / sside - 0.5
    offset_y = (dy0 - sy0 + 0.5 * dside / size) * p_size / sside - 0.5
    matrix = np.array([[scale, 0.0, offset_x], [0.0, scale, offset_y]])
    channels = [cv2.warpAffine(np.ascontiguousarray(values[..., c]), matrix, (size, size),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=float(border[c]))
                for c in range(values.shape[2])]
    return np.stack(channels, axis=-1)
