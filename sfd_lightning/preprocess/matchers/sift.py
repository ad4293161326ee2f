"""SIFT matcher (weight-free fallback): pycolmap's affine-covariant SIFT with domain-size pooling
on the upsampled masked instance crops, mutual nearest neighbours with a ratio test
(methods/sfd.md §9: this gives the most correct matches of the hand-crafted options tried)."""

from __future__ import annotations

import numpy as np

from sfd_lightning.preprocess.matchers.base import (Matcher, PairMatches, Progress, ViewFeatures,
                                                     mutual_nearest)
from sfd_lightning.preprocess.views import PileViews, instance_crop


class SiftMatcher(Matcher):
    """Rotation-invariant SIFT; no in-plane rotation search is needed."""

    name = "sift"

    def __init__(self, upsample: float = 2.0, ratio: float = 0.85, max_features: int = 4096,
                 affine: bool = True, dsp: bool = True) -> None:
        self.upsample, self.ratio, self.max_features = upsample, ratio, max_features
        self.affine, self.dsp = affine, dsp

    def config(self) -> dict:
        return {"name": self.name, "upsample": self.upsample, "ratio": self.ratio,
                "max_features": self.max_features, "affine": self.affine, "dsp": self.dsp}

    def _sift(self):
        import pycolmap

        options = pycolmap.FeatureExtractionOptions()
        options.num_threads = 1
        options.use_gpu = False
        options.sift.max_num_features = self.max_features
        options.sift.estimate_affine_shape = self.affine
        options.sift.domain_size_pooling = self.dsp
        import warnings

        with warnings.catch_warnings():  # Sift(...) still works; FeatureExtractor needs a Bitmap per image
            warnings.simplefilter("ignore", DeprecationWarning)
            return pycolmap.Sift(options, device=pycolmap.Device.cpu)

    def extract(self, views: PileViews, progress: Progress = iter) -> list[ViewFeatures]:
        import cv2

        sift = self._sift()
        out = []
        for i in progress(range(views.num_instances)):
            crop = instance_crop(views, i, upsample=self.upsample)
            grey = cv2.cvtColor(crop.image, cv2.COLOR_RGB2GRAY)
            keypoints, descriptors = sift.extract(np.ascontiguousarray(grey))
            xy = keypoints[:, :2].astype(np.float64) - 0.5  # COLMAP (+0.5) -> integer pixel centres
            keep = crop.inside_mask(xy)
            xy, descriptors = xy[keep], np.asarray(descriptors, dtype=np.float32)[keep]
            out.append(ViewFeatures(crop.map_to_full(xy).astype(np.float32), descriptors,
                                    np.zeros(len(xy), dtype=np.int16), xy.astype(np.float32),
                                    np.array([[crop.image.shape[1], crop.image.shape[0]]])))
        return out

    def match(self, a: ViewFeatures, b: ViewFeatures, i: int, j: int) -> PairMatches:
        matches = mutual_nearest(a.descriptors, b.descriptors, self.ratio)
        return PairMatches(i, j, matches, None, [len(matches)])
