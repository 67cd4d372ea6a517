"""Bounding-box queries on every element kind, in any coordinate system reachable through the transformation graph.

This module also holds the machinery shared with :mod:`tissuestack.query._polygon`: per-kind queries of a
*region* given in the target coordinate system (one or many axis-aligned boxes, or one polygon), and the assembly
of a SpatialData result with filtered tables.

Semantics (shared by both queries)
----------------------------------
* The region lives in the target coordinate system. Each element is placed there by ``T``, its transformation
  to the target (found through the coordinate-system graph when a SpatialData is given; elements with no path
  are left out of the result).
* Points and shapes are tested exactly in target coordinates: candidate coordinates are transformed with one
  vectorized affine product (float64) and compared there. Candidates come from the region's bounding box
  back-transformed into intrinsic coordinates (exact interval arithmetic on ``T``'s inverse, widened by a relative
  1e-9 so that rounding never loses a point); when ``T`` is not invertible every row is a candidate (still exact).
* Rasters are cropped to the integer pixel range covering the back-transformed region (level-0 pixel ``i``
  covers ``[i, i + 1)``), and keep their position: every transformation of the crop is
  ``Sequence([Translation(crop offset), T_original])``.
* Empty results: the element is dropped from a SpatialData result and an element-level call returns ``None``.
  Points stay lazy, so emptiness of a points result is only known when the store's row-group statistics show
  that no row group can match; otherwise an empty lazy frame may be returned.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dask.array as da
import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import xarray as xr

from tissuestack._container import SpatialData
from tissuestack.elements import get_axes, get_kind, get_meta, get_table_keys, raster_levels, set_meta
from tissuestack.elements._points import in_memory_partitions
from tissuestack.elements._shapes import RADIUS_COLUMN, shapes_type
from tissuestack.errors import NoPathError
from tissuestack.ops._resolve import elements_in, transformation_to
from tissuestack.ops._table_filter import filter_table_by_instances
from tissuestack.query._index import ShapesIndex, intersecting_row_groups, shapes_index
from tissuestack.store import ElementLocation, StoreRoot
from tissuestack.store._points import points_row_group_stats, points_scan, scan_row_groups
from tissuestack.transforms import AffineMap, BaseTransformation, Translation, affine_map, apply_affine
from tissuestack.transforms import Sequence as SequenceTransformation

__all__ = ["bounding_box_query"]

_SPATIAL = ("x", "y", "z")
_BOX_COLUMN = "__tissuestack_box__"
_WIDEN = 1e-9  # relative widening of back-transformed bounds used for pruning only
_SNAP = 1e-9  # pixel bounds this close to an integer are snapped to it before floor/ceil


# ================================================================================================ input checks
def check_box(
    axes: Sequence[str], min_coordinate: Any, max_coordinate: Any
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, bool]:
    """Validate a box (or ``n`` boxes): ``(axes, lo (n, d), hi (n, d), many)``."""
    if isinstance(axes, str) or not isinstance(axes, Sequence):
        raise ValueError(f"axes must be a sequence of axis names such as ('x', 'y'), got {axes!r}")
    axes = tuple(axes)
    unknown = [a for a in axes if a not in _SPATIAL]
    if unknown:
        raise ValueError(f"unknown axis {unknown[0]!r} in axes {axes!r}; expected axes among 'x', 'y', 'z'")
    if not axes or len(set(axes)) != len(axes):
        raise ValueError(f"axes must name each of 'x', 'y', 'z' at most once, and at least one; got {axes!r}")
    try:
        lo = np.asarray(min_coordinate, dtype=np.float64)
        hi = np.asarray(max_coordinate, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("min_coordinate and max_coordinate must be numbers, one per axis") from None
    if lo.shape != hi.shape:
        raise ValueError(
            f"min_coordinate has shape {lo.shape} but max_coordinate has shape {hi.shape}; they must match"
        )
    many = lo.ndim == 2
    if lo.ndim not in (1, 2) or lo.shape[-1] != len(axes):
        raise ValueError(
            f"min_coordinate/max_coordinate must have shape ({len(axes)},) for one box or (n, {len(axes)}) for "
            f"n boxes over axes {axes!r}; got shape {lo.shape}"
        )
    lo2, hi2 = np.atleast_2d(lo), np.atleast_2d(hi)
    if np.isnan(lo2).any() or np.isnan(hi2).any():
        raise ValueError("min_coordinate and max_coordinate must not contain NaN")
    bad = np.argwhere(lo2 > hi2)
    if len(bad):
        i, j = bad[0]
        where = f"box {i}: " if many else ""
        raise ValueError(
            f"{where}min_coordinate {lo2[i, j]} > max_coordinate {hi2[i, j]} on axis {axes[j]!r}; "
            "each minimum must be <= its maximum"
        )
    return axes, lo2, hi2, many


# ================================================================================================ regions
@dataclass(frozen=True)
class Region:
    """A query region in target coordinates: ``n`` boxes over ``axes``, or one polygon over ``("x", "y")``."""

    axes: tuple[str, ...]
    lo: np.ndarray  # (n, len(axes)); for a polygon, its bounds
    hi: np.ndarray
    polygon: Any = None  # tissuestack.kernels._pip.PreparedPolygon for polygon queries
    clip: bool = False

    @property
    def n(self) -> int:
        return self.lo.shape[0]

    def restricted(self, available: Sequence[str]) -> Region:
        """The region over the axes an element reaches (box axes it does not have are unconstrained)."""
        keep = [j for j, a in enumerate(self.axes) if a in available]
        return Region(
            tuple(self.axes[j] for j in keep), self.lo[:, keep], self.hi[:, keep], self.polygon, self.clip
        )

    def geometries(self, finite_lo: np.ndarray, finite_hi: np.ndarray) -> np.ndarray:
        """The region as shapely geometries in target x/y (boxes clamped to the given finite bounds)."""
        if self.polygon is not None:
            return np.array([self.polygon.geometry], dtype=object)
        lo = np.tile(finite_lo, (self.n, 1))
        hi = np.tile(finite_hi, (self.n, 1))
        for j, a in enumerate(self.axes):
            if a in ("x", "y"):
                k = 0 if a == "x" else 1
                lo[:, k] = np.maximum(lo[:, k], self.lo[:, j])
                hi[:, k] = np.minimum(hi[:, k], self.hi[:, j])
        return shapely.box(lo[:, 0], lo[:, 1], hi[:, 0], hi[:, 1])


def _widened(
    bounds: tuple[np.ndarray, np.ndarray] | None, sign: float = 1.0
) -> tuple[np.ndarray, np.ndarray] | None:
    """Bounds moved outward by a tiny relative margin (``sign=-1``: inward)."""
    if bounds is None:
        return None
    lo, hi = bounds
    mag = np.where(np.isfinite(lo), np.abs(lo), 0.0) + np.where(np.isfinite(hi), np.abs(hi), 0.0)
    margin = sign * (_WIDEN * mag + 1e-300)
    return lo - margin, hi + margin


def _prune_bounds(amap: AffineMap, region: Region) -> tuple[np.ndarray, np.ndarray] | None:
    """Widened intrinsic bounds ``(n, d)`` of every box of the region, or ``None`` without an inverse."""
    if amap.inverse is None:
        return None
    los, his = [], []
    for i in range(region.n):
        b = _widened(amap.intrinsic_bounds(region.lo[i], region.hi[i], region.axes))
        los.append(b[0])
        his.append(b[1])
    return np.array(los), np.array(his)


# ================================================================================================ points
@dataclass(frozen=True)
class _BoxTest:
    """Exact test of target coordinates ``t`` (m, k) against ``n`` closed boxes: positions of hits per box."""

    lo: np.ndarray
    hi: np.ndarray

    def __call__(self, t: np.ndarray) -> list[np.ndarray]:
        n, k = self.lo.shape
        if n == 1 or k == 0:
            out = []
            for i in range(n):
                mask = np.ones(len(t), dtype=bool)
                for j in range(k):
                    col = t[:, j]
                    mask &= (col >= self.lo[i, j]) & (col <= self.hi[i, j])
                out.append(np.flatnonzero(mask))
            return out
        # many boxes: sort candidates by the first axis once, then each box is a slice
        order = np.argsort(t[:, 0], kind="stable")
        first = t[order, 0]
        out = []
        for i in range(n):
            a = np.searchsorted(first, self.lo[i, 0], side="left")
            b = np.searchsorted(first, self.hi[i, 0], side="right")
            sub = order[a:b]
            mask = np.ones(len(sub), dtype=bool)
            for j in range(1, k):
                col = t[sub, j]
                mask &= (col >= self.lo[i, j]) & (col <= self.hi[i, j])
            out.append(np.sort(sub[mask]))
        return out


@dataclass(frozen=True)
class _PolygonTest:
    """Exact covers test of target x/y coordinates against one prepared polygon."""

    polygon: Any

    def __call__(self, t: np.ndarray) -> list[np.ndarray]:
        from tissuestack.kernels._pip import points_in_polygon  # numba: imported on first polygon query only

        return [np.flatnonzero(points_in_polygon(self.polygon, t[:, 0], t[:, 1]))]


def _column_bound(value: float, dtype: Any, lower: bool) -> Any:
    """``value`` as a scalar comparing exactly-or-wider against a column of ``dtype``."""
    if not math.isfinite(value):
        return None
    if dtype == np.float32:
        f = np.float32(value)
        if lower and float(f) > value:
            f = np.nextafter(f, np.float32(-np.inf))
        elif not lower and float(f) < value:
            f = np.nextafter(f, np.float32(np.inf))
        return f
    return float(value)


def _exact_column_bound(value: float, dtype: Any, lower: bool) -> Any:
    """``value`` as a scalar of the column's dtype with ``col >= bound`` iff ``col >= value`` (``<=`` for upper
    bounds) exactly, or ``NotImplemented`` for dtypes other than float32/float64."""
    if not math.isfinite(value):
        return None
    if dtype == np.float32:
        f = np.float32(value)
        if lower and float(f) < value:
            f = np.nextafter(f, np.float32(np.inf))
        elif not lower and float(f) > value:
            f = np.nextafter(f, np.float32(-np.inf))
        return f
    if dtype == np.float64:
        return float(value)
    return NotImplemented


def _identity_box_bounds(
    amap: AffineMap, reg: Region, dtypes: Any
) -> tuple[tuple[Any, ...], tuple[Any, ...]] | None:
    """Exact per-column bounds when the query is one box and the map is the identity on the box's axes (each
    target axis is the intrinsic axis of the same name, unscaled, unshifted): the column comparisons are then the
    whole test. ``None`` otherwise."""
    if reg.polygon is not None or reg.n != 1:
        return None
    for i, a in enumerate(amap.out_axes):
        if a not in amap.in_axes or amap.offset[i] != 0.0:
            return None
        row = np.zeros(len(amap.in_axes))
        row[amap.in_axes.index(a)] = 1.0
        if not np.array_equal(amap.linear[i], row):
            return None
    lo: list[Any] = []
    hi: list[Any] = []
    for a in amap.in_axes:
        v_lo, v_hi = -math.inf, math.inf
        if a in reg.axes:
            j = reg.axes.index(a)
            v_lo, v_hi = float(reg.lo[0, j]), float(reg.hi[0, j])
        b_lo = _exact_column_bound(v_lo, dtypes[a], True)
        b_hi = _exact_column_bound(v_hi, dtypes[a], False)
        if b_lo is NotImplemented or b_hi is NotImplemented:
            return None
        lo.append(b_lo)
        hi.append(b_hi)
    return tuple(lo), tuple(hi)


_SLICE = 1 << 16  # rows per prefilter slice: the masks stay in cache and below malloc's mmap threshold


def _prefilter(
    columns: list[np.ndarray], lo: tuple[Any, ...] | None, hi: tuple[Any, ...] | None
) -> np.ndarray:
    """Positions of the rows with ``lo <= column <= hi`` on every column (``None`` bounds are open).

    Works through the columns in slices of :data:`_SLICE` rows with two reused mask buffers: no full-length
    temporary is allocated (the first query of a process otherwise pays the page faults of several 5M-row masks
    per partition), and the comparisons run on cache-resident data."""
    n = len(columns[0]) if columns else 0
    tests = (
        []
        if lo is None
        else [
            (col, bound, ge)
            for col, a, b in zip(columns, lo, hi, strict=True)
            for bound, ge in ((a, True), (b, False))
            if bound is not None
        ]
    )
    if not tests:
        return np.arange(n, dtype=np.int64)
    step = min(_SLICE, max(n, 1))
    mask = np.empty(step, dtype=bool)
    tmp = np.empty(step, dtype=bool)
    found = []
    for start in range(0, n, step):
        stop = min(n, start + step)
        m, t = mask[: stop - start], tmp[: stop - start]
        for k, (col, bound, ge) in enumerate(tests):
            out = m if k == 0 else t
            (np.greater_equal if ge else np.less_equal)(col[start:stop], bound, out=out)
            if k:
                m &= t
        hit = np.flatnonzero(m)
        if len(hit):
            hit += start
            found.append(hit)
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def _points_positions(
    part: pd.DataFrame,
    in_axes: tuple[str, ...],
    pre_lo: tuple[Any, ...] | None,
    pre_hi: tuple[Any, ...] | None,
    linear: np.ndarray,
    offset: np.ndarray,
    test: Callable[[np.ndarray], list[np.ndarray]],
    exact: bool = False,
) -> list[np.ndarray]:
    """Positions of the rows of one partition inside each box (or the polygon): cheap prefilter on the raw
    columns, exact test on the candidates (skipped when ``exact``: the prefilter bounds are then the exact test)."""
    columns = [part[a].to_numpy() for a in in_axes]
    idx = _prefilter(columns, pre_lo, pre_hi)
    if exact:
        return [idx]
    t = apply_affine([col[idx] for col in columns], linear, offset)
    return [idx[h] for h in test(t)]


def _points_partition(part: pd.DataFrame, box_column: str | None, **kwargs: Any) -> pd.DataFrame:
    """Rows of one partition inside the region; with ``box_column``, every hit of every box with its box
    number (a row inside several boxes appears once per box)."""
    hits = _points_positions(part, **kwargs)
    if box_column is None:
        return part.iloc[hits[0]]
    rows = np.concatenate(hits) if hits else np.zeros(0, dtype=np.int64)
    ids = np.repeat(np.arange(len(hits), dtype=np.int64), [len(h) for h in hits])
    out = part.iloc[rows]
    return out.assign(**{box_column: ids})


def take_rows(
    frames: Sequence[pd.DataFrame], positions: Sequence[np.ndarray], pool: Executor | None = None
) -> pd.DataFrame:
    """``pd.concat([f.iloc[p] for f, p in zip(frames, positions)])`` gathered straight into one output array
    per column (numpy and categorical columns and the index; other extension types through pandas), without the
    per-frame intermediate copies; with ``pool``, the columns are gathered in parallel."""
    sizes = [len(p) for p in positions]
    total = sum(sizes)
    spans = list(itertools.pairwise(np.concatenate([[0], np.cumsum(sizes)]).tolist()))

    def gather(arrays: list[np.ndarray]) -> np.ndarray:
        out = np.empty(total, dtype=arrays[0].dtype)
        for arr, p, (a, b) in zip(arrays, positions, spans, strict=True):
            np.take(arr, p, out=out[a:b], mode="clip")  # positions are in range; "clip" skips buffering
        return out

    def source(arrays: list[Any]) -> Callable[[], Any] | None:
        """A job building the gathered column from per-frame arrays, or ``None`` if pandas must do it."""
        dtype = arrays[0].dtype
        if any(v.dtype != dtype for v in arrays):
            return None
        if isinstance(dtype, np.dtype) and dtype.kind != "O":
            return lambda: gather(arrays)
        if isinstance(dtype, pd.CategoricalDtype):
            codes = [v.codes for v in arrays]
            return lambda: pd.Categorical.from_codes(gather(codes), dtype=dtype)
        return None

    def ranges() -> np.ndarray:  # RangeIndex partitions: positions * step + start, without materialising
        out = np.empty(total, dtype=np.int64)
        for f, p, (a, b) in zip(frames, positions, spans, strict=True):
            np.multiply(p, f.index.step, out=out[a:b])
            out[a:b] += f.index.start
        return out

    def values(obj: pd.Series | pd.Index) -> Any:  # numpy array or extension array, no copy
        return obj.to_numpy() if isinstance(obj.dtype, np.dtype) else obj.array

    jobs: list[Callable[[], Any] | None] = [
        source([values(f[name]) for f in frames]) for name in frames[0].columns
    ]
    first = frames[0].index
    if all(isinstance(f.index, pd.RangeIndex) for f in frames):
        jobs.append(ranges)
    elif isinstance(first, pd.MultiIndex):
        jobs.append(None)
    else:
        jobs.append(source([values(f.index) for f in frames]))
    run = [job for job in jobs if job is not None]
    done = iter(pool.map(lambda job: job(), run) if pool is not None else [job() for job in run])
    out = [next(done) if job is not None else None for job in jobs]
    data: dict[Any, Any] = {}
    for name, col in zip(frames[0].columns, out[:-1], strict=True):
        if col is None:
            col = pd.concat([f[name].iloc[p] for f, p in zip(frames, positions, strict=True)]).array
        data[name] = col
    if out[-1] is None:
        index = pd.concat([f.iloc[p, :0] for f, p in zip(frames, positions, strict=True)]).index
    else:
        index = pd.Index(out[-1], name=first.name, copy=False)
    return pd.DataFrame(data, index=index, columns=frames[0].columns, copy=False)


class _InMemoryQuery:
    """One query over the in-memory partitions of a points frame, computed as a single output partition: each
    partition's hit positions in parallel threads (numpy releases the GIL), then one gather into final arrays."""

    __slots__ = ("frames", "index_dtype", "positions", "token")

    def __init__(
        self,
        frames: list[pd.DataFrame],
        positions: Callable[[pd.DataFrame], list[np.ndarray]],
        index_dtype: Any,
    ):
        self.frames = frames
        self.positions = positions
        self.index_dtype = index_dtype  # dask's (it turns object strings into Arrow strings on the fly)
        self.token = uuid.uuid4().hex

    def __dask_tokenize__(self) -> str:
        return self.token


def _run_in_memory(job: _InMemoryQuery) -> pd.DataFrame:
    frames = job.frames
    workers = min(len(frames), os.cpu_count() or 1)
    if workers <= 1:
        out = take_rows(frames, [job.positions(f)[0] for f in frames])
    else:
        with ThreadPoolExecutor(workers) as pool:  # numpy releases the GIL: hits, then columns, in parallel
            hits = list(pool.map(lambda f: job.positions(f)[0], frames))
            out = take_rows(frames, hits, pool)
    if out.index.dtype != job.index_dtype:
        out.index = out.index.astype(job.index_dtype)
    return out


def _boxes_row_groups(
    stats: pd.DataFrame, bounds: tuple[np.ndarray, np.ndarray], in_axes: tuple[str, ...]
) -> np.ndarray:
    """Mask of the row groups whose statistics meet at least one of the intrinsic boxes ``bounds``."""
    keep = np.zeros(len(stats), dtype=bool)
    for lo, hi in zip(bounds[0], bounds[1], strict=True):
        keep |= intersecting_row_groups(stats, lo, hi, in_axes)
    return keep


def _row_groups_empty(
    df: dd.DataFrame, in_axes: tuple[str, ...], bounds: tuple[np.ndarray, np.ndarray]
) -> bool:
    """Whether the store's row-group statistics prove that no row can be inside any of the boxes."""
    source = get_meta(df).source
    if source is None or not source[1].startswith("points/"):
        return False
    try:
        root = StoreRoot.open(source[0])
        if not root.is_local:
            return False
        stats = points_row_group_stats(ElementLocation(root, "points", source[1].split("/", 1)[1]))
    except Exception:  # statistics are an optimisation only
        return False
    return not _boxes_row_groups(stats, bounds, in_axes).any()


def query_points(
    df: dd.DataFrame, transformation: BaseTransformation, region: Region
) -> list[dd.DataFrame | None]:
    """One lazy points frame per box (or for the polygon); ``None`` where provably empty."""
    in_axes = get_axes(df)
    natural = transformation.output_axes(in_axes)
    if region.polygon is not None and not {"x", "y"} <= set(natural):
        raise NoPathError(
            f"the points' transformation produces axes {natural}, a polygon query needs x and y"
        )
    reg = region.restricted(natural)
    amap = affine_map(transformation, in_axes, reg.axes)
    test = _PolygonTest(reg.polygon) if reg.polygon is not None else _BoxTest(reg.lo, reg.hi)
    bounds = _prune_bounds(amap, reg)
    meta = get_meta(df)
    store_backed = meta.source is not None
    pre_lo = pre_hi = None
    frame = df
    exact = _identity_box_bounds(amap, reg, df.dtypes)
    if bounds is not None:
        lo, hi = bounds[0].min(axis=0), bounds[1].max(axis=0)  # union of the boxes' intrinsic bounds
        scan = points_scan(df) if store_backed else None
        if scan is not None:  # the frame as read: just the row groups meeting a box, straight with pyarrow
            frame = scan_row_groups(scan, _boxes_row_groups(scan.row_group_stats(), bounds, in_axes))
            if frame is None:
                return [None] * reg.n
        elif store_backed and _row_groups_empty(df, in_axes, bounds):
            return [None] * reg.n
        dtypes = df.dtypes
        pre_lo = tuple(_column_bound(v, dtypes[a], True) for a, v in zip(in_axes, lo, strict=True))
        pre_hi = tuple(_column_bound(v, dtypes[a], False) for a, v in zip(in_axes, hi, strict=True))
        if exact is not None:
            pre_lo, pre_hi = exact
        if store_backed and scan is None:
            # plain column comparisons: dask-expr pushes them into the Parquet read, which skips row groups
            cond = None
            for a, v_lo, v_hi in zip(in_axes, lo, hi, strict=True):
                for c in (
                    df[a] >= float(v_lo) if math.isfinite(v_lo) else None,
                    df[a] <= float(v_hi) if math.isfinite(v_hi) else None,
                ):
                    if c is not None:
                        cond = c if cond is None else cond & c
            if cond is not None:
                frame = df[cond]
    many = reg.n > 1
    positions = functools.partial(
        _points_positions,
        in_axes=in_axes,
        pre_lo=pre_lo,
        pre_hi=pre_hi,
        linear=amap.linear,
        offset=amap.offset,
        test=test,
        exact=exact is not None,
    )
    empty = df._meta
    frames = None if (many or store_backed) else in_memory_partitions(df)
    if frames is not None:
        out = dd.from_map(
            _run_in_memory,
            [_InMemoryQuery(frames, positions, empty.index.dtype)],
            meta=empty,
            divisions=[None, None],
            enforce_metadata=False,
            label="points-query",
        )
        set_meta(out, meta.copy())
        return [out]
    fn = functools.partial(_points_partition, box_column=_BOX_COLUMN if many else None, **positions.keywords)
    if not many:
        out = frame.map_partitions(fn, meta=empty, enforce_metadata=False, transform_divisions=False)
        set_meta(out, meta.copy())
        return [out]
    hits = frame.map_partitions(
        fn,
        meta=empty.assign(**{_BOX_COLUMN: np.zeros(0, dtype=np.int64)}),
        enforce_metadata=False,
        transform_divisions=False,
    )
    results: list[dd.DataFrame | None] = []
    for i in range(reg.n):
        one = hits[hits[_BOX_COLUMN] == i].drop(columns=[_BOX_COLUMN])
        set_meta(one, meta.copy())
        results.append(one)
    return results


# ================================================================================================ shapes
def _transform_geoms(geoms: np.ndarray, linear: np.ndarray, offset: np.ndarray) -> np.ndarray:
    return shapely.transform(geoms, lambda c: apply_affine([c[:, 0], c[:, 1]], linear, offset))


def _inner_boxes(amap: AffineMap, reg: Region) -> tuple[np.ndarray, np.ndarray]:
    """Intrinsic boxes ``(n, 2)`` slightly inside the preimage of each target box (axis-aligned maps only)."""
    inner = [_widened(amap.intrinsic_bounds(reg.lo[i], reg.hi[i], reg.axes), -1.0) for i in range(reg.n)]
    return np.array([b[0] for b in inner]), np.array([b[1] for b in inner])


def _exact_hits(
    gdf: gpd.GeoDataFrame,
    index: ShapesIndex,
    amap: AffineMap,
    reg: Region,
    circles: bool,
    cand: np.ndarray,
    region_idx: np.ndarray,
) -> np.ndarray:
    """Exact intersection test of candidate rows ``cand`` against region part ``region_idx`` (target x/y)."""
    uniq, inverse = np.unique(cand, return_inverse=True)
    geoms = np.asarray(gdf.geometry.array)[uniq]
    identity = bool(np.array_equal(amap.linear, np.eye(2)) and not amap.offset.any())
    # finite target bounds of the candidates, to close boxes that leave x or y unconstrained
    env = index.bounds[uniq]
    x0, y0 = env[:, 0].min(), env[:, 1].min()
    x1, y1 = env[:, 2].max(), env[:, 3].max()
    corners = np.array([[x0, y0], [x0, y1], [x1, y0], [x1, y1]], dtype=np.float64)
    corners_t = amap.apply(corners)
    regions_t = reg.geometries(corners_t.min(axis=0) - 1.0, corners_t.max(axis=0) + 1.0)
    target_regions = regions_t[region_idx] if reg.polygon is None else np.repeat(regions_t, len(cand))
    if not circles:
        geoms_t = geoms if identity else _transform_geoms(geoms, amap.linear, amap.offset)
        return shapely.intersects(geoms_t[inverse], target_regions)
    radius = gdf[RADIUS_COLUMN].to_numpy(dtype=np.float64)[uniq]
    if amap.is_similarity:
        scale = math.sqrt(float((amap.linear.T @ amap.linear)[0, 0]))
        centres = amap.apply(np.column_stack([shapely.get_x(geoms), shapely.get_y(geoms)]))
        pts = shapely.points(centres)
        return shapely.distance(pts[inverse], target_regions) <= scale * radius[inverse]
    if amap.inverse is not None:
        inv, c = amap.inverse
        regions_i = _transform_geoms(regions_t, inv, c)
        regs = regions_i[region_idx] if reg.polygon is None else np.repeat(regions_i, len(cand))
        return shapely.distance(geoms[inverse], regs) <= radius[inverse]
    disks = shapely.buffer(geoms, radius, quad_segs=16)
    return shapely.intersects(_transform_geoms(disks, amap.linear, amap.offset)[inverse], target_regions)


def query_shapes(
    gdf: gpd.GeoDataFrame, transformation: BaseTransformation, region: Region
) -> list[gpd.GeoDataFrame | None]:
    """Rows of a shapes element intersecting each box (or the polygon), tested exactly in target x/y.

    Shapes are tested in x/y only (a z range of a 3D box does not constrain shapes). Polygons: shapely
    ``intersects`` of the transformed geometry with the target region (touching counts). Circles: the disk
    ``(centre, radius)`` is transformed with the element; for a similarity transform (uniform scale, rotation,
    reflection, shift) the test is ``distance(T(centre), region) <= scale * radius`` in target space; for other
    invertible affines (anisotropic: the disk becomes an ellipse) it is the equivalent exact test in intrinsic
    space, ``distance(centre, T^-1(region)) <= radius``; for a singular transformation the disk is approximated by
    a 64-gon (``buffer(quad_segs=16)``) transformed into target space. With ``region.clip`` (polygon queries),
    polygon shapes are replaced by their intersection with the polygon, returned in intrinsic coordinates;
    shapes that only touch the polygon (no area in common) are dropped; circles are returned whole.
    """
    if len(gdf) == 0:
        return [None] * region.n
    circles = shapes_type(gdf) == "circles"
    axes = ("x", "y")
    natural = transformation.output_axes(axes)
    if not {"x", "y"} <= set(natural):
        raise NoPathError(f"the shapes' transformation produces axes {natural}; shape queries need x and y")
    reg = region.restricted(axes)
    amap = affine_map(transformation, axes, axes)
    index = shapes_index(gdf, circles)
    bounds = _prune_bounds(amap, reg) if reg.polygon is None else None
    if reg.polygon is not None and amap.inverse is not None:
        b = _widened(amap.intrinsic_bounds(reg.lo[0], reg.hi[0], reg.axes))
        bounds = (b[0][None], b[1][None])
    if bounds is not None:
        lo = np.clip(bounds[0], -1e300, 1e300)
        hi = np.clip(bounds[1], -1e300, 1e300)
        region_idx, cand = index.candidates(lo, hi)
    else:
        cand = np.tile(np.arange(len(gdf)), reg.n)
        region_idx = np.repeat(np.arange(reg.n), len(gdf))
    if len(cand) == 0:
        return [None] * reg.n
    ok = np.zeros(len(cand), dtype=bool)
    exact = np.ones(len(cand), dtype=bool)
    if reg.polygon is None and amap.axis_aligned and amap.inverse is not None:
        # the preimage of an axis-aligned box is a box: envelopes strictly inside it are hits without a test
        inner = _inner_boxes(amap, reg)
        env = index.bounds[cand]
        inside = (
            (env[:, 0] > inner[0][region_idx, 0])
            & (env[:, 2] < inner[1][region_idx, 0])
            & (env[:, 1] > inner[0][region_idx, 1])
            & (env[:, 3] < inner[1][region_idx, 1])
        )
        ok[inside] = True
        exact = ~inside
    todo = np.flatnonzero(exact)
    if len(todo):
        ok[todo] = _exact_hits(gdf, index, amap, reg, circles, cand[todo], region_idx[todo])
    meta = get_meta(gdf)
    results: list[gpd.GeoDataFrame | None] = []
    order = np.argsort(region_idx, kind="stable")
    starts = np.searchsorted(region_idx[order], np.arange(reg.n + 1))
    for i in range(reg.n):
        sel = order[starts[i] : starts[i + 1]]
        rows = np.sort(cand[sel][ok[sel]])
        if len(rows) == 0:
            results.append(None)
            continue
        out = gdf.iloc[rows].copy()
        if reg.clip and not circles:
            out = _clip(out, amap, reg.polygon.geometry)
            if out is None:
                results.append(None)
                continue
        set_meta(out, meta.copy())
        results.append(out)
    return results


def _clip(out: gpd.GeoDataFrame, amap: AffineMap, polygon: Any) -> gpd.GeoDataFrame | None:
    if amap.inverse is None:
        raise ValueError("clip=True needs an invertible transformation to map clipped shapes back")
    geoms_t = _transform_geoms(np.asarray(out.geometry.array), amap.linear, amap.offset)
    clipped = shapely.intersection(geoms_t, polygon)
    types = shapely.get_type_id(clipped)
    for k in np.flatnonzero(~np.isin(types, (3, 6))):  # collections from touching parts: keep polygonal parts
        parts = shapely.get_parts(clipped[k])
        polys = parts[np.isin(shapely.get_type_id(parts), (3, 6))]
        clipped[k] = shapely.union_all(polys) if len(polys) else shapely.Polygon()
    keep = ~shapely.is_empty(clipped) & (shapely.area(clipped) > 0)
    if not keep.any():
        return None
    inv, c = amap.inverse
    out = out.iloc[np.flatnonzero(keep)].copy()
    out.geometry = gpd.GeoSeries(_transform_geoms(clipped[keep], inv, c), index=out.index)
    return out


# ================================================================================================ rasters
def _pixel_range(a: float, b: float, size: int) -> tuple[int, int]:
    """Covering integer pixel range ``[start, stop)`` of ``[a, b]`` (pixel ``i`` covers ``[i, i + 1)``)."""
    if math.isfinite(a) and abs(a - round(a)) <= _SNAP * max(1.0, abs(a)):
        a = float(round(a))
    if math.isfinite(b) and abs(b - round(b)) <= _SNAP * max(1.0, abs(b)):
        b = float(round(b))
    start = 0 if a == -math.inf else (size if a == math.inf else math.floor(a))
    stop = size if b == math.inf else (0 if b == -math.inf else math.ceil(b))
    if stop == start:  # a zero-width box still selects the pixel it lies in
        stop = start + 1
    return max(0, min(size, start)), max(0, min(size, stop))


def crop_raster(
    element: xr.DataArray | xr.DataTree,
    transformation: BaseTransformation,
    region: Region,
    index: int = 0,
) -> tuple[xr.DataArray | xr.DataTree | None, dict[str, tuple[int, int]] | None]:
    """Crop a raster to the pixels covering box ``index`` of the region (or the polygon's bounds).

    Returns the crop (``None`` when empty) and the level-0 ``{axis: (start, stop)}`` ranges. A raster whose
    transformation is not invertible cannot be cropped and is returned whole. For a polygon region with
    ``clip``, pixels whose centre is not covered by the polygon are set to 0 (lazily, at every level).
    """
    mask_outside = region.polygon if region.clip else None
    levels = raster_levels(element)
    lvl0 = levels[0]
    spatial = tuple(a for a in _SPATIAL if a in lvl0.dims)
    natural = transformation.output_axes(spatial)
    reg = region.restricted(natural)
    amap = affine_map(transformation, spatial, reg.axes)
    bounds = amap.intrinsic_bounds(reg.lo[index], reg.hi[index], reg.axes)
    if bounds is None:
        return element, {a: (0, lvl0.sizes[a]) for a in spatial}
    ranges = {}
    for a, lo, hi in zip(spatial, bounds[0], bounds[1], strict=True):
        start, stop = _pixel_range(float(lo), float(hi), lvl0.sizes[a])
        if start >= stop:
            return None, None
        ranges[a] = (start, stop)
    meta = get_meta(element)
    shift = Translation([float(ranges[a][0]) for a in spatial], spatial)
    new_meta = meta.copy()
    new_meta.transformations = {
        cs: SequenceTransformation([shift, t]) for cs, t in meta.transformations.items()
    }
    if isinstance(element, xr.DataArray):
        out: Any = element.isel({a: slice(*ranges[a]) for a in spatial})
        if mask_outside is not None:
            out = _mask_level(
                out,
                spatial,
                {a: ranges[a][0] for a in spatial},
                dict.fromkeys(spatial, 1.0),
                transformation,
                mask_outside,
            )
    else:
        children = {}
        for (name, child), lvl in zip(element.children.items(), levels, strict=True):
            sel = {}
            for a in spatial:
                f = lvl0.sizes[a] / lvl.sizes[a] if lvl.sizes[a] else 1.0
                s = max(0, min(lvl.sizes[a], math.floor(ranges[a][0] / f)))
                e = max(0, min(lvl.sizes[a], math.ceil(ranges[a][1] / f)))
                if e <= s and lvl.sizes[a]:
                    s, e = min(s, lvl.sizes[a] - 1), min(s, lvl.sizes[a] - 1) + 1
                sel[a] = slice(s, e)
            var = next(iter(child.dataset.data_vars))
            crop = lvl.isel(sel)
            if mask_outside is not None:
                factors = {a: lvl0.sizes[a] / lvl.sizes[a] for a in spatial}
                crop = _mask_level(
                    crop, spatial, {a: sel[a].start for a in spatial}, factors, transformation, mask_outside
                )
            children[name] = xr.Dataset({var: crop})
        out = xr.DataTree.from_dict(children)
    set_meta(out, new_meta)
    return out, ranges


def _mask_block(
    block: np.ndarray,
    block_info: dict | None = None,
    *,
    dims: tuple[str, ...],
    in_axes: tuple[str, ...],
    starts: dict[str, int],
    factors: dict[str, float],
    linear: np.ndarray,
    offset: np.ndarray,
    polygon: Any,
) -> np.ndarray:
    """Zero the pixels of one block whose centre (in target x/y) is not covered by the polygon."""
    from tissuestack.kernels._pip import points_in_polygon  # numba: imported on first use only

    if block_info is None or block.size == 0:
        return block
    location = block_info[0]["array-location"]
    spatial = [(k, d) for k, d in enumerate(dims) if d != "c"]
    names = [d for _, d in spatial]
    grids = []
    for k, d in spatial:
        a, b = location[k]
        grids.append((starts[d] + np.arange(a, b) + 0.5) * factors[d])  # pixel centres, level-0 pixel space
    mesh = np.meshgrid(*grids, indexing="ij")
    coords = np.column_stack([mesh[names.index(a)].ravel() for a in in_axes])
    t = apply_affine([coords[:, j] for j in range(coords.shape[1])], linear, offset)
    inside = points_in_polygon(polygon, t[:, 0], t[:, 1])
    inside = inside.reshape([block.shape[k] if d != "c" else 1 for k, d in enumerate(dims)])
    return np.where(inside, block, np.zeros((), dtype=block.dtype))


def _mask_level(
    level: xr.DataArray,
    spatial: tuple[str, ...],
    starts: dict[str, int],
    factors: dict[str, float],
    transformation: BaseTransformation,
    polygon: Any,
) -> xr.DataArray:
    amap = affine_map(transformation, spatial, ("x", "y"))
    fn = functools.partial(
        _mask_block,
        dims=tuple(str(d) for d in level.dims),
        in_axes=spatial,
        starts=starts,
        factors=factors,
        linear=amap.linear,
        offset=amap.offset,
        polygon=polygon,
    )
    data = level.data if isinstance(level.data, da.Array) else da.from_array(np.asarray(level.data))
    return level.copy(data=da.map_blocks(fn, data, dtype=data.dtype))


def query_raster(
    element: xr.DataArray | xr.DataTree, transformation: BaseTransformation, region: Region
) -> list[Any]:
    return [crop_raster(element, transformation, region, i)[0] for i in range(region.n)]


# ================================================================================================ dispatch
_QUERIES: dict[str, Callable[[Any, BaseTransformation, Region], list[Any]]] = {
    "points": query_points,
    "shapes": query_shapes,
    "images": query_raster,
    "labels": query_raster,
}


def run_query(data: Any, region: Region, target_coordinate_system: str, filter_table: bool) -> list[Any]:
    """Query an element or a SpatialData; one result per box of the region."""
    if isinstance(data, SpatialData):
        return _query_sdata(data, region, target_coordinate_system, filter_table)
    kind = get_kind(data)
    if kind == "tables":
        raise TypeError("a table has no coordinates; query the SpatialData object to filter its tables")
    return _QUERIES[kind](data, transformation_to(data, target_coordinate_system), region)


def _query_sdata(sdata: SpatialData, region: Region, cs: str, filter_table: bool) -> list[SpatialData]:
    per_box: list[dict[str, tuple[str, Any]]] = [{} for _ in range(region.n)]
    for name, kind, element, t in elements_in(sdata, cs):
        try:
            results = _QUERIES[kind](element, t, region)
        except NoPathError:  # the path exists but does not produce the axes the region needs
            continue
        for i, r in enumerate(results):
            if r is not None:
                per_box[i][name] = (kind, r)
    return [_assemble(sdata, kept, filter_table) for kept in per_box]


def _labels_instances(labels: Any) -> np.ndarray:
    data = raster_levels(labels)[0].data
    if isinstance(data, da.Array):
        return np.asarray(da.unique(data).compute())
    return np.unique(np.asarray(data))


def _assemble(sdata: SpatialData, kept: Mapping[str, tuple[str, Any]], filter_table: bool) -> SpatialData:
    groups: dict[str, dict[str, Any]] = {k: {} for k in ("images", "labels", "points", "shapes", "tables")}
    for name, (kind, element) in kept.items():
        groups[kind][name] = element
    for tname, table in sdata.items(["tables"]):
        if not filter_table:
            groups["tables"][tname] = table
            continue
        region, region_key, _ = get_table_keys(table)
        if not region:
            continue
        instances: dict[str, Any] = {}
        for r in region:
            if r not in kept:
                continue
            kind, element = kept[r]
            if kind == "shapes":
                instances[r] = element.index
            elif kind == "labels":
                instances[r] = _labels_instances(element)
            else:  # points are not region elements here: their table rows are kept whole
                obs = table.obs
                instances[r] = obs.loc[obs[region_key].astype(object) == r, get_table_keys(table)[2]].unique()
        if not instances:
            continue
        new = filter_table_by_instances(table, instances, name=tname)
        if new is not None:
            groups["tables"][tname] = new
    return SpatialData(**groups, attrs=sdata.attrs)


# ================================================================================================ public API
def bounding_box_query(
    sdata_or_element: Any,
    axes: Sequence[str],
    min_coordinate: Any,
    max_coordinate: Any,
    target_coordinate_system: str,
    filter_table: bool = True,
) -> Any:
    """Select what lies inside an axis-aligned box of ``target_coordinate_system``.

    Parameters
    ----------
    sdata_or_element
        A SpatialData object, or one image, labels, points or shapes element (which must then have a direct
        transformation to ``target_coordinate_system``).
    axes
        The box's axes, ``("x", "y")`` or ``("x", "y", "z")`` in any order (any non-empty subset of x, y, z is
        accepted). Axes of an element the box does not name are unconstrained; box axes an element does not
        reach are ignored for it (a 3D box on 2D shapes constrains x and y only).
    min_coordinate, max_coordinate
        The box's corners, in the order of ``axes``: shape ``(d,)`` for one box, or ``(n, d)`` for ``n`` boxes
        (vectorized form). Each minimum must be <= its maximum.
    target_coordinate_system
        The coordinate system the box is given in. With a SpatialData, each element is placed there through the
        transformation graph (rotations and general affines included); elements with no path are left out.
    filter_table
        With a SpatialData: tables annotating a kept element keep only the rows of surviving instances (shapes:
        the kept index; labels: the label values present in the crop; rows of points regions are kept whole);
        tables annotating nothing kept are dropped. ``False`` keeps every table unchanged.

    Returns
    -------
    SpatialData, element, None, or a list of them
        A new SpatialData (same ``attrs``) with the non-empty results, or the queried element (``None`` when
        empty). In the vectorized form, a list with one such result per box.

    Notes
    -----
    * **Points** (exact, boundaries inclusive: a point exactly on a face of the box is inside): the result is a
      lazy dask frame filtered per partition. Candidates are selected on the raw coordinate columns by the box
      back-transformed into intrinsic coordinates (for a store-backed frame, as plain column comparisons that
      dask-expr pushes into the Parquet reader, which skips row groups by their min/max statistics), then the
      exact test runs in target coordinates on the candidates only. The whole frame is never materialized. In
      the vectorized form every box's frame derives from one per-partition pass: compute them together
      (``dask.compute(*results)``) to share it.
    * **Shapes**: rows whose geometry intersects the box (touching counts), found through an STRtree cached per
      GeoDataFrame; see :func:`query_shapes` for circles under anisotropic transforms.
    * **Images / labels**: the crop of the box back-transformed into level-0 pixel space, to the covering
      integer range ``[floor(min), ceil(max))`` (clamped; pixel ``i`` covers ``[i, i + 1)``, so a box ending
      exactly on a pixel edge does not take the next pixel; a zero-width box takes the pixel it lies in). The
      crop keeps its position: each transformation becomes ``Sequence([Translation(offset), T])``. Multiscale
      rasters are cropped at every level (offsets divided by the level's size ratio, floor/ceil) and returned as
      a DataTree. Rasters whose transformation is not invertible are returned whole.
    * Empty results are dropped (``None`` for an element); a lazy points result is only known to be empty
      without computing when store row-group statistics prove it.

    Raises
    ------
    ValueError
        On invalid boxes (unknown or repeated axis, wrong lengths, min > max, NaN).
    NoPathError
        For an element with no transformation to the target coordinate system.
    """
    axes, lo, hi, many = check_box(axes, min_coordinate, max_coordinate)
    results = run_query(sdata_or_element, Region(axes, lo, hi), target_coordinate_system, filter_table)
    return results if many else results[0]
