"""Aggregating points by shapes (circles, polygons, multipolygons) and by labels (2D and 3D).

Both pairs stream the points partition by partition (points from a store read only the needed columns: x, y[, z]
and the value columns). Each partition is located in the regions by compiled kernels (GIL released, so dask
threads or ``dask.distributed`` workers run partitions in parallel), 1M rows at a time, and reduced to a small
per-region partial result (sparse counts per category, or per-region count/sum/min/max/squared deviations); the
partials are combined in a tree. Memory is bounded by a few partitions plus the region index, whatever the number
of points.

Results: a categorical value key gives int32 counts (CSR, one column per category); numeric keys give float64
columns (``sum``/``count`` are 0 and ``mean``/``min``/``max``/``std`` NaN for a region without values; ``std``
has ``ddof=1``); without a value key (and no feature key), one column ``"count"`` of points per region.

Membership rules (see :mod:`tissuestack.kernels._points_in_regions`):

* polygons are half-open like raster pixels: a point on an edge shared by two polygons counts for exactly one of
  them (the one on its +x side; above it for a horizontal edge);
* circles are closed disks (distance to the centre <= radius);
* labels: the point at intrinsic raster coordinates (x, y[, z]) is in pixel (floor(y), floor(x)[, floor(z)]);
  the background 0 and points outside the raster are in no region.

A point inside several overlapping shapes counts for each of them. Points are mapped into the intrinsic frame of
the regions (the affine map is folded into the kernels); z is read only when that map depends on it.

Options (``aggregate(..., options={...})``): ``cell_size`` and ``max_grid_cells`` (the region grid's cell side,
in the regions' intrinsic units, and cell budget), ``labels_in_memory_bytes`` (labels up to this size are loaded
once, default 512 MiB; larger lazy labels are read chunk by chunk for each points partition), ``fan_in`` (partials
combined per reduction task, default 8).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import pandas as pd
import scipy.sparse as sp

from tissuestack._compute import scheduler
from tissuestack.elements import get_meta, raster_levels, record_of, shapes_type
from tissuestack.kernels._moments import statistic_from_moments
from tissuestack.ops._aggregate_pairs import PairInput, PairResult
from tissuestack.ops._shapes_flat import flat_geometry

__all__ = ["points_by_labels", "points_by_shapes"]

# dense per-partition count matrices up to this many entries (faster than CSR for few regions x categories)
_DENSE_COUNTS = 1 << 21
_LABELS_IN_MEMORY = 512 << 20
_FAN_IN = 8
# rows located and reduced at a time within a partition
_CHUNK = 1 << 20


# ------------------------------------------------------------------------------------------------------------
# what is aggregated: categories, numeric columns, or the number of points
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Per-partition work shared by both pairs (picklable: sent to distributed workers)."""

    n_rows: int
    mode: str  # "categories" | "numeric" | "points"
    keys: tuple[str, ...]
    categories: pd.Index | None
    with_m2: bool
    dense: bool


def _plan(req: PairInput, points: Any) -> _Plan:
    n_rows = len(req.by_instances)
    keys = req.value_keys
    if keys is None:
        return _Plan(n_rows, "points", (), None, False, False)
    dtype = points.dtypes[keys[0]]
    if isinstance(dtype, pd.CategoricalDtype):
        cats = pd.Index(dtype.categories)
        return _Plan(n_rows, "categories", (keys[0],), cats, False, n_rows * len(cats) <= _DENSE_COUNTS)
    return _Plan(n_rows, "numeric", tuple(keys), None, req.agg_func == "std", False)


def _codes(series: pd.Series | np.ndarray, categories: pd.Index) -> np.ndarray:
    if isinstance(series, np.ndarray):  # read by the element's source as codes into these categories
        return series
    values = series.array
    if isinstance(values, pd.Categorical) and values.categories.equals(categories):
        return np.asarray(values.codes)
    return pd.Categorical(np.asarray(series, dtype=object), categories=categories).codes


def _partial(plan: _Plan, part: pd.DataFrame, rows: np.ndarray, extra_pt: np.ndarray, extra_rows: np.ndarray):
    from tissuestack.kernels import _points_in_regions as K

    if plan.mode == "points":
        counts = np.bincount(rows[rows >= 0], minlength=plan.n_rows).astype(np.int64)
        if len(extra_rows):
            counts += np.bincount(extra_rows, minlength=plan.n_rows)
        return counts
    if plan.mode == "categories":
        codes = _codes(part[plan.keys[0]], plan.categories)
        extra_cols = codes[extra_pt] if len(extra_pt) else None
        n_cols = len(plan.categories)
        if plan.dense:
            return K.count_pairs_dense(rows, codes, plan.n_rows, n_cols, extra_rows, extra_cols)
        indptr, indices, data = K.count_pairs_csr(rows, codes, plan.n_rows, n_cols, extra_rows, extra_cols)
        counts = sp.csr_matrix((data, indices, indptr), shape=(plan.n_rows, n_cols))
        # sorted, no duplicates: sums of partials stay canonical, so the result needs no sort
        counts.has_canonical_format = True
        return counts
    vals = (
        np.column_stack([np.asarray(part[k], dtype=np.float64) for k in plan.keys])
        if len(rows)
        else (np.zeros((0, len(plan.keys))))
    )
    return K.reduce_values(rows, vals, plan.n_rows, extra_pt, extra_rows, with_m2=plan.with_m2)


def _combine_stats(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {
        "count": a["count"] + b["count"],
        "sum": a["sum"] + b["sum"],
        "min": np.minimum(a["min"], b["min"]),
        "max": np.maximum(a["max"], b["max"]),
    }
    if "m2" in a:  # Chan et al.: pairwise update of the sums of squared deviations
        na, nb, n = a["count"], b["count"], out["count"]
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = np.where(
                (na > 0) & (nb > 0), b["sum"] / np.maximum(nb, 1) - a["sum"] / np.maximum(na, 1), 0.0
            )
            out["m2"] = a["m2"] + b["m2"] + delta * delta * (na * nb / np.maximum(n, 1))
    return out


def _combine(*partials: Any) -> Any:
    first = partials[0]
    if isinstance(first, dict):
        out = first
        for p in partials[1:]:
            out = _combine_stats(out, p)
        return out
    out = first
    for p in partials[1:]:
        out = out + p
    return out


def _finish(plan: _Plan, total: Any, agg_func: str) -> PairResult:
    if plan.mode == "points":
        return PairResult(X=np.asarray(total, dtype=np.float64)[:, None], columns=["count"])
    if plan.mode == "categories":
        X = sp.csr_matrix(total) if not sp.issparse(total) else total.tocsr()
        X.sum_duplicates()
        X.sort_indices()
        X.eliminate_zeros()
        return PairResult(X=X.astype(np.int32), columns=[str(c) for c in plan.categories])
    X = statistic_from_moments(
        agg_func, total["count"], total["sum"], total["min"], total["max"], total.get("m2")
    )
    return PairResult(X=np.asarray(X, dtype=np.float64), columns=list(plan.keys))


def _empty_partial(plan: _Plan) -> Any:
    rows = np.empty(0, dtype=np.int32)
    empty = pd.DataFrame({k: pd.Series([], dtype=np.float64) for k in plan.keys})
    if plan.mode == "categories":
        empty = pd.DataFrame({plan.keys[0]: pd.Categorical([], categories=plan.categories)})
    return _partial(plan, empty, rows, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int32))


# ------------------------------------------------------------------------------------------------------------
# streaming over partitions
# ------------------------------------------------------------------------------------------------------------


def _project(points: Any, columns: list[str]) -> Any:
    """``points[columns]``, unless that would drop at most one column of a frame not read from a store.

    A projection is pushed down to the reader of a stored frame (only those columns are decoded), but on a frame
    held in memory it copies every partition; dropping one column (typically ``z``) is not worth that copy.
    """
    dropped = [c for c in points.columns if c not in columns]
    if get_meta(points).source is None and len(dropped) <= 1:
        return points
    return points[columns]


def _run(points: Any, columns: list[str], locate: Callable, context: Any, plan: _Plan, fan_in: int) -> Any:
    """Map ``locate`` + partial reduction over the rows of ``points`` (only ``columns`` are read); tree-combine
    the partials; compute once.

    A points element read from a store is read by its source (its record's): row groups straight with pyarrow,
    about 1M rows per task, the category column as codes; any other frame partition by partition through dask.
    """
    ctx = dask.delayed(context, name=f"aggregate-context-{uuid.uuid4().hex}", traverse=False)
    source = _row_group_source(points)
    if source is not None:
        cats = {plan.keys[0]: plan.categories} if plan.mode == "categories" else {}
        tasks = source.tasks(np.ones(len(source.row_group_stats()), dtype=bool))
        src = dask.delayed(source, name=f"aggregate-source-{uuid.uuid4().hex}", traverse=False)
        parts = [
            dask.delayed(_map_source_task, pure=True)(src, t, columns, cats, ctx, locate, plan) for t in tasks
        ]
    else:
        parts = [
            dask.delayed(_map_partition, pure=True)(p, ctx, locate, plan)
            for p in _project(points, columns).to_delayed()
        ]
    if not parts:
        return _empty_partial(plan)
    fan_in = max(2, int(fan_in))
    while len(parts) > 1:
        parts = [
            dask.delayed(_combine, pure=True)(*parts[i : i + fan_in]) for i in range(0, len(parts), fan_in)
        ]
    (total,) = dask.compute(parts[0], scheduler=scheduler())
    return total


def _row_group_source(points: Any) -> Any:
    """The element's own source when it reads row groups as arrays (a points element exactly as read from a
    store), else ``None``."""
    record = record_of(points)
    source = record.source if record is not None else None
    return source if hasattr(source, "read_arrays") and hasattr(source, "tasks") else None


def _map_partition(part: pd.DataFrame, context: Any, locate: Callable, plan: _Plan) -> Any:
    """The partial result of one partition, computed in slices of ``_CHUNK`` rows: every temporary array stays
    a few MB, so the allocator reuses memory instead of mapping (and page-faulting) fresh pages per array."""
    partials = []
    for a in range(0, max(len(part), 1), _CHUNK):
        sub = part.iloc[a : a + _CHUNK]
        rows, extra_pt, extra_rows = locate(context, sub)
        partials.append(_partial(plan, sub, rows, extra_pt, extra_rows))
    return _combine(*partials)


def _map_source_task(
    source: Any, task: Any, columns: list[str], cats: dict, context: Any, locate: Callable, plan: _Plan
) -> Any:
    """The partial result of one read of the source (some row groups), as arrays, in slices of ``_CHUNK``."""
    arrays = source.read_arrays(task, columns, cats)
    n = len(arrays[columns[0]])
    partials = []
    for a in range(0, max(n, 1), _CHUNK):
        sub = {k: v[a : a + _CHUNK] for k, v in arrays.items()}
        rows, extra_pt, extra_rows = locate(context, sub)
        partials.append(_partial(plan, sub, rows, extra_pt, extra_rows))
    return _combine(*partials)


def _column(part: pd.DataFrame | dict[str, np.ndarray], name: str) -> np.ndarray:
    a = part[name]
    a = a if isinstance(a, np.ndarray) else a.to_numpy()
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    return a


# ------------------------------------------------------------------------------------------------------------
# points -> shapes
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ShapesContext:
    grid: Any  # RegionGrid
    linear: np.ndarray
    offset: np.ndarray
    use_z: bool


def _locate_shapes(ctx: _ShapesContext, part: pd.DataFrame):
    from tissuestack.kernels import _points_in_regions as K

    z = _column(part, "z") if ctx.use_z else None
    return K.locate_in_grid(
        ctx.grid, _column(part, "x"), _column(part, "y"), z, linear=ctx.linear, offset=ctx.offset
    )


def _map_linear(req: PairInput, n_out: int) -> tuple[np.ndarray, np.ndarray, bool]:
    linear = np.asarray(req.values_to_by.linear, dtype=np.float64)[:n_out]
    offset = np.asarray(req.values_to_by.offset, dtype=np.float64)[:n_out]
    in_axes = req.values_to_by.in_axes
    use_z = "z" in in_axes and bool(np.any(linear[:, in_axes.index("z")] != 0))
    # columns in x, y, z order
    order = [in_axes.index(a) for a in ("x", "y", "z") if a in in_axes]
    return linear[:, order], offset, use_z


def _check_points(req: PairInput) -> Any:
    points = req.values
    missing = [c for c in ("x", "y") if c not in points.columns]
    if missing:
        raise ValueError(f"points element {req.values_name!r} has no {missing} column(s)")
    return points


def _region_grid(shapes: Any, name: str, cell_size: float | None, max_cells: int) -> Any:
    """The region grid of a shapes element, cached in its record while its geometry (and radius) arrays stay the
    same objects: aggregating several value keys or point sets by the same regions burns them once."""
    from tissuestack.kernels import _points_in_regions as K

    circles = shapes_type(shapes) == "circles"
    geometry = shapes.geometry.array
    radius = shapes["radius"].array if circles and "radius" in shapes.columns else None

    def build() -> Any:
        flat = flat_geometry(shapes)  # coordinates straight from the store's WKB: no shapely objects
        if circles:
            if radius is None:
                raise ValueError(f"shapes element {name!r} holds circles but has no 'radius' column")
            return K.build_circle_grid(
                flat.x, flat.y, shapes["radius"].to_numpy(dtype=np.float64),
                cell_size=cell_size, max_cells=max_cells,
            )  # fmt: skip
        return K.build_polygon_grid(flat, cell_size=cell_size, max_cells=max_cells)

    record = record_of(shapes)
    if record is None:
        return build()
    # one grid per element (up to 128 MiB at the default budget): other grid parameters replace it
    return record.cached("region-grid", build, depends_on=(geometry, radius), params=(cell_size, max_cells))


def points_by_shapes(req: PairInput) -> PairResult:
    """Aggregate points by the shapes (circles or (multi)polygons) of ``req.by``; see the module notes."""
    from tissuestack.kernels import _points_in_regions as K

    points = _check_points(req)
    shapes = req.by
    opts = dict(req.options)
    cell_size = opts.pop("cell_size", None)
    max_cells = int(opts.pop("max_grid_cells", K.MAX_GRID_CELLS))
    fan_in = opts.pop("fan_in", _FAN_IN)
    if opts:
        raise TypeError(f"unknown options for points -> shapes: {sorted(opts)}")
    grid = _region_grid(shapes, req.by_name, cell_size, max_cells)
    linear, offset, use_z = _map_linear(req, 2)
    ctx = _ShapesContext(grid, linear, offset, use_z)
    plan = _plan(req, points)
    columns = list(dict.fromkeys(["x", "y", *(["z"] if use_z else []), *plan.keys]))
    total = _run(points, columns, _locate_shapes, ctx, plan, fan_in)
    return _finish(plan, total, req.agg_func)


# ------------------------------------------------------------------------------------------------------------
# points -> labels
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LabelsContext:
    labels: Any  # numpy (in memory) or dask array (read chunk by chunk), (rows, cols) or (planes, rows, cols)
    linear: np.ndarray
    offset: np.ndarray
    use_z: bool
    ids: np.ndarray
    lut: np.ndarray | None


def _lookup_chunked(ctx: _LabelsContext, x: np.ndarray, y: np.ndarray, z: np.ndarray | None) -> np.ndarray:
    from tissuestack.kernels import _points_in_regions as K

    arr = ctx.labels
    pix = K.pixel_indices(arr.shape, x, y, z, linear=ctx.linear, offset=ctx.offset)
    out = np.zeros(len(x), dtype=np.int64)
    inside = np.flatnonzero(pix[:, 0] >= 0)
    if not len(inside):
        return out
    pix = pix[inside]
    if arr.ndim == 2:
        pix = pix[:, 1:]
    bounds = [np.cumsum((0, *c)) for c in arr.chunks]
    block = np.stack([np.searchsorted(b, pix[:, j], side="right") - 1 for j, b in enumerate(bounds)], axis=1)
    key = np.ravel_multi_index(tuple(block.T), arr.numblocks)
    order = np.argsort(key, kind="stable")
    key_sorted = key[order]
    cuts = np.flatnonzero(np.diff(key_sorted)) + 1
    for sel in np.split(order, cuts):
        b = tuple(int(v) for v in block[sel[0]])
        data = np.asarray(arr.blocks[b].compute(scheduler="sync"))
        local = tuple(pix[sel, j] - bounds[j][b[j]] for j in range(arr.ndim))
        out[inside[sel]] = data[local]
    return out


def _locate_labels(ctx: _LabelsContext, part: pd.DataFrame):
    from tissuestack.kernels import _points_in_regions as K

    x, y = _column(part, "x"), _column(part, "y")
    z = _column(part, "z") if ctx.use_z else None
    if isinstance(ctx.labels, np.ndarray):
        values = K.lookup_labels(ctx.labels, x, y, z, linear=ctx.linear, offset=ctx.offset)
    else:
        values = _lookup_chunked(ctx, x, y, z)
    rows = K.rows_of_labels(values, ctx.ids, ctx.lut)
    return rows, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int32)


def points_by_labels(req: PairInput) -> PairResult:
    """Aggregate points by the label values of ``req.by`` (2D or 3D, level 0 of a multiscale); rows are
    ``req.by_instances`` (sorted label values without the background). See the module notes."""
    from tissuestack.kernels import _points_in_regions as K

    points = _check_points(req)
    opts = dict(req.options)
    budget = int(opts.pop("labels_in_memory_bytes", _LABELS_IN_MEMORY))
    fan_in = opts.pop("fan_in", _FAN_IN)
    if opts:
        raise TypeError(f"unknown options for points -> labels: {sorted(opts)}")
    level = raster_levels(req.by)[0]
    dims = tuple(str(d) for d in level.dims)
    wanted = ("z", "y", "x") if "z" in dims else ("y", "x")
    if set(dims) != set(wanted):
        raise ValueError(f"labels element {req.by_name!r} has dims {dims}; expected {wanted}")
    data = level.transpose(*wanted).data
    if isinstance(data, np.ndarray) or data.nbytes <= budget:
        data = np.ascontiguousarray(
            data.compute(scheduler=scheduler()) if not isinstance(data, np.ndarray) else data
        )
    if data.dtype.kind not in "iu":
        raise ValueError(f"labels element {req.by_name!r} has dtype {data.dtype}; expected integer labels")
    n_dims = len(wanted)
    linear, offset, use_z = _map_linear(req, n_dims)
    ids = np.asarray(req.by_instances)
    lut = K.labels_lut(ids)
    ctx = _LabelsContext(data, linear, offset, use_z, ids, lut)
    plan = _plan(req, points)
    columns = list(dict.fromkeys(["x", "y", *(["z"] if use_z else []), *plan.keys]))
    total = _run(points, columns, _locate_labels, ctx, plan, fan_in)
    return _finish(plan, total, req.agg_func)
