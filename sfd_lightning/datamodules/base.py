"""Base DataModule and the synthetic-default-data cache shared by every dataset.

Every config runs out of the box: when a DataModule's ``root`` is ``None`` it asks
:func:`ensure_synthetic` for a small synthetic tree in the same real layout, generated once and
cached under ``~/.cache/sfd_lightning/synth/<content hash>/`` (``SFD_CACHE`` overrides the
cache folder), written to a temporary folder and renamed into place atomically (CONTRACTS §5.4).
Under DDP, rank 0 generates in ``prepare_data`` and the other ranks find it in ``setup``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
import numpy as np
import torch

CACHE_LAYOUT_VERSION = 1


def cache_root() -> Path:
    """Folder holding generated default data (``$SFD_CACHE`` or ``~/.cache/sfd_lightning``)."""
    env = os.environ.get("SFD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sfd_lightning"


def synthetic_cache_dir(kind: str, params: dict[str, Any]) -> Path:
    """Deterministic cache folder for synthetic data of ``kind`` generated with ``params``."""
    blob = json.dumps({"kind": kind, "params": params, "layout": CACHE_LAYOUT_VERSION},
                      sort_keys=True, default=str)
    digest = hashlib.sha1(blob.encode()).hexdigest()[:16]
    return cache_root() / "synth" / f"{kind}-{digest}"


def ensure_synthetic(kind: str, params: dict[str, Any], generate: Callable[[Path], None]) -> Path:
    """Return the cached synthetic tree for ``(kind, params)``, generating it once if absent.

    ``generate(tmp_dir)`` writes the whole tree into ``tmp_dir``; the folder is then renamed
    into place, so a killed generation never leaves a half-written cache entry.
    """
    target = synthetic_cache_dir(kind, params)
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        generate(tmp)
        (tmp / ".complete").write_text(json.dumps({"kind": kind, "params": params}, default=str))
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished first (rename onto a non-empty folder fails): keep theirs.
            if not (target / ".complete").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: distinct, reproducible numpy/random seeds per worker."""
    seed = torch.initial_seed() % 2**32
    np.random.seed((seed + worker_id) % 2**32)
    import random

    random.seed(seed + worker_id)


class BaseReconDataModule(pl.LightningDataModule):
    """Base of every sfd_lightning DataModule (the LightningCLI ``data`` base class).

    Subclasses read real files in their real layout; synthetic data only ever goes through
    the same readers. ``describe()`` returns facts the model may need (logged as hparams).
    """

    def describe(self) -> dict[str, Any]:
        """Facts about the loaded data (counts, frames) for logging; override when useful."""
        return {}
