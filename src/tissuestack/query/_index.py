"""Spatial indexes used by the queries.

* Shapes: the envelopes of a GeoDataFrame's geometries (from its flat coordinates, see
  :mod:`tissuestack.ops._shapes_flat`), and a ``shapely.STRtree`` over them built on demand,
  cached while the frame lives (keyed weakly by the object, invalidated when its geometry array is replaced).
  Circles are indexed by their bounding squares (centre +- radius), so an envelope query returns every disk that
  may intersect.
* Points: intrinsic bounding boxes of a query region (interval arithmetic through the inverse affine), and
  pruning of row groups / partitions by their min/max statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from tissuestack.elements import record_of
from tissuestack.elements._shapes import RADIUS_COLUMN
from tissuestack.kernels._ragged import FlatGeometry
from tissuestack.ops._shapes_flat import flat_geometry

__all__ = [
    "ShapesIndex",
    "intersecting_row_groups",
    "shapes_index",
    "shapes_tree",
]


# ------------------------------------------------------------------------------------------- shapes index cache
class ShapesIndex:
    """Envelopes of a shapes element (``n x 4``: xmin, ymin, xmax, ymax) and, built on demand, their STRtree.

    Item ``i`` is row ``i`` (position, not index label). Circles are indexed by the bounding squares of their
    disks. A query with a few boxes scans the envelope array (a few vectorized comparisons, no tree to build);
    queries with many boxes use the tree.
    """

    def __init__(self, flat: FlatGeometry, radius: np.ndarray | None):
        if radius is not None:
            x, y = flat.x, flat.y
            self.bounds = np.column_stack([x - radius, y - radius, x + radius, y + radius])
        else:
            self.bounds = flat.bounds
        self.flat = flat
        self._tree: shapely.STRtree | None = None

    @property
    def has_tree(self) -> bool:
        return self._tree is not None

    @property
    def tree(self) -> shapely.STRtree:
        if self._tree is None:
            b = self.bounds
            self._tree = shapely.STRtree(shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3]))
        return self._tree

    def candidates(self, lo: np.ndarray, hi: np.ndarray, *, few: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """``(box index, row)`` pairs whose envelope meets each intrinsic x/y box ``lo[i] .. hi[i]`` (``n x 2``).

        Scans the envelopes for up to ``few`` boxes (a few vectorized comparisons each, ~1 ms per 100k shapes,
        while building a tree costs ~0.1 s); more boxes use the tree, built once and kept.
        """
        if len(lo) > few or self._tree is not None:
            return self.tree.query(shapely.box(lo[:, 0], lo[:, 1], hi[:, 0], hi[:, 1]))
        b = self.bounds
        box_idx, rows = [], []
        for i in range(len(lo)):
            hit = np.flatnonzero(
                (b[:, 0] <= hi[i, 0]) & (b[:, 2] >= lo[i, 0]) & (b[:, 1] <= hi[i, 1]) & (b[:, 3] >= lo[i, 1])
            )
            rows.append(hit)
            box_idx.append(np.full(len(hit), i, dtype=np.intp))
        return np.concatenate(box_idx), np.concatenate(rows)


def shapes_index(gdf: gpd.GeoDataFrame, circles: bool) -> ShapesIndex:
    """The index of a shapes element, cached in its record while its geometry (and radius) arrays stay the
    same objects (an array replaced in place on the element rebuilds it)."""
    geometry = gdf.geometry.array
    radius = gdf[RADIUS_COLUMN].array if circles and RADIUS_COLUMN in gdf.columns else None

    def build() -> ShapesIndex:
        r = np.asarray(gdf[RADIUS_COLUMN], dtype=np.float64) if circles else None
        return ShapesIndex(flat_geometry(gdf), r)  # bounds from the flat coordinates: no shapely objects

    record = record_of(gdf)
    if record is None:
        return build()
    return record.cached(("shapes-index", circles), build, depends_on=(geometry, radius))


def shapes_tree(gdf: gpd.GeoDataFrame, circles: bool) -> shapely.STRtree:
    """The STRtree of a shapes element's envelopes (built once per GeoDataFrame object and geometry array)."""
    return shapes_index(gdf, circles).tree


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
