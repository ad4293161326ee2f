"""Shared base of the DataModules that read one dataset tree (ShapeNet-style, Pix3D).

Resolves ``root`` (a user folder, or the cached synthetic default when ``None``), generates the
default in ``prepare_data`` (rank 0 under DDP), and builds the loaders (seeded workers; an empty
or missing split gives ``[]``, which Lightning treats as "no batches").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset

from sfd_lightning.datamodules.base import BaseReconDataModule, seed_worker
from sfd_lightning.errors import InputError


class TreeDataModule(BaseReconDataModule):
    """Root resolution and loaders; subclasses implement :meth:`default_root` and ``setup``."""

    def __init__(self, root: str | None, batch_size: int, eval_batch_size: int | None, num_workers: int,
                 synthetic: dict[str, Any] | None) -> None:
        super().__init__()
        self.root_arg, self.synthetic = root, synthetic
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def default_root(self) -> Path:
        """The cached synthetic tree used when ``root`` is ``None`` (generated on first use)."""
        raise NotImplementedError(f"{type(self).__name__} must implement default_root()")

    @property
    def root(self) -> Path:
        if self.root_arg is None:
            return self.default_root()
        root = Path(self.root_arg).expanduser()
        if not root.is_dir():
            raise InputError(root, "dataset root not found", "check `data.root` (or leave it null for synthetic data)")
        return root

    def prepare_data(self) -> None:
        if self.root_arg is None:
            self.default_root()

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader | list:
        if dataset is None or len(dataset) == 0:
            return []
        batch = self.batch_size if train else self.eval_batch_size
        return DataLoader(dataset, batch_size=batch, shuffle=train, num_workers=self.num_workers,
                          drop_last=train and len(dataset) >= batch, worker_init_fn=seed_worker,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self):
        return self._loader(self.train_set, True)

    def val_dataloader(self):
        return self._loader(self.val_set, False)

    def test_dataloader(self):
        return self._loader(self.test_set, False)

    def predict_dataloader(self):
        return self._loader(self.test_set, False)
