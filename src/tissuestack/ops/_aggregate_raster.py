"""Aggregation with rasters: image by labels, image by shapes, labels by shapes.

Statistics of image pixels (``image_by_labels``, ``image_by_shapes``)
-----------------------------------------------------------------------
``agg_func`` is one of ``sum``, ``mean``, ``min``, ``max``, ``count``, ``std`` and the result has **one column
per channel**, named by the channel name (``str`` of the image's ``c`` coordinate); ``value_key`` selects
channels by name. NaN pixels are skipped. A zone without pixels gets ``0`` for ``sum``/``count`` and NaN for
the others. ``std`` is the sample standard deviation (``ddof=1``, as pandas; NaN below two pixels), computed stably: each block yields
counts, sums and sums of squared deviations from the block's own mean, merged with Chan et al.'s pairwise
formula (no ``E[x²] - E[x]²`` cancellation). Values are accumulated in float64.

* **image by labels**: the zones are the label values listed in ``by_instances`` (the front end leaves out the
  background 0 when the labels contain it; a labels element without 0 has every value as an instance). Each
  image pixel belongs to the label under its centre. The image and the labels must be related by an
  axis-aligned scale/translation (no rotation, no axis swap): the labels are sampled (nearest, at image pixel
  centres) on the image grid block by block, which is exact when the grids coincide or differ by integer
  factors/shifts, e.g. labels at a pyramid level of the image. Of a multiscale image, the level whose grid
  equals the labels' grid is used when there is one, else the full resolution. 2D and 3D.
* **image by shapes**: the zones are the shapes; a pixel belongs to a shape when its centre is inside it (the
  rules of :mod:`tissuestack.kernels._zonal`: half-open even-odd rule for polygons, closed disc for circles,
  exact under any affine transformation). Overlapping shapes each get their pixels. The shapes are rasterised
  into row runs on the image grid, never into a full-size raster; blocks without any shape are not even read.
  The full-resolution level is used (``options["level"]`` picks another). A 3D image is aggregated over every
  z plane (the shapes are prisms).

Areas of labels (``labels_by_shapes``)
---------------------------------------
One column per label id (as a string, sorted by id) found inside at least one region, background 0 excluded;
``X[i, j]`` is the area of label ``j`` inside region ``i`` in the **shapes' units²**: pixel count times
``|det|`` of the 2x2 pixel -> shapes map (pixel centres inside the region, as above). ``agg_func="count"``
gives pixel counts instead. ``value_key`` restricts the columns to those label ids. 3D labels: voxels are counted over every z plane and multiplied by the x/y pixel area. Sparse CSR.

Everything runs block by block on the dask chunks of the rasters (one task per block, merged in a tree of
bounded fan-in); a raster is never loaded whole.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
import xarray as xr

from tissuestack._compute import rechunk, scheduler
from tissuestack.elements import raster_levels
from tissuestack.elements._shapes import RADIUS_COLUMN, shapes_type
from tissuestack.kernels._zonal import (
    STATISTICS,
    ZonalPartial,
    circle_runs,
    empty_partial,
    finalize,
    labels_block_stats,
    merge_partials,
    polygon_runs,
    reduce_pairs,
    runs_block_stats,
    runs_label_counts,
)
from tissuestack.ops._aggregate_pairs import PairInput, PairResult
from tissuestack.ops._aggregate_shapes import xy_map
from tissuestack.ops._shapes_flat import flat_geometry
from tissuestack.transforms import AffineMap

__all__ = ["image_by_labels", "image_by_shapes", "labels_by_shapes"]

_FANIN = 8  # partial results merged per reduction task
_LUT_MAX = 1 << 22  # label ids spanning at most this range (or 4x their number) use a lookup table (<= 32 MB)


# ============================================================================================ helpers
def _spatial_dims(arr: xr.DataArray) -> tuple[str, ...]:
    return tuple(d for d in arr.dims if d != "c")


def _as_dask(arr: xr.DataArray) -> da.Array:
    data = arr.data
    return data if isinstance(data, da.Array) else da.from_array(np.asarray(data))


def _channel_selection(
    image: xr.DataArray, keys: Sequence[str] | None, what: str
) -> tuple[list[int], list[str]]:
    n = image.sizes["c"]
    names = [str(c) for c in image.coords["c"].values] if "c" in image.coords else [str(i) for i in range(n)]
    if not keys:
        return list(range(n)), names
    pos = {name: i for i, name in enumerate(names)}
    missing = [str(k) for k in keys if str(k) not in pos]
    if missing:
        raise KeyError(f"{what}: the image has no channel {missing[0]!r}; its channels are {names}")
    idx = [pos[str(k)] for k in keys]
    return idx, [names[i] for i in idx]


def _check_statistic(agg: str, what: str) -> None:

    if agg not in STATISTICS:
        raise ValueError(f"{what}: agg_func must be one of {STATISTICS}, got {agg!r}")


def _no_fractions(inp: PairInput, what: str) -> None:
    if inp.fractions:
        raise ValueError(f"{what}: fractions=True is only defined for shapes values aggregated by shapes")


def _tree_reduce(parts: list[Any], merge: Callable[[list[Any]], Any]) -> Any:
    """Merge delayed partials ``_FANIN`` at a time until one remains."""
    while len(parts) > 1:
        parts = [dask.delayed(merge)(parts[i : i + _FANIN]) for i in range(0, len(parts), _FANIN)]
    return parts[0]


def _zone_lookup(ids: pd.Index, what: str) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """``(lut, lut_start, sorted_ids, sorted_rows)`` mapping label values to row positions of ``ids``."""
    try:
        values = np.asarray(ids, dtype=np.int64) if len(ids) else np.zeros(0, dtype=np.int64)
    except (TypeError, ValueError):
        raise TypeError(f"{what}: the label ids (by_instances) must be integers, got {ids.dtype}") from None
    if len(ids) and not np.array_equal(values, np.asarray(ids)):
        raise TypeError(f"{what}: the label ids (by_instances) must be integers, got {list(ids[:3])}")
    if len(np.unique(values)) != len(values):
        raise ValueError(f"{what}: by_instances holds repeated label ids")
    rows = np.arange(len(values), dtype=np.int64)
    if len(values) and int(values.max()) - int(values.min()) < max(_LUT_MAX, 4 * len(values)):
        start = int(values.min())
        lut = np.full(int(values.max()) - start + 1, -1, dtype=np.int64)
        lut[values - start] = rows
        return lut, start, np.zeros(0, dtype=np.int64), rows[:0]
    order = np.argsort(values, kind="stable")
    return np.zeros(0, dtype=np.int64), 0, values[order], rows[order]


def _partial_merge(n_channels: int) -> Callable[[list[Any]], Any]:
    return functools.partial(merge_partials, n_channels=n_channels)


def _statistics_result(
    partials_by_chunk: list[tuple[Any, int]], n_zones: int, agg: str, names: list[str], uns: dict
) -> PairResult:
    """Compute the delayed per-channel-chunk partials and finalise the statistic (zones x channels)."""

    todo = [(i, p) for i, (p, _) in enumerate(partials_by_chunk) if p is not None]
    computed = dask.compute(*[p for _, p in todo], scheduler=scheduler()) if todo else ()
    results: list[Any] = [empty_partial(c) for _, c in partials_by_chunk]
    for (i, _), part in zip(todo, computed, strict=True):
        results[i] = part
    cols = [
        finalize(part, n_zones, agg, n_c) for part, (_, n_c) in zip(results, partials_by_chunk, strict=True)
    ]
    X = np.hstack(cols) if cols else np.zeros((n_zones, 0))
    return PairResult(X, names, uns=uns)


def _as_partial(t: tuple) -> ZonalPartial:
    return ZonalPartial(*t)


# ============================================================================================ image by labels
def _axis_maps(inp: PairInput, spatial: tuple[str, ...], what: str) -> dict[str, tuple[float, float]]:
    """Per spatial axis ``(scale, offset)`` of the image -> labels map; it must be axis-aligned."""
    m = inp.values_to_by
    out = {}
    for a in spatial:
        if a not in m.in_axes or a not in m.out_axes:
            raise ValueError(f"{what}: the transformation maps axes {m.in_axes} to {m.out_axes}; need {a!r}")
        row = m.linear[m.out_axes.index(a)]
        col = m.in_axes.index(a)
        if row[col] == 0 or np.count_nonzero(row) != 1:
            raise ValueError(
                f"{what}: the image and the labels must be related by an axis-aligned scale/translation (a "
                f"pyramid level, a crop); here the labels' {a!r} axis depends on {dict(zip(m.in_axes, row, strict=True))}. "
                "Resample one onto the other's grid first, e.g. with tissuestack.transform"
            )
        out[a] = (float(row[col]), float(m.offset[m.out_axes.index(a)]))
    return out


def _pick_level(levels: list[xr.DataArray], maps: dict[str, tuple[float, float]]) -> tuple[int, dict]:
    """The level whose grid equals the labels' grid (unit scale, integer shift), else level 0."""
    lvl0 = levels[0]
    for k, lvl in enumerate(levels):
        level_maps = {}
        exact = True
        for a, (s, o) in maps.items():
            f = lvl0.sizes[a] / lvl.sizes[a] if lvl.sizes[a] else 1.0
            level_maps[a] = (s * f, o)
            if abs(s * f - 1.0) > 1e-9 or abs(o - round(o)) > 1e-9:
                exact = False
        if exact:
            return k, level_maps
    return 0, maps


def _sample_indices(size: int, scale: float, offset: float, n_target: int) -> tuple[int, int, np.ndarray]:
    """Labels index under each image pixel centre; ``(start, stop, indices)`` of the valid contiguous range."""
    idx = np.floor(scale * (np.arange(size) + 0.5) + offset).astype(np.int64)
    valid = np.flatnonzero((idx >= 0) & (idx < n_target))
    if len(valid) == 0:
        return 0, 0, idx[:0]
    start, stop = int(valid[0]), int(valid[-1]) + 1
    return start, stop, idx[start:stop]


def _take(arr: da.Array, axis: int, idx: np.ndarray) -> da.Array:
    if len(idx) and np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx))):
        sl = [slice(None)] * arr.ndim
        sl[axis] = slice(int(idx[0]), int(idx[0]) + len(idx))
        return arr[tuple(sl)]
    return da.take(arr, idx, axis=axis)


def _labels_block(img: np.ndarray, lab: np.ndarray, lut, lut_start, sorted_ids, sorted_rows, n, want_m2):

    values = np.asarray(img, dtype=np.float64).reshape(img.shape[0], -1)
    labels = np.asarray(lab).astype(np.int64, copy=False).ravel()
    return _as_partial(
        labels_block_stats(labels, values, lut, lut_start, sorted_ids, sorted_rows, n, want_m2)
    )


def image_by_labels(inp: PairInput) -> PairResult:
    """Per-label statistics of the image channels (see the module notes)."""
    what = f"aggregating image {inp.values_name!r} by labels {inp.by_name!r}"
    _no_fractions(inp, what)
    _check_statistic(inp.agg_func, what)
    levels = raster_levels(inp.values)
    labels = raster_levels(inp.by)[0]
    spatial = _spatial_dims(levels[0])
    if set(spatial) != set(labels.dims):
        raise ValueError(
            f"{what}: the image has spatial axes {spatial} and the labels {tuple(labels.dims)}; they must match "
            "(2D image with 2D labels, 3D with 3D)"
        )
    maps = _axis_maps(inp, spatial, what)
    level, maps = _pick_level(levels, maps)
    image = levels[level]
    ch_idx, names = _channel_selection(image, inp.value_keys, what)
    n = len(inp.by_instances)
    lut, lut_start, sorted_ids, sorted_rows = _zone_lookup(inp.by_instances, what)

    img = _as_dask(image)
    if ch_idx != list(range(image.sizes["c"])):
        img = img[ch_idx]
    lab = _as_dask(labels).transpose([labels.dims.index(a) for a in spatial])
    crop = [slice(None)]
    for axis, a in enumerate(spatial):
        s, o = maps[a]
        start, stop, idx = _sample_indices(image.sizes[a], s, o, labels.sizes[a])
        crop.append(slice(start, stop))
        lab = _take(lab, axis, idx)
    img = img[tuple(crop)]
    uns = {"agg_func": inp.agg_func, "image_level": level}
    n_c = len(ch_idx)
    if img.size == 0 or n == 0:
        return _statistics_result([(None, n_c)], n, inp.agg_func, names, uns)
    lab = rechunk(lab, img.chunks[1:])
    want_m2 = inp.agg_func == "std"
    consts = [dask.delayed(c) for c in (lut, lut_start, sorted_ids, sorted_rows)]
    img_blocks = img.to_delayed()
    lab_blocks = lab.to_delayed()
    block = dask.delayed(_labels_block)
    chunks = []
    for ci in range(img_blocks.shape[0]):
        parts = [
            block(img_blocks[(ci, *pos)], lab_blocks[pos], *consts, n, want_m2)
            for pos in np.ndindex(*lab_blocks.shape)
        ]
        chunks.append((_tree_reduce(parts, _partial_merge(img.chunks[0][ci])), img.chunks[0][ci]))
    return _statistics_result(chunks, n, inp.agg_func, names, uns)


# ============================================================================================ shapes as runs
def _shape_runs(inp: PairInput, height: int, width: int, what: str) -> tuple[tuple[np.ndarray, ...], float]:
    """Row runs of the ``by`` shapes on the ``values`` raster grid (grouped by row) and the pixel area."""

    lin, off = xy_map(inp.values_to_by, what)  # raster pixel -> shapes frame
    det = float(np.linalg.det(lin))
    if det == 0:
        raise ValueError(f"{what}: the transformation between the raster and the shapes is singular on x/y")
    gdf = inp.by
    if len(gdf) == 0:
        return tuple(np.zeros(0, dtype=np.int64) for _ in range(4)), abs(det)
    flat = flat_geometry(gdf)  # from the store's WKB when there is one: no shapely objects
    if shapes_type(gdf) == "circles":
        m = np.hstack([lin, off[:, None]])
        radius = gdf[RADIUS_COLUMN].to_numpy(dtype=np.float64)
        runs = circle_runs(flat.x, flat.y, radius, m, height, width)
    else:
        x, y = flat.x, flat.y
        if not (np.array_equal(lin, np.eye(2)) and not off.any()):  # shapes -> pixel coordinates
            inv = np.linalg.inv(lin)
            x, y = (
                inv[0, 0] * (flat.x - off[0]) + inv[0, 1] * (flat.y - off[1]),
                inv[1, 0] * (flat.x - off[0]) + inv[1, 1] * (flat.y - off[1]),
            )
        runs = polygon_runs(x, y, flat.ring_offsets, flat.geom_ring_offsets, height, width)
    # grouped by row (radix sort on 16-bit rows when they fit)
    rows = runs[1].astype(np.uint16) if height <= 65536 else runs[1]
    order = np.argsort(rows, kind="stable")
    return tuple(r[order] for r in runs), abs(det)


def _block_runs(
    runs: tuple[np.ndarray, ...], y0: int, y1: int, x0: int, x1: int
) -> tuple[np.ndarray, ...] | None:
    """The runs (sorted by row) that touch rows ``[y0, y1)`` and columns ``[x0, x1)``; None when none do."""
    shape, row, c0, c1 = runs
    a, b = np.searchsorted(row, [y0, y1])
    if a == b:
        return None
    sel = slice(a, b)
    hit = (c1[sel] > x0) & (c0[sel] < x1)
    if not hit.any():
        return None
    keep = np.flatnonzero(hit) + a
    return shape[keep], row[keep], c0[keep], c1[keep]


def _block_grid(arr: da.Array, spatial: tuple[str, ...]):
    """Yield ``(block position, y0, y1, x0, x1)`` over the spatial block grid of ``arr`` (spatial dims last)."""
    ys = np.r_[0, np.cumsum(arr.chunks[-2])]
    xs = np.r_[0, np.cumsum(arr.chunks[-1])]
    lead = [range(len(c)) for c in arr.chunks[arr.ndim - len(spatial) : -2]]
    for pre in np.ndindex(*[len(r) for r in lead]) if lead else [()]:
        for iy in range(len(ys) - 1):
            for ix in range(len(xs) - 1):
                yield (*pre, iy, ix), int(ys[iy]), int(ys[iy + 1]), int(xs[ix]), int(xs[ix + 1])


def _runs_block(img: np.ndarray, runs: tuple, y0: int, x0: int, n: int, want_m2: bool):

    values = np.asarray(img, dtype=np.float64)
    if values.ndim == 3:
        values = values[:, None]
    return _as_partial(runs_block_stats(*runs, values, y0, x0, n, want_m2))


def _raster_level(element: Any, inp: PairInput, what: str) -> tuple[int, xr.DataArray]:
    levels = raster_levels(element)
    level = int(inp.options.get("level", 0))
    if not 0 <= level < len(levels):
        raise ValueError(f"{what}: options['level'] = {level}, the raster has {len(levels)} levels")
    return level, levels[level]


def _level_map(inp: PairInput, element: Any, level: int) -> PairInput:
    """``inp`` with ``values_to_by`` starting from pyramid level ``level`` instead of level 0."""
    if level == 0:
        return inp
    levels = raster_levels(element)
    m = inp.values_to_by
    f = np.array(
        [levels[0].sizes[a] / levels[level].sizes[a] if a in levels[0].dims else 1.0 for a in m.in_axes]
    )
    lin = m.linear * f[None, :]
    return replace(inp, values_to_by=AffineMap(m.in_axes, m.out_axes, lin, m.offset, None, m.inv_axes))


# ============================================================================================ image by shapes
def image_by_shapes(inp: PairInput) -> PairResult:
    """Per-shape statistics of the image pixels whose centres lie inside each shape (see the module notes)."""
    what = f"aggregating image {inp.values_name!r} by shapes {inp.by_name!r}"
    _no_fractions(inp, what)
    _check_statistic(inp.agg_func, what)
    level, image = _raster_level(inp.values, inp, what)
    inp = _level_map(inp, inp.values, level)
    spatial = _spatial_dims(image)
    ch_idx, names = _channel_selection(image, inp.value_keys, what)
    n = len(inp.by)
    runs, _ = _shape_runs(inp, image.sizes["y"], image.sizes["x"], what)
    img = _as_dask(image)
    if ch_idx != list(range(image.sizes["c"])):
        img = img[ch_idx]
    uns = {"agg_func": inp.agg_func, "image_level": level}
    want_m2 = inp.agg_func == "std"
    blocks = img.to_delayed()
    block = dask.delayed(_runs_block)
    chunks = []
    for ci in range(blocks.shape[0]):
        parts = []
        for pos, y0, y1, x0, x1 in _block_grid(img, spatial):
            sel = _block_runs(runs, y0, y1, x0, x1)
            if sel is not None:
                parts.append(block(blocks[(ci, *pos)], sel, y0, x0, n, want_m2))
        merged = _tree_reduce(parts, _partial_merge(img.chunks[0][ci])) if parts else None
        chunks.append((merged, img.chunks[0][ci]))
    return _statistics_result(chunks, n, inp.agg_func, names, uns)


# ============================================================================================ labels by shapes
def _count_block(lab: np.ndarray, runs: tuple, y0: int, x0: int) -> tuple[np.ndarray, ...]:

    arr = np.asarray(lab).astype(np.int64, copy=False)
    if arr.ndim == 2:
        arr = arr[None]
    return reduce_pairs(*runs_label_counts(*runs, arr, y0, x0))


def _merge_counts(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:

    return reduce_pairs(*(np.concatenate([p[i] for p in parts]) for i in range(3)))


def labels_by_shapes(inp: PairInput) -> PairResult:
    """Area of every label inside every region (see the module notes); sparse, one column per label id."""
    what = f"aggregating labels {inp.values_name!r} by shapes {inp.by_name!r}"
    _no_fractions(inp, what)
    agg = inp.agg_func
    if agg not in ("sum", "count"):
        raise ValueError(f"{what}: agg_func must be 'sum' (area) or 'count' (pixels), got {agg!r}")
    level, labels = _raster_level(inp.values, inp, what)
    inp = _level_map(inp, inp.values, level)
    spatial = _spatial_dims(labels)
    n = len(inp.by)
    runs, pixel_area = _shape_runs(inp, labels.sizes["y"], labels.sizes["x"], what)
    lab = _as_dask(labels)
    blocks = lab.to_delayed()
    block = dask.delayed(_count_block)
    parts = []
    for pos, y0, y1, x0, x1 in _block_grid(lab, spatial):
        sel = _block_runs(runs, y0, y1, x0, x1)
        if sel is not None:
            parts.append(block(blocks[pos], sel, y0, x0))
    if parts:
        (shape_i, label_i, count_i) = dask.compute(_tree_reduce(parts, _merge_counts), scheduler=scheduler())[
            0
        ]
    else:
        shape_i = label_i = count_i = np.zeros(0, dtype=np.int64)
    if inp.value_keys:
        try:
            ids = np.array([int(k) for k in inp.value_keys], dtype=np.int64)
        except (TypeError, ValueError):
            raise ValueError(
                f"{what}: value_key must list label ids (integers), got {inp.value_keys}"
            ) from None
        columns = [str(k) for k in ids]
        order = np.argsort(ids, kind="stable")
        pos = np.minimum(np.searchsorted(ids[order], label_i), len(ids) - 1)
        ok = ids[order][pos] == label_i
        shape_i, label_i, count_i, cols = shape_i[ok], label_i[ok], count_i[ok], order[pos[ok]]
    else:
        ids, cols = np.unique(label_i, return_inverse=True)
        columns = [str(v) for v in ids]
    weights = count_i.astype(np.float64)
    if agg == "sum":
        weights = weights * pixel_area
    X = sp.coo_matrix((weights, (shape_i, cols)), shape=(n, len(columns))).tocsr()
    uns = {"agg_func": agg, "labels_level": level, "pixel_area": pixel_area}
    return PairResult(X, columns, uns=uns)
