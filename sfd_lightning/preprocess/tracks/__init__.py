"""COLMAP database of the virtual instance views (keypoints, matches, verified geometries)."""
