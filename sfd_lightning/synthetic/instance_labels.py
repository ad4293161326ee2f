"""The one encoder/decoder of instance masks of piles (CONTRACTS §5.2, methods/sfd.md §2.1).

A pile of ``N`` instances is stored as one 8-bit grey PNG: background 0, instance ``k``
(1-based) grey ``floor(k·255/N)`` (integer arithmetic ``k*255//N``; the airplane sample with
N = 6 holds 42, 85, 127, 170, 212, 255). Decoding is ``round(v·N/255)``, exact for floor-encoded
values up to N = 130; for larger N (up to 255, where the encoding stops being injective) the
decoder inverts the encoding table exactly instead. Label ``k`` belongs to pose index ``k − 1``
and JSON key ``<name>_{k-1:02d}``.

Every writer and reader of pile masks goes through this module: :func:`encode_instance_labels`,
:func:`decode_instance_labels`, :func:`infer_instance_count`, :func:`validate_instance_labels`
and :func:`read_instance_labels` (grey, RGB/RGBA with equal channels, 16-bit PNG variants).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sfd_lightning.errors import InputError

MAX_INSTANCES = 255
_FIX_LABELS = ("give the right instance count, or re-encode the mask as grey k·255//N "
               "(background 0); resize masks with nearest-neighbour interpolation only")


def label_values(n: int) -> np.ndarray:
    """Grey values of instances ``1..n``: ``(n,)`` int64 ``k*255//n``."""
    _check_count(n)
    k = np.arange(1, n + 1, dtype=np.int64)
    return k * 255 // n


def _check_count(n: int) -> None:
    if not 1 <= int(n) <= MAX_INSTANCES:
        raise ValueError(f"instance count must be in 1..{MAX_INSTANCES}, got {n}")


def encode_instance_labels(instance: np.ndarray, n: int, zero_based: bool = True) -> np.ndarray:
    """Encode instance ids as grey labels.

    Args:
        instance: ``(H, W)`` integer ids. ``zero_based=True`` (renderer output): ``-1`` is
            background and ``0..n-1`` are instances. ``zero_based=False``: ``0`` is background
            and ``1..n`` are instances.
        n: number of instances N.

    Returns:
        ``(H, W)`` uint8: 0 for background, ``floor(k·255/N)`` for instance ``k`` (1-based).
    """
    _check_count(n)
    ids = np.asarray(instance).astype(np.int64)
    k = ids + 1 if zero_based else ids
    if k.size and (k.min() < 0 or k.max() > n):
        raise ValueError(f"instance ids out of range for n={n}: min {ids.min()}, max {ids.max()}")
    table = np.concatenate([[0], label_values(n)]).astype(np.uint8)
    return table[k]


def decode_instance_labels(labels: np.ndarray, n: int) -> np.ndarray:
    """Decode grey labels ``(H, W)`` uint8 to instance ids ``(H, W)`` int64 (0 = background).

    ``round(v·N/255)`` (the original's rule; half-way values round up), except that values of
    the encoding table always map to their own ``k`` (exact also for 130 < N ≤ 255).
    """
    _check_count(n)
    values = np.arange(256, dtype=np.int64)
    table = (2 * values * n + 255) // 510  # round(v·n/255), halves up, integer arithmetic
    table[label_values(n)] = np.arange(1, n + 1)
    table[0] = 0
    return table[np.asarray(labels).astype(np.int64)]


def infer_instance_count(labels: np.ndarray) -> tuple[int, bool]:
    """Instance count ``n`` = number of distinct non-zero values, and whether they follow the rule.

    Returns:
        ``(n, follows_rule)``: ``follows_rule`` is True when the values are exactly
        ``{k*255//n : k = 1..n}`` (``n = 0`` for an empty mask, which never follows the rule).
    """
    present = np.unique(np.asarray(labels))
    present = present[present != 0]
    n = int(len(present))
    if n == 0 or n > MAX_INSTANCES:
        return n, False
    return n, bool(np.array_equal(present.astype(np.int64), label_values(n)))


def validate_instance_labels(labels: np.ndarray, n: int | None, path: str | Path | None,
                             require_all: bool = True) -> int:
    """Check grey labels against an instance count; return the count.

    Args:
        labels: ``(H, W)`` uint8 grey labels.
        n: expected count, or None to infer it (the values must then follow the rule).
        path: the file the labels came from (named in the error).
        require_all: every instance ``1..n`` must have at least one pixel.

    Raises:
        InputError: values that are not ``k*255//n`` for any k ("labels that do not match the
            count"), missing instances, an empty mask or an impossible count.
    """
    labels = np.asarray(labels)
    present = np.unique(labels)
    present = present[present != 0].astype(np.int64)
    if len(present) == 0:
        raise InputError(path, "instance mask has no foreground (all pixels are 0)",
                         "label each instance k as grey k·255//N on a black background")
    if n is None:
        n_inferred, follows = infer_instance_count(labels)
        if not follows:
            raise InputError(path, f"{n_inferred} distinct labels {_short(present)} do not follow "
                             f"k·255//N for N={n_inferred}", _FIX_LABELS)
        return n_inferred
    if not 1 <= n <= MAX_INSTANCES:
        raise InputError(path, f"instance count {n} is outside 1..{MAX_INSTANCES}",
                         "pass the number of objects in the photo")
    expected = label_values(n)
    stray = np.setdiff1d(present, expected)
    if len(stray):
        raise InputError(path, f"labels {_short(stray)} do not match {n} instances "
                         f"(expected values {_short(expected)})", _FIX_LABELS)
    if require_all and len(present) != n:
        missing = [int(k) for k, v in enumerate(expected, 1) if v not in present]
        raise InputError(path, f"labels do not match {n} instances: instance(s) {missing} "
                         f"(grey {[int(expected[k - 1]) for k in missing]}) have no pixels",
                         "give the number of instances actually labelled")
    return n


def _short(values: np.ndarray, limit: int = 8) -> str:
    items = [int(v) for v in np.asarray(values).ravel()]
    text = ", ".join(str(v) for v in items[:limit])
    return "[" + text + (", ..." if len(items) > limit else "") + "]"


def read_instance_labels(path: str | Path) -> np.ndarray:
    """Read a pile mask PNG as ``(H, W)`` uint8 grey labels.

    Accepts 8-bit grey (the original's format), RGB/RGBA whose colour channels are equal
    (grey saved as colour; alpha ignored) and 16-bit grey holding ``257·v``.

    Raises:
        InputError: missing/unreadable file, colour-coded masks, 16-bit values that are not
            8-bit labels.
    """
    import cv2

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "instance mask not found", "write the mask as raw/000_instance_seg.png")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(path, "not a readable image", "save the mask as an 8-bit grey PNG")
    if image.ndim == 3:
        if image.shape[2] == 1:
            image = image[..., 0]
        else:
            colour = image[..., :3]
            if not (np.array_equal(colour[..., 0], colour[..., 1])
                    and np.array_equal(colour[..., 0], colour[..., 2])):
                raise InputError(path, "colour-coded instance mask (channels differ)",
                                 "convert it with `sfd data import-masks`, or save grey k·255//N labels")
            image = colour[..., 0]
    if image.dtype == np.uint16:
        if np.any(image % 257):
            raise InputError(path, "16-bit mask whose values are not 8-bit labels",
                             "save the mask as an 8-bit grey PNG")
        image = (image // 257).astype(np.uint8)
    if image.dtype != np.uint8:
        raise InputError(path, f"unsupported mask dtype {image.dtype}", "save the mask as an 8-bit grey PNG")
    return image
