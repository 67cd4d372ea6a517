"""Zonal statistics and overlap kernels: disc/polygon intersection areas, polygon and disc rasterisation into
pixel runs, and per-zone statistics of pixel blocks.

Pixel conventions (every raster kernel here)
---------------------------------------------
Pixel ``(row i, column j)`` of a raster covers ``[j, j + 1) x [i, i + 1)`` in its intrinsic coordinates; its
centre is ``(j + 0.5, i + 0.5)``. A pixel belongs to a shape when its **centre** does:

* polygons (and multipolygons, holes): the even-odd crossing rule with half-open edges (the classic PNPOLY
  test): the centre ``(px, py)`` is inside when an odd number of edges ``a -> b`` satisfy
  ``(ay > py) != (by > py)`` and ``px < ax + (py - ay) * (bx - ax) / (by - ay)``. Centres exactly on a left or
  bottom edge are inside, on a right or top edge outside, so polygons that tile the plane split the pixels
  exactly once (no pixel counted twice, none lost). An axis-aligned rectangle ``[x0, x1] x [y0, y1]`` holds
  the pixels whose centres lie in ``[x0, x1) x [y0, y1)``.
* discs: a centre is inside when it maps (through an affine pixel -> disc-frame map) into the closed disc,
  ``(u - cx)**2 + (v - cy)**2 <= r**2``: the disc keeps its exact shape under any affine map (an ellipse on
  the pixel grid).

Rasterised shapes are returned as **runs** ``(shape, row, col_start, col_stop)`` (half-open columns), sorted by
row: a shape is never burnt into a full-size raster, so memory is proportional to the shapes' perimeter in
rows, and overlapping shapes each keep their own pixels.

Zonal statistics of one block return a compact :class:`ZonalPartial` (only the zones present in the block);
:func:`merge_partials` combines partials (counts and sums add, minima/maxima combine, and the sums of squared
deviations merge with Chan et al.'s pairwise formula, so ``std`` never subtracts two large sums of squares);
:func:`finalize` turns the merged partial into one statistic per zone.

All numba kernels compile on first use (``cache=True``) and release the GIL, so dask threads run them in
parallel.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np

from tissuestack.kernels._burn import burn_pixel
from tissuestack.kernels._moments import STATISTICS, statistic_from_moments
from tissuestack.kernels._ragged import from_shapely

__all__ = [
    "STATISTICS",
    "ZonalPartial",
    "burn_polygons",
    "circle_runs",
    "disc_polygon_areas",
    "empty_partial",
    "finalize",
    "flatten_polygons",
    "labels_block_stats",
    "merge_partials",
    "place_anchors",
    "polygon_owner",
    "polygon_runs",
    "reduce_pairs",
    "runs_block_stats",
    "runs_label_counts",
]


# ============================================================================================ flattening
class FlatPolygons(NamedTuple):
    """(Multi)polygons as flat arrays: the closed rings ``x/y[ring_offsets[q]:ring_offsets[q + 1]]``, the
    ring's role ``ring_sign[q]`` (+1 exterior, -1 hole) and geometry ``g``'s rings
    ``geom_ring_offsets[g]:geom_ring_offsets[g + 1]``."""

    x: np.ndarray
    y: np.ndarray
    ring_offsets: np.ndarray
    ring_sign: np.ndarray
    geom_ring_offsets: np.ndarray


def flatten_polygons(geoms: np.ndarray) -> FlatPolygons:
    """Flatten an array of Polygons / MultiPolygons (``shapely.to_ragged_array``, no Python loop); shapes
    elements get these arrays from their cached :func:`tissuestack.ops._shapes_flat.flat_geometry`."""
    flat = from_shapely(np.asarray(geoms, dtype=object))
    return FlatPolygons(flat.x, flat.y, flat.ring_offsets, flat.ring_sign, flat.geom_ring_offsets)


# ============================================================================================ disc x polygon
@numba.njit(cache=True, nogil=True)
def _sector(ux, uy, vx, vy, r2):  # pragma: no cover - numba
    """Signed area of the circular sector between directions ``u`` and ``v`` (radius**2 = r2)."""
    return 0.5 * r2 * math.atan2(ux * vy - uy * vx, ux * vx + uy * vy)


@numba.njit(cache=True, nogil=True)
def _triangle_disc(ax, ay, bx, by, r2):  # pragma: no cover - numba
    """Signed area of ``triangle(0, a, b) ∩ disc(0, sqrt(r2))`` (positive when ``0, a, b`` turn left)."""
    a2 = ax * ax + ay * ay
    b2 = bx * bx + by * by
    if a2 <= r2 and b2 <= r2:  # the disc is convex and holds 0, a and b: the whole triangle is inside
        return 0.5 * (ax * by - ay * bx)
    dx = bx - ax
    dy = by - ay
    qa = dx * dx + dy * dy
    if qa == 0.0:
        return 0.0
    qb = ax * dx + ay * dy
    qc = a2 - r2
    disc = qb * qb - qa * qc
    if disc <= 0.0:  # the line of the edge misses the open disc: a pure sector
        return _sector(ax, ay, bx, by, r2)
    s = math.sqrt(disc)
    t1 = (-qb - s) / qa
    t2 = (-qb + s) / qa
    if t2 <= 0.0 or t1 >= 1.0:  # the chord lies outside the segment
        return _sector(ax, ay, bx, by, r2)
    if t1 < 0.0:
        t1 = 0.0
    if t2 > 1.0:
        t2 = 1.0
    px = ax + t1 * dx
    py = ay + t1 * dy
    qx = ax + t2 * dx
    qy = ay + t2 * dy
    return _sector(ax, ay, px, py, r2) + 0.5 * (px * qy - py * qx) + _sector(qx, qy, bx, by, r2)


@numba.njit(cache=True, nogil=True)
def disc_polygon_areas(
    cx, cy, radius, disc_index, poly_index, x, y, ring_offsets, ring_sign, geom_ring_offsets
):  # pragma: no cover - numba
    """Exact area of ``disc[disc_index[k]] ∩ polygon[poly_index[k]]`` for every pair ``k``.

    Polygons are flattened: ring ``q`` has the closed coordinates ``x/y[ring_offsets[q]:ring_offsets[q + 1]]``
    (last == first), ``ring_sign[q]`` is +1 for an exterior ring and -1 for a hole, and geometry ``g`` owns the
    rings ``geom_ring_offsets[g]:geom_ring_offsets[g + 1]`` (every part of a multipolygon). Each ring
    contributes the signed sum over its edges of ``area(triangle(centre, a, b) ∩ disc)``, corrected by its
    orientation, so the rings may be oriented either way. Circles are exact (no polygon approximation).

    Returns ``(area, overlaps, polygon_area)``: ``overlaps[k]`` tells whether the open disc meets the polygon
    (an edge passes closer than the radius to the centre, or the centre is inside): the pair overlaps with
    positive area. Pairs that only touch, or do not meet, get area 0.
    """
    n = disc_index.shape[0]
    out = np.zeros(n, dtype=np.float64)
    overlaps = np.zeros(n, dtype=np.bool_)
    poly_area = np.zeros(n, dtype=np.float64)
    for k in range(n):
        d = disc_index[k]
        g = poly_index[k]
        ccx = cx[d]
        ccy = cy[d]
        r2 = radius[d] * radius[d]
        total = 0.0
        area = 0.0
        near = False
        inside = False
        for q in range(geom_ring_offsets[g], geom_ring_offsets[g + 1]):
            s = 0.0
            shoelace = 0.0
            for i in range(ring_offsets[q], ring_offsets[q + 1] - 1):
                ax = x[i] - ccx
                ay = y[i] - ccy
                bx = x[i + 1] - ccx
                by = y[i + 1] - ccy
                shoelace += ax * by - ay * bx
                s += _triangle_disc(ax, ay, bx, by, r2)
                if not near:  # distance from the centre to the edge
                    dx = bx - ax
                    dy = by - ay
                    dd = dx * dx + dy * dy
                    t = 0.0 if dd == 0.0 else min(max(-(ax * dx + ay * dy) / dd, 0.0), 1.0)
                    px = ax + t * dx
                    py = ay + t * dy
                    near = px * px + py * py < r2
                if (ay > 0.0) != (by > 0.0) and 0.0 < ax + (0.0 - ay) * (bx - ax) / (by - ay):
                    inside = not inside
            if shoelace < 0.0:
                s = -s
            total += ring_sign[q] * s
            area += ring_sign[q] * 0.5 * abs(shoelace)
        poly_area[k] = area
        if near or inside:
            overlaps[k] = True
            out[k] = max(total, 0.0)
    return out, overlaps, poly_area


# ============================================================================================ rasterisation
@numba.njit(cache=True, nogil=True)
def _first_index_at_or_after(v):  # pragma: no cover - numba
    """Smallest integer ``i`` with ``i + 0.5 >= v`` (exact, ``v`` finite and of moderate size)."""
    i = math.ceil(v - 0.5)
    while (i - 1) + 0.5 >= v:
        i -= 1
    while i + 0.5 < v:
        i += 1
    return i


@numba.njit(cache=True, nogil=True)
def _clip(v, lo, hi):  # pragma: no cover - numba
    if v < lo:
        return lo
    if v > hi:
        return hi
    return v


@numba.njit(cache=True, nogil=True)
def _grow(arr, size):  # pragma: no cover - numba
    """A larger copy of an int64 array (at least ``size``, at least twice as large)."""
    new = 2 * arr.shape[0]
    if new < size:
        new = size
    out = np.empty(new, dtype=np.int64)
    for i in range(arr.shape[0]):  # an explicit loop: slice assignment costs seconds of compilation
        out[i] = arr[i]
    return out


@numba.njit(cache=True, nogil=True)
def _head(arr, m):  # pragma: no cover - numba
    """A copy of the first ``m`` items of an int64 array."""
    out = np.empty(m, dtype=np.int64)
    for i in range(m):
        out[i] = arr[i]
    return out


@numba.njit(cache=True, nogil=True)
def _shell_sort(a):  # pragma: no cover - numba
    """Sort a small float array in place (numba's np.sort takes seconds to compile)."""
    n = a.shape[0]
    gap = 1
    while gap < n // 3:
        gap = 3 * gap + 1
    while gap > 0:
        for i in range(gap, n):
            v = a[i]
            j = i
            while j >= gap and a[j - gap] > v:
                a[j] = a[j - gap]
                j -= gap
            a[j] = v
        gap //= 3


@numba.njit(cache=True, nogil=True, inline="always")
def _edge_rows(ay, by, hf, height):  # pragma: no cover - numba
    """Rows ``e0 <= r < e1`` whose pixel-centre line ``r + 0.5`` an edge from ``y = ay`` to ``y = by`` crosses
    (half-open: ``e0 >= e1`` for none, and for horizontal or NaN edges)."""
    if ay == by or not (ay == ay and by == by):
        return 0, 0
    e0 = max(_first_index_at_or_after(_clip(min(ay, by), -1.0, hf + 1.0)), 0)
    e1 = min(_first_index_at_or_after(_clip(max(ay, by), -1.0, hf + 1.0)), height)
    return e0, e1


@numba.njit(cache=True, nogil=True, inline="always")
def _span_cols(x0, x1, wf, width):  # pragma: no cover - numba
    """Columns ``c0 <= j < c1`` whose pixel centres lie in ``[x0, x1)``, clipped to the grid."""
    c0 = max(_first_index_at_or_after(_clip(x0, -1.0, wf + 1.0)), 0)
    c1 = min(_first_index_at_or_after(_clip(x1, -1.0, wf + 1.0)), width)
    return c0, c1


@numba.njit(cache=True, nogil=True, inline="always")
def _row_spans(xs, a, b, wf, width, spans):  # pragma: no cover - numba
    """Sort one pixel-centre row's crossings ``xs[a:b]`` in place and write the column spans between crossing
    pairs (the even-odd rule), non-empty and clipped to the grid, into ``spans`` (at least ``(b - a) // 2`` rows
    of ``(c0, c1)``); returns how many."""
    k = 0
    if b - a < 2:
        return k
    seg = xs[a:b]
    _shell_sort(seg)
    for p in range(0, b - a - 1, 2):
        x0 = seg[p]
        x1 = seg[p + 1]
        if not (x1 > x0):
            continue
        c0, c1 = _span_cols(x0, x1, wf, width)
        if c1 <= c0:
            continue
        spans[k, 0] = c0
        spans[k, 1] = c1
        k += 1
    return k


@numba.njit(cache=True, nogil=True)
def polygon_runs(x, y, ring_offsets, geom_ring_offsets, height, width):  # pragma: no cover - numba
    """Pixel runs of polygons on a ``height x width`` grid (coordinates in pixel units, see the module notes).

    Returns ``(shape, row, col_start, col_stop)`` int64 arrays, sorted by shape then row; ``col_stop`` is
    exclusive and runs are clipped to the grid.
    """
    n_geoms = geom_ring_offsets.shape[0] - 1
    m = 0
    hf = float(height)
    wf = float(width)
    # rows crossed by each edge (the coordinate after it; closing coordinates of rings cross nothing)
    n_coords = x.shape[0]
    e_r0 = np.zeros(n_coords, dtype=np.int64)
    e_r1 = np.zeros(n_coords, dtype=np.int64)
    for q in range(ring_offsets.shape[0] - 1):
        for i in range(ring_offsets[q], ring_offsets[q + 1] - 1):
            e0, e1 = _edge_rows(y[i], y[i + 1], hf, height)
            if e1 > e0:
                e_r0[i] = e0
                e_r1[i] = e1
    # scratch buffers sized for the largest geometry, reused (allocating per geometry dominates otherwise)
    max_rows = 1
    max_cross = 1
    total_cross = 0
    for g in range(n_geoms):
        lo_row = height
        hi_row = -1
        n_cross = 0
        for i in range(ring_offsets[geom_ring_offsets[g]], ring_offsets[geom_ring_offsets[g + 1]]):
            if e_r1[i] > e_r0[i]:
                n_cross += e_r1[i] - e_r0[i]
                lo_row = min(lo_row, e_r0[i])
                hi_row = max(hi_row, e_r1[i] - 1)
        max_rows = max(max_rows, hi_row - lo_row + 1)
        max_cross = max(max_cross, n_cross)
        total_cross += n_cross
    # every run uses two crossings: the outputs never grow
    o_shape = np.empty(total_cross // 2, dtype=np.int64)
    o_row = np.empty(total_cross // 2, dtype=np.int64)
    o_c0 = np.empty(total_cross // 2, dtype=np.int64)
    o_c1 = np.empty(total_cross // 2, dtype=np.int64)
    row_count = np.empty(max_rows + 1, dtype=np.int64)
    fill = np.empty(max_rows, dtype=np.int64)
    xs = np.empty(max_cross, dtype=np.float64)
    spans = np.empty((max_cross // 2 + 1, 2), dtype=np.int64)
    for g in range(n_geoms):
        i0 = ring_offsets[geom_ring_offsets[g]]
        i1 = ring_offsets[geom_ring_offsets[g + 1]]
        lo_row = height
        hi_row = -1
        n_cross = 0
        for i in range(i0, i1):
            if e_r1[i] > e_r0[i]:
                n_cross += e_r1[i] - e_r0[i]
                lo_row = min(lo_row, e_r0[i])
                hi_row = max(hi_row, e_r1[i] - 1)
        if n_cross == 0:
            continue
        n_rows = hi_row - lo_row + 1
        # counting sort of the crossings by row
        for r in range(n_rows + 1):
            row_count[r] = 0
        for i in range(i0, i1):
            for r in range(e_r0[i], e_r1[i]):
                row_count[r - lo_row + 1] += 1
        for r in range(n_rows):
            row_count[r + 1] += row_count[r]
        for r in range(n_rows):
            fill[r] = row_count[r]
        for i in range(i0, i1):
            ax = x[i]
            ay = y[i]
            bx = x[i + 1]
            by = y[i + 1]
            for r in range(e_r0[i], e_r1[i]):
                yc = r + 0.5
                xs[fill[r - lo_row]] = ax + (yc - ay) * (bx - ax) / (by - ay)
                fill[r - lo_row] += 1
        for r in range(n_rows):
            for q in range(_row_spans(xs, row_count[r], row_count[r + 1], wf, width, spans)):
                o_shape[m] = g
                o_row[m] = r + lo_row
                o_c0[m] = spans[q, 0]
                o_c1[m] = spans[q, 1]
                m += 1
    return o_shape[:m], o_row[:m], o_c0[:m], o_c1[:m]


#: polygons from which :func:`burn_polygons` splits the rows into bands on threads
_BAND_MIN_POLYGONS = 20_000


def burn_polygons(coords, ring_offsets, geom_ring_offsets, m, values, out, seen, op, threads: int = 2) -> None:
    """Burn ``values[g]`` of each polygon ``g`` (flat arrays, ``coords`` (n, 2) intrinsic; ``m`` (2 x 3) maps
    them to pixel units) into ``out`` / ``seen`` (``(height, width)``) by reduction ``op``, over exactly the
    pixels of :func:`polygon_runs` (NaN values burn nothing), in geometry order: the same raster as
    ``burn_runs(*polygon_runs(...), values, out, seen, op)`` without the run arrays.

    With many polygons, the rows are split into ``threads`` bands at quantiles of the polygons' rows, each burnt
    by one thread over every polygon (the kernel releases the GIL): the bands' pixels are disjoint, and each
    pixel still sees the polygons in order.
    """
    height = out.shape[0]
    n = geom_ring_offsets.shape[0] - 1
    cuts = np.array([0, height])
    if threads >= 2 and n >= _BAND_MIN_POLYGONS and height >= 4 * threads:
        # band borders at quantiles of each polygon's first vertex row: about as many polygons per band
        first = coords[ring_offsets[geom_ring_offsets[:-1][np.diff(geom_ring_offsets) > 0]]]
        rows = m[1, 0] * first[:, 0] + m[1, 1] * first[:, 1] + m[1, 2]
        rows = rows[np.isfinite(rows)]
        if len(rows):
            inner = np.clip(np.quantile(rows, np.linspace(0, 1, threads + 1)[1:-1]), 0, height).astype(np.int64)
            cuts = np.unique(np.concatenate([[0], inner, [height]]))
    if len(cuts) == 2:
        _burn_band(coords, ring_offsets, geom_ring_offsets, m, values, out, seen, op, 0, height)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(cuts) - 1) as pool:
        list(
            pool.map(
                lambda k: _burn_band(
                    coords, ring_offsets, geom_ring_offsets, m, values, out, seen, op, cuts[k], cuts[k + 1]
                ),
                range(len(cuts) - 1),
            )
        )


@numba.njit(cache=True, nogil=True, inline="always")
def _crossed_rows(coords, ring_offsets, q0, q1, m, hf, height, row_lo, row_hi):  # pragma: no cover - numba
    """``(lo_row, hi_row, n_crossings)`` of the rings ``q0:q1`` (mapped by ``m`` to pixel units) with the
    pixel-centre lines of the rows ``row_lo:row_hi`` (``n_crossings`` 0: none)."""
    lo_row = height
    hi_row = -1
    n_cross = 0
    for q in range(q0, q1):
        for i in range(ring_offsets[q], ring_offsets[q + 1] - 1):
            ay = m[1, 0] * coords[i, 0] + m[1, 1] * coords[i, 1] + m[1, 2]
            by = m[1, 0] * coords[i + 1, 0] + m[1, 1] * coords[i + 1, 1] + m[1, 2]
            e0, e1 = _edge_rows(ay, by, hf, height)
            e0 = max(e0, row_lo)
            e1 = min(e1, row_hi)
            if e1 > e0:
                n_cross += e1 - e0
                lo_row = min(lo_row, e0)
                hi_row = max(hi_row, e1 - 1)
    return lo_row, hi_row, n_cross


@numba.njit(cache=True, nogil=True, inline="always")
def _room(row_count, fill, xs, spans, n_rows, n_cross):  # pragma: no cover - numba
    """The scratch buffers of :func:`_row_crossings` and :func:`_row_spans`, grown to ``n_rows`` rows and
    ``n_cross`` crossings where they are smaller."""
    if row_count.shape[0] < n_rows + 1:
        row_count = np.empty(2 * (n_rows + 1), dtype=np.int64)
        fill = np.empty(2 * (n_rows + 1), dtype=np.int64)
    if xs.shape[0] < n_cross:
        xs = np.empty(2 * n_cross, dtype=np.float64)
        spans = np.empty((n_cross + 1, 2), dtype=np.int64)
    return row_count, fill, xs, spans


@numba.njit(cache=True, nogil=True, inline="always")
def _row_crossings(
    coords, ring_offsets, q0, q1, m, hf, height, row_lo, row_hi, lo_row, n_rows, row_count, fill, xs
):  # pragma: no cover - numba
    """The x of every crossing of the rings ``q0:q1`` with the centre lines of the rows
    ``lo_row:lo_row + n_rows`` (within ``row_lo:row_hi``), grouped by row: row ``lo_row + r`` has
    ``xs[row_count[r]:row_count[r + 1]]`` (unsorted). The buffers must hold ``n_rows + 1`` rows and every
    crossing."""
    for r in range(n_rows + 1):
        row_count[r] = 0
    for q in range(q0, q1):
        for i in range(ring_offsets[q], ring_offsets[q + 1] - 1):
            ay = m[1, 0] * coords[i, 0] + m[1, 1] * coords[i, 1] + m[1, 2]
            by = m[1, 0] * coords[i + 1, 0] + m[1, 1] * coords[i + 1, 1] + m[1, 2]
            e0, e1 = _edge_rows(ay, by, hf, height)
            for r in range(max(e0, row_lo), min(e1, row_hi)):
                row_count[r - lo_row + 1] += 1
    for r in range(n_rows):
        row_count[r + 1] += row_count[r]
    for r in range(n_rows):
        fill[r] = row_count[r]
    for q in range(q0, q1):
        for i in range(ring_offsets[q], ring_offsets[q + 1] - 1):
            ax = m[0, 0] * coords[i, 0] + m[0, 1] * coords[i, 1] + m[0, 2]
            ay = m[1, 0] * coords[i, 0] + m[1, 1] * coords[i, 1] + m[1, 2]
            bx = m[0, 0] * coords[i + 1, 0] + m[0, 1] * coords[i + 1, 1] + m[0, 2]
            by = m[1, 0] * coords[i + 1, 0] + m[1, 1] * coords[i + 1, 1] + m[1, 2]
            e0, e1 = _edge_rows(ay, by, hf, height)
            for r in range(max(e0, row_lo), min(e1, row_hi)):
                yc = r + 0.5
                xs[fill[r - lo_row]] = ax + (yc - ay) * (bx - ax) / (by - ay)
                fill[r - lo_row] += 1


@numba.njit(cache=True, nogil=True)
def _burn_band(
    coords, ring_offsets, geom_ring_offsets, m, values, out, seen, op, row_lo, row_hi
):  # pragma: no cover - numba
    """:func:`burn_polygons` for the rows ``row_lo:row_hi``: each row's crossings, and so its spans, are those
    of the whole polygon (every edge crossing the row is counted), restricted to the band."""
    height = out.shape[0]
    width = out.shape[1]
    hf = float(height)
    wf = float(width)
    row_count = np.empty(64, dtype=np.int64)
    fill = np.empty(64, dtype=np.int64)
    xs = np.empty(64, dtype=np.float64)
    spans = np.empty((33, 2), dtype=np.int64)
    for g in range(geom_ring_offsets.shape[0] - 1):
        v = values[g]
        if v != v:
            continue
        q0 = geom_ring_offsets[g]
        q1 = geom_ring_offsets[g + 1]
        # a polygon whose vertices all lie a row or more outside the band crosses none of its rows
        y_min = np.inf
        y_max = -np.inf
        for i in range(ring_offsets[q0], ring_offsets[q1]):
            vy = m[1, 0] * coords[i, 0] + m[1, 1] * coords[i, 1] + m[1, 2]
            y_min = min(y_min, vy)
            y_max = max(y_max, vy)
        if y_max < row_lo - 1.0 or y_min > row_hi + 1.0:
            continue
        lo_row, hi_row, n_cross = _crossed_rows(coords, ring_offsets, q0, q1, m, hf, height, row_lo, row_hi)
        if n_cross == 0:
            continue
        n_rows = hi_row - lo_row + 1
        row_count, fill, xs, spans = _room(row_count, fill, xs, spans, n_rows, n_cross)
        _row_crossings(
            coords, ring_offsets, q0, q1, m, hf, height, row_lo, row_hi, lo_row, n_rows, row_count, fill, xs
        )
        for r in range(n_rows):
            for k in range(_row_spans(xs, row_count[r], row_count[r + 1], wf, width, spans)):
                for j in range(spans[k, 0], spans[k, 1]):
                    burn_pixel(out, seen, r + lo_row, j, v, op)


@numba.njit(cache=True, nogil=True, inline="always")
def _mix(k):  # pragma: no cover - numba
    """A fixed pseudo-random 64-bit value of ``k`` (splitmix64's finaliser), never 0."""
    z = np.uint64(k) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return z | np.uint64(1)


def polygon_owner(coords, ring_offsets, geom_ring_offsets, rank, m, owner, threads: int = 2) -> None:
    """Burn polygons (flat arrays, ``coords`` (n, 2) intrinsic) into ``owner`` (int64 ``(height, width)``, filled
    with ``-1``) in draw order: geometry ``g`` is drawn ``rank[g]``-th (``-1``: not drawn), and a pixel gets the
    rank of the last polygon covering its centre, with :func:`polygon_runs`' rule. ``m`` (2 x 3) maps intrinsic
    coordinates to pixel units.

    The pixels are those of mapping the coordinates, :func:`polygon_runs` and burning the runs by rank, with no
    temporary array per polygon, geometries visited in storage order. A polygon that covers no pixel centre
    (shapes many times smaller than a pixel: an overview) is placed in the pixel holding the mean of its first
    ring's vertices (closing vertex included) when no covering polygon claims that pixel; of several such
    polygons in one pixel, a fixed pseudo-random one (by rank) wins, so a crowd of tiny shapes keeps the
    proportions of its colours.

    Large inputs are burnt on ``threads`` threads (geometry ranges into separate rasters, merged by maximum).
    """
    n = rank.shape[0]
    anchor = np.full(n, -1, dtype=np.int64)  # pixel index of each polygon placed by its vertices' mean
    if threads < 2 or n < 100_000:
        _owner_burn(coords, ring_offsets, geom_ring_offsets, rank, m, owner, anchor, 0, n)
    else:
        from concurrent.futures import ThreadPoolExecutor

        cuts = np.linspace(0, n, threads + 1).astype(np.int64)
        parts = [owner] + [np.full(owner.shape, -1, dtype=np.int64) for _ in range(threads - 1)]
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(
                pool.map(
                    lambda t: _owner_burn(
                        coords,
                        ring_offsets,
                        geom_ring_offsets,
                        rank,
                        m,
                        parts[t],
                        anchor,
                        cuts[t],
                        cuts[t + 1],
                    ),
                    range(threads),
                )
            )
        for part in parts[1:]:
            np.maximum(owner, part, out=owner)
    place_anchors(owner, anchor, rank)


@numba.njit(cache=True, nogil=True)
def _owner_burn(
    coords, ring_offsets, geom_ring_offsets, rank, m, owner, anchor, g_lo, g_hi
):  # pragma: no cover
    """:func:`polygon_owner` for geometries ``g_lo:g_hi``: the covered pixels, and ``anchor`` of the others."""
    height = owner.shape[0]
    width = owner.shape[1]
    hf = float(height)
    wf = float(width)
    m00, m01, m02 = m[0, 0], m[0, 1], m[0, 2]
    m10, m11, m12 = m[1, 0], m[1, 1], m[1, 2]
    row_count = np.empty(64, dtype=np.int64)
    fill = np.empty(64, dtype=np.int64)
    xs = np.empty(64, dtype=np.float64)
    spans = np.empty((33, 2), dtype=np.int64)
    for g in range(g_lo, g_hi):
        k = rank[g]
        if k < 0:
            continue
        q0 = geom_ring_offsets[g]
        q1 = geom_ring_offsets[g + 1]
        if q1 == q0:
            continue
        # the y range, and the first ring's vertex mean: a polygon between two rows of pixel centres (the
        # common case of an overview) crosses none, and is placed by its mean after one pass
        ra = ring_offsets[q0]
        rb = ring_offsets[q0 + 1]
        y_min = np.inf
        y_max = -np.inf
        sx = 0.0
        sy = 0.0
        for i in range(ra, ring_offsets[q1]):
            vy = m10 * coords[i, 0] + m11 * coords[i, 1] + m12
            if vy < y_min:
                y_min = vy
            if vy > y_max:
                y_max = vy
            if i < rb:
                sx += m00 * coords[i, 0] + m01 * coords[i, 1] + m02
                sy += vy
        if not (y_min <= y_max):
            continue  # no finite vertex
        if _first_index_at_or_after(_clip(y_min, -1.0, hf + 1.0)) >= _first_index_at_or_after(
            _clip(y_max, -1.0, hf + 1.0)
        ):
            _place(anchor, g, sx, sy, rb - ra, width, height)
            continue
        lo_row, hi_row, n_cross = _crossed_rows(coords, ring_offsets, q0, q1, m, hf, height, 0, height)
        hit = False
        if n_cross > 0:
            n_rows = hi_row - lo_row + 1
            row_count, fill, xs, spans = _room(row_count, fill, xs, spans, n_rows, n_cross)
            _row_crossings(
                coords, ring_offsets, q0, q1, m, hf, height, 0, height, lo_row, n_rows, row_count, fill, xs
            )
            for r in range(n_rows):
                for q in range(_row_spans(xs, row_count[r], row_count[r + 1], wf, width, spans)):
                    hit = True
                    for j in range(spans[q, 0], spans[q, 1]):
                        if owner[r + lo_row, j] < k:
                            owner[r + lo_row, j] = k
        if not hit:
            _place(anchor, g, sx, sy, rb - ra, width, height)


@numba.njit(cache=True, nogil=True, inline="always")
def _place(anchor, g, sx, sy, count, width, height):  # pragma: no cover - numba
    """``anchor[g]``: the pixel index of the vertex mean ``(sx, sy) / count``, or -1 outside (or NaN)."""
    if count <= 0:
        return
    fx = sx / count
    fy = sy / count
    if not (0.0 <= fx < float(width) and 0.0 <= fy < float(height)):
        return
    col = math.floor(fx)
    row = math.floor(fy)
    if col < width and row < height:
        anchor[g] = row * width + col


@numba.njit(cache=True, nogil=True)
def place_anchors(owner, anchor, rank):  # pragma: no cover - numba
    """Place shapes that cover no pixel centre: shape ``g`` (drawn ``rank[g]``-th) goes to pixel ``anchor[g]``
    (a flat index; ``-1``: none) unless a covering shape owns it; of several there, the largest ``_mix(rank)``
    wins (a fixed pseudo-random one). Used by :func:`polygon_owner` and for circles."""
    height = owner.shape[0]
    width = owner.shape[1]
    n = rank.shape[0]
    # the tiny polygons: one per free pixel, the largest _mix(rank) of those placed there
    best = np.zeros(height * width, dtype=np.uint64)
    chosen = np.full(height * width, -1, dtype=np.int64)
    for g in range(n):
        px = anchor[g]
        if px < 0 or owner[px // width, px % width] >= 0:
            continue
        h = _mix(rank[g])
        if h > best[px]:
            best[px] = h
            chosen[px] = rank[g]
    for px in range(height * width):
        if chosen[px] >= 0:
            owner[px // width, px % width] = chosen[px]


@numba.njit(cache=True, nogil=True)
def _in_disc(px, py, m, cx, cy, r2):  # pragma: no cover - numba
    u = (m[0, 0] * px + m[0, 1] * py + m[0, 2]) - cx
    v = (m[1, 0] * px + m[1, 1] * py + m[1, 2]) - cy
    return u * u + v * v <= r2


@numba.njit(cache=True, nogil=True)
def circle_runs(cx, cy, radius, m, height, width):  # pragma: no cover - numba
    """Pixel runs of discs: pixel centre ``p`` is inside disc ``k`` when ``m @ [p, 1]`` lies in it (closed).

    ``m`` (2 x 3) maps pixel coordinates to the discs' frame; it must be invertible. Returns
    ``(shape, row, col_start, col_stop)`` like :func:`polygon_runs`. Each row of an ellipse is one interval:
    its ends come from the quadratic and are then fixed with the exact test above, so the runs hold exactly
    the pixels that pass it.
    """
    a00 = m[0, 0]
    a01 = m[0, 1]
    a10 = m[1, 0]
    a11 = m[1, 1]
    det = a00 * a11 - a01 * a10
    i10 = -a10 / det
    i11 = a00 / det
    qa = a00 * a00 + a10 * a10
    n = cx.shape[0]
    cap = 1024
    o_shape = np.empty(cap, dtype=np.int64)
    o_row = np.empty(cap, dtype=np.int64)
    o_c0 = np.empty(cap, dtype=np.int64)
    o_c1 = np.empty(cap, dtype=np.int64)
    cnt = 0
    hf = float(height)
    wf = float(width)
    for k in range(n):
        r = radius[k]
        if not (r >= 0.0) or not (cx[k] == cx[k]) or not (cy[k] == cy[k]):
            continue
        r2 = r * r
        # centre and half-height of the ellipse on the pixel grid
        ux = cx[k] - m[0, 2]
        uy = cy[k] - m[1, 2]
        pcy = i10 * ux + i11 * uy
        hy = r * math.sqrt(i10 * i10 + i11 * i11)
        row0 = max(math.floor(_clip(pcy - hy - 0.5, -2.0, hf + 2.0)) - 1, 0)
        row1 = min(math.ceil(_clip(pcy + hy - 0.5, -2.0, hf + 2.0)) + 1, height - 1)
        for row in range(row0, row1 + 1):
            py = row + 0.5
            k0 = a01 * py + m[0, 2] - cx[k]
            k1 = a11 * py + m[1, 2] - cy[k]
            qb = 2.0 * (a00 * k0 + a10 * k1)
            qc = k0 * k0 + k1 * k1 - r2
            vertex = -qb / (2.0 * qa)
            disc = qb * qb - 4.0 * qa * qc
            if disc >= 0.0:
                s = math.sqrt(disc)
                x0 = (-qb - s) / (2.0 * qa)
                x1 = (-qb + s) / (2.0 * qa)
                j0 = max(math.ceil(_clip(x0 - 0.5, -2.0, wf + 2.0)), 0)
                j1 = min(math.floor(_clip(x1 - 0.5, -2.0, wf + 2.0)), width - 1)
            else:
                j0 = 1
                j1 = 0
            while j0 <= j1 and not _in_disc(j0 + 0.5, py, m, cx[k], cy[k], r2):
                j0 += 1
            while j1 >= j0 and not _in_disc(j1 + 0.5, py, m, cx[k], cy[k], r2):
                j1 -= 1
            if j0 > j1:  # empty by the quadratic; rounding may hide a pixel next to the vertex
                jv = math.floor(_clip(vertex - 0.5, -2.0, wf + 2.0))
                found = False
                for jj in range(jv, jv + 2):
                    if 0 <= jj < width and _in_disc(jj + 0.5, py, m, cx[k], cy[k], r2):
                        j0 = jj
                        j1 = jj
                        found = True
                        break
                if not found:
                    continue
            while j0 - 1 >= 0 and _in_disc(j0 - 0.5, py, m, cx[k], cy[k], r2):
                j0 -= 1
            while j1 + 1 < width and _in_disc(j1 + 1.5, py, m, cx[k], cy[k], r2):
                j1 += 1
            if cnt == o_shape.shape[0]:
                o_shape = _grow(o_shape, cnt + 1)
                o_row = _grow(o_row, cnt + 1)
                o_c0 = _grow(o_c0, cnt + 1)
                o_c1 = _grow(o_c1, cnt + 1)
            o_shape[cnt] = k
            o_row[cnt] = row
            o_c0[cnt] = j0
            o_c1[cnt] = j1 + 1
            cnt += 1
    return _head(o_shape, cnt), _head(o_row, cnt), _head(o_c0, cnt), _head(o_c1, cnt)


# ============================================================================================ block statistics
class ZonalPartial(NamedTuple):
    """Statistics of some zones over part of a raster: arrays ``(channels, k)`` for the zones ``ids`` (k,).

    ``count`` counts non-NaN pixels; ``m2`` is the sum of squared deviations from the zone's mean (only filled
    when ``std`` is wanted, zeros otherwise).
    """

    ids: np.ndarray
    count: np.ndarray
    total: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    m2: np.ndarray


def empty_partial(n_channels: int) -> ZonalPartial:
    z = np.zeros((n_channels, 0), dtype=np.float64)
    return ZonalPartial(np.zeros(0, dtype=np.int64), z, z, z, z, z)


@numba.njit(cache=True, nogil=True)
def _new_stats(c, k):  # pragma: no cover - numba
    count = np.zeros((c, k), dtype=np.float64)
    total = np.zeros((c, k), dtype=np.float64)
    mn = np.full((c, k), np.inf)
    mx = np.full((c, k), -np.inf)
    m2 = np.zeros((c, k), dtype=np.float64)
    return count, total, mn, mx, m2


@numba.njit(cache=True, nogil=True)
def labels_block_stats(
    labels, values, lut, lut_start, sorted_ids, sorted_rows, n_zones, want_m2
):  # pragma: no cover
    """Per-zone statistics of one block: ``labels`` (N,) int64, ``values`` (C, N) float64.

    A label ``v`` is zone ``lut[v - lut_start]`` when ``lut`` is not empty (-1 = no zone), else
    ``sorted_rows[i]`` where ``sorted_ids[i] == v`` (binary search). Pixels of no zone and NaN values are
    skipped. Returns ``(ids, count, total, minimum, maximum, m2)`` for the zones present.
    """
    n = labels.shape[0]
    c = values.shape[0]
    codes = np.empty(n, dtype=np.int64)
    slot = np.full(n_zones, -1, dtype=np.int64)
    ids = np.empty(min(n, n_zones), dtype=np.int64)
    k = 0
    use_lut = lut.shape[0] > 0
    n_lut = lut.shape[0]
    n_sorted = sorted_ids.shape[0]
    for i in range(n):
        v = labels[i]
        z = -1
        if use_lut:
            j = v - lut_start
            if 0 <= j < n_lut:
                z = lut[j]
        elif n_sorted > 0:
            lo = 0
            hi = n_sorted
            while lo < hi:  # binary search (np.searchsorted is slow to compile)
                mid = (lo + hi) >> 1
                if sorted_ids[mid] < v:
                    lo = mid + 1
                else:
                    hi = mid
            if lo < n_sorted and sorted_ids[lo] == v:
                z = sorted_rows[lo]
        if z < 0:
            codes[i] = -1
            continue
        s = slot[z]
        if s < 0:
            s = k
            slot[z] = k
            ids[k] = z
            k += 1
        codes[i] = s
    count, total, mn, mx, m2 = _new_stats(c, k)
    for ch in range(c):
        for i in range(n):
            s = codes[i]
            if s < 0:
                continue
            x = values[ch, i]
            if x != x:
                continue
            count[ch, s] += 1.0
            total[ch, s] += x
            if x < mn[ch, s]:
                mn[ch, s] = x
            if x > mx[ch, s]:
                mx[ch, s] = x
        if want_m2:
            for i in range(n):
                s = codes[i]
                if s < 0:
                    continue
                x = values[ch, i]
                if x != x:
                    continue
                d = x - total[ch, s] / count[ch, s]
                m2[ch, s] += d * d
    return _head(ids, k), count, total, mn, mx, m2


@numba.njit(cache=True, nogil=True)
def runs_block_stats(
    run_shape, run_row, run_c0, run_c1, values, row0, col0, n_zones, want_m2
):  # pragma: no cover
    """Per-shape statistics of one block ``values`` (C, Z, Y, X) float64 whose first pixel is ``(row0, col0)``.

    Runs are in grid coordinates; each run applies to every ``z`` plane of the block (2D shapes over a 3D
    image are prisms). Shapes that overlap each get their pixels. Returns ``(ids, count, total, minimum,
    maximum, m2)`` for the shapes with at least one run in the block.
    """
    c = values.shape[0]
    nz = values.shape[1]
    ny = values.shape[2]
    nx = values.shape[3]
    nr = run_shape.shape[0]
    slot = np.full(n_zones, -1, dtype=np.int64)
    ids = np.empty(min(nr, n_zones), dtype=np.int64)
    run_slot = np.full(nr, -1, dtype=np.int64)
    k = 0
    for t in range(nr):
        r = run_row[t] - row0
        if r < 0 or r >= ny:
            continue
        a = max(run_c0[t] - col0, 0)
        b = min(run_c1[t] - col0, nx)
        if b <= a:
            continue
        z = run_shape[t]
        s = slot[z]
        if s < 0:
            s = k
            slot[z] = k
            ids[k] = z
            k += 1
        run_slot[t] = s
    count, total, mn, mx, m2 = _new_stats(c, k)
    for ch in range(c):
        for t in range(nr):
            s = run_slot[t]
            if s < 0:
                continue
            r = run_row[t] - row0
            a = max(run_c0[t] - col0, 0)
            b = min(run_c1[t] - col0, nx)
            for zz in range(nz):
                for j in range(a, b):
                    x = values[ch, zz, r, j]
                    if x != x:
                        continue
                    count[ch, s] += 1.0
                    total[ch, s] += x
                    if x < mn[ch, s]:
                        mn[ch, s] = x
                    if x > mx[ch, s]:
                        mx[ch, s] = x
        if want_m2:
            for t in range(nr):
                s = run_slot[t]
                if s < 0:
                    continue
                r = run_row[t] - row0
                a = max(run_c0[t] - col0, 0)
                b = min(run_c1[t] - col0, nx)
                for zz in range(nz):
                    for j in range(a, b):
                        x = values[ch, zz, r, j]
                        if x != x:
                            continue
                        d = x - total[ch, s] / count[ch, s]
                        m2[ch, s] += d * d
    return _head(ids, k), count, total, mn, mx, m2


@numba.njit(cache=True, nogil=True)
def runs_label_counts(run_shape, run_row, run_c0, run_c1, labels, row0, col0):  # pragma: no cover - numba
    """Pixel counts of each (shape, label) pair in one labels block (Z, Y, X) int64 at ``(row0, col0)``.

    Label 0 (background) is skipped. Returns ``(shape, label, count)`` arrays with repeated pairs (equal
    consecutive labels along a run are merged); reduce them with :func:`reduce_pairs`.
    """
    nz = labels.shape[0]
    ny = labels.shape[1]
    nx = labels.shape[2]
    cap = 1024
    o_s = np.empty(cap, dtype=np.int64)
    o_l = np.empty(cap, dtype=np.int64)
    o_n = np.empty(cap, dtype=np.int64)
    m = 0
    for t in range(run_shape.shape[0]):
        r = run_row[t] - row0
        if r < 0 or r >= ny:
            continue
        a = max(run_c0[t] - col0, 0)
        b = min(run_c1[t] - col0, nx)
        if b <= a:
            continue
        for zz in range(nz):
            j = a
            while j < b:
                v = labels[zz, r, j]
                e = j + 1
                while e < b and labels[zz, r, e] == v:
                    e += 1
                if v != 0:
                    if m == o_s.shape[0]:
                        o_s = _grow(o_s, m + 1)
                        o_l = _grow(o_l, m + 1)
                        o_n = _grow(o_n, m + 1)
                    o_s[m] = run_shape[t]
                    o_l[m] = v
                    o_n[m] = e - j
                    m += 1
                j = e
    return _head(o_s, m), _head(o_l, m), _head(o_n, m)


# ============================================================================================ merging (numpy)
def reduce_pairs(shape: np.ndarray, label: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sum ``count`` over equal ``(shape, label)`` pairs; returns unique pairs sorted by shape then label."""
    if len(shape) == 0:
        return shape, label, count
    order = np.lexsort((label, shape))
    s, lab, c = shape[order], label[order], count[order]
    start = np.flatnonzero(np.r_[True, (s[1:] != s[:-1]) | (lab[1:] != lab[:-1])])
    return s[start], lab[start], np.add.reduceat(c, start)


def merge_partials(parts: list[ZonalPartial], n_channels: int) -> ZonalPartial:
    """Combine partial statistics of the same ``n_channels`` channels (any zones, in any order) into one."""
    parts = [p for p in parts if len(p.ids)]
    if not parts:
        return empty_partial(n_channels)
    if len(parts) == 1:
        return parts[0]
    ids = np.concatenate([p.ids for p in parts])
    uniq, inv = np.unique(ids, return_inverse=True)
    k = len(uniq)
    count_i = np.concatenate([p.count for p in parts], axis=1)
    total_i = np.concatenate([p.total for p in parts], axis=1)
    min_i = np.concatenate([p.minimum for p in parts], axis=1)
    max_i = np.concatenate([p.maximum for p in parts], axis=1)
    m2_i = np.concatenate([p.m2 for p in parts], axis=1)
    c = count_i.shape[0]
    count = np.empty((c, k))
    total = np.empty((c, k))
    mn = np.full((c, k), np.inf)
    mx = np.full((c, k), -np.inf)
    m2 = np.empty((c, k))
    for ch in range(c):
        count[ch] = np.bincount(inv, weights=count_i[ch], minlength=k)
        total[ch] = np.bincount(inv, weights=total_i[ch], minlength=k)
        np.minimum.at(mn[ch], inv, min_i[ch])
        np.maximum.at(mx[ch], inv, max_i[ch])
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total[ch] / count[ch]
            mean_i = total_i[ch] / count_i[ch]
            dev = np.where(count_i[ch] > 0, count_i[ch] * (mean_i - mean[inv]) ** 2, 0.0)
        m2[ch] = np.bincount(inv, weights=m2_i[ch] + dev, minlength=k)
    return ZonalPartial(uniq, count, total, mn, mx, m2)


def finalize(partial: ZonalPartial, n_zones: int, agg_func: str, n_channels: int) -> np.ndarray:
    """One statistic per zone and channel as an ``(n_zones, n_channels)`` float64 array.

    Zones without (non-NaN) pixels get ``0`` for ``sum`` and ``count`` and NaN for the other statistics.
    ``std`` is the sample standard deviation (``ddof=1``, NaN below two pixels), like pandas.
    """
    if agg_func not in STATISTICS:
        raise ValueError(f"unknown statistic {agg_func!r}; expected one of {STATISTICS}")
    fill = 0.0 if agg_func in ("sum", "count") else np.nan
    out = np.full((n_channels, n_zones), fill, dtype=np.float64)
    if len(partial.ids) == 0:
        return out.T.copy()
    ids = partial.ids
    val = statistic_from_moments(
        agg_func, partial.count, partial.total, partial.minimum, partial.maximum, partial.m2
    )
    out[:, ids] = val
    return out.T.copy()
