"""Centroids of the instances of labels, shapes and points elements, in a coordinate system.

The result is always a parsed points element (a dask DataFrame, see :class:`~tissuestack.PointsModel`) indexed
by instance id, with columns ``x, y[, z]`` already in the target coordinate system and an ``Identity``
transformation to it (its only one). Centroids are affine-equivariant, so each is computed in intrinsic
coordinates and transformed once.

* **labels** (2D and 3D): the mean position of the pixels of each label value, in ONE pass over the
  full-resolution raster: every chunk is reduced to per-label pixel counts and coordinate sums (``bincount``),
  and the small per-chunk results are combined. Label ``0`` is background and excluded; label values need not be
  contiguous (any integer values, negative ones too). A pixel's position is its centre, ``index + 0.5`` (pixel
  ``i`` covers ``[i, i + 1]``, as in :func:`get_extent`). Computed eagerly (the label set must be known).
* **shapes**: polygons use shapely's (area-weighted) centroids, vectorized; circles use their centres.
* **points**: the mean position of the points of each value of the element's ``instance_key`` column (lazy
  ``groupby().mean()``; works on any number of partitions). Points without an ``instance_key`` raise.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import shapely

from tissuestack._compute import scheduler
from tissuestack._container import SpatialData
from tissuestack.elements import PointsModel, get_meta, kind_of, raster_levels
from tissuestack.elements._shapes import shapes_type
from tissuestack.errors import ValidationError
from tissuestack.ops._extent import spatial_map
from tissuestack.ops._resolve import resolve_element
from tissuestack.transforms import AffineMap, Identity

__all__ = ["get_centroids"]

_DENSE_FACTOR = 4  # use a direct bincount when label values lie in [0, 4 * pixels in the chunk)


def _block_sums(block: np.ndarray, origin: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-label ``(labels, pixel counts, coordinate sums per array axis)`` of one chunk, background excluded.

    Sums are of global pixel indices (``origin`` + local index); centres are added by the caller.
    """
    values = np.asarray(block)
    if values.dtype == np.bool_:
        values = values.astype(np.uint8)
    flat = values.ravel()
    if flat.size == 0:
        return flat[:0], np.zeros(0), np.zeros((values.ndim, 0))
    lo, hi = flat.min(), flat.max()
    if lo >= 0 and int(hi) < _DENSE_FACTOR * flat.size + 1024:
        inverse = flat.astype(np.intp, copy=False)
        labels = np.arange(int(hi) + 1, dtype=values.dtype)
    else:
        labels, inverse = np.unique(flat, return_inverse=True)
        inverse = inverse.ravel()
    n = len(labels)
    counts = np.bincount(inverse, minlength=n).astype(np.float64)
    sums = np.empty((values.ndim, n))
    for axis, size in enumerate(values.shape):
        shape = [1] * values.ndim
        shape[axis] = size
        index = np.broadcast_to(np.arange(size, dtype=np.float64).reshape(shape), values.shape).ravel()
        sums[axis] = np.bincount(inverse, weights=index, minlength=n) + origin[axis] * counts
    keep = (counts > 0) & (labels != 0)
    return labels[keep], counts[keep], sums[:, keep]


def _labels_centroids(element: Any, m: AffineMap) -> pd.DataFrame:
    level = raster_levels(element)[0]
    data = level.data if isinstance(level.data, da.Array) else da.from_array(np.asarray(level.data))
    dims = tuple(str(d) for d in level.dims)
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in data.chunks]
    blocks = data.to_delayed()
    parts = [
        dask.delayed(_block_sums)(blocks[idx], tuple(int(starts[a][i]) for a, i in enumerate(idx)))
        for idx in np.ndindex(*blocks.shape)
    ]
    results = dask.compute(*parts, scheduler=scheduler())
    labels_all = np.concatenate([r[0] for r in results])
    counts_all = np.concatenate([r[1] for r in results])
    sums_all = np.concatenate([r[2] for r in results], axis=1)
    labels, inverse = np.unique(labels_all, return_inverse=True)
    inverse = inverse.ravel()
    counts = np.bincount(inverse, weights=counts_all, minlength=len(labels))
    # intrinsic centres in m.in_axes order (x, y[, z]) from array axes ((z,) y, x)
    centres = np.empty((len(labels), len(m.in_axes)))
    for j, axis in enumerate(m.in_axes):
        sums = np.bincount(inverse, weights=sums_all[dims.index(axis)], minlength=len(labels))
        centres[:, j] = sums / np.maximum(counts, 1) + 0.5
    index = pd.Index(labels.astype(level.dtype if level.dtype != np.bool_ else np.uint8))
    return pd.DataFrame(m.apply(centres), index=index, columns=list(m.out_axes))


def _shapes_centroids(element: Any, t: Any) -> pd.DataFrame:
    geoms = np.asarray(element.geometry.array)
    if shapes_type(element) == "circles":
        m = spatial_map(element, t)
        coords = shapely.get_coordinates(geoms, include_z="z" in m.in_axes)
    else:  # shapely centroids are 2D
        m = spatial_map(element, t, in_axes=("x", "y"))
        coords = shapely.get_coordinates(shapely.centroid(geoms))
    return pd.DataFrame(m.apply(coords), index=element.index.copy(), columns=list(m.out_axes))


def _points_centroids(ddf: dd.DataFrame, m: AffineMap) -> dd.DataFrame:
    key = get_meta(ddf).instance_key
    if key is None:
        raise ValidationError(
            "points element has no instance_key: centroids are the mean position of the points of each "
            "instance; parse the points with PointsModel.parse(..., instance_key='cell_id')"
        )
    cols = list(m.in_axes)
    means = ddf[[key, *cols]].groupby(key, observed=True)[cols].mean()
    out_cols = list(m.out_axes)

    def to_target(df: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(m.apply(df[cols].to_numpy(dtype=np.float64)), index=df.index, columns=out_cols)

    meta = to_target(means._meta)
    return means.map_partitions(to_target, meta=meta)


def get_centroids(
    element: Any, coordinate_system: str = "global", *, sdata: SpatialData | None = None
) -> dd.DataFrame:
    """Centroid of every instance of a labels, shapes or points element, in a coordinate system.

    Parameters
    ----------
    element
        A labels (2D/3D), shapes or points element, or an element name with ``sdata``.
    coordinate_system
        Target coordinate system.
    sdata
        The SpatialData the element belongs to, so that its path to the coordinate system may go through
        other elements and coordinate systems.

    Returns
    -------
    dask.dataframe.DataFrame
        A parsed points element indexed by instance id (label value, shapes index label or ``instance_key``
        value) with columns ``x, y[, z]`` in ``coordinate_system`` and the transformation
        ``{coordinate_system: Identity()}``. Labels: background (0) excluded, rows sorted by label value;
        shapes: rows in the element's order; points: lazy, one row per instance key value.

    Raises
    ------
    ValidationError
        For images, or points without an ``instance_key``.
    """
    element, t = resolve_element(element, coordinate_system, sdata)
    frame: pd.DataFrame | dd.DataFrame = kind_of(element).centroids(element, t)
    return PointsModel.parse(frame, transformations={coordinate_system: Identity()})
