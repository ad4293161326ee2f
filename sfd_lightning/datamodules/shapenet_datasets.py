"""Datasets over ShapeNet-style trees: DeepSDF/DIT SDF samples and LIST image + query samples.

Randomness per item uses torch's global generator (DataLoader workers each get their own seed;
``seed_everything(workers=True)`` makes it reproducible). Files are read lazily and cached per
worker; every problem raises :class:`InputError` naming the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from sfd_lightning.datamodules.shapenet_files import (ShapeNetLayout, read_farthest_points, read_image,
                                                      read_list_samples, read_normalization, read_sdf_samples)
from sfd_lightning.errors import InputError


def _view_files(folder: Path) -> list[int]:
    """Sorted view indices ``NN`` of ``folder/NN.png``."""
    if not folder.is_dir():
        return []
    return sorted(int(p.stem) for p in folder.glob("*.png") if p.stem.isdigit())


def _pick_view(views: list[int], view: int | None, folder: Path) -> int:
    """A fixed view (clipped to the last existing one, with a warning) or a random one."""
    if not views:
        raise InputError(folder, "no NN.png views found", "render the views (`--views`) or set load_images false")
    if view is None:
        return views[int(torch.randint(len(views), ()).item())]
    if view in views:
        return view
    warnings.warn(f"{folder}: view {view} not rendered; using view {views[-1]}", stacklevel=3)
    return views[-1]


def query_counts(fractions: Sequence[float], density: int) -> list[int]:
    """Rows drawn per σ level: ``rint(frac_i · density)`` (LIST)."""
    return [int(np.rint(float(f) * density)) for f in fractions]


def draw_queries(pools: Sequence[torch.Tensor], counts: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``counts[i]`` rows with replacement from each ``(N_i, 4)`` pool -> points ``(N, 3)``, values ``(N,)``."""
    rows = torch.cat([pool[torch.randint(len(pool), (n,))] for pool, n in zip(pools, counts)])
    return rows[:, :3].contiguous(), rows[:, 3].contiguous()


def uniform_queries(surface: np.ndarray, pools: Sequence[torch.Tensor], count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` uniform points in [−0.5, 0.5]³ with an approximate SDF (LIST ``uniform_fraction``).

    |SDF| = distance to the nearest surface sample ``surface (M, 3)`` (``grid_points``; error ≤ the
    sample spacing), sign = sign of the nearest σ-perturbed query of ``pools`` (``(N_i, 4)`` rows
    x, y, z, sdf; negative inside). Returns points ``(count, 3)``, values ``(count,)`` float32.
    """
    from scipy.spatial import cKDTree

    points = torch.rand(count, 3, dtype=torch.float64) - 0.5
    if count == 0:
        return points.float(), torch.zeros(0)
    distance, _ = cKDTree(np.asarray(surface, dtype=np.float64)).query(points.numpy())
    rows = torch.cat([p.double() for p in pools]).numpy()
    _, nearest = cKDTree(rows[:, :3]).query(points.numpy())
    sign = np.where(rows[nearest, 3] < 0, -1.0, 1.0)
    return points.float(), torch.from_numpy(sign * distance).float()


def load_query_pools(path: Path, fractions: Sequence[float]) -> tuple[np.ndarray, list[torch.Tensor]]:
    """``grid_points (N, 3)`` and the per-σ pools (ascending σ) of a LIST sample file."""
    grid, queries = read_list_samples(path)
    if len(queries) != len(fractions):
        raise InputError(path, f"{len(queries)} sigma levels {list(queries)} but {len(fractions)} sigma_fractions",
                         "match sigma_fractions to the file")
    return grid, [torch.from_numpy(q) for q in queries.values()]


class DeepSDFSamples(Dataset):
    """SDF samples per scene (DeepSDF/DIT layout), optionally with one rendered view.

    Item (dict): ``samples`` float32 ``(S, 4)`` rows x, y, z, sdf in the normalized frame
    (``S = samples_per_scene``: half from ``pos``, half from ``neg``, shuffled); ``index`` int64 scene
    index (row of the latent-code table); ``synset``, ``instance`` str; with images ``image``
    float32 ``(3, H, W)`` in [0, 1] (RGB on white, ``image_rgb/NN.png``) and ``view`` int64.

    Sampling: ``load_ram`` (DIT default) shuffles pos/neg once at load and takes a contiguous window
    of ``S/2`` rows at a random offset from each (with replacement when a half is short);
    otherwise ``S/2 + S/2`` rows with replacement. NaN rows are dropped at load.
    """

    def __init__(self, root: str | Path, pairs: Sequence[tuple[str, str]], samples_per_scene: int = 5000,
                 load_ram: bool = True, load_images: bool = False, view: int | None = None,
                 image_level: str = "easy", image_size: int | None = 224, skip_missing: bool = True,
                 shuffle_seed: int = 0) -> None:
        self.layout = ShapeNetLayout(Path(root))
        self.samples_per_scene = int(samples_per_scene)
        self.load_ram, self.load_images, self.view = load_ram, load_images, view
        self.image_level, self.image_size, self.shuffle_seed = image_level, image_size, shuffle_seed
        kept, missing = [], []
        for synset, instance in pairs:
            (kept if self.layout.sdf_samples(synset, instance).is_file() else missing).append((synset, instance))
        if missing:
            first = self.layout.sdf_samples(*missing[0])
            if not skip_missing:
                raise InputError(first, "SDF samples of a split entry not found", "generate them or fix the split")
            warnings.warn(f"{len(missing)} split entries without SDF samples skipped (first: {first})", stacklevel=2)
        self.pairs = kept
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return "/".join(self.pairs[index])

    def normalization(self, index: int) -> tuple[np.ndarray, float]:
        """``(offset (3,), scale)``: ``x_original = p / scale - offset``."""
        return read_normalization(self.layout.normalization(*self.pairs[index]))

    def surface_samples_path(self, index: int) -> Path:
        return self.layout.surface_samples(*self.pairs[index])

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index not in self._cache:
            pos, neg = read_sdf_samples(self.layout.sdf_samples(*self.pairs[index]))
            if not self.load_ram:
                return torch.from_numpy(pos), torch.from_numpy(neg)
            rng = np.random.default_rng([self.shuffle_seed, index])
            self._cache[index] = (torch.from_numpy(rng.permutation(pos)), torch.from_numpy(rng.permutation(neg)))
        return self._cache[index]

    def _half(self, rows: torch.Tensor, count: int) -> torch.Tensor:
        if self.load_ram and len(rows) > count:
            start = int(torch.randint(len(rows) - count + 1, ()).item())
            return rows[start:start + count]
        return rows[torch.randint(len(rows), (count,))]

    def __getitem__(self, index: int) -> dict:
        pos, neg = self._load(index)
        half = self.samples_per_scene // 2
        rows = torch.cat([self._half(pos, self.samples_per_scene - half), self._half(neg, half)])
        rows = rows[torch.randperm(len(rows))]
        synset, instance = self.pairs[index]
        item = {"samples": rows, "index": torch.tensor(index, dtype=torch.int64), "synset": synset,
                "instance": instance}
        if self.load_images:
            folder = self.layout.render_dir(synset, instance, self.image_level) / "image_rgb"
            view = _pick_view(_view_files(folder), self.view, folder)
            image = read_image(folder / f"{view:02d}.png", self.image_size, alpha="white")
            item.update(image=torch.from_numpy(image), view=torch.tensor(view, dtype=torch.int64))
        return item


class ListSamples(Dataset):
    """LIST items: one view + farthest points + σ-level SDF queries.

    Item (dict): ``image`` float32 ``(3, H, W)`` in [0, 1] (alpha dropped as PIL ``convert('RGB')``
    does, or composited per ``alpha``); ``points`` float32 ``(N, 3)`` and ``values`` float32 ``(N,)``
    (unscaled SDF, negative inside) with ``n_i = rint(frac_i · sample_point_density)`` rows drawn
    with replacement from the pool of the i-th smallest σ; ``fps_points`` float32 ``(k, 3)``;
    ``index`` int64, ``synset``, ``instance`` str, ``view`` int64, ``mesh_path`` str (GT
    ``isosurf_scaled.obj``, for evaluation). Frame: [−0.5, 0.5]³.
    """

    def __init__(self, root: str | Path, items: Sequence[tuple[str, str, int | None]],
                 sample_point_density: int = 32768, sigma_fractions: Sequence[float] = (0.5, 0.49, 0.01),
                 image_size: int | None = 224, alpha: str = "drop", load_queries: bool = True,
                 uniform_fraction: float = 0.0) -> None:
        self.layout = ShapeNetLayout(Path(root))
        self.items = list(items)
        self.density, self.fractions = int(sample_point_density), [float(f) for f in sigma_fractions]
        self.image_size, self.alpha, self.load_queries = image_size, alpha, load_queries
        if not 0.0 <= float(uniform_fraction) < 1.0:
            raise InputError(None, f"uniform_fraction {uniform_fraction} is not in [0, 1)", "use e.g. 0.05 (0 = LIST)")
        self.uniform_fraction = float(uniform_fraction)
        self._cache: dict[tuple[str, str], tuple[list[torch.Tensor], torch.Tensor]] = {}
        self._surface: dict[tuple[str, str], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _samples(self, synset: str, instance: str) -> tuple[list[torch.Tensor], torch.Tensor]:
        key = (synset, instance)
        if key not in self._cache:
            grid, pools = load_query_pools(self.layout.sampled_points(synset, instance), self.fractions)
            fps = read_farthest_points(self.layout.farthest_points(synset, instance))
            self._cache[key] = (pools, torch.from_numpy(fps))
            if self.uniform_fraction > 0:
                self._surface[key] = np.asarray(grid)
        return self._cache[key]

    def query_counts(self) -> list[int]:
        """Rows drawn per σ level: ``rint(frac_i · sample_point_density)`` (with ``uniform_fraction``
        u > 0: ``rint(frac_i · (1 − u) · density)``, then ``rint(u · density)`` uniform rows)."""
        if self.uniform_fraction <= 0:
            return query_counts(self.fractions, self.density)
        return query_counts(self.fractions, int(round((1 - self.uniform_fraction) * self.density)))

    def uniform_count(self) -> int:
        """Uniform-in-box rows per item (``rint(uniform_fraction · density)``; 0 = LIST)."""
        return int(np.rint(self.uniform_fraction * self.density))

    def __getitem__(self, index: int) -> dict:
        synset, instance, view = self.items[index]
        folder = self.layout.list_image_dir(synset, instance)
        view = _pick_view(_view_files(folder), view, folder)
        image = read_image(folder / f"{view:02d}.png", self.image_size, alpha=self.alpha)
        pools, fps = self._samples(synset, instance)
        item = {"image": torch.from_numpy(image), "fps_points": fps, "index": torch.tensor(index, dtype=torch.int64),
                "synset": synset, "instance": instance, "view": torch.tensor(view, dtype=torch.int64),
                "mesh_path": str(self.layout.isosurface(synset, instance))}
        if self.load_queries:
            points, values = draw_queries(pools, self.query_counts())
            if self.uniform_fraction > 0:
                extra = uniform_queries(self._surface[(synset, instance)], pools, self.uniform_count())
                points, values = torch.cat([points, extra[0]]), torch.cat([values, extra[1]])
            item.update(points=points, values=values)
        return item
