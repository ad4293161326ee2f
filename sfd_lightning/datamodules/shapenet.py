"""LightningDataModules over ShapeNet-style trees: DeepSDF/DIT SDF samples and LIST images.

``root=None`` uses the small synthetic default tree (CONTRACTS §5.4): :data:`DEFAULT_SYNTHETIC`
(overridable per key with ``synthetic=``), generated once by ``write_shapenet`` and cached by
:func:`~sfd_lightning.datamodules.base.ensure_synthetic`. Real data: point ``root`` at a tree in
the layout of :mod:`~sfd_lightning.datamodules.shapenet_files`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from sfd_lightning.datamodules.base import ensure_synthetic
from sfd_lightning.datamodules.shapenet_datasets import DeepSDFSamples, ListSamples
from sfd_lightning.datamodules.tree_base import TreeDataModule
from sfd_lightning.datamodules.shapenet_files import (ShapeNetLayout, read_lst, read_split_json, read_testlist,
                                                      resolve_synset)
from sfd_lightning.errors import InputError

#: The default synthetic tree (≤ 16 shapes, ≤ 20k samples per shape, ≤ 8 views at ≤ 128 px).
DEFAULT_SYNTHETIC: dict[str, Any] = {
    "categories": ["chair"], "shapes": 8, "views": 8, "image_size": 64, "samples": 16_000,
    "list_points": 4096, "surface_points": 5000, "fps_points": 512, "mesh_resolution": 64,
    "test_fraction": 0.25, "seed": 0, "dominant_only": False, "hard_views": 0,
}


def default_shapenet_root(overrides: dict[str, Any] | None = None) -> Path:
    """Root of the cached synthetic default tree (generated on first use)."""
    params = {**DEFAULT_SYNTHETIC, **(overrides or {})}
    unknown = set(params) - set(DEFAULT_SYNTHETIC)
    if unknown:
        raise InputError(None, f"unknown synthetic options {sorted(unknown)}", f"use {sorted(DEFAULT_SYNTHETIC)}")

    def generate(tmp: Path) -> None:
        from sfd_lightning.synthetic.writers.shapenet import write_shapenet

        write_shapenet(tmp, **params)

    return ensure_synthetic("shapenet", params, generate)


class _ShapeNetTree(TreeDataModule):
    """ShapeNet-style root (default: the synthetic tree) and category -> synset resolution."""

    def __init__(self, root: str | None, categories: Sequence[str], batch_size: int, eval_batch_size: int | None,
                 num_workers: int, synthetic: dict[str, Any] | None) -> None:
        super().__init__(root, batch_size, eval_batch_size, num_workers, synthetic)
        self.categories = [str(c) for c in categories]

    def default_root(self) -> Path:
        return default_shapenet_root(self.synthetic)

    @property
    def synsets(self) -> list[str]:
        return [resolve_synset(c) for c in self.categories]


class ShapeNetSDFDataModule(_ShapeNetTree):
    """DeepSDF/DIT layout: SDF samples per scene (+ optional single view) for auto-decoders.

    Batches (see :class:`DeepSDFSamples`): ``samples`` float32 ``(B, S, 4)``, ``index`` int64
    ``(B,)`` (latent-code rows of the train split), ``synset``/``instance`` lists of str, and with
    ``load_images`` ``image`` float32 ``(B, 3, H, W)`` and ``view`` int64 ``(B,)``.

    Args:
        root: tree root; ``None`` = synthetic default (``synthetic`` overrides its options).
        categories: names or synset ids; default splits ``splits/sv2_<name>_{train,test}.json``.
        train_split, val_split, test_split: split JSON path(s) (relative to ``root`` or absolute)
            replacing the defaults; ``val_split`` defaults to the test split, ``"none"`` disables it.
        samples_per_scene: rows per item (half pos, half neg); ``eval_samples_per_scene`` for val/test.
        load_ram: DIT's RAM mode (contiguous windows of pre-shuffled rows).
        view: training view (``None``: random per access); ``eval_view``: val/test view (DIT: 30).
        keep_duplicate_ids: keep repeated split entries (DIT's cars list ids twice).
        skip_missing: skip split entries without an npz (warning) instead of failing.
    """

    def __init__(self, root: str | None = None, categories: Sequence[str] = ("chair",),
                 train_split: str | list[str] | None = None, val_split: str | list[str] | None = None,
                 test_split: str | list[str] | None = None, samples_per_scene: int = 5000,
                 eval_samples_per_scene: int | None = None, batch_size: int = 24, eval_batch_size: int | None = None,
                 num_workers: int = 0, load_ram: bool = True, load_images: bool = False, view: int | None = None,
                 eval_view: int | None = 30, image_level: str = "easy", image_size: int = 224,
                 keep_duplicate_ids: bool = False, skip_missing: bool = True,
                 synthetic: dict[str, Any] | None = None) -> None:
        super().__init__(root, categories, batch_size, eval_batch_size, num_workers, synthetic)
        self.save_hyperparameters()
        self.splits = {"train": train_split, "val": val_split, "test": test_split}

    def _pairs(self, kind: str) -> list[tuple[str, str]]:
        root = self.root
        given = self.splits[kind]
        if kind == "val" and given is None:
            given = self.splits["test"]
            kind = "test"
        if isinstance(given, str) and given.lower() == "none":
            return []
        if given is None:
            layout = ShapeNetLayout(root)
            paths = [layout.split_json(s, kind) for s in self.synsets]
        else:
            paths = [Path(p) if Path(p).is_absolute() else root / p for p in ([given] if isinstance(given, str) else given)]
        pairs: list[tuple[str, str]] = []
        for path in paths:
            pairs += read_split_json(path, keep_duplicates=self.hparams.keep_duplicate_ids)
        return pairs

    def _dataset(self, kind: str) -> DeepSDFSamples:
        hp = self.hparams
        train = kind == "train"
        return DeepSDFSamples(self.root, self._pairs(kind),
                              hp.samples_per_scene if train else (hp.eval_samples_per_scene or hp.samples_per_scene),
                              load_ram=hp.load_ram, load_images=hp.load_images,
                              view=hp.view if train else hp.eval_view, image_level=hp.image_level,
                              image_size=hp.image_size, skip_missing=hp.skip_missing)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._dataset("train")
            if len(self.train_set) == 0:
                raise InputError(self.root, "the train split has no scenes with SDF samples", "check the split files")
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._dataset("val")
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._dataset("test")

    def describe(self) -> dict[str, Any]:
        return {"num_scenes": len(self.train_set) if self.train_set is not None else None,
                "num_test_scenes": len(self.test_set) if self.test_set is not None else None,
                "root": str(self.root), "synsets": self.synsets}


class ShapeNetImageDataModule(_ShapeNetTree):
    """LIST layout: image + farthest points + σ-level SDF queries per item.

    Batches (see :class:`ListSamples`): ``image`` float32 ``(B, 3, H, W)``, ``points`` float32
    ``(B, N, 3)``, ``values`` float32 ``(B, N)`` (unscaled SDF), ``fps_points`` float32 ``(B, k, 3)``,
    ``index``/``view`` int64 ``(B,)``, ``synset``/``instance`` lists of str.

    Splits: ``DISN_split/<synset>_train.lst`` (first ``max_per_class`` ids, random view per access);
    test items from ``DISN_split/testlist_all.lst`` (``synset id view``, LIST view 32) filtered to
    ``categories``, else ``<synset>_test.lst`` at ``eval_view``; validation = the first
    ``val_items`` test items (LIST: 30 lines). ``uniform_fraction`` (0 = LIST; spec §6 switch, e.g.
    0.05): that share of each item's queries is uniform in [−0.5, 0.5]³ with an approximate SDF
    (:func:`~sfd_lightning.datamodules.shapenet_datasets.uniform_queries`), against floating blobs.
    """

    def __init__(self, root: str | None = None, categories: Sequence[str] = ("chair",),
                 sample_point_density: int = 32768, sigma_fractions: Sequence[float] = (0.5, 0.49, 0.01),
                 batch_size: int = 32, eval_batch_size: int | None = None, num_workers: int = 0,
                 image_size: int = 224, alpha: str = "drop", view: int | None = None, eval_view: int = 32,
                 max_per_class: int | None = None, val_items: int | None = 30,
                 synthetic: dict[str, Any] | None = None, uniform_fraction: float = 0.0) -> None:
        super().__init__(root, categories, batch_size, eval_batch_size, num_workers, synthetic)
        self.save_hyperparameters()

    def _present_synsets(self, layout: ShapeNetLayout) -> list[str]:
        """``synsets``; on the synthetic default tree (``root=None``) the categories it does not
        hold are skipped with a warning, so full presets (13 classes) run out of the box."""
        if self.root_arg is not None:
            return self.synsets
        present = [s for s in self.synsets if layout.lst(s, "train").is_file()]
        if len(present) < len(self.synsets):
            import warnings

            warnings.warn(f"synthetic default data holds {present} of the categories {self.synsets}; "
                          "the others are skipped (real data: set data.root)", stacklevel=2)
        return present

    def _items(self, kind: str) -> list[tuple[str, str, int | None]]:
        layout = ShapeNetLayout(self.root)
        synsets = self._present_synsets(layout)
        if kind == "train":
            return [(s, i, self.hparams.view) for s in synsets
                    for i in read_lst(layout.lst(s, "train"))[:self.hparams.max_per_class]]
        if layout.testlist_all.is_file():
            wanted = set(synsets)
            return [t for t in read_testlist(layout.testlist_all) if t[0] in wanted]
        return [(s, i, self.hparams.eval_view) for s in synsets for i in read_lst(layout.lst(s, "test"))]

    def _dataset(self, items: list) -> ListSamples:
        hp = self.hparams
        return ListSamples(self.root, items, hp.sample_point_density, hp.sigma_fractions, hp.image_size, hp.alpha,
                           uniform_fraction=hp.get("uniform_fraction", 0.0))

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._dataset(self._items("train"))
            if len(self.train_set) == 0:
                raise InputError(self.root / "DISN_split", "no training shapes for the categories",
                                 "check the .lst files and `categories`")
        if stage in (None, "fit", "validate", "test", "predict") and self.test_set is None:
            test_items = self._items("test")
            self.test_set = self._dataset(test_items)
            self.val_set = self._dataset(test_items[:self.hparams.val_items])

    def describe(self) -> dict[str, Any]:
        counts = self.train_set.query_counts() if self.train_set is not None else None
        return {"num_train": len(self.train_set) if self.train_set is not None else None,
                "num_test": len(self.test_set) if self.test_set is not None else None,
                "query_counts": counts, "root": str(self.root), "synsets": self.synsets}
