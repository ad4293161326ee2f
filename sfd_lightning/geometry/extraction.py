"""Mesh extraction from signed distance fields: grid evaluation, coarse-to-fine, marching cubes.

Written once for every SDF method (CONTRACTS.md §3, evaluation.md §3 rule 4).

Conventions:
    * Fields are negative inside. The grid has ``R`` nodes per axis at ``linspace(min, max, R)``
      ('ij' indexing, x slowest); a marching-cubes vertex ``v`` (index units) maps to the world
      as ``v * (max - min) / (R - 1) + min`` (exact, no half-voxel offset).
    * ``level = t`` extracts the surface ``f = t``. Marching cubes (PyMCubes) runs on ``-f`` at
      ``-t`` so faces are wound counter-clockwise seen from outside (positive signed volume).
    * No crossing (level outside the field's range, untrained net) gives an empty :class:`Mesh`.
    * NaN and ±inf values are treated as *outside*: they are replaced by ``t ± D`` (``D`` = box
      diagonal; NaN and +inf → ``t + D``, -inf → ``t - D``) with a ``RuntimeWarning``, so a NaN
      region is carved out of the solid and no NaN vertex is ever emitted.

Coarse-to-fine (``mode="coarse_to_fine"``): the field is evaluated on a coarse sub-grid of the
fine nodes (stride ``s = 2^k``), then the stride is halved level by level. With ``L`` the assumed
Lipschitz constant and ``h`` the voxel, marching cubes needs exact values only at nodes with
``|f - t| <= L * h_max`` (the ends of every crossing edge) and the right sign elsewhere. At stride
``σ`` the nodes with ``|f - t| <= L * (h_max + (σ - 1) * |h|)`` are kept exact; a new node is left
unevaluated when a corner ``c`` of its parent cell proves the bound (``|f(c) - t| - L * |n - c|``
exceeds it; unevaluated nodes hold ``t ± 4 L D`` so they always prove it) and then gets
``t ± 4 L D`` with ``c``'s sign, which is its own sign. By induction, for any field with Lipschitz constant ``<= L`` (exact SDFs and their
CSG combinations: ``L = 1``) the fine grid has the dense grid's signs everywhere and its exact
values at both ends of every crossing edge, so marching cubes returns the *same* mesh as
``mode="dense"``, while only a band of a few voxels around the surface is evaluated. Trained
networks are only approximately 1-Lipschitz: raise ``lipschitz`` (a wider band) when a gradient
norm above ``L`` could hide thin parts; surfaces thinner than a coarse cell are only guaranteed
under the bound.
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Callable, Sequence

import mcubes
import numpy as np
import torch
from torch import Tensor

from sfd_lightning.geometry.io import Mesh
from sfd_lightning.geometry.surface import SurfaceHandle

SdfFn = Callable[[Tensor], Tensor]
BoxLike = Sequence[float] | np.ndarray | Tensor
ResolutionLike = int | Sequence[int]


# ----------------------------------------------------------------------------- evaluation


def _as_vec3(value: BoxLike, name: str) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().double().numpy()
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if array.shape != (3,) or not np.isfinite(array).all():
        raise ValueError(f"{name} must be 3 finite numbers, got {value!r}")
    return array


def _box(bbox_min: BoxLike, bbox_max: BoxLike) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = _as_vec3(bbox_min, "bbox_min"), _as_vec3(bbox_max, "bbox_max")
    if not (hi > lo).all():
        raise ValueError(f"bbox_max {hi.tolist()} must exceed bbox_min {lo.tolist()} on every axis")
    return lo, hi


def _resolution3(resolution: ResolutionLike) -> tuple[int, int, int]:
    res = (resolution,) * 3 if np.isscalar(resolution) else tuple(resolution)
    if len(res) != 3 or any(int(r) != r or int(r) < 2 for r in res):
        raise ValueError(f"resolution must be an int >= 2 or three of them, got {resolution!r}")
    return tuple(int(r) for r in res)  # type: ignore[return-value]


def _axes(lo: np.ndarray, hi: np.ndarray, res: Sequence[int]) -> list[np.ndarray]:
    """Node coordinates per axis, float32 ``(R_a,)`` from float64 ``linspace``."""
    return [np.linspace(lo[a], hi[a], res[a]).astype(np.float32) for a in range(3)]


def _infer_device(sdf_fn: SdfFn, device: torch.device | str | None, *hints: object) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(sdf_fn, torch.nn.Module):
        for tensor in itertools.chain(sdf_fn.parameters(), sdf_fn.buffers()):
            return tensor.device
    for hint in hints:
        if isinstance(hint, Tensor):
            return hint.device
    return torch.device("cpu")


def _evaluate_nodes(sdf_fn: SdfFn, axes: list[np.ndarray], flat: np.ndarray | None,
                    chunk_size: int, device: torch.device) -> np.ndarray:
    """Evaluate ``sdf_fn`` at grid nodes; ``flat`` = flat node indices ``(M,)`` or None for all.

    Points are generated per chunk, so memory is ``O(chunk_size)`` besides the output
    ``(M,)`` float32.
    """
    shape = tuple(len(a) for a in axes)
    count = int(np.prod(shape)) if flat is None else len(flat)
    out = np.empty(count, dtype=np.float32)
    chunk_size = max(1, int(chunk_size))
    with torch.no_grad():
        for start in range(0, count, chunk_size):
            stop = min(start + chunk_size, count)
            ids = np.arange(start, stop) if flat is None else flat[start:stop]
            i, j, k = np.unravel_index(ids, shape)
            points = np.stack([axes[0][i], axes[1][j], axes[2][k]], axis=1)
            values = sdf_fn(torch.from_numpy(points).to(device))
            values = torch.as_tensor(values).reshape(-1)
            if values.numel() != stop - start:
                raise ValueError(f"sdf_fn returned {values.numel()} values for {stop - start} "
                                 "points; it must map (N, 3) -> (N,)")
            out[start:stop] = values.detach().float().cpu().numpy()
    return out


def evaluate_grid(sdf_fn: SdfFn, bbox_min: BoxLike, bbox_max: BoxLike,
                  resolution: ResolutionLike, chunk_size: int = 65536,
                  device: torch.device | str | None = None) -> np.ndarray:
    """Evaluate ``sdf_fn`` on the full grid; returns raw values ``(Rx, Ry, Rz)`` float32.

    ``sdf_fn`` maps float32 points ``(N, 3)`` to ``(N,)``; it runs under ``torch.no_grad()`` in
    chunks of ``chunk_size`` points generated on the fly (never all ``R^3`` points at once).
    ``device`` defaults to the module's parameters' device, else the bbox tensor's, else CPU.
    NaNs are returned as they are.
    """
    lo, hi = _box(bbox_min, bbox_max)
    res = _resolution3(resolution)
    dev = _infer_device(sdf_fn, device, bbox_min)
    return _evaluate_nodes(sdf_fn, _axes(lo, hi, res), None, chunk_size, dev).reshape(res)


def _sanitize(values: np.ndarray, level: float, far: float) -> np.ndarray:
    """Replace NaN/+inf by ``level + far`` and -inf by ``level - far`` in place (warns)."""
    bad = ~np.isfinite(values)
    if bad.any():
        warnings.warn(f"{int(bad.sum())} SDF values are NaN or infinite; treated as outside "
                      "(NaN/+inf) or inside (-inf) for mesh extraction", RuntimeWarning,
                      stacklevel=3)
        np.nan_to_num(values, copy=False, nan=level + far, posinf=level + far,
                      neginf=level - far)
    return values


# ----------------------------------------------------------------------------- coarse-to-fine


def _stride_indices(res: int, stride: int) -> np.ndarray:
    """Fine-node indices of the stride-``stride`` sub-grid, always ending at ``res - 1``."""
    return np.unique(np.append(np.arange(0, res - 1, stride), res - 1))


Index = slice | np.ndarray


def _index(positions: np.ndarray) -> Index:
    """An increasing arithmetic progression as a slice (views, no copies), else the array."""
    steps = np.unique(np.diff(positions))
    if len(positions) and len(steps) <= 1 and (len(steps) == 0 or steps[0] > 0):
        step = int(steps[0]) if len(steps) else 1
        return slice(int(positions[0]), int(positions[-1]) + 1, step)
    return positions


def _gather(array: np.ndarray, index: Sequence[Index]) -> np.ndarray:
    """Outer indexing ``array[ix_(index)]`` with slices kept as views."""
    out = array[tuple(i if isinstance(i, slice) else slice(None) for i in index)]
    for axis, i in enumerate(index):
        if not isinstance(i, slice):
            out = np.take(out, i, axis=axis)
    return out


def _scatter(array: np.ndarray, index: Sequence[Index], values: np.ndarray) -> None:
    """Outer assignment ``array[ix_(index)] = values``."""
    if all(isinstance(i, slice) for i in index):
        array[tuple(index)] = values
    else:
        ranges = [np.arange(array.shape[a])[i] if isinstance(i, slice) else i
                  for a, i in enumerate(index)]
        array[np.ix_(*ranges)] = values


def _axis_links(parent: np.ndarray, child: np.ndarray, coords: np.ndarray) -> dict:
    """How child-level nodes of one axis relate to the parent level (positions in the lists).

    ``old``/``new``: child positions of parent nodes / of new nodes; for new nodes, ``corners``
    are ``(lower or upper parent position, world distance (n,))``.
    """
    is_old = np.isin(child, parent)
    new = np.flatnonzero(~is_old)
    lower = np.searchsorted(parent, child[new], "right") - 1
    return {"old": np.flatnonzero(is_old), "new": new,
            "corners": [(_index(lower), coords[child[new]] - coords[parent[lower]]),
                        (_index(lower + 1), coords[parent[lower + 1]] - coords[child[new]])]}


def _refine(grid: np.ndarray, links: list[dict], level: float, lipschitz: float, bound: float,
            big: float) -> tuple[np.ndarray, np.ndarray]:
    """Halve the stride: the child grid ``(n', m', p')`` and flat indices of nodes to evaluate.

    A new node ``n`` is decided by any corner ``c`` of its parent cell with
    ``|f(c) - level| - lipschitz * |n - c| > bound``: it gets ``level ± big`` with ``c``'s
    sign. Undecided nodes (returned indices) must be evaluated. Unevaluated nodes always hold
    ``level ± big`` (``big`` exceeds any bound), so they decide their children themselves.
    """
    shape = tuple(len(l["old"]) + len(l["new"]) for l in links)
    child = np.empty(shape, dtype=np.float32)
    t, up, down = np.float32(level), np.float32(level + big), np.float32(level - big)
    todo: list[np.ndarray] = []
    for kinds in np.ndindex(2, 2, 2):  # per axis: 0 = parent node, 1 = new node
        ids = [links[a]["new"] if kinds[a] else links[a]["old"] for a in range(3)]
        if min(len(i) for i in ids) == 0:
            continue
        if not any(kinds):
            _scatter(child, [_index(i) for i in ids], grid)
            continue
        options = [l["corners"] if k else [(slice(None), np.zeros(len(l["old"]), np.float32))]
                   for l, k in zip(links, kinds)]
        need = positive = None
        for (px, dx), (py, dy), (pz, dz) in itertools.product(*options):
            offset = _gather(grid, (px, py, pz)) - t
            dist = np.sqrt(dx[:, None, None] ** 2 + dy[None, :, None] ** 2 + dz[None, None, :] ** 2)
            proven = np.abs(offset) > bound + lipschitz * dist
            if need is None:
                need, positive = ~proven, offset > 0
            else:
                np.copyto(positive, offset > 0, where=need & proven)
                need &= ~proven
        _scatter(child, [_index(i) for i in ids], np.where(positive, up, down))
        i, j, k = np.nonzero(need)
        todo.append(np.ravel_multi_index((ids[0][i], ids[1][j], ids[2][k]), shape))
    flat = np.concatenate(todo) if todo else np.zeros(0, dtype=np.int64)
    return child, flat


def evaluate_grid_coarse_to_fine(
        sdf_fn: SdfFn, bbox_min: BoxLike, bbox_max: BoxLike, resolution: ResolutionLike,
        level: float = 0.0, coarse_resolution: int | None = None, lipschitz: float = 1.0,
        chunk_size: int = 65536, device: torch.device | str | None = None) -> tuple[np.ndarray, int]:
    """Fine grid ``(Rx, Ry, Rz)`` float32 evaluated only near the level set (see module doc).

    Returns the grid and the number of points passed to ``sdf_fn``. The grid is exact (NaN/inf
    sanitised) wherever ``|f - level| <= lipschitz * voxel`` and holds ``level ± 4 L D``
    (``D`` = box diagonal) with the right sign at unevaluated nodes. ``coarse_resolution``
    (default 32) sets the first stride: the largest power of two giving at least that many
    coarse nodes per axis (``min(R) < 2 * coarse - 1`` -> dense). The start resolution only
    changes the cost, not the result, under the Lipschitz bound.
    """
    lo, hi = _box(bbox_min, bbox_max)
    res = _resolution3(resolution)
    if not lipschitz > 0:
        raise ValueError(f"lipschitz must be positive, got {lipschitz}")
    dev = _infer_device(sdf_fn, device, bbox_min)
    axes = _axes(lo, hi, res)
    far = float(np.linalg.norm(hi - lo))
    coarse = 32 if coarse_resolution is None else int(coarse_resolution)
    ratio = (min(res) - 1) / max(coarse - 1, 1)
    stride = 2 ** int(math.floor(math.log2(ratio))) if ratio >= 2 else 1
    idx = [_stride_indices(r, stride) for r in res]
    grid = _evaluate_nodes(sdf_fn, [axes[a][idx[a]] for a in range(3)], None, chunk_size, dev)
    grid = _sanitize(grid, level, far).reshape([len(i) for i in idx])
    n_evaluated = grid.size
    spacing = (hi - lo) / (np.asarray(res) - 1)
    while stride > 1:
        stride //= 2
        new_idx = [_stride_indices(r, stride) for r in res]
        links = [_axis_links(idx[a], new_idx[a], axes[a]) for a in range(3)]
        # Nodes with |f - level| <= L * (h_max + (stride - 1) * |h|) must be exact at this level.
        bound = lipschitz * (spacing.max() + (stride - 1) * float(np.linalg.norm(spacing)))
        bound *= 1.0 + 1e-5  # float32 rounding of values and distances
        grid, flat = _refine(grid, links, level, lipschitz, bound, 4.0 * lipschitz * far)
        values = _evaluate_nodes(sdf_fn, [axes[a][new_idx[a]] for a in range(3)], flat,
                                 chunk_size, dev)
        grid.reshape(-1)[flat] = _sanitize(values, level, far)
        n_evaluated += len(flat)
        idx = new_idx
    return grid, n_evaluated


# ----------------------------------------------------------------------------- marching cubes


def _empty_mesh() -> Mesh:
    return Mesh(np.zeros((0, 3), np.float64), np.zeros((0, 3), np.int64))


def _clean(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop non-finite vertices, merge vertices sitting exactly on a grid node (PyMCubes emits
    one per edge when a node value equals the level), drop degenerate and unreferenced ones.

    ``vertices`` ``(V, 3)`` in index units, ``faces`` ``(F, 3)``; returns the same, reindexed.
    """
    faces = faces.astype(np.int64, copy=False)
    finite = np.isfinite(vertices).all(axis=1)
    faces = faces[finite[faces].all(axis=1)]
    on_node = np.flatnonzero(finite & (vertices == np.round(vertices)).all(axis=1))
    if len(on_node) > 1:
        _, first, inverse = np.unique(vertices[on_node], axis=0, return_index=True,
                                      return_inverse=True)
        remap = np.arange(len(vertices))
        remap[on_node] = on_node[first[inverse.reshape(-1)]]
        faces = remap[faces]
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2])
                  & (faces[:, 0] != faces[:, 2])]
    used = np.zeros(len(vertices), dtype=bool)
    used[faces.reshape(-1)] = True
    new_index = np.cumsum(used) - 1
    return vertices[used], new_index[faces]


def marching_cubes(grid: np.ndarray, bbox_min: BoxLike, bbox_max: BoxLike,
                   level: float = 0.0) -> Mesh:
    """Mesh of ``{f = level}`` from a finite negative-inside grid ``(Rx, Ry, Rz)``.

    Faces point outward; vertices are mapped exactly to the box; no crossing -> empty mesh.
    ``grid`` is negated in place (it is restored before returning).
    """
    lo, hi = _box(bbox_min, bbox_max)
    if grid.ndim != 3 or min(grid.shape) < 2:
        raise ValueError(f"grid must be (Rx, Ry, Rz) with every R >= 2, got {grid.shape}")
    np.negative(grid, out=grid)
    try:
        vertices, faces = mcubes.marching_cubes(grid, -float(level))
    finally:
        np.negative(grid, out=grid)
    if len(vertices) == 0 or len(faces) == 0:
        return _empty_mesh()
    vertices, faces = _clean(np.asarray(vertices, np.float64), np.asarray(faces))
    if len(faces) == 0:
        return _empty_mesh()
    scale = (hi - lo) / (np.asarray(grid.shape, np.float64) - 1)
    return Mesh(vertices * scale + lo, faces)


def extract_mesh(sdf_fn: SdfFn, bbox_min: BoxLike, bbox_max: BoxLike,
                 resolution: ResolutionLike = 256, level: float = 0.0,
                 mode: str = "coarse_to_fine", coarse_resolution: int | None = None,
                 chunk_size: int = 65536, device: torch.device | str | None = None,
                 lipschitz: float = 1.0) -> Mesh:
    """Mesh ``{f = level}`` of ``sdf_fn`` (negative inside) in the box, outward faces.

    Args:
        sdf_fn: float32 points ``(N, 3)`` -> ``(N,)``, called in chunks under ``no_grad``.
        resolution: nodes per axis (int or 3 ints; vertices ``v*(max-min)/(R-1)+min``).
        mode: ``"coarse_to_fine"`` (band evaluation; the same mesh as dense for fields whose
            Lipschitz constant is at most ``lipschitz``, see module doc) or ``"dense"``.
        coarse_resolution, lipschitz: coarse-to-fine settings.
    Returns:
        :class:`Mesh` with vertices ``(V, 3)`` float64 and faces ``(F, 3)`` int64; empty when
        the level is never crossed. NaN values count as outside (``RuntimeWarning``).
    """
    if mode == "dense":
        lo, hi = _box(bbox_min, bbox_max)
        grid = evaluate_grid(sdf_fn, lo, hi, resolution, chunk_size,
                             _infer_device(sdf_fn, device, bbox_min))
        _sanitize(grid, level, float(np.linalg.norm(hi - lo)))
    elif mode == "coarse_to_fine":
        grid, _ = evaluate_grid_coarse_to_fine(sdf_fn, bbox_min, bbox_max, resolution, level,
                                               coarse_resolution, lipschitz, chunk_size,
                                               device)
    else:
        raise ValueError(f"mode must be 'coarse_to_fine' or 'dense', got {mode!r}")
    return marching_cubes(grid, bbox_min, bbox_max, level)


def extract_surface(handle: SurfaceHandle, resolution: ResolutionLike = 256, level: float = 0.0,
                    mode: str = "coarse_to_fine", instance: int | None = None, **kw) -> Mesh:
    """Extract ``handle.sdf`` inside ``handle.bbox`` and map vertices with ``to_original``.

    ``instance`` picks one of ``K`` transforms when ``to_original`` is ``(K, 4, 4)`` (default
    0, as :meth:`SurfaceHandle.map_to_original`). ``kw`` goes to :func:`extract_mesh`.
    """
    transform = handle.to_original
    if transform.dim() == 3 and instance is not None and not 0 <= instance < transform.shape[0]:
        raise ValueError(f"instance {instance} out of range for {transform.shape[0]} transforms")
    kw.setdefault("device", _infer_device(handle.sdf, None, handle.bbox[0]))
    mesh = extract_mesh(handle.sdf, handle.bbox[0], handle.bbox[1], resolution, level, mode, **kw)
    if mesh.is_empty:
        return mesh
    mapped = handle.map_to_original(torch.from_numpy(mesh.vertices), instance)
    return Mesh(mapped.numpy(), mesh.faces, mesh.vertex_colors)


# ----------------------------------------------------------------------------- logging image

_INSIDE_RGB = np.array([0.12, 0.30, 0.85], np.float32)
_OUTSIDE_RGB = np.array([0.85, 0.15, 0.10], np.float32)


def _edges(bands: np.ndarray) -> np.ndarray:
    """Pixels ``(H, W)`` whose integer band differs from a right or lower neighbour."""
    change = np.zeros(bands.shape, dtype=bool)
    change[:, :-1] |= bands[:, :-1] != bands[:, 1:]
    change[:-1] |= bands[:-1] != bands[1:]
    return change


def sdf_slice_image(sdf_fn: SdfFn, bbox_min: BoxLike, bbox_max: BoxLike, axis: int = 2,
                    offset: float = 0.0, resolution: int = 256,
                    chunk_size: int = 65536, device: torch.device | str | None = None) -> np.ndarray:
    """Colour-coded slice of the field on the plane ``x[axis] = offset`` (SDF frame).

    Columns follow the first remaining axis (increasing to the right), rows the second
    (increasing upward); the longer side has ``resolution`` pixels, the other keeps the box's
    aspect. Blue inside, red outside (intensity ~ |f| / max |f|), darker isolines every
    1/8 of max |f|, black zero level, grey for NaN. Returns ``(H, W, 3)`` uint8.
    """
    lo, hi = _box(bbox_min, bbox_max)
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    u_axis, v_axis = [a for a in range(3) if a != axis]
    extent = hi - lo
    longest = max(extent[u_axis], extent[v_axis])
    width = max(2, int(round(resolution * extent[u_axis] / longest)))
    height = max(2, int(round(resolution * extent[v_axis] / longest)))
    axes = [np.array([offset], np.float32)] * 3
    axes[u_axis] = np.linspace(lo[u_axis], hi[u_axis], width).astype(np.float32)
    axes[v_axis] = np.linspace(hi[v_axis], lo[v_axis], height).astype(np.float32)  # top = max
    values = _evaluate_nodes(sdf_fn, axes, None, chunk_size, _infer_device(sdf_fn, device, bbox_min))
    f = values.reshape([len(a) for a in axes]).squeeze(axis).T  # (H, W): rows v, columns u
    finite = np.isfinite(f)
    scale = float(np.abs(f[finite]).max()) if finite.any() else 1.0
    scale = scale if scale > 0 else 1.0
    t = np.clip(np.where(finite, f, 0.0) / scale, -1.0, 1.0)[..., None].astype(np.float32)
    strength = 0.25 + 0.75 * np.abs(t)
    rgb = np.where(t < 0, _INSIDE_RGB, _OUTSIDE_RGB) * strength + (1.0 - strength) * 0.97
    lines = _edges(np.floor(np.where(finite, f, 0.0) / (scale / 8.0)).astype(np.int64))
    rgb[lines] *= 0.55
    rgb[_edges(np.where(finite, np.sign(f), 0.0)) & finite] = 0.0
    rgb[~finite] = 0.5
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
