"""Nearest-neighbour distances with a pluggable backend (methods/evaluation.md §3.3).

Backends (timings in methods/lightning.md §11; all agree on float64 inputs):

- ``"pykdtree"`` (default): OpenMP k-d tree, fastest on CPU.
- ``"ckdtree"``: ``scipy.spatial.cKDTree(...).query(workers=-1)``, the fallback when pykdtree is
  missing.
- ``"torch"``: chunked brute force (``torch.cdist`` on row blocks, then the exact distance to the
  chosen neighbour). Only for small clouds or tensors on an accelerator: O(N·M) work.

``"auto"`` picks ``"torch"`` for tensors on a non-CPU device and otherwise the first k-d tree
that imports. Numpy in -> numpy out; torch in -> torch out on the query's device, and the
returned distances are recomputed from the indices in torch, so they carry gradients to both
inputs (handy for Chamfer losses).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

Array = np.ndarray | Tensor
BACKENDS = ("auto", "pykdtree", "ckdtree", "torch")
#: bytes of one distance block in the torch backend (rows are chunked to stay under this).
TORCH_BLOCK_BYTES = 64 * 1024 * 1024


def _check_shape(name: str, points: Array) -> None:
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {tuple(points.shape)}")


def _has_pykdtree() -> bool:
    try:
        import pykdtree.kdtree  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, query: Array) -> str:
    """The concrete backend ``"auto"`` stands for, given the query's type and device."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown nearest-neighbour backend '{backend}', use one of {BACKENDS}")
    if backend != "auto":
        return backend
    if isinstance(query, Tensor) and query.device.type != "cpu":
        return "torch"
    return "pykdtree" if _has_pykdtree() else "ckdtree"


def _kdtree_query(query: np.ndarray, reference: np.ndarray, backend: str) -> tuple[np.ndarray, np.ndarray]:
    """k-d tree query on float64 numpy arrays; returns (dist float64 (N,), index int64 (N,))."""
    if backend == "pykdtree":
        from pykdtree.kdtree import KDTree

        dist, index = KDTree(reference).query(query, k=1)
    else:
        from scipy.spatial import cKDTree

        dist, index = cKDTree(reference).query(query, k=1, workers=-1)
    return np.asarray(dist, dtype=np.float64), np.asarray(index, dtype=np.int64)


def _torch_query(query: Tensor, reference: Tensor) -> Tensor:
    """Index ``(N,)`` int64 of the nearest reference row for each query row, brute force in blocks."""
    rows = max(1, TORCH_BLOCK_BYTES // (max(1, reference.shape[0]) * query.element_size()))
    index = torch.empty(query.shape[0], dtype=torch.long, device=query.device)
    with torch.no_grad():
        for start in range(0, query.shape[0], rows):
            block = torch.cdist(query[start:start + rows], reference)
            index[start:start + rows] = block.argmin(dim=1)
    return index


def nearest_neighbors(query: Array, reference: Array, backend: str = "auto") -> tuple[Array, Array]:
    """Distance from every query point to its nearest reference point, and that point's index.

    Args:
        query: ``(N, 3)`` numpy array or torch tensor.
        reference: ``(M, 3)`` of the same kind.
        backend: ``"auto"``, ``"pykdtree"``, ``"ckdtree"`` or ``"torch"`` (see module docstring).

    Returns:
        ``dist (N,)`` Euclidean (unsquared) and ``index (N,)`` int64. With an empty reference
        every distance is ``inf`` and every index ``-1``. Numpy inputs give float64 numpy
        outputs; torch inputs give tensors on the query's device in the query's dtype.
    """
    _check_shape("query", query)
    _check_shape("reference", reference)
    backend = resolve_backend(backend, query)
    if isinstance(query, Tensor) or isinstance(reference, Tensor):
        return _nearest_torch_inputs(torch.as_tensor(query), torch.as_tensor(reference), backend)
    query_np = np.ascontiguousarray(query, dtype=np.float64)
    reference_np = np.ascontiguousarray(reference, dtype=np.float64)
    if len(reference_np) == 0 or len(query_np) == 0:
        return np.full(len(query_np), np.inf), np.full(len(query_np), -1, dtype=np.int64)
    if backend == "torch":
        index = _torch_query(torch.from_numpy(query_np), torch.from_numpy(reference_np)).numpy()
        return np.linalg.norm(query_np - reference_np[index], axis=1), index
    return _kdtree_query(query_np, reference_np, backend)


def _nearest_torch_inputs(query: Tensor, reference: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    """Torch path: index by the chosen backend, distance recomputed (differentiably) in torch."""
    reference = reference.to(device=query.device, dtype=query.dtype if query.is_floating_point() else torch.float32)
    query = query.to(reference.dtype)
    if reference.shape[0] == 0 or query.shape[0] == 0:
        return (torch.full((query.shape[0],), float("inf"), dtype=query.dtype, device=query.device),
                torch.full((query.shape[0],), -1, dtype=torch.long, device=query.device))
    if backend == "torch":
        index = _torch_query(query.detach(), reference.detach())
    else:
        q = query.detach().cpu().numpy().astype(np.float64)
        r = reference.detach().cpu().numpy().astype(np.float64)
        index = torch.from_numpy(_kdtree_query(q, r, backend)[1]).to(query.device)
    return (query - reference[index]).norm(dim=1), index
