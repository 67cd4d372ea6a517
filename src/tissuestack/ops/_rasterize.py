"""``tissuestack.rasterize`` and ``tissuestack.rasterize_bins``: elements as rasters on a grid of a coordinate system.

The target grid
---------------
``axes`` names the spatial axes of the box ``[min_coordinate, max_coordinate]`` (same order) in
``target_coordinate_system``. Exactly one of ``target_unit_to_pixels``, ``target_width`` (x), ``target_height``
(y), ``target_depth`` (z) fixes the pixel size; the other sizes follow from the box's aspect ratio and are rounded
to whole pixels (as in the reference). Pixel ``j`` of an axis covers ``[min + j s, min + (j + 1) s)`` with
``s = (max - min) / size``; the result's transformation to the target system is ``Scale(s)`` then
``Translation(min)``. The grid is axis-aligned in the target system; any affine transformation of the element
(rotation, shear, axis swap) is taken into account exactly.

Per kind
--------
* **points**: a point falls into the pixel that contains it (half-open). Default: the number of points per
  pixel (one channel ``"count"``). ``value_key`` naming a categorical or string column gives one channel per
  category (named by the category; ``agg_func`` must be ``None`` or ``"count"``); a numeric column is reduced
  with ``agg_func`` (``"sum"`` (default), ``"mean"``, ``"max"``, ``"min"``, ``"count"``; empty pixels are 0).
  Points are streamed partition by partition (lazy: the result is a dask array computed on use).
* **shapes** (polygons, multipolygons, circles): a pixel belongs to a shape when its **centre** is inside it
  (even-odd rule with half-open edges for polygons, closed disc for circles; see
  :mod:`tissuestack.kernels._zonal`), scanline-filled in one pass over all shapes.

  - no ``value_key`` (or ``return_regions_as_labels=True`` without one): the instance ids. Integer ids that are
    all positive are the label values themselves; other ids (strings, 0, negatives) are numbered ``1..n`` in row
    order and the mapping is kept in ``result.attrs["label_index_to_category"]`` (``{label value: id}``).
    Overlaps: ``agg_func="first"`` (default: the first shape in row order wins), ``"last"``, ``"max"``,
    ``"min"``, or ``"count"`` (number of covering shapes).
  - ``value_key``: a column of the shapes or, with ``table_name``, an obs column / var name of that table (rows
    matched to the shapes by instance id; shapes without a table row burn nothing). Numeric values: ``agg_func``
    among ``"sum"`` (default, as the reference), ``"first"``, ``"last"``, ``"max"``, ``"min"``, ``"mean"``,
    ``"count"``. Categorical values: the category code + 1 of the first covering shape, mapping in
    ``attrs["label_index_to_category"]``; ``agg_func="count"`` gives one channel per category instead.
  - the result is an image ``(c, y, x)`` with one channel, or labels ``(y, x)`` with
    ``return_regions_as_labels=True`` (integer values only).
* **labels and images**: resampled into the grid, lazily (one dask task per output block of 1024 pixels, reading
  only the input region it needs). Labels: nearest (the label under the mapped pixel centre); images: linear
  interpolation between pixel centres (the edge pixel's value between the outermost centre and the raster's
  edge); pixels whose centre maps outside the raster are 0. The dtype is kept (integer images are rounded).
  Of a multiscale raster the **coarsest** level whose pixels are not larger than the target pixels in any
  direction is used (the smallest singular value of the target-pixel -> level-pixel map is >= 1), else the
  full resolution; the chosen level is ``result.attrs["rasterize_level"]``. ``return_regions_as_labels`` does
  not apply (images stay images, labels stay labels); the result is single scale.

A SpatialData object gives a new SpatialData with every element that reaches the target system (and has the
grid's axes: 2D shapes and rasters only on an x/y grid, 3D rasters on an x/y/z grid) rasterised
under its own name (images, and labels for labels elements or shapes with ``return_regions_as_labels``), with
the tables kept. ``value_key``, ``table_name`` and ``agg_func`` must then be ``None``.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import os
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
import scipy.sparse as sp
import shapely
import xarray as xr
from scipy import ndimage

from tissuestack._compute import numba_warming, paused_gc, scheduler, warm_numba
from tissuestack._container import SpatialData
from tissuestack.elements import (
    ElementKind,
    Image2DModel,
    Image3DModel,
    Labels2DModel,
    get_kind,
    get_kind_protocol,
    get_meta,
    get_table_keys,
    kind_of,
    points_axes,
    raster_levels,
)
from tissuestack.elements._instances import comparable_ids, plain_ids
from tissuestack.elements._shapes import RADIUS_COLUMN, shapes_type
from tissuestack.errors import TransformationError, ValidationError
from tissuestack.kernels._bin import count_points_in_pixels
from tissuestack.kernels._burn import BURN_OPS, burn_category_counts, burn_runs, new_canvas
from tissuestack.kernels._zonal import burn_polygons, circle_runs, polygon_runs
from tissuestack.ops._extent import spatial_map
from tissuestack.ops._joins import _region_rows
from tissuestack.ops._resolve import _name_in, elements_in, resolve_element
from tissuestack.ops._shapes_flat import flat_geometry
from tissuestack.ops._values import get_values
from tissuestack.store import points_scan
from tissuestack.transforms import Affine, BaseTransformation, Scale, Translation, compose

__all__ = ["rasterize", "rasterize_bins"]

_SPATIAL = ("x", "y", "z")
_BLOCK = 1024  # output block edge (y, x) of resampled rasters
_Z_BLOCK = 64
_FANIN = 8
_SHAPES_CHUNK = 25_000  # polygons scanned per task
MAPPING_ATTR = "label_index_to_category"
LEVEL_ATTR = "rasterize_level"
_POINT_FUNCS = ("count", "sum", "mean", "max", "min")
_SHAPE_FUNCS = ("first", "last", "sum", "count", "max", "min", "mean")


# ============================================================================================ the grid
@dataclass(frozen=True)
class _Grid:
    """The target grid: ``axes`` in x, y[, z] order, with per-axis origin, pixel count and pixel size."""

    cs: str
    axes: tuple[str, ...]
    lo: np.ndarray
    size: np.ndarray
    spacing: np.ndarray

    @property
    def array_axes(self) -> tuple[str, ...]:
        """Axes in array order (``z, y, x``)."""
        return tuple(reversed(self.axes))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(self.size[self.axes.index(a)]) for a in self.array_axes)

    def to_target(self) -> BaseTransformation:
        return compose(Scale(self.spacing, self.axes), Translation(self.lo, self.axes))

    def pixel_map(self, linear: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Compose an element -> target map (rows in ``axes`` order) with target -> pixel coordinates."""
        return linear / self.spacing[:, None], (offset - self.lo) / self.spacing


def _grid(
    axes: Sequence[str],
    min_coordinate: Sequence[float],
    max_coordinate: Sequence[float],
    cs: str,
    unit_to_pixels: float | None,
    width: float | None,
    height: float | None,
    depth: float | None,
) -> _Grid:
    axes = tuple(str(a) for a in axes)
    if len(set(axes)) != len(axes) or not set(axes) <= set(_SPATIAL) or not {"x", "y"} <= set(axes):
        raise ValueError(f"axes must be ('x', 'y') or ('x', 'y', 'z') in any order, got {axes}")
    lo = np.asarray(min_coordinate, dtype=np.float64).ravel()
    hi = np.asarray(max_coordinate, dtype=np.float64).ravel()
    if len(lo) != len(axes) or len(hi) != len(axes):
        raise ValueError(
            f"min_coordinate and max_coordinate need one value per axis {axes}, got {len(lo)} and {len(hi)}"
        )
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()) or np.any(hi <= lo):
        raise ValueError(
            f"max_coordinate {hi.tolist()} must be finite and larger than min_coordinate {lo.tolist()} on every "
            f"axis {axes}"
        )
    given = {
        k: v
        for k, v in (("target_unit_to_pixels", unit_to_pixels), ("target_width", width),
                     ("target_height", height), ("target_depth", depth))
        if v is not None
    }  # fmt: skip
    if len(given) != 1:
        raise ValueError(
            "pass exactly one of target_unit_to_pixels, target_width, target_height, target_depth; got "
            f"{sorted(given) or 'none'}"
        )
    if depth is not None and "z" not in axes:
        raise ValueError("target_depth needs a 'z' axis in axes")
    ((key, value),) = given.items()
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{key} must be a positive number, got {value!r}")
    order = [axes.index(a) for a in _SPATIAL if a in axes]
    names = tuple(axes[i] for i in order)
    lo, hi = lo[order], hi[order]
    extent = hi - lo
    if key == "target_unit_to_pixels":
        factor = float(value)
    else:
        axis = {"target_width": "x", "target_height": "y", "target_depth": "z"}[key]
        factor = float(value) / extent[names.index(axis)]
    size = np.maximum(np.round(extent * factor), 1).astype(np.int64)
    return _Grid(cs, names, lo, size, extent / size)


def _block_chunks(shape: tuple[int, ...], dims: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
    """The models' default chunks (``c`` whole, ``z`` 16, ``y``/``x`` 1024) for a result of ``shape``."""
    target = tuple(
        max(n, 1) if d == "c" else (16 if d == "z" else _BLOCK) for d, n in zip(dims, shape, strict=True)
    )
    return da.core.normalize_chunks(target, shape)


def _chunked(data: np.ndarray, dims: tuple[str, ...]) -> da.Array:
    """A computed raster as a dask array with the models' default chunks, whose blocks are views of ``data``
    (which nothing else holds).

    Built directly: ``da.from_array`` would first copy the whole raster (a defensive copy: 40 MB and 0.09 s for
    a 3170 x 3170 labels image, all fresh memory), and letting the model rechunk a single-chunk array would make
    dask import ``distributed`` to choose a rechunk method (about 1 s on first use).
    """
    chunks = _block_chunks(data.shape, dims)
    name = f"raster-{uuid.uuid4().hex}"
    keys = itertools.product([name], *(range(len(c)) for c in chunks))
    graph = {k: data[s] for k, s in zip(keys, da.core.slices_from_chunks(chunks), strict=True)}
    return da.Array(graph, name, chunks, dtype=data.dtype, meta=data[(slice(0, 0),) * data.ndim])


def _delayed_chunked(value: Any, shape: tuple[int, ...], dtype: Any, dims: tuple[str, ...]) -> da.Array:
    """A delayed raster of ``shape`` as a dask array with the models' default chunks (one task per block)."""
    chunks = _block_chunks(shape, dims)
    starts = [np.r_[0, np.cumsum(c)[:-1]].astype(int) for c in chunks]
    grid = [len(c) for c in chunks]
    blocks = []
    for pos in np.ndindex(*grid):
        sl = tuple(slice(int(starts[a][i]), int(starts[a][i] + chunks[a][i])) for a, i in enumerate(pos))
        bshape = tuple(int(chunks[a][i]) for a, i in enumerate(pos))
        blocks.append(da.from_delayed(dask.delayed(operator.getitem)(value, sl), shape=bshape, dtype=dtype))
    return da.block(_nest(blocks, grid))


def _rows_for(m: Any, grid: _Grid, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Linear part and offset of the element -> target map ``m`` for the grid's axes (rows in grid order)."""
    missing = [a for a in grid.axes if a not in m.out_axes]
    if missing:
        raise TransformationError(
            f"{what}: its transformation to {grid.cs!r} gives axes {m.out_axes}, the grid needs {missing}"
        )
    rows = [m.out_axes.index(a) for a in grid.axes]
    return m.linear[rows].astype(np.float64), m.offset[rows].astype(np.float64)


# ============================================================================================ points
def _points_partition(
    df: pd.DataFrame,
    cols: list[str],
    lin: np.ndarray,
    off: np.ndarray,
    shape: tuple[int, ...],
    key: str | None,
    categories: pd.Index | None,
    func: str,
) -> tuple[np.ndarray, ...]:
    """Per-pixel partial results of one partition: ``(values,)`` or ``(sum, count)`` for the mean."""
    coords = [df[c].to_numpy(dtype=np.float64) for c in cols]
    d = len(shape)  # array order z, y, x; lin rows in x, y, z order
    n_pix = int(np.prod(shape))
    n_c = len(categories) if categories is not None else 1
    keep = np.ones(len(df), dtype=bool)
    flat = np.zeros(len(df), dtype=np.int64)
    stride = 1
    for i in range(d):  # axis i of the grid (x, y, z), array axis d - 1 - i
        p = np.full(len(df), off[i])
        for j, c in enumerate(coords):
            if lin[i, j] != 0.0:
                p += lin[i, j] * c
        idx = np.floor(p)
        size = shape[d - 1 - i]
        keep &= (idx >= 0) & (idx < size)
        flat += np.where(keep, idx, 0).astype(np.int64) * stride
        stride *= size
    if categories is not None:
        column = df[key]
        if isinstance(column.dtype, pd.CategoricalDtype) and column.cat.categories.equals(categories):
            codes = column.cat.codes.to_numpy().astype(np.int64)
        else:
            codes = pd.Categorical(column.to_numpy(), categories=categories).codes.astype(np.int64)
        keep &= codes >= 0
        flat = flat + codes * n_pix
    values = None
    if key is not None and categories is None:
        values = df[key].to_numpy(dtype=np.float64)
        keep &= ~np.isnan(values)
        values = values[keep]
    flat = flat[keep]
    full = n_c * n_pix
    if func == "count" or categories is not None:
        return (np.bincount(flat, minlength=full).astype(np.int64, copy=False),)
    if func == "sum":
        return (np.bincount(flat, weights=values, minlength=full),)
    if func == "mean":
        return np.bincount(flat, weights=values, minlength=full), np.bincount(flat, minlength=full).astype(
            np.float64
        )
    out = np.full(full, np.nan)
    (np.fmax if func == "max" else np.fmin).at(out, flat, values)
    return (out,)


def _merge_points(parts: list[tuple[np.ndarray, ...]], func: str) -> tuple[np.ndarray, ...]:
    if func in ("max", "min"):
        red = np.fmax if func == "max" else np.fmin
        out = parts[0][0].copy()
        for p in parts[1:]:
            red(out, p[0], out=out)
        return (out,)
    # in place into the first partial (partials are temporaries of this graph): no stacked (k, pixels) copy
    out = tuple(parts[0])
    for p in parts[1:]:
        for a, b in zip(out, p, strict=True):
            a += b
    return out


def _finish_points(part: tuple[np.ndarray, ...], func: str, shape: tuple[int, ...], n_c: int) -> np.ndarray:
    if func == "mean":
        total, count = part
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    elif func in ("max", "min"):
        out = np.nan_to_num(part[0], nan=0.0)
    else:
        out = part[0]
    return out.reshape((n_c, *shape))


def _scan_partition(
    scan: Any,
    task: Any,
    needed: list[str],
    cats: dict[str, pd.Index],
    cols: list[str],
    lin: np.ndarray,
    off: np.ndarray,
    shape: tuple[int, ...],
    key: str | None,
    func: str,
) -> tuple[np.ndarray, ...]:
    """:func:`_points_partition` of some row groups of a stored element, read as arrays (categories as codes)."""
    arrays = scan.read_arrays(task, needed, cats)
    frame = pd.DataFrame(
        {
            c: pd.Categorical.from_codes(arrays[c], categories=cats[c], validate=False) if c in cats else arrays[c]
            for c in needed
        }
    )
    return _points_partition(frame, cols, lin, off, shape, key, cats.get(key) if key else None, func)


#: stored points from which counting them on a 2D grid is worth numba's one-time set-up (0.45-0.7 s on the
#: project's machine) in a process that has not paid it: below, numpy counts them per row group (2M points:
#: 0.4 s on a first call, against 0.8 s with the kernel; 20M: the kernel is several times faster)
_KERNEL_MIN_POINTS = 4_000_000


def _few_stored_points(data: Any) -> bool:
    """Whether ``data`` is a stored points element of fewer than :data:`_KERNEL_MIN_POINTS` rows (rasterized
    without numba)."""
    if not isinstance(data, dd.DataFrame):
        return False
    scan = points_scan(data)
    return scan is not None and int(scan.row_group_stats()["n_rows"].sum()) < _KERNEL_MIN_POINTS


def _count_stored_points(
    scan: Any,
    needed: list[str],
    cols: list[str],
    xy: list[int],
    lin: np.ndarray,
    off: np.ndarray,
    shape: tuple[int, int],
    key: str | None,
    categories: pd.Index | None,
) -> np.ndarray:
    """Counts per pixel (and category) of a stored points element on a 2D grid, computed now: its row groups read
    as arrays on two threads and added into one raster by :func:`count_points_in_pixels` (no per-point
    temporaries, no raster per task or per thread: fresh memory is what costs most here), one addition at a time
    while the next row groups are read."""
    n_c = len(categories) if categories is not None else 1
    cats = {key: categories} if categories is not None else {}
    tasks = scan.tasks(np.ones(len(scan.row_group_stats()), dtype=bool))
    lin2 = np.ascontiguousarray(lin[:2][:, xy], dtype=np.float64)
    off2 = np.ascontiguousarray(off[:2], dtype=np.float64)
    out = np.zeros((n_c, *shape), dtype=np.int64)
    lock = threading.Lock()

    def run(task: Any) -> None:
        arrays = scan.read_arrays(task, needed, cats)
        codes = arrays[key].astype(np.int64, copy=False) if categories is not None else np.zeros(0, np.int64)
        with lock:
            count_points_in_pixels(arrays[cols[xy[0]]], arrays[cols[xy[1]]], codes, lin2, off2, out)

    workers = max(1, min(2, len(tasks), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(run, tasks))
    return out


def _point_categories(ddf: dd.DataFrame, key: str) -> pd.Index:
    dtype = ddf.dtypes[key]
    if isinstance(dtype, pd.CategoricalDtype) and getattr(ddf[key].cat, "known", True):
        return pd.Index(dtype.categories)
    (values,) = dask.compute(ddf[key].dropna().unique(), scheduler=scheduler())
    return pd.Index(np.sort(np.asarray(values, dtype=object)))


def _rasterize_points(
    ddf: dd.DataFrame,
    t: BaseTransformation,
    grid: _Grid,
    value_key: str | None,
    agg_func: str | None,
    what: str,
) -> xr.DataArray:
    axes = points_axes(ddf)
    m = spatial_map(ddf, t, in_axes=axes)
    lin, off = grid.pixel_map(*_rows_for(m, grid, what))
    cols = list(m.in_axes)
    categories = None
    if value_key is None:
        if agg_func not in (None, "count"):
            raise ValueError(
                f"{what}: agg_func={agg_func!r} needs a numeric value_key; without one points are counted"
            )
        func, channels = "count", ["count"]
    else:
        if value_key not in ddf.columns:
            raise KeyError(f"{what}: no column {value_key!r}; columns are {list(ddf.columns)}")
        dtype = ddf.dtypes[value_key]
        numeric = pd.api.types.is_numeric_dtype(dtype) and not isinstance(dtype, pd.CategoricalDtype)
        if numeric:
            func = agg_func or "sum"
            if func not in _POINT_FUNCS:
                raise ValueError(f"{what}: agg_func must be one of {_POINT_FUNCS} for points, got {func!r}")
            channels = [value_key]
        else:
            if agg_func not in (None, "count"):
                raise ValueError(
                    f"{what}: column {value_key!r} is categorical: points are counted per category "
                    f"(agg_func None or 'count'), got {agg_func!r}"
                )
            func = "count"
            categories = _point_categories(ddf, value_key)
            channels = [str(c) for c in categories]
    shape = grid.shape
    n_c = len(channels)
    needed = cols + ([value_key] if value_key is not None and value_key not in cols else [])
    scan = points_scan(ddf)
    xy = [cols.index(a) for a in ("x", "y") if a in cols]
    planar = len(shape) == 2 and len(xy) == 2 and not np.any(np.delete(lin, xy, axis=1) != 0)
    if scan is not None and func == "count" and planar and (numba_warming() or not _few_stored_points(ddf)):
        # a 2D count (z, if any, moves no pixel) by the kernel: for many points, or once numba is set up anyway
        counts = _count_stored_points(scan, needed, cols, xy, lin, off, shape, value_key, categories)
        arr = xr.DataArray(_chunked(counts, ("c", *grid.array_axes)), dims=("c", *grid.array_axes))
        return Image2DModel.parse(arr, c_coords=channels, transformations={grid.cs: grid.to_target()})
    if scan is not None:  # a whole stored element: its row groups read as arrays (no dask-expr planning)
        cats = {value_key: categories} if categories is not None else {}
        tasks = scan.tasks(np.ones(len(scan.row_group_stats()), dtype=bool))
        parts = [
            dask.delayed(_scan_partition)(scan, task, needed, cats, cols, lin, off, shape, value_key, func)
            for task in tasks
        ]
    else:
        parts = [
            dask.delayed(_points_partition)(p, cols, lin, off, shape, value_key, categories, func)
            for p in ddf[needed].to_delayed()
        ]
    if not parts:
        data = da.zeros((n_c, *shape), dtype=np.int64)
    else:
        while len(parts) > 1:
            parts = [
                dask.delayed(_merge_points)(parts[i : i + _FANIN], func) for i in range(0, len(parts), _FANIN)
            ]
        dtype = np.int64 if func == "count" else np.float64
        final = dask.delayed(_finish_points)(parts[0], func, shape, n_c)
        data = _delayed_chunked(final, (n_c, *shape), dtype, ("c", *grid.array_axes))
    model = Image3DModel if len(shape) == 3 else Image2DModel
    arr = xr.DataArray(data, dims=("c", *grid.array_axes))
    return model.parse(arr, c_coords=channels, transformations={grid.cs: grid.to_target()})


# ============================================================================================ shapes
@dataclass
class _ShapeBurner:
    """How the shapes of one rasterisation reach the pixels: polygons are burnt straight from their flat
    coordinates (:func:`burn_polygons`, no run arrays); circles, and per-category counts, go through pixel runs,
    computed once on first use."""

    shape: tuple[int, int]
    make_runs: Any  # () -> (shape, row, c0, c1)
    flat: Any = None  # polygons: FlatGeometry in the shapes' frame
    m: np.ndarray | None = None  # (2, 3): shapes' frame -> pixel units
    _runs: tuple | None = None

    def runs(self) -> tuple[np.ndarray, ...]:
        if self._runs is None:
            with paused_gc():
                self._runs = self.make_runs()
        return self._runs

    def burn(self, values: np.ndarray, func: str, dtype: Any) -> np.ndarray:
        if func == "mean":
            total = self.burn(values, "sum", np.float64)
            count = self.burn(values, "count", np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(count > 0, total / np.maximum(count, 1), 0.0)
        out, seen = new_canvas(*self.shape, np.dtype(dtype))
        # float values with NaN (shapes that burn nothing) stay float for an integer raster: the kernel skips NaN
        # and casts the others on writing; otherwise the values take the raster's dtype
        keep = func == "count" or (out.dtype.kind in "iu" and values.dtype.kind == "f" and np.isnan(values).any())
        vals = values if keep else values.astype(out.dtype, copy=False)
        if self.flat is not None:
            f = self.flat
            burn_polygons(f.coords, f.ring_offsets, f.geom_ring_offsets, self.m, vals, out, seen, BURN_OPS[func])
        else:
            burn_runs(*self.runs(), vals, out, seen, BURN_OPS[func])
        return out


def _shape_burner(gdf: gpd.GeoDataFrame, t: BaseTransformation, grid: _Grid, what: str) -> _ShapeBurner:
    if grid.axes != ("x", "y"):
        raise ValueError(
            f"{what}: shapes are rasterised on an x/y grid; axes must be ('x', 'y'), got {grid.axes}"
        )
    m = spatial_map(gdf, t, in_axes=("x", "y"))
    lin, off = grid.pixel_map(*_rows_for(m, grid, what))
    lin = lin[:, [m.in_axes.index("x"), m.in_axes.index("y")]]
    height, width = grid.shape
    if len(gdf) == 0:
        return _ShapeBurner((height, width), lambda: tuple(np.zeros(0, dtype=np.int64) for _ in range(4)))
    flat = flat_geometry(gdf)  # from the store's WKB when there is one: no shapely objects
    det = float(np.linalg.det(lin))
    if det == 0.0:
        raise TransformationError(f"{what}: its transformation to {grid.cs!r} is singular on x/y")
    if shapes_type(gdf) == "circles":
        inv = np.linalg.inv(lin)  # pixel -> shapes frame
        mm = np.hstack([inv, (-inv @ off)[:, None]])
        radius = gdf[RADIUS_COLUMN].to_numpy(dtype=np.float64)
        return _ShapeBurner((height, width), lambda: circle_runs(flat.x, flat.y, radius, mm, height, width))
    pixel_map = np.ascontiguousarray(np.hstack([lin, np.asarray(off, dtype=np.float64)[:, None]]))
    return _ShapeBurner((height, width), lambda: _polygon_runs(flat, lin, off, height, width), flat, pixel_map)


def _polygon_runs(flat: Any, lin: np.ndarray, off: np.ndarray, height: int, width: int) -> tuple[np.ndarray, ...]:
    """Pixel runs of the polygons, chunks of shapes on threads; sorted by shape."""
    n = len(flat)
    bounds = np.linspace(0, n, -(-n // _SHAPES_CHUNK) + 1).astype(np.int64)
    spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))

    def scan(span: tuple[int, int]) -> tuple[np.ndarray, ...]:
        a, b = span
        gro = flat.geom_ring_offsets
        r0, r1 = int(gro[a]), int(gro[b])
        c0, c1 = int(flat.ring_offsets[r0]), int(flat.ring_offsets[r1])
        fx, fy = flat.x[c0:c1], flat.y[c0:c1]
        x = lin[0, 0] * fx + lin[0, 1] * fy + off[0]
        y = lin[1, 0] * fx + lin[1, 1] * fy + off[1]
        ring_offsets = flat.ring_offsets[r0 : r1 + 1] - c0
        shape_i, *rest = polygon_runs(x, y, ring_offsets, gro[a : b + 1] - r0, height, width)
        return (shape_i + a, *rest)

    workers = min(len(spans), os.cpu_count() or 1)
    if workers <= 1:
        parts = [scan(sp_) for sp_ in spans]
    else:  # the numba kernel releases the GIL: chunks of shapes are scanned in parallel
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(scan, spans))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))  # still sorted by shape


def _label_dtype(max_value: int) -> np.dtype:
    for dt in (np.uint16, np.uint32):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def _instance_values(index: pd.Index) -> tuple[np.ndarray, dict | None]:
    """Label value per row and the value -> id mapping (``None`` when the ids themselves are the values)."""
    ids = plain_ids(index)
    if pd.api.types.is_integer_dtype(ids.dtype) and len(ids) and ids.min() > 0:
        return np.asarray(ids, dtype=np.int64), None
    codes, uniques = pd.factorize(ids, sort=False)
    values = codes.astype(np.int64) + 1
    return values, {i + 1: u for i, u in enumerate(uniques.tolist())}


def _shape_values(
    gdf: gpd.GeoDataFrame, value_key: str, table_name: str | None, sdata: SpatialData | None, name: str | None,
    what: str,
) -> pd.Series:  # fmt: skip
    if table_name is None:
        if value_key not in gdf.columns or value_key == gdf.geometry.name:
            raise KeyError(
                f"{what}: no column {value_key!r} (columns: {[c for c in gdf.columns if c != gdf.geometry.name]}); "
                "pass table_name to take values from a table annotating the shapes"
            )
        return gdf[value_key]
    if sdata is None or name is None:
        raise ValueError(f"{what}: table_name={table_name!r} needs the shapes by name with sdata=")
    values = get_values(value_key, sdata=sdata, element_name=name, element=gdf, table_name=table_name)
    if not isinstance(values, pd.DataFrame) or values.shape[1] != 1:
        raise ValueError(
            f"{what}: value_key {value_key!r} must name one obs column or var name of {table_name!r}"
        )
    col = values.iloc[:, 0]
    ids, mine = comparable_ids(pd.Index(col.index), plain_ids(gdf.index))
    pos = ids.get_indexer(mine)
    if isinstance(col.dtype, pd.CategoricalDtype):
        codes = np.where(pos >= 0, col.cat.codes.to_numpy()[np.maximum(pos, 0)], -1)
        return pd.Series(pd.Categorical.from_codes(codes, col.cat.categories), index=gdf.index)
    if not pd.api.types.is_numeric_dtype(col.dtype):
        return pd.Series(pd.Categorical(col.to_numpy()[np.maximum(pos, 0)]), index=gdf.index).where(pos >= 0)
    arr = col.to_numpy(dtype=np.float64)
    return pd.Series(np.where(pos >= 0, arr[np.maximum(pos, 0)], np.nan), index=gdf.index)


def _rasterize_shapes(
    gdf: gpd.GeoDataFrame,
    t: BaseTransformation,
    grid: _Grid,
    value_key: str | None,
    table_name: str | None,
    as_labels: bool,
    agg_func: str | None,
    sdata: SpatialData | None,
    name: str | None,
    what: str,
) -> xr.DataArray:
    burner = _shape_burner(gdf, t, grid, what)
    shape = grid.shape
    mapping: dict | None = None
    transformations = {grid.cs: grid.to_target()}
    if value_key is None:
        func = agg_func or "first"
        if func not in ("first", "last", "max", "min", "count"):
            raise ValueError(
                f"{what}: without value_key pixels get instance ids; agg_func must be first, last, max, min or "
                f"count, got {func!r}"
            )
        values, mapping = _instance_values(gdf.index)
        if func == "count":
            out = burner.burn(values.astype(np.float64), "count", np.int64)
            mapping = None
            top = int(out.max()) if out.size else 0
        else:
            top = int(values.max()) if len(values) else 0
            out = burner.burn(values, func, _label_dtype(top))
        channel = "count" if func == "count" else "instance_id"
    else:
        series = _shape_values(gdf, value_key, table_name, sdata, name, what)
        channel = value_key
        if isinstance(series.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(series.dtype):
            cat = pd.Categorical(series)
            codes = cat.codes.astype(np.int64)
            if agg_func == "count":
                if as_labels:
                    raise ValueError(
                        f"{what}: per-category counts are an image; pass return_regions_as_labels=False"
                    )
                n_c = len(cat.categories)
                out3 = np.zeros((n_c, *shape), dtype=np.int64)
                burn_category_counts(*burner.runs(), codes, out3)
                arr = xr.DataArray(_chunked(out3, ("c", "y", "x")), dims=("c", "y", "x"))
                return Image2DModel.parse(
                    arr, c_coords=[str(c) for c in cat.categories], transformations=transformations
                )
            if agg_func not in (None, "first", "last"):
                raise ValueError(
                    f"{what}: column {value_key!r} is categorical: agg_func must be None/'first', 'last' or "
                    f"'count' (one channel per category), got {agg_func!r}"
                )
            values = np.where(codes >= 0, codes + 1, np.nan)
            mapping = {i + 1: c for i, c in enumerate(cat.categories.tolist())}
            out = burner.burn(values, agg_func or "first", _label_dtype(len(cat.categories)))
        else:
            func = agg_func or "sum"
            if func not in _SHAPE_FUNCS:
                raise ValueError(f"{what}: agg_func must be one of {_SHAPE_FUNCS}, got {func!r}")
            values = series.to_numpy(dtype=np.float64)
            out = burner.burn(values, func, np.int64 if func == "count" else np.float64)
            if as_labels:
                if not np.array_equal(out, np.round(out)):
                    raise ValueError(
                        f"{what}: return_regions_as_labels=True needs integer values; {value_key!r} gives "
                        "fractional pixel values"
                    )
                out = out.astype(np.int64)
    if as_labels:
        arr = xr.DataArray(_chunked(out, ("y", "x")), dims=("y", "x"))
        result = Labels2DModel.parse(arr, transformations=transformations)
    else:
        arr = xr.DataArray(_chunked(out[None], ("c", "y", "x")), dims=("c", "y", "x"))
        result = Image2DModel.parse(arr, c_coords=[channel], transformations=transformations)
    if mapping is not None:
        result.attrs[MAPPING_ATTR] = mapping
    return result


# ============================================================================================ rasters
def _pick_level(levels: list[xr.DataArray], dims: tuple[str, ...], b0: np.ndarray) -> tuple[int, np.ndarray]:
    """Coarsest level adequate for the grid and its target-pixel -> level-pixel linear map.

    ``b0`` maps target pixels to full-resolution pixels (rows/columns in ``dims`` order, x, y[, z]).
    """
    best, best_b = 0, b0
    for k, lvl in enumerate(levels):
        f = np.array([levels[0].sizes[a] / lvl.sizes[a] for a in dims])
        b = b0 / f[:, None]
        if np.linalg.svd(b, compute_uv=False).min() >= 1.0 - 1e-9:
            best, best_b = k, b
    return best, best_b


def _sample_block(
    block: np.ndarray,
    matrix: np.ndarray,
    offset: np.ndarray,
    shape: tuple[int, ...],
    start: np.ndarray,
    full: np.ndarray,
    order: int,
    has_c: bool,
) -> np.ndarray:
    """Resample one output block; ``matrix``/``offset`` map output indices to ``block`` indices (array order).

    ``start`` is ``block``'s position in the level and ``full`` the level's shape: pixels whose centre falls
    outside ``[0, full)`` are 0.
    """
    data = np.asarray(block)
    dtype = data.dtype
    grids = np.indices(shape, dtype=np.float64).reshape(len(shape), -1)
    coords = matrix @ grids + offset[:, None]  # block index coordinates of the output pixel centres
    idx = np.floor(coords + 0.5).astype(np.int64)  # the block pixel containing the centre
    valid = np.ones(idx.shape[1], dtype=bool)
    for a in range(len(shape)):
        valid &= (idx[a] + start[a] >= 0) & (idx[a] + start[a] < full[a])
    channels = data if has_c else data[None]
    out = np.zeros((len(channels), int(np.prod(shape))), dtype=dtype)
    if order == 0:
        sel = idx[:, valid]
        for i, ch in enumerate(channels):
            out[i, valid] = ch[tuple(sel)]
    else:
        for i, ch in enumerate(channels):
            work = ch.astype(np.float64) if ch.dtype != np.float64 else ch
            vals = ndimage.map_coordinates(work, coords[:, valid], order=1, mode="nearest", prefilter=False)
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                vals = np.clip(np.rint(vals), info.min, info.max)
            elif dtype == np.bool_:
                vals = vals >= 0.5
            out[i, valid] = vals.astype(dtype)
    out = out.reshape((len(channels), *shape))
    return out if has_c else out[0]


def _rasterize_raster(
    element: xr.DataArray | xr.DataTree, t: BaseTransformation, grid: _Grid, kind: ElementKind, what: str
) -> xr.DataArray:
    levels = raster_levels(element)
    lvl0 = levels[0]
    spatial = tuple(str(d) for d in lvl0.dims if d != "c")
    dims = tuple(a for a in _SPATIAL if a in spatial)  # x, y[, z]
    if set(dims) != set(grid.axes):
        raise ValueError(
            f"{what}: a raster with axes {dims} needs a grid over the same axes, got axes {grid.axes}"
        )
    m = spatial_map(element, t)
    lin, off = _rows_for(m, grid, what)
    lin = lin[:, [m.in_axes.index(a) for a in dims]]
    if np.linalg.matrix_rank(lin) < len(dims):
        raise TransformationError(f"{what}: its transformation to {grid.cs!r} is singular")
    inv = np.linalg.inv(lin)
    # target pixel p -> full-resolution intrinsic u = b0 p + c0 (x, y[, z] order)
    b0 = inv * grid.spacing[None, :]
    c0 = inv @ (grid.lo - off)
    level, b = _pick_level(levels, dims, b0)
    f = np.array([lvl0.sizes[a] / levels[level].sizes[a] for a in dims])
    c = c0 / f
    arr = levels[level]
    data = arr.data if isinstance(arr.data, da.Array) else da.from_array(np.asarray(arr.data))
    has_c = "c" in arr.dims
    # array order: input dims as stored (z, y, x), output dims z, y, x
    in_perm = [dims.index(a) for a in spatial]
    out_perm = [grid.axes.index(a) for a in grid.array_axes]
    matrix = b[np.ix_(in_perm, out_perm)]
    offset = (b @ np.full(len(dims), 0.5) + c)[in_perm] - 0.5
    full = np.array([arr.sizes[a] for a in spatial], dtype=np.int64)
    out_shape = grid.shape
    targets = tuple(_Z_BLOCK if a == "z" else _BLOCK for a in grid.array_axes)
    out_chunks = da.core.normalize_chunks(targets, out_shape)
    starts = [np.r_[0, np.cumsum(ch)[:-1]].astype(np.int64) for ch in out_chunks]
    grid_shape = [len(ch) for ch in out_chunks]
    n_c = arr.sizes["c"] if has_c else 0
    order = kind.resample_order(None)  # labels: nearest
    blocks = np.empty(grid_shape, dtype=object)
    sample = dask.delayed(_sample_block, pure=True)
    for pos in np.ndindex(*grid_shape):
        o0 = np.array([starts[a][i] for a, i in enumerate(pos)], dtype=np.float64)
        bshape = tuple(int(out_chunks[a][i]) for a, i in enumerate(pos))
        full_shape = (n_c, *bshape) if has_c else bshape
        corners = np.array(
            np.meshgrid(*[[o, o + s - 1] for o, s in zip(o0, bshape, strict=True)], indexing="ij")
        ).reshape(len(bshape), -1)
        pre = matrix @ corners + offset[:, None]
        i_lo = np.clip(np.floor(pre.min(axis=1)).astype(np.int64) - 1, 0, full)
        i_hi = np.clip(np.ceil(pre.max(axis=1)).astype(np.int64) + 2, 0, full)
        if np.any(i_hi <= i_lo):
            blocks[pos] = da.zeros(full_shape, dtype=data.dtype, chunks=full_shape)
            continue
        region = tuple(slice(int(a), int(z)) for a, z in zip(i_lo, i_hi, strict=True))
        sub = data[(slice(None), *region)] if has_c else data[region]
        local = offset + matrix @ o0 - i_lo
        blocks[pos] = da.from_delayed(
            sample(sub, matrix, local, bshape, i_lo, full, order, has_c), shape=full_shape, dtype=data.dtype
        )
    out = da.block(_nest([blocks[p] for p in np.ndindex(*grid_shape)], grid_shape))
    out_dims = (("c",) if has_c else ()) + grid.array_axes
    result_arr = xr.DataArray(out, dims=out_dims)
    if has_c and "c" in arr.coords:
        result_arr = result_arr.assign_coords(c=arr.coords["c"].values)
    model = kind.models()[1 if len(dims) == 3 else 0]  # the 2D or 3D model of the element's kind
    result = model.parse(result_arr, transformations={grid.cs: grid.to_target()})
    result.attrs[LEVEL_ATTR] = level
    return result


def _nest(flat: list[Any], grid: list[int]) -> Any:
    if len(grid) == 1:
        return list(flat)
    step = int(np.prod(grid[1:]))
    return [_nest(flat[i * step : (i + 1) * step], grid[1:]) for i in range(grid[0])]


# ============================================================================================ public
def _rasterize_element(
    element: Any,
    t: BaseTransformation,
    grid: _Grid,
    value_key: str | None,
    table_name: str | None,
    as_labels: bool,
    agg_func: str | None,
    sdata: SpatialData | None,
    name: str | None,
) -> xr.DataArray:
    protocol = kind_of(element)
    kind = protocol.name
    what = f"rasterizing {kind} element {name!r}" if name else f"rasterizing the {kind} element"
    if protocol.is_raster:
        if value_key is not None or agg_func is not None or table_name is not None:
            raise ValueError(f"{what}: value_key, table_name and agg_func apply to points and shapes only")
        return _rasterize_raster(element, t, grid, protocol, what)
    if protocol.lazy_rows:  # points
        if table_name is not None:
            raise ValueError(
                f"{what}: points take value_key from their own columns; table_name is not supported"
            )
        if as_labels:
            raise ValueError(
                f"{what}: points have no regions; return_regions_as_labels=True applies to shapes"
            )
        return _rasterize_points(element, t, grid, value_key, agg_func, what)
    if protocol.in_memory:  # shapes
        return _rasterize_shapes(
            element, t, grid, value_key, table_name, as_labels, agg_func, sdata, name, what
        )
    raise ValidationError(
        f"a {kind} element cannot be rasterised; pass an image, labels, points or shapes element"
    )


def _fits_grid(element: Any, kind: ElementKind, grid: _Grid) -> bool:
    """Whether an element of a SpatialData can be rasterised on the grid (the others are left out)."""
    if kind.in_memory:  # shapes: the plane x, y
        return grid.axes == ("x", "y")
    if kind.lazy_rows:  # points
        return set(grid.axes) <= set(points_axes(element))
    spatial = {str(d) for d in raster_levels(element)[0].dims if d != "c"}
    return spatial == set(grid.axes)


def rasterize(
    data: Any,
    axes: Sequence[str],
    min_coordinate: Sequence[float],
    max_coordinate: Sequence[float],
    target_coordinate_system: str,
    target_unit_to_pixels: float | None = None,
    target_width: float | None = None,
    target_height: float | None = None,
    target_depth: float | None = None,
    value_key: str | None = None,
    table_name: str | None = None,
    return_regions_as_labels: bool = False,
    agg_func: str | None = None,
    sdata: SpatialData | None = None,
) -> xr.DataArray | SpatialData:
    """Rasterise an element (or every element of a SpatialData) onto a grid of a coordinate system.

    Parameters
    ----------
    data
        An image, labels, points or shapes element; an element name with ``sdata``; or a SpatialData object.
    axes, min_coordinate, max_coordinate
        The box to rasterise in ``target_coordinate_system``: ``("x", "y")`` or ``("x", "y", "z")`` in any
        order, with the box corners in the same order.
    target_coordinate_system
        The coordinate system of the box; the result is placed in it.
    target_unit_to_pixels, target_width, target_height, target_depth
        Exactly one: pixels per unit, or the number of pixels along x, y or z (see the module notes).
    value_key
        Points: a column (categorical: one channel per category; numeric: reduced by ``agg_func``). Shapes: a
        column, or with ``table_name`` an obs column / var name of the table. Default: counts (points) or
        instance ids (shapes).
    table_name
        A table of ``sdata`` annotating the shapes, to take ``value_key`` from.
    return_regions_as_labels
        Shapes: return labels ``(y, x)`` instead of an image ``(c, y, x)``.
    agg_func
        How overlapping values combine in a pixel (see the module notes for each kind).
    sdata
        The SpatialData ``data`` belongs to (element names, paths through other coordinate systems, tables).

    Returns
    -------
    xarray.DataArray or SpatialData
        A single-scale image (``c, [z,] y, x``) or labels element with the transformation ``Scale`` then
        ``Translation`` to ``target_coordinate_system``. String instance ids and categories are numbered from
        1; the mapping is ``result.attrs["label_index_to_category"]``.

    Raises
    ------
    ValueError
        Bad box or pixel-size arguments, unknown keys, an ``agg_func`` that does not apply.
    TransformationError
        A singular transformation, or one that does not reach the grid's axes.
    """
    if not _few_stored_points(data):
        warm_numba()  # the burn kernels' one-time numba set-up overlaps reading the elements
    grid = _grid(
        axes, min_coordinate, max_coordinate, target_coordinate_system,
        target_unit_to_pixels, target_width, target_height, target_depth,
    )  # fmt: skip
    if isinstance(data, SpatialData):
        if sdata is not None or value_key is not None or table_name is not None or agg_func is not None:
            raise ValueError(
                "rasterizing a whole SpatialData: sdata, value_key, table_name and agg_func must be None"
            )
        images: dict[str, Any] = {}
        labels: dict[str, Any] = {}
        for name, kind, element, t in elements_in(data, target_coordinate_system):
            protocol = get_kind_protocol(kind)
            if not _fits_grid(element, protocol, grid):
                continue
            as_labels = return_regions_as_labels and protocol.in_memory  # shapes
            out = _rasterize_element(element, t, grid, None, None, as_labels, None, data, name)
            (labels if kind_of(out).nearest_only else images)[name] = out
        tables = dict(data.items(["tables"]))
        return SpatialData(images=images, labels=labels, tables=tables, attrs=data.attrs)
    if isinstance(data, str):
        name: str | None = data
    elif sdata is not None:
        name = _name_in(sdata, data)
    else:
        name = None
    element, t = resolve_element(data, target_coordinate_system, sdata)
    return _rasterize_element(
        element, t, grid, value_key, table_name, return_regions_as_labels, agg_func, sdata, name
    )


# ============================================================================================ bins
_FIT_SAMPLE = 100_000  # bins used to fit the grid -> bins transformation


def _integer_column(obs: pd.DataFrame, key: str, what: str) -> np.ndarray:
    if key not in obs.columns:
        raise KeyError(f"{what}: no obs column {key!r}; columns are {list(obs.columns)}")
    col = obs[key]
    values = col.to_numpy()
    if not pd.api.types.is_numeric_dtype(col.dtype) or pd.isna(values).any():
        raise ValidationError(f"{what}: obs column {key!r} must hold integer bin indices, got {col.dtype}")
    ints = np.asarray(values, dtype=np.int64)
    if not np.array_equal(ints, values):
        raise ValidationError(f"{what}: obs column {key!r} must hold integer bin indices (found fractions)")
    return ints


def _bin_centres(element: gpd.GeoDataFrame, positions: np.ndarray) -> np.ndarray:
    geoms = np.asarray(element.geometry.array)[positions]
    if shapes_type(element) != "circles":
        geoms = shapely.centroid(geoms)
    return np.column_stack([shapely.get_x(geoms), shapely.get_y(geoms)])


def _fit_grid(u: np.ndarray, v: np.ndarray, centres: np.ndarray, what: str) -> np.ndarray:
    """3 x 3 affine matrix from grid pixel coordinates (centres ``u + 0.5, v + 0.5``) to the bins' frame."""
    src = np.column_stack([u + 0.5, v + 0.5, np.ones(len(u))])
    if len(u) < 3 or np.linalg.matrix_rank(src) < 3:
        raise ValidationError(f"{what}: need at least 3 bins not on one line to place the grid")
    coef, *_ = np.linalg.lstsq(src, centres, rcond=None)  # 3 x 2
    matrix = np.eye(3)
    matrix[:2, :] = coef.T
    pitch = math.sqrt(abs(np.linalg.det(matrix[:2, :2])))
    resid = np.abs(src @ coef - centres).max()
    if not pitch > 0 or resid > 0.25 * pitch:
        raise ValidationError(
            f"{what}: the bins' centres are not on a regular grid of their row/col indices (largest deviation "
            f"{resid:.3g} for a bin pitch of {pitch:.3g})"
        )
    return matrix


def _gene_block(x_csc: Any, columns: np.ndarray, v: np.ndarray, u: np.ndarray, shape: tuple, dtype: Any,
                block_id: tuple[int, ...] | None = None) -> np.ndarray:  # fmt: skip
    out = np.zeros((1, *shape), dtype=dtype)
    if block_id is None:
        return out
    j = columns[block_id[0]]
    if sp.issparse(x_csc):
        start, stop = x_csc.indptr[j], x_csc.indptr[j + 1]
        rows = x_csc.indices[start:stop]
        out[0, v[rows], u[rows]] = x_csc.data[start:stop]
    else:
        out[0, v, u] = np.asarray(x_csc[:, j]).ravel()
    return out


def rasterize_bins(
    sdata: SpatialData,
    bins: str,
    table_name: str,
    col_key: str,
    row_key: str,
    value_key: str | Sequence[str] | None = None,
    return_region_as_labels: bool = False,
) -> xr.DataArray:
    """Grid assays (e.g. Visium HD bins) as a raster with one pixel per bin.

    Parameters
    ----------
    sdata
        Holds the bins and the table.
    bins
        A shapes element (squares or circles) with one geometry per bin.
    table_name
        A table annotating ``bins``; ``obs[col_key]`` and ``obs[row_key]`` hold integer grid indices.
    value_key
        obs columns (numeric) or var names to rasterise; default all var names (a lazy image: one dask task per
        gene, reading that gene's column of the sparse ``X``; a CSR ``X`` is converted to CSC once).
    return_region_as_labels
        Return labels ``(y, x)`` whose values are the table's instance ids (positive integer ids as they are;
        other ids numbered 1..n in table order, mapping in ``attrs["label_index_to_category"]``).

    Returns
    -------
    xarray.DataArray
        An image ``(c, y, x)`` (channels named by the keys) or labels. Pixel ``(i, j)`` is the bin with
        ``row = min_row + i``, ``col = min_col + j``; bins without a table row are 0. The transformation to each
        coordinate system of ``bins`` is a least-squares affine fit from pixel centres to the bins' centres
        (exact for a grid, rotations included) followed by the bins' own transformation.

    Raises
    ------
    ValidationError
        Non-integer indices, two table rows on one bin, or centres that are not on a grid.
    """
    what = f"rasterizing bins {bins!r} with table {table_name!r}"
    element = sdata[bins]
    if get_kind(element) != "shapes":
        raise ValidationError(f"{what}: bins must be a shapes element, got {get_kind(element)}")
    table = sdata[table_name]
    regions, region_key, instance_key = get_table_keys(table)
    if regions is None or bins not in regions:
        raise ValidationError(f"{what}: the table does not annotate {bins!r} (it annotates {regions})")
    rows = _region_rows(table, region_key, instance_key)[bins]
    obs = table.obs.iloc[rows.positions]
    r = _integer_column(obs, row_key, what)
    c = _integer_column(obs, col_key, what)
    if len(r) == 0:
        raise ValidationError(f"{what}: the table has no rows for {bins!r}")
    v, u = r - r.min(), c - c.min()
    shape = (int(v.max()) + 1, int(u.max()) + 1)
    flat = v * shape[1] + u
    if len(np.unique(flat)) != len(flat):
        raise ValidationError(f"{what}: several table rows share a ({row_key}, {col_key}) bin")
    ids, mine = comparable_ids(rows.ids, plain_ids(element.index))
    positions = mine.get_indexer(ids)
    if (positions < 0).any():
        raise ValidationError(
            f"{what}: table rows refer to instance ids missing from {bins!r}, e.g. {ids[positions < 0][0]!r}"
        )
    sample = np.unique(np.linspace(0, len(r) - 1, min(len(r), _FIT_SAMPLE)).astype(np.int64))
    matrix = _fit_grid(u[sample], v[sample], _bin_centres(element, positions[sample]), what)
    to_bins = Affine(matrix, ("x", "y"), ("x", "y"))
    transformations = {cs: compose(to_bins, tb) for cs, tb in get_meta(element).transformations.items()}

    if return_region_as_labels:
        values, mapping = _instance_values(rows.ids)
        canvas = np.zeros(shape, dtype=_label_dtype(int(values.max())))
        canvas[v, u] = values
        arr = xr.DataArray(_chunked(canvas, ("y", "x")), dims=("y", "x"))
        result = Labels2DModel.parse(arr, transformations=transformations)
        if mapping is not None:
            result.attrs[MAPPING_ATTR] = mapping
        return result

    keys = (
        list(table.var_names)
        if value_key is None
        else ([value_key] if isinstance(value_key, str) else list(value_key))
    )
    if not keys:
        raise ValueError(f"{what}: no keys to rasterise (empty value_key or a table without var)")
    in_obs = [k in table.obs.columns for k in keys]
    if all(in_obs):
        image = np.zeros((len(keys), *shape), dtype=np.float64)
        for i, k in enumerate(keys):
            col = obs[k]
            if not pd.api.types.is_numeric_dtype(col.dtype) or isinstance(col.dtype, pd.CategoricalDtype):
                raise ValidationError(f"{what}: obs column {k!r} is not numeric")
            image[i, v, u] = col.to_numpy(dtype=np.float64)
        data: Any = _chunked(image, ("c", "y", "x"))
    else:
        missing = [k for k, o in zip(keys, in_obs, strict=True) if not o and k not in table.var_names]
        if missing or any(in_obs):
            raise KeyError(
                f"{what}: value_key must name obs columns only or var names only; not found / mixed: "
                f"{missing or [k for k, o in zip(keys, in_obs, strict=True) if o]}"
            )
        x = table.X
        if x is None:
            raise ValidationError(f"{what}: the table has no X")
        x = x[rows.positions] if len(rows.positions) != table.n_obs else x
        if sp.issparse(x):
            x = sp.csc_matrix(x)
        else:
            x = np.asarray(x)
        columns = table.var_names.get_indexer(keys)
        data = da.map_blocks(
            functools.partial(_gene_block, x, columns, v, u, shape, x.dtype),
            chunks=((1,) * len(keys), (shape[0],), (shape[1],)), dtype=x.dtype, meta=np.zeros((0, 0, 0), x.dtype),
        )  # fmt: skip
    arr = xr.DataArray(data, dims=("c", "y", "x"))
    return Image2DModel.parse(arr, c_coords=keys, transformations=transformations)
