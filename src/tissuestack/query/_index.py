"""Spatial indexes used by the queries.

* Shapes: one ``shapely.STRtree`` per GeoDataFrame, cached while the frame lives (keyed weakly by the object,
  invalidated when its geometry array is replaced). Circles are indexed by their bounding squares
  (centre +- radius), so an envelope query returns every disk that may intersect.
* Points: intrinsic bounding boxes of a query region (interval arithmetic through the inverse affine), and
  pruning of row groups / partitions by their min/max statistics.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from tissuestack.elements._shapes import RADIUS_COLUMN

__all__ = [
    "intersecting_row_groups",
    "shapes_tree",
]


# ------------------------------------------------------------------------------------------------ STRtree cache
@dataclass
class _TreeEntry:
    ref: weakref.ref
    geometry: object  # the GeometryArray the tree was built from (replaced array -> rebuild)
    radius: object  # the radius values used (circles), same idea
    tree: shapely.STRtree


_TREES: dict[int, _TreeEntry] = {}


def _forget(key: int) -> None:
    _TREES.pop(key, None)


def shapes_tree(gdf: gpd.GeoDataFrame, circles: bool) -> shapely.STRtree:
    """The STRtree of a shapes element (built once per GeoDataFrame object and geometry array).

    Tree item ``i`` is row ``i`` (position, not index label). For circles the tree holds the bounding squares of
    the disks.
    """
    key = id(gdf)
    geometry = gdf.geometry.array
    radius = gdf[RADIUS_COLUMN].array if circles and RADIUS_COLUMN in gdf.columns else None
    entry = _TREES.get(key)
    if entry is not None and entry.ref() is gdf and entry.geometry is geometry and entry.radius is radius:
        return entry.tree
    geoms = np.asarray(geometry)
    if circles:
        r = np.asarray(gdf[RADIUS_COLUMN], dtype=np.float64)
        x, y = shapely.get_x(geoms), shapely.get_y(geoms)
        geoms = shapely.box(x - r, y - r, x + r, y + r)
    tree = shapely.STRtree(geoms)
    _TREES[key] = _TreeEntry(weakref.ref(gdf, lambda _r, key=key: _forget(key)), geometry, radius, tree)
    return tree


# --------------------------------------------------------------------------------------------- row groups
def intersecting_row_groups(
    stats: pd.DataFrame, lo: Sequence[float], hi: Sequence[float], axes: Sequence[str]
) -> np.ndarray:
    """Mask of the row groups (rows of ``points_row_group_stats``) whose bounding box meets ``[lo, hi]``.

    Infinite bounds constrain nothing; row groups with missing statistics (NaN) are always kept.
    """
    keep = np.ones(len(stats), dtype=bool)
    for a, lo_a, hi_a in zip(axes, lo, hi, strict=True):
        if f"{a}_min" not in stats.columns:
            continue
        mn = stats[f"{a}_min"].to_numpy(dtype=np.float64)
        mx = stats[f"{a}_max"].to_numpy(dtype=np.float64)
        ok = ~((mx < lo_a) | (mn > hi_a))  # NaN compares False -> kept
        keep &= ok
    return keep


def partition_bounds_mask(bounds: np.ndarray, lo: Sequence[float], hi: Sequence[float]) -> np.ndarray:
    """Mask of partitions whose bounds ``(n, 2, d)`` (min row, max row) meet the box ``[lo, hi]`` (d axes)."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    return ~((bounds[:, 1, :] < lo) | (bounds[:, 0, :] > hi)).any(axis=1)
