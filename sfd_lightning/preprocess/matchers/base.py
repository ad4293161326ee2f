"""The matcher interface of ``sfd preprocess pile`` (steps 1-2: features and pairwise matches).

A matcher detects local features on every instance's masked view (possibly at several in-plane
rotations of the crop) and matches every pair of instances. Keypoints are full-image pixels with
integer pixel centres; matches index into each view's keypoint array.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from sfd_lightning.preprocess.views import PileViews

Progress = Callable[[Iterable], Iterable]


@dataclass
class ViewFeatures:
    """Features of one instance view.

    Attributes:
        keypoints: ``(M, 2)`` float32 full-image pixels (integer centres).
        descriptors: ``(M, D)`` float32.
        groups: ``(M,)`` int16 index of the crop rotation the point was detected in (0 = upright).
        crop_keypoints: ``(M, 2)`` float32 keypoints in their crop (what a learned matcher sees).
        crop_sizes: ``(R, 2)`` int (width, height) of each rotation's crop.
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    groups: np.ndarray
    crop_keypoints: np.ndarray
    crop_sizes: np.ndarray

    def to_npz(self) -> dict[str, np.ndarray]:
        return {"keypoints": self.keypoints, "descriptors": self.descriptors, "groups": self.groups,
                "crop_keypoints": self.crop_keypoints, "crop_sizes": self.crop_sizes}

    @classmethod
    def from_npz(cls, data) -> "ViewFeatures":
        return cls(*(np.asarray(data[k]) for k in ("keypoints", "descriptors", "groups", "crop_keypoints",
                                                    "crop_sizes")))


@dataclass
class PairMatches:
    """Putative matches of instances ``i < j``: ``matches (K, 2)`` int64 keypoint indices, the
    in-plane angle (deg) of ``j`` relative to ``i`` that gave them (None for rotation-invariant
    features) and the match count of every tried rotation."""

    i: int
    j: int
    matches: np.ndarray
    angle_deg: float | None
    counts: list[int]


class Matcher(ABC):
    """Detect features per instance view and match pairs of views."""

    name: str = "matcher"

    @abstractmethod
    def extract(self, views: PileViews, progress: Progress = iter) -> list[ViewFeatures]:
        """One :class:`ViewFeatures` per instance (0-based order)."""

    @abstractmethod
    def match(self, a: ViewFeatures, b: ViewFeatures, i: int, j: int) -> PairMatches:
        """Putative matches between views ``i`` (features ``a``) and ``j`` (features ``b``)."""

    def config(self) -> dict:
        """JSON-able settings (a change invalidates cached steps)."""
        return {"name": self.name}


def mutual_nearest(desc_a: np.ndarray, desc_b: np.ndarray, ratio: float = 0.85) -> np.ndarray:
    """Mutual nearest neighbours with Lowe's ratio test (both directions).

    Args:
        desc_a: ``(M, D)``, desc_b: ``(N, D)`` float descriptors.
        ratio: maximum ratio of nearest to second-nearest distance.

    Returns:
        ``(K, 2)`` int64 index pairs.
    """
    import torch

    if len(desc_a) < 2 or len(desc_b) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    a = torch.from_numpy(np.ascontiguousarray(desc_a, dtype=np.float32))
    b = torch.from_numpy(np.ascontiguousarray(desc_b, dtype=np.float32))
    dist = torch.cdist(a, b)
    best_ab = dist.topk(2, dim=1, largest=False)
    best_ba = dist.topk(2, dim=0, largest=False)
    nn_ab = best_ab.indices[:, 0]
    ok_ab = best_ab.values[:, 0] < ratio * best_ab.values[:, 1]
    ok_ba = best_ba.values[0] < ratio * best_ba.values[1]
    nn_ba = best_ba.indices[0]
    idx = torch.arange(len(a))
    keep = ok_ab & (nn_ba[nn_ab] == idx) & ok_ba[nn_ab]
    return torch.stack([idx[keep], nn_ab[keep]], dim=1).numpy().astype(np.int64)
