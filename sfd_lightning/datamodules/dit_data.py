"""DataModule for the single-image DIT variants ("Template is all you need") and SimCLR.

Composes the ShapeNet-style readers (:mod:`shapenet_files`, :class:`DeepSDFSamples`) over the
DeepSDF/DIT layout (methods/dit.md §2.1): renders ``<synset>/<id>/{easy,hard}/image_rgb/NN.png``
(RGB on white), SDF samples, normalisation and SurfaceSamples.

Modes:
  * ``images`` — one item per training image (every view of ``levels``): ``image (3, H, W)`` in
    [0, 1], ``index``, ``view``, ``synset``, ``instance`` and with ``load_samples`` ``samples (S, 4)``
    (end-to-end variant). Test/val: one view per test shape (``eval_view``, DIT 30; clipped to the
    last rendered view with a warning), always with samples.
  * ``pairs`` — SimCLR: one item per training shape with two random views (``image``, ``image2``)
    from all ``levels`` (may coincide).
  * ``predict_dir`` — ``sfd predict``: every ``*.png|*.jpg`` of a folder (sorted), ``name`` = stem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from sfd_lightning.datamodules.base import seed_worker
from sfd_lightning.datamodules.shapenet import ShapeNetSDFDataModule
from sfd_lightning.datamodules.shapenet_datasets import DeepSDFSamples, _pick_view, _view_files
from sfd_lightning.datamodules.shapenet_files import read_image
from sfd_lightning.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DITImageItems(Dataset):
    """Images of ShapeNet-style shapes (+ optional SDF samples), see the module doc.

    Args:
        samples: the shapes (a :class:`DeepSDFSamples`; its order defines ``index``).
        levels: render levels to read (``easy``; v2/SimCLR ``easy, hard``).
        views: ``None`` = every rendered view is an item; a list = only those views; an int = one fixed view.
        pairs: SimCLR mode (two random views per shape).
        load_samples: attach ``samples (S, 4)`` of the shape.
    """

    def __init__(self, samples: DeepSDFSamples, levels: Sequence[str] = ("easy",),
                 views: int | Sequence[int] | None = None, image_size: int | None = 224, pairs: bool = False,
                 load_samples: bool = False) -> None:
        self.samples, self.levels = samples, list(levels)
        self.image_size, self.pairs, self.load_samples = image_size, pairs, load_samples
        layout = samples.layout
        self.items: list[tuple[int, str, int]] = []
        self.per_shape: list[list[tuple[str, int]]] = []
        for index, (synset, instance) in enumerate(samples.pairs):
            found: list[tuple[str, int]] = []
            for level in self.levels:
                folder = layout.render_dir(synset, instance, level) / "image_rgb"
                available = _view_files(folder)
                if isinstance(views, int):
                    if level == self.levels[0]:
                        found.append((level, _pick_view(available, views, folder)))
                    continue
                wanted = available if views is None else [v for v in views if v in available]
                found += [(level, v) for v in wanted]
            if not found:
                folder = layout.render_dir(synset, instance, self.levels[0]) / "image_rgb"
                raise InputError(folder, "no rendered views for this shape", "render the views or fix `levels`/`views`")
            self.per_shape.append(found)
            self.items += [(index, level, view) for level, view in found]

    def __len__(self) -> int:
        return len(self.samples) if self.pairs else len(self.items)

    def image(self, index: int, level: str, view: int) -> torch.Tensor:
        path = self.samples.layout.render_rgb(*self.samples.pairs[index], view, level)
        return torch.from_numpy(read_image(path, self.image_size, alpha="white"))

    def normalization(self, index: int):
        return self.samples.normalization(index)

    def surface_samples_path(self, index: int) -> Path:
        return self.samples.surface_samples_path(index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.pairs:
            choices = self.per_shape[i]
            a, b = (choices[int(torch.randint(len(choices), ()).item())] for _ in range(2))
            index = i
            item = {"image": self.image(i, *a), "image2": self.image(i, *b)}
            view = a[1]
        else:
            index, level, view = self.items[i]
            item = {"image": self.image(index, level, view)}
        synset, instance = self.samples.pairs[index]
        item.update(index=torch.tensor(index, dtype=torch.int64), view=torch.tensor(view, dtype=torch.int64),
                    synset=synset, instance=instance)
        if self.load_samples:
            item["samples"] = self.samples[index]["samples"]
        return item


class ImageFolder(Dataset):
    """Every ``*.png|*.jpg|*.jpeg`` of ``folder`` (sorted): ``image (3, H, W)`` on white, ``name``."""

    def __init__(self, folder: str | Path, image_size: int | None = 224) -> None:
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise InputError(self.folder, "image folder not found", "pass --data.init_args.predict_dir DIR")
        self.paths = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise InputError(self.folder, "no .png/.jpg images", "put the input images into the folder")
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = self.paths[i]
        return {"image": torch.from_numpy(read_image(path, self.image_size, alpha="white")), "name": path.stem}


class DITImageDataModule(ShapeNetSDFDataModule):
    """Image items for DIT image variants (module doc); splits and synthetic default as
    :class:`ShapeNetSDFDataModule`.

    Args (beyond the parent's):
        mode: ``images`` or ``pairs`` (SimCLR).
        levels: render levels of training items (``[easy]``; v2/SimCLR ``[easy, hard]``).
        train_views: views used for training items (``None`` = all rendered views).
        eval_views: views of val/test items (``None`` = the single ``eval_view``).
        load_samples: training items carry SDF samples (end-to-end variant).
        predict_dir: folder of images for ``sfd predict``.
        shapes_split: which split the val/test items come from (``test``; ``train`` scores held-out
            views of training shapes).
    """

    def __init__(self, root: str | None = None, categories: Sequence[str] = ("chair",),
                 train_split: str | list[str] | None = None, val_split: str | list[str] | None = None,
                 test_split: str | list[str] | None = None, samples_per_scene: int = 5000,
                 eval_samples_per_scene: int | None = None, batch_size: int = 512, eval_batch_size: int | None = None,
                 num_workers: int = 0, load_ram: bool = False, eval_view: int | None = 30, image_size: int = 224,
                 keep_duplicate_ids: bool = False, skip_missing: bool = True,
                 synthetic: dict[str, Any] | None = None, mode: str = "images", levels: Sequence[str] = ("easy",),
                 train_views: list[int] | None = None, eval_views: list[int] | None = None,
                 load_samples: bool = False, predict_dir: str | None = None, shapes_split: str = "test") -> None:
        super().__init__(root, categories, train_split, val_split, test_split, samples_per_scene,
                         eval_samples_per_scene, batch_size, eval_batch_size, num_workers, load_ram, False, None,
                         eval_view, levels[0] if levels else "easy", image_size, keep_duplicate_ids, skip_missing,
                         synthetic)
        self.save_hyperparameters()
        if mode not in ("images", "pairs"):
            raise InputError(None, f"mode must be 'images' or 'pairs', got {mode!r}", "use images or pairs")
        if shapes_split not in ("test", "train"):
            raise InputError(None, f"shapes_split must be 'test' or 'train', got {shapes_split!r}", "use test or train")
        self.predict_set: Dataset | None = None

    def _items(self, kind: str) -> DITImageItems:
        hp = self.hparams
        train = kind == "train"
        split = kind if train else ("train" if hp.shapes_split == "train" else kind)
        shapes = DeepSDFSamples(self.root, self._pairs(split),
                                hp.samples_per_scene if train else (hp.eval_samples_per_scene or hp.samples_per_scene),
                                load_ram=hp.load_ram)
        if train:
            return DITImageItems(shapes, hp.levels, hp.train_views, hp.image_size, pairs=hp.mode == "pairs",
                                 load_samples=hp.load_samples)
        views = hp.eval_views if hp.eval_views is not None else hp.eval_view
        return DITImageItems(shapes, hp.levels[:1], views, hp.image_size, pairs=hp.mode == "pairs",
                             load_samples=hp.mode == "images")

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._items("train")
        if stage in (None, "fit", "validate") and self.val_set is None:
            pairs = self._pairs("val")
            self.val_set = self._items("val") if pairs else None
        if stage in (None, "test") and self.test_set is None:
            self.test_set = self._items("test")
        if stage == "predict" and self.predict_set is None:
            if self.hparams.predict_dir is None:
                self.predict_set = self._items("test")
            else:
                self.predict_set = ImageFolder(self.hparams.predict_dir, self.hparams.image_size)

    def predict_dataloader(self):
        return DataLoader(self.predict_set, batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers, worker_init_fn=seed_worker)

    def describe(self) -> dict[str, Any]:
        return {"num_train_items": len(self.train_set) if self.train_set is not None else None,
                "root": str(self.root), "synsets": self.synsets}
