"""A folder of images for ``sfd predict`` (single-view methods such as LIST): one item per image.

Items: ``image`` float32 ``(3, S, S)`` in [0, 1] (resized ignoring aspect ratio; alpha handled as
``alpha``: ``drop`` keeps the stored RGB like PIL ``convert('RGB')``, ``white`` composites on
white), ``name`` str (file stem), ``index`` int64. No ground truth, so ``test`` only meshes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from sfd_lightning.datamodules.base import BaseReconDataModule
from sfd_lightning.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class ImageFolder(Dataset):
    """Images of one folder, sorted by name."""

    def __init__(self, root: str | Path, image_size: int = 224, alpha: str = "drop") -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise InputError(self.root, "image folder not found", "pass --data.init_args.root <folder of images>")
        self.files = sorted(p for p in self.root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise InputError(self.root, f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder",
                             "put the images to reconstruct in it")
        self.image_size, self.alpha = int(image_size), alpha

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from sfd_lightning.datamodules.shapenet_files import read_image

        image = read_image(self.files[index], self.image_size, alpha=self.alpha)
        return {"image": torch.from_numpy(image), "name": self.files[index].stem,
                "index": torch.tensor(index, dtype=torch.int64)}


class ImageFolderDataModule(BaseReconDataModule):
    """``predict`` / ``test`` over a folder of images (no training data).

    Args:
        root: folder of images (required).
        image_size: square input size of the network (LIST: 224; tiny presets 32).
        alpha: ``drop`` (LIST) or ``white``.
        batch_size, num_workers: loader settings.
    """

    def __init__(self, root: str = "images", image_size: int = 224, alpha: str = "drop", batch_size: int = 1,
                 num_workers: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.test_set: ImageFolder | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is None:
            self.test_set = ImageFolder(self.hparams.root, self.hparams.image_size, self.hparams.alpha)

    def _loader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.hparams.batch_size, shuffle=False,
                          num_workers=self.hparams.num_workers)

    def predict_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()
