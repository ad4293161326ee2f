"""``sfd data check DIR --format pointcloud``: every point cloud / mesh file under DIR loads."""

from __future__ import annotations

from pathlib import Path

from sfd_lightning.errors import InputError
from sfd_lightning.geometry.io import MESH_SUFFIXES, POINT_CLOUD_SUFFIXES, load_point_cloud

SUFFIXES = set(POINT_CLOUD_SUFFIXES) | set(MESH_SUFFIXES)


def check(root: Path) -> list[str]:
    """One line per unreadable/invalid file under ``root`` (a file or a folder)."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES)
    if not files:
        return [f"{root}: no point cloud or mesh files found — expected {sorted(SUFFIXES)}"]
    problems = []
    for path in files:
        try:
            load_point_cloud(path, min_points=64, mesh_samples=1000)
        except InputError as exc:
            problems.append(str(exc))
    return problems
