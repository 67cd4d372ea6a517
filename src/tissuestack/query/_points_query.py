"""Bounding-box and polygon queries of points elements (store-backed: row-group pruning with pyarrow; in memory:
threads over the pandas partitions). Semantics in :mod:`tissuestack.query._bbox`."""

from __future__ import annotations

import functools
import itertools
import math
import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd

from tissuestack.elements import get_axes, get_meta, set_meta
from tissuestack.elements._points import in_memory_partitions
from tissuestack.errors import NoPathError
from tissuestack.query._index import intersecting_row_groups
from tissuestack.query._region import Region, prune_bounds
from tissuestack.store import ElementLocation, StoreRoot
from tissuestack.store._points import points_row_group_stats, points_scan, scan_row_groups
from tissuestack.transforms import AffineMap, BaseTransformation, affine_map, apply_affine

_SPATIAL = ("x", "y", "z")
_BOX_COLUMN = "__tissuestack_box__"
_WIDEN = 1e-9  # relative widening of back-transformed bounds used for pruning only
_SNAP = 1e-9  # pixel bounds this close to an integer are snapped to it before floor/ceil


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
    part: Any,
    in_axes: tuple[str, ...],
    pre_lo: tuple[Any, ...] | None,
    pre_hi: tuple[Any, ...] | None,
    linear: np.ndarray,
    offset: np.ndarray,
    test: Callable[[np.ndarray], list[np.ndarray]],
    exact: bool = False,
) -> list[np.ndarray]:
    """Positions of the rows of one partition inside each box (or the polygon): cheap prefilter on the raw
    columns, exact test on the candidates (skipped when ``exact``: the prefilter bounds are then the exact test).
    ``part`` is a pandas or Arrow table."""
    if isinstance(part, pd.DataFrame):
        columns = [part[a].to_numpy() for a in in_axes]
    else:
        columns = [part.column(a).to_numpy() for a in in_axes]
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


def _select_rows(table: Any, box_column: str | None, **kwargs: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """:func:`_points_partition` for an Arrow table as read (``PointsScan.read``): the positions of the rows
    kept and, with ``box_column``, their box numbers."""
    hits = _points_positions(table, **kwargs)
    if box_column is None:
        return hits[0], {}
    rows = np.concatenate(hits) if hits else np.zeros(0, dtype=np.int64)
    ids = np.repeat(np.arange(len(hits), dtype=np.int64), [len(h) for h in hits])
    return rows, {box_column: ids}


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
    bounds = prune_bounds(amap, reg)
    meta = get_meta(df)
    store_backed = meta.source is not None
    pre_lo = pre_hi = None
    frame = df
    scan = scan_keep = None
    exact = _identity_box_bounds(amap, reg, df.dtypes)
    if bounds is not None:
        lo, hi = bounds[0].min(axis=0), bounds[1].max(axis=0)  # union of the boxes' intrinsic bounds
        scan = points_scan(df) if store_backed else None
        if scan is not None:  # the frame as read: just the row groups meeting a box, straight with pyarrow
            scan_keep = _boxes_row_groups(scan.row_group_stats(), bounds, in_axes)
            if not scan_keep.any():
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
    box_column = _BOX_COLUMN if many else None
    hits_meta = empty.assign(**{_BOX_COLUMN: np.zeros(0, dtype=np.int64)}) if many else empty
    if scan is not None:  # rows tested on the Arrow table as read: only the hits are converted to pandas
        select = functools.partial(_select_rows, box_column=box_column, **positions.keywords)
        hits = scan_row_groups(scan, scan_keep, select=select, meta=hits_meta)
    else:
        fn = functools.partial(_points_partition, box_column=box_column, **positions.keywords)
        hits = frame.map_partitions(fn, meta=hits_meta, enforce_metadata=False, transform_divisions=False)
    if not many:
        set_meta(hits, meta.copy())
        return [hits]
    results: list[dd.DataFrame | None] = []
    for i in range(reg.n):
        one = hits[hits[_BOX_COLUMN] == i].drop(columns=[_BOX_COLUMN])
        set_meta(one, meta.copy())
        results.append(one)
    return results
