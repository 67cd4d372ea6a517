"""Which region (polygon, circle or label) each point falls in: a burned region grid and raster lookups.

Region grid
-----------
The regions (polygons, multipolygons with holes, or circles) are burned into a uniform grid of square cells
covering their bounding box. Each grid cell holds

* ``-1``: no region touches the cell;
* ``k >= 0``: region ``k`` covers the whole cell and no other region touches it;
* ``-2 - s``: a *mixed* cell, with the list of candidate regions ``cand[cand_start[s]:cand_start[s + 1]]``: the
  regions whose boundary crosses the cell (entry ``k``, tested exactly) and those covering it whole (entry
  ``~k``, accepted without a test).

The resolution is chosen so that a typical region spans about a dozen cells (within a memory budget), so most
points are resolved by one array lookup; only points in mixed cells pay an exact test against a few regions.
Marking the cells an edge crosses is conservative (dilated by a margin far above rounding error), so the exact
test always decides the points near a boundary.

Edge rules (documented in the user-facing functions as well)
-------------------------------------------------------------
One kernel, :func:`point_in_edges`, tests points against polygons for both aggregation (here) and queries
(:mod:`tissuestack.kernels._pip`, through :func:`classify_in_slabs`); the boundary rule is its parameter.

* Polygons: **half-open**, like raster pixels. A point is inside when the even-odd crossing number of a ray
  towards +x counts the edges with ``y0 <= py < y1`` (endpoints ordered so that ``y0 <= y1``) whose crossing
  abscissa is strictly greater than ``px``. The left and bottom boundaries of a polygon are inside it, the right
  and top ones outside: a point on an edge shared by two polygons (with the same vertices) belongs to exactly
  one of them, the one on its +x side (the one above it for a horizontal edge). Edge endpoints are put in a
  canonical order before the crossing abscissa is computed, so both polygons sharing an edge compute the same
  abscissa bit for bit.
* Circles: **closed disks**: ``(px - cx)**2 + (py - cy)**2 <= r**2`` (a point on the circle is inside).
* Labels: a point at intrinsic coordinates ``(x, y[, z])`` of the raster is in pixel
  ``(floor(y), floor(x)[, floor(z)])`` (pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``); points outside the
  raster are in no region.

Points are mapped into the regions' intrinsic frame inside the kernels (an affine map folded into the lookup),
so 20M points are never transformed into new arrays. All kernels release the GIL (``nogil``): dask's threaded
scheduler runs them on several partitions at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import shapely

from tissuestack.kernels._ragged import FlatGeometry

__all__ = [
    "HALF_OPEN",
    "INSIDE",
    "ON_BOUNDARY",
    "OUTSIDE",
    "RegionGrid",
    "build_circle_grid",
    "build_polygon_grid",
    "classify_in_slabs",
    "count_pairs_csr",
    "count_pairs_dense",
    "locate_in_grid",
    "lookup_labels",
    "point_in_edges",
    "polygon_edges",
    "reduce_values",
    "rows_of_labels",
]

#: default budget of grid cells (int32 each: 128 MiB)
MAX_GRID_CELLS = 1 << 25
#: target number of grid cells across a typical region
CELLS_ACROSS = 12.0
# burn the two halves of the grid in two threads from this many polygons
_PARALLEL_BURN = 20_000
_NO_REGION = -1


# ------------------------------------------------------------------------------------------------------------
# exact tests
# ------------------------------------------------------------------------------------------------------------


#: results of :func:`point_in_edges`
OUTSIDE, INSIDE, ON_BOUNDARY = 0, 1, 2
#: ``tol`` of :func:`point_in_edges` for the half-open rule (no boundary band)
HALF_OPEN = -1.0


@numba.njit(cache=True, nogil=True, inline="always")
def point_in_edges(x, y, edges, lo, hi, tol):  # pragma: no cover - compiled
    """The one point-in-polygon test: even-odd crossing number of the point against the edges ``lo:hi``.

    ``edges`` rows are ``x0, y0, x1, y1`` in canonical order (``y0 <= y1``) and sorted by ``y0`` within
    ``lo:hi``: the scan stops at the first edge starting above the point. An edge crosses the ray towards +x
    when ``y0 <= y < y1`` and its abscissa at ``y`` is greater than ``x`` (the half-open rule: left and bottom
    boundaries inside, right and top ones outside). The boundary rule is the parameter ``tol``:

    * ``tol < 0`` (:data:`HALF_OPEN`): the half-open rule decides every point (aggregation, like raster pixels);
    * ``tol >= 0``: a point within ``tol`` of an edge is reported :data:`ON_BOUNDARY` instead (the "covers"
      rule of queries then decides it exactly, with GEOS).

    Returns :data:`OUTSIDE`, :data:`INSIDE` or :data:`ON_BOUNDARY`.
    """
    inside = False
    top = y + tol if tol > 0.0 else y
    for e in range(lo, hi):
        y0 = edges[e, 1]
        if y0 > top:
            break
        y1 = edges[e, 3]
        x0 = edges[e, 0]
        if tol >= 0.0 and y <= y1 + tol:
            x1 = edges[e, 2]
            if x >= min(x0, x1) - tol and x <= max(x0, x1) + tol:
                dx = x1 - x0
                dy = y1 - y0
                if abs(dx * (y - y0) - dy * (x - x0)) <= tol * (abs(dx) + abs(dy)):
                    return ON_BOUNDARY
        if y0 <= y and y < y1:
            if x < x0 + (y - y0) * (edges[e, 2] - x0) / (y1 - y0):
                inside = not inside
    return INSIDE if inside else OUTSIDE


@numba.njit(cache=True, nogil=True, inline="always")
def _in_polygon(s, x, y, edge_start, edges):  # pragma: no cover - compiled
    """Half-open test of region ``s`` (its edges sorted by their lower y, ``edges[:, 1]``)."""
    return point_in_edges(x, y, edges, edge_start[s], edge_start[s + 1], HALF_OPEN) == INSIDE


@numba.njit(cache=True, nogil=True)
def classify_in_slabs(px, py, slab_start, slab_edges, y0, h, nslabs, bounds, tol):  # pragma: no cover
    """:func:`point_in_edges` of every point against one polygon whose edges are bucketed into horizontal slabs
    (slab ``b`` holds the edges ``slab_edges[slab_start[b]:slab_start[b + 1]]`` whose y-range, widened by
    ``tol``, reaches it, sorted by ``y0``). Points outside ``bounds`` (widened by ``tol``) and NaN are outside.
    Returns one ``uint8`` code per point (:data:`OUTSIDE`, :data:`INSIDE`, :data:`ON_BOUNDARY`)."""
    n = px.shape[0]
    out = np.zeros(n, dtype=np.uint8)
    pad = max(tol, 0.0)
    xmin, ymin, xmax, ymax = bounds[0] - pad, bounds[1] - pad, bounds[2] + pad, bounds[3] + pad
    for i in range(n):
        x = px[i]
        y = py[i]
        if not (x >= xmin and x <= xmax and y >= ymin and y <= ymax):
            continue  # also rejects NaN
        b = int((y - y0) / h)
        if b < 0:
            b = 0
        elif b >= nslabs:
            b = nslabs - 1
        out[i] = point_in_edges(x, y, slab_edges, slab_start[b], slab_start[b + 1], tol)
    return out


@numba.njit(cache=True, nogil=True, inline="always")
def _in_circle(s, x, y, circles):  # pragma: no cover - compiled
    dx = x - circles[s, 0]
    dy = y - circles[s, 1]
    return dx * dx + dy * dy <= circles[s, 2]


# ------------------------------------------------------------------------------------------------------------
# burning regions into the grid (one pass; mixed cells collect (slot, candidate) pairs)
# ------------------------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _grow(a, n):  # pragma: no cover - compiled
    if n < a.shape[0]:
        return a
    b = np.empty(max(2 * a.shape[0], n + 1), dtype=a.dtype)
    b[: a.shape[0]] = a
    return b


@numba.njit(cache=True, nogil=True)
def _grow2(a, n):  # pragma: no cover - compiled
    b = np.empty((max(2 * a.shape[0], n + 1), a.shape[1]), dtype=a.dtype)
    b[: a.shape[0]] = a
    return b


@numba.njit(cache=True, nogil=True)
def _group_pairs(pairs, n_pairs, n_multi):  # pragma: no cover - compiled
    """Candidate lists of the multi cells from their (slot, code) pairs (a counting sort by slot)."""
    start = np.zeros(n_multi + 1, dtype=np.int64)
    for i in range(n_pairs):
        start[pairs[i, 0] + 1] += 1
    for k in range(n_multi):
        start[k + 1] += start[k]
    cand = np.empty(n_pairs, dtype=np.int32)
    pos = start[:-1].copy()
    for i in range(n_pairs):
        k = pairs[i, 0]
        cand[pos[k]] = pairs[i, 1]
        pos[k] += 1
    return start, cand


@numba.njit(cache=True, nogil=True, inline="always")
def _decided(g, s, n_regions, last, base):  # pragma: no cover - compiled
    """Whether region ``s`` has already been recorded in a cell whose grid value is ``g``."""
    if g == -2 - s:
        return True
    if g <= -2 - n_regions:
        k = -2 - n_regions - g - base
        return last[k] == s or last[k] == ~s
    return False


# The burn kernels share one state machine per grid cell, for a visit of region ``s`` that either crosses the
# cell (``code = s``: its points need the exact test) or covers it whole (``code = ~s``):
#
#   -1                        -> s if covering, else -2 - s (one candidate to test)
#   t >= 0 (covered by t)     -> new multi slot m with candidates ~t, code
#   -2 - t (test t)           -> new multi slot m with candidates t, code
#   multi slot m              -> append code
#
# Multi slots are numbered in creation order and stored as -2 - n_regions - m; their (slot, code) pairs are
# grouped once at the end. ``last[m]`` (the last code appended) keeps a region from being recorded twice.


@numba.njit(cache=True, nogil=True, inline="always")
def _visit(grid, cell, code, n_regions, pairs, last, n_pairs, n_multi, base):  # pragma: no cover - compiled
    """One visit of the cell state machine (above); ``pairs`` and ``last`` have room for 2 pairs
    and 1 slot. Returns the new ``(n_pairs, n_multi)``."""
    g = grid[cell]
    if g == -1:
        grid[cell] = ~code if code < 0 else -2 - code
        return n_pairs, n_multi
    if g <= -2 - n_regions:
        m = -2 - n_regions - g
    else:
        m = n_multi
        n_multi += 1
        grid[cell] = -2 - n_regions - m
        pairs[n_pairs, 0] = m
        pairs[n_pairs, 1] = ~g if g >= 0 else -2 - g
        n_pairs += 1
    pairs[n_pairs, 0] = m
    pairs[n_pairs, 1] = code
    last[m - base] = code
    return n_pairs + 1, n_multi


@numba.njit(cache=True, nogil=True)
def _burn_polygons(
    ids, edge_start, edges, gx0, gy0, inv_h, nx, ny, eps, grid, n_regions, pairs, last, n_pairs, n_multi, base
):  # pragma: no cover - compiled
    """Burn the polygons ``ids``: the cells their edges cross (supercover, dilated by ``eps``), then the cells
    between crossings of each row's centre line (the same half-open rule as the exact test).

    Multi slots are numbered from ``n_multi`` (``last`` is indexed by ``slot - base``); returns the grown
    ``pairs``, ``last`` and the new counts."""
    h = 1.0 / inv_h
    row_n = np.zeros(64, dtype=np.int64)
    row_c = np.zeros(64, dtype=np.int64)
    xs = np.empty(256, dtype=np.float64)
    for s in ids:
        e_lo = edge_start[s]
        e_hi = edge_start[s + 1]
        if e_hi == e_lo:
            continue
        umin = np.inf
        umax = -np.inf
        vmin = np.inf
        vmax = -np.inf
        for e in range(e_lo, e_hi):
            ua = (edges[e, 0] - gx0) * inv_h
            ub = (edges[e, 2] - gx0) * inv_h
            umin = min(umin, ua, ub)
            umax = max(umax, ua, ub)
            vmin = min(vmin, (edges[e, 1] - gy0) * inv_h)
            vmax = max(vmax, (edges[e, 3] - gy0) * inv_h)
        c0 = max(int(np.floor(umin - eps)), 0)
        c1 = min(int(np.floor(umax + eps)), nx - 1)
        r0 = max(int(np.floor(vmin - eps)), 0)
        r1 = min(int(np.floor(vmax + eps)), ny - 1)
        if c1 < c0 or r1 < r0:
            continue
        bh = r1 - r0 + 1
        # 1. cells crossed by an edge: per column of the edge's u-range (dilated by eps), the rows between the
        #    edge's v at the column's (dilated) borders; one division per edge
        for e in range(e_lo, e_hi):
            ua = (edges[e, 0] - gx0) * inv_h
            va = (edges[e, 1] - gy0) * inv_h
            ub = (edges[e, 2] - gx0) * inv_h
            vb = (edges[e, 3] - gy0) * inv_h
            ulo = min(ua, ub)
            uhi = max(ua, ub)
            cl = max(int(np.floor(ulo - eps)), c0)
            ch = min(int(np.floor(uhi + eps)), c1)
            whole = cl == ch or ub == ua  # one column, or a vertical edge on a column border
            slope = 0.0 if whole else (vb - va) / (ub - ua)
            for c in range(cl, ch + 1):
                if whole:
                    v_a = va
                    v_b = vb
                else:
                    u0 = max(ulo, c - eps)
                    u1 = min(uhi, c + 1.0 + eps)
                    if u0 > u1:
                        continue
                    v_a = va + (u0 - ua) * slope
                    v_b = va + (u1 - ua) * slope
                rl = max(int(np.floor(min(v_a, v_b) - eps)), r0)
                rh = min(int(np.floor(max(v_a, v_b) + eps)), r1)
                for r in range(rl, rh + 1):
                    cell = r * nx + c
                    if _decided(grid[cell], s, n_regions, last, base):
                        continue
                    if n_pairs + 2 > pairs.shape[0]:
                        pairs = _grow2(pairs, n_pairs + 2)
                    if n_multi - base + 1 > last.shape[0]:
                        last = _grow(last, n_multi - base + 1)
                    n_pairs, n_multi = _visit(grid, cell, s, n_regions, pairs, last, n_pairs, n_multi, base)
        # 2. crossings of the edges with each row's centre line, counted per row, then filled into each row's
        #    segment of xs, kept sorted (insertion)
        if row_n.shape[0] < bh + 1:
            row_n = np.zeros(2 * (bh + 1), dtype=np.int64)
            row_c = np.zeros(2 * (bh + 1), dtype=np.int64)
        for j in range(bh + 1):
            row_n[j] = 0
        for e in range(e_lo, e_hi):
            y0 = edges[e, 1]
            y1 = edges[e, 3]
            if not (y1 > y0):
                continue
            rl = max(int(np.floor((y0 - gy0) * inv_h - 0.5)) - 1, r0)
            rh = min(int(np.floor((y1 - gy0) * inv_h - 0.5)) + 1, r1)
            for r in range(rl, rh + 1):
                yc = gy0 + (r + 0.5) * h
                if y0 <= yc and yc < y1:
                    row_n[r - r0 + 1] += 1
        for j in range(bh):
            row_n[j + 1] += row_n[j]
            row_c[j] = row_n[j]
        total = row_n[bh]
        if xs.shape[0] < total:
            xs = np.empty(2 * total, dtype=np.float64)
        for e in range(e_lo, e_hi):
            y0 = edges[e, 1]
            y1 = edges[e, 3]
            if not (y1 > y0):
                continue
            x0 = edges[e, 0]
            rl = max(int(np.floor((y0 - gy0) * inv_h - 0.5)) - 1, r0)
            rh = min(int(np.floor((y1 - gy0) * inv_h - 0.5)) + 1, r1)
            for r in range(rl, rh + 1):
                yc = gy0 + (r + 0.5) * h
                if y0 <= yc and yc < y1:
                    j = r - r0
                    xint = x0 + (yc - y0) * (edges[e, 2] - x0) / (y1 - y0)
                    k = row_c[j]
                    while k > row_n[j] and xs[k - 1] > xint:
                        xs[k] = xs[k - 1]
                        k -= 1
                    xs[k] = xint
                    row_c[j] += 1
        # 3. covered cells: centre between crossings 2k and 2k + 1, not crossed by an edge of this polygon
        for r in range(r0, r1 + 1):
            j = r - r0
            row_base = r * nx
            for k in range(row_n[j], row_n[j + 1] - 1, 2):
                ca = max(int(np.ceil((xs[k] - gx0) * inv_h - 0.5)), c0)
                cb = min(int(np.floor((xs[k + 1] - gx0) * inv_h - 0.5)), c1)
                for c in range(ca, cb + 1):
                    cell = row_base + c
                    g = grid[cell]
                    if g == -1:
                        grid[cell] = s
                        continue
                    if _decided(g, s, n_regions, last, base):
                        continue
                    if n_pairs + 2 > pairs.shape[0]:
                        pairs = _grow2(pairs, n_pairs + 2)
                    if n_multi - base + 1 > last.shape[0]:
                        last = _grow(last, n_multi - base + 1)
                    n_pairs, n_multi = _visit(grid, cell, ~s, n_regions, pairs, last, n_pairs, n_multi, base)
    return pairs, last, n_pairs, n_multi


@numba.njit(cache=True, nogil=True)
def _burn_circles(circles, gx0, gy0, inv_h, nx, ny, eps, grid, n_regions):  # pragma: no cover - compiled
    pairs = np.empty((1 << 16, 2), dtype=np.int32)
    last = np.empty(1 << 15, dtype=np.int32)
    n_pairs = 0
    n_multi = 0
    for s in range(circles.shape[0]):
        if not (circles[s, 2] >= 0.0):
            continue
        cu = (circles[s, 0] - gx0) * inv_h
        cv = (circles[s, 1] - gy0) * inv_h
        ru = np.sqrt(circles[s, 2]) * inv_h
        c0 = max(int(np.floor(cu - ru - eps)), 0)
        c1 = min(int(np.floor(cu + ru + eps)), nx - 1)
        r0 = max(int(np.floor(cv - ru - eps)), 0)
        r1 = min(int(np.floor(cv + ru + eps)), ny - 1)
        rr = ru * ru
        margin = 4.0 * eps * (ru + 1.0)
        for r in range(r0, r1 + 1):
            dy_near = max(r - cv, 0.0, cv - (r + 1.0))
            dy_far = max(abs(r - cv), abs(r + 1.0 - cv))
            for c in range(c0, c1 + 1):
                dx_near = max(c - cu, 0.0, cu - (c + 1.0))
                if dx_near * dx_near + dy_near * dy_near > rr + margin:
                    continue
                dx_far = max(abs(c - cu), abs(c + 1.0 - cu))
                crossed = dx_far * dx_far + dy_far * dy_far >= rr - margin
                if n_pairs + 2 > pairs.shape[0]:
                    pairs = _grow2(pairs, n_pairs + 2)
                if n_multi + 1 > last.shape[0]:
                    last = _grow(last, n_multi + 1)
                code = s if crossed else ~s
                n_pairs, n_multi = _visit(grid, r * nx + c, code, n_regions, pairs, last, n_pairs, n_multi, 0)
    return _group_pairs(pairs, n_pairs, n_multi)


@numba.njit(cache=True, nogil=True)
def _edges_from_coords(coords, ring, owner_of_ring, n):  # pragma: no cover - compiled
    """Consecutive coordinates of the same ring are edges; endpoints in canonical order (y0 < y1, or equal y
    and x0 <= x1). Rings come grouped by geometry, so edges come out grouped by geometry."""
    m = coords.shape[0]
    edge_start = np.zeros(n + 1, dtype=np.int64)
    for i in range(m - 1):
        if ring[i] == ring[i + 1]:
            edge_start[owner_of_ring[ring[i]] + 1] += 1
    for j in range(n):
        edge_start[j + 1] += edge_start[j]
    edges = np.empty((edge_start[n], 4), dtype=np.float64)
    k = 0
    for i in range(m - 1):
        if ring[i] != ring[i + 1]:
            continue
        ax = coords[i, 0]
        ay = coords[i, 1]
        bx = coords[i + 1, 0]
        by = coords[i + 1, 1]
        if ay > by or (ay == by and ax > bx):
            ax, ay, bx, by = bx, by, ax, ay
        edges[k, 0] = ax
        edges[k, 1] = ay
        edges[k, 2] = bx
        edges[k, 3] = by
        k += 1
    return edge_start, edges


@numba.njit(cache=True, nogil=True)
def _sort_edges_by_y(edge_start, edges):  # pragma: no cover - compiled
    """Sort each polygon's edges by their lower y: a Shell sort (gaps 1, 4, 13, ...) per polygon, insertion
    sort for the usual small polygons, O(n^1.5) for huge ones."""
    for s in range(edge_start.shape[0] - 1):
        lo = edge_start[s]
        n = edge_start[s + 1] - lo
        gap = 1
        while gap < n // 3:
            gap = 3 * gap + 1
        while gap >= 1:
            for i in range(lo + gap, lo + n):
                a0 = edges[i, 0]
                a1 = edges[i, 1]
                a2 = edges[i, 2]
                a3 = edges[i, 3]
                j = i
                while j >= lo + gap and edges[j - gap, 1] > a1:
                    edges[j, 0] = edges[j - gap, 0]
                    edges[j, 1] = edges[j - gap, 1]
                    edges[j, 2] = edges[j - gap, 2]
                    edges[j, 3] = edges[j - gap, 3]
                    j -= gap
                edges[j, 0] = a0
                edges[j, 1] = a1
                edges[j, 2] = a2
                edges[j, 3] = a3
            gap //= 3


@dataclass(frozen=True)
class RegionGrid:
    """Regions burned into a uniform grid (see the module notes), ready for :func:`locate_in_grid`."""

    is_circle: bool
    n_regions: int
    grid: np.ndarray  # int32, ny * nx (row-major)
    nx: int
    ny: int
    x0: float
    y0: float
    inv_h: float
    cand_start: np.ndarray  # int64, one more than the number of mixed cells
    cand: np.ndarray  # int32 (k: exact test; ~k: region k covers the whole cell)
    edge_start: np.ndarray  # int64 (n_regions + 1), polygons only (else [0])
    edges: np.ndarray  # float64 (n_edges, 4): x0, y0, x1, y1 with y0 <= y1, sorted by y0 per polygon
    circles: np.ndarray  # float64 (n_regions, 3): cx, cy, r**2 (negative: no disk); circles only

    @property
    def cell_size(self) -> float:
        return 1.0 / self.inv_h

    @property
    def nbytes(self) -> int:
        arrays = (self.grid, self.cand_start, self.cand, self.edge_start, self.edges, self.circles)
        return sum(a.nbytes for a in arrays)


def polygon_edges(geometries: np.ndarray | FlatGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Edges of the rings (exteriors and holes of every part) of each (Multi)Polygon, grouped by geometry.

    ``geometries`` are shapely objects or their :class:`~tissuestack.kernels._ragged.FlatGeometry`. Returns
    ``edge_start`` (int64, ``n + 1`` offsets) and ``edges`` (float64, ``n_edges x 4``: ``x0, y0, x1, y1``) with
    each edge's endpoints in canonical order (``y0 < y1``, or ``y0 == y1`` and ``x0 <= x1``) and each geometry's
    edges sorted by ``y0``. Empty or missing geometries have no edges.
    """
    if isinstance(geometries, FlatGeometry):
        flat = geometries
        n = len(flat)
        coords = flat.coords
        ring = np.repeat(np.arange(len(flat.ring_offsets) - 1), np.diff(flat.ring_offsets))
        owner_of_ring = np.repeat(np.arange(n), np.diff(flat.geom_ring_offsets))
        edge_start, edges = _edges_from_coords(coords, ring, owner_of_ring, n)
        _sort_edges_by_y(edge_start, edges)
        return edge_start, edges
    geoms = np.asarray(geometries, dtype=object)
    n = len(geoms)
    type_id = shapely.get_type_id(geoms)
    if n and (type_id == 3).all() and not shapely.get_num_interior_rings(geoms).any():
        # one ring per geometry: consecutive coordinates of the same geometry are edges
        coords = shapely.get_coordinates(geoms)
        ring = np.repeat(np.arange(n), shapely.get_num_coordinates(geoms))
        owner_of_ring = np.arange(n)
    else:
        parts, part_of = shapely.get_parts(geoms, return_index=True)
        rings, ring_part = shapely.get_rings(parts, return_index=True)
        coords, ring = shapely.get_coordinates(rings, return_index=True)
        owner_of_ring = part_of[ring_part]
    edge_start, edges = _edges_from_coords(coords, ring, owner_of_ring, n)
    _sort_edges_by_y(edge_start, edges)
    return edge_start, edges


def _grid_frame(
    xmin: float,
    ymin: float,
    xmax: float,
    ymax: float,
    typical: float,
    cell_size: float | None,
    max_cells: int,
) -> tuple[float, int, int, float]:
    w = max(xmax - xmin, 0.0)
    hgt = max(ymax - ymin, 0.0)
    if cell_size is None:
        cell_size = typical / CELLS_ACROSS if typical > 0 else max(w, hgt, 1.0) / 64.0
        area = max(w, cell_size) * max(hgt, cell_size)
        cell_size = max(cell_size, float(np.sqrt(area / max_cells)) * 1.001)
    if not (cell_size > 0 and np.isfinite(cell_size)):
        raise ValueError(f"grid cell size must be a positive finite number, got {cell_size!r}")
    nx = int(np.floor(w / cell_size)) + 1
    ny = int(np.floor(hgt / cell_size)) + 1
    inv_h = 1.0 / cell_size
    scale = max(abs(xmin), abs(xmax), abs(ymin), abs(ymax), 1e-300)
    eps = 1e-7 + 64.0 * np.finfo(np.float64).eps * scale * inv_h
    return inv_h, nx, ny, eps


@numba.njit(cache=True, nogil=True)
def _shift_slots(values, threshold, delta):  # pragma: no cover - compiled
    for i in range(values.shape[0]):
        if values[i] <= threshold:
            values[i] += delta


def _burn_all(
    edge_start: np.ndarray,
    edges: np.ndarray,
    bounds: np.ndarray,
    gx0: float,
    gy0: float,
    inv_h: float,
    nx: int,
    ny: int,
    eps: float,
    grid: np.ndarray,
    n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Burn all polygons; with many polygons, the two halves of the grid (split at a row) in two threads.

    Polygons entirely below the split row and those entirely above it write disjoint rows, so two threads can
    burn them at once (the kernel releases the GIL); the upper half numbers its multi slots from a high base and
    is renumbered afterwards. Polygons across the split are burned last.
    """
    pairs0 = np.empty((1 << 16, 2), dtype=np.int32)
    last0 = np.empty(1 << 15, dtype=np.int32)
    args = (edge_start, edges, gx0, gy0, inv_h, nx, ny, eps, grid, n)
    finite = np.isfinite(bounds).all(axis=1)
    if n < _PARALLEL_BURN or ny < 8:
        pairs, _, n_pairs, n_multi = _burn_polygons(np.arange(n), *args, pairs0, last0, 0, 0, 0)
        return _group_pairs(pairs, n_pairs, n_multi)
    with np.errstate(invalid="ignore"):
        r_lo = np.floor((bounds[:, 1] - gy0) * inv_h - eps) - 1
        r_hi = np.floor((bounds[:, 3] - gy0) * inv_h + eps) + 1
    split = float(np.floor(np.median((r_lo + r_hi)[finite] / 2)))
    low = np.flatnonzero(finite & (r_hi < split))
    high = np.flatnonzero(finite & (r_lo > split))
    across = np.ones(n, dtype=bool)  # a mask, not np.setdiff1d: numpy 2's hash-based unique takes 0.3-0.5 s here
    across[low] = False
    across[high] = False
    rest = np.flatnonzero(across)
    base = ((1 << 31) - 2 - n) // 2
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        fa = pool.submit(_burn_polygons, low, *args, pairs0, last0, 0, 0, 0)
        fb = pool.submit(_burn_polygons, high, *args, pairs0.copy(), last0.copy(), 0, base, base)
        pa, la, npa, nma = fa.result()
        pb, lb, npb, nmb = fb.result()
    nb = nmb - base
    row = int(split) + 1  # the high polygons wrote rows > split only
    _shift_slots(grid[row * nx :], -2 - n - base, base - nma)
    pb = pb[:npb].copy()
    pb[:, 0] -= base - nma
    pairs = np.concatenate([pa[:npa], pb, np.empty((1 << 16, 2), dtype=np.int32)])
    last = np.concatenate([la[:nma], lb[:nb], np.empty(1 << 15, dtype=np.int32)])
    pairs, _, n_pairs, n_multi = _burn_polygons(rest, *args, pairs, last, npa + npb, nma + nb, 0)
    return _group_pairs(pairs, n_pairs, n_multi)


def _empty_grid(is_circle: bool, n: int, edge_start: np.ndarray, edges: np.ndarray, circles: np.ndarray):
    return RegionGrid(
        is_circle, n, np.full(1, -1, dtype=np.int32), 1, 1, 0.0, 0.0, 1.0, np.zeros(1, dtype=np.int64),
        np.empty(0, dtype=np.int32), edge_start, edges, circles,
    )  # fmt: skip


def build_polygon_grid(
    geometries: np.ndarray | FlatGeometry, *, cell_size: float | None = None, max_cells: int = MAX_GRID_CELLS
) -> RegionGrid:
    """Burn (Multi)Polygons (in the frame points will be located in) into a :class:`RegionGrid`.

    ``cell_size`` defaults to the median polygon extent / 12, enlarged so the grid has at most ``max_cells``
    cells. Region ``k`` is ``geometries[k]`` (shapely objects or their ``FlatGeometry``). Polygons are expected valid (``shapely.make_valid``); the
    even-odd rule is applied to all their rings.
    """
    edge_start, edges = polygon_edges(geometries)
    n = len(edge_start) - 1
    no_circles = np.empty((0, 3), dtype=np.float64)
    if len(edges) == 0:
        return _empty_grid(False, n, edge_start, edges, no_circles)
    xmin = float(min(edges[:, 0].min(), edges[:, 2].min()))
    xmax = float(max(edges[:, 0].max(), edges[:, 2].max()))
    ymin = float(edges[:, 1].min())
    ymax = float(edges[:, 3].max())
    if isinstance(geometries, FlatGeometry):
        bounds = geometries.bounds
    else:
        bounds = shapely.bounds(np.asarray(geometries, dtype=object))
    extent = np.fmax(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1])
    extent = extent[np.isfinite(extent)]
    typical = float(np.median(extent)) if len(extent) else 0.0
    inv_h, nx, ny, eps = _grid_frame(xmin, ymin, xmax, ymax, typical, cell_size, max_cells)
    grid = np.full(nx * ny, -1, dtype=np.int32)
    cand_start, cand = _burn_all(edge_start, edges, bounds, xmin, ymin, inv_h, nx, ny, eps, grid, n)
    return RegionGrid(
        False, n, grid, nx, ny, xmin, ymin, inv_h, cand_start, cand, edge_start, edges, no_circles
    )


def build_circle_grid(
    cx: np.ndarray,
    cy: np.ndarray,
    radius: np.ndarray,
    *,
    cell_size: float | None = None,
    max_cells: int = MAX_GRID_CELLS,
) -> RegionGrid:
    """Burn circles (closed disks) into a :class:`RegionGrid`; ``cell_size`` defaults to the median diameter
    / 12 (within ``max_cells``). Circles with a missing or negative radius contain nothing."""
    cx = np.asarray(cx, dtype=np.float64)
    cy = np.asarray(cy, dtype=np.float64)
    radius = np.asarray(radius, dtype=np.float64)
    n = len(cx)
    ok = np.isfinite(cx) & np.isfinite(cy) & np.isfinite(radius) & (radius >= 0)
    circles = np.empty((n, 3), dtype=np.float64)
    circles[:, 0] = cx
    circles[:, 1] = cy
    circles[:, 2] = np.where(ok, radius * radius, -1.0)
    no_edges = np.zeros(1, dtype=np.int64)
    edges = np.empty((0, 4), dtype=np.float64)
    if not ok.any():
        return _empty_grid(True, n, no_edges, edges, circles)
    xmin = float((cx - radius)[ok].min())
    xmax = float((cx + radius)[ok].max())
    ymin = float((cy - radius)[ok].min())
    ymax = float((cy + radius)[ok].max())
    typical = float(np.median(2 * radius[ok]))
    inv_h, nx, ny, eps = _grid_frame(xmin, ymin, xmax, ymax, typical, cell_size, max_cells)
    grid = np.full(nx * ny, -1, dtype=np.int32)
    cand_start, cand = _burn_circles(circles, xmin, ymin, inv_h, nx, ny, eps, grid, n)
    return RegionGrid(True, n, grid, nx, ny, xmin, ymin, inv_h, cand_start, cand, no_edges, edges, circles)


# ------------------------------------------------------------------------------------------------------------
# locating points
# ------------------------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True, inline="always")
def _mapped(i, px, py, pz, m, affine, use_z):  # pragma: no cover - compiled
    x = np.float64(px[i])
    y = np.float64(py[i])
    if affine:
        xx = m[0, 0] * x + m[0, 1] * y + m[0, 3]
        yy = m[1, 0] * x + m[1, 1] * y + m[1, 3]
        if use_z:
            z = np.float64(pz[i])
            xx += m[0, 2] * z
            yy += m[1, 2] * z
        return xx, yy
    return x, y


@numba.njit(cache=True, nogil=True)
def _grid_values(px, py, pz, m, affine, use_z, grid, nx, ny, gx0, gy0, inv_h, out):  # pragma: no cover
    """1. The grid value under each point: a tight gather loop whose memory accesses overlap across points.
    (A separate function: inside a larger one LLVM compiles this loop 2-3x slower.)"""
    for i in range(px.shape[0]):
        x, y = _mapped(i, px, py, pz, m, affine, use_z)
        u = (x - gx0) * inv_h
        v = (y - gy0) * inv_h
        if u >= 0.0 and u < nx and v >= 0.0 and v < ny:
            out[i] = grid[int(v) * nx + int(u)]
        else:
            out[i] = -1


@numba.njit(cache=True, nogil=True)
def _tile_keys(px, py, pz, m, affine, use_z, nx, ny, gx0, gy0, inv_h, shift, ntx, out):  # pragma: no cover
    """The grid tile (``2**shift`` cells square, row-major) under each point; ``ntx * nty`` outside the grid."""
    outside = ntx * (((ny - 1) >> shift) + 1)
    for i in range(px.shape[0]):
        x, y = _mapped(i, px, py, pz, m, affine, use_z)
        u = (x - gx0) * inv_h
        v = (y - gy0) * inv_h
        if u >= 0.0 and u < nx and v >= 0.0 and v < ny:
            out[i] = (int(v) >> shift) * ntx + (int(u) >> shift)
        else:
            out[i] = outside


@numba.njit(cache=True, nogil=True)
def _counting_order(keys, n_keys):  # pragma: no cover - compiled
    """A stable permutation sorting ``keys`` (``0 <= key <= n_keys``) by a counting sort."""
    start = np.zeros(n_keys + 2, dtype=np.int64)
    for i in range(keys.shape[0]):
        start[keys[i] + 1] += 1
    for k in range(n_keys + 1):
        start[k + 1] += start[k]
    order = np.empty(keys.shape[0], dtype=np.int64)
    for i in range(keys.shape[0]):
        k = keys[i]
        order[start[k]] = i
        start[k] += 1
    return order


@numba.njit(cache=True, nogil=True)
def _bucket_undecided(px, py, pz, m, affine, use_z, cand_start, cand, n_regions, out):  # pragma: no cover
    """2. The points whose cell is undecided (``out < -1``), bucketed by candidate region (a counting sort that
    also gathers their mapped coordinates), so the exact tests read each region's edges close together."""
    n = out.shape[0]
    shift = 0
    while (n_regions >> shift) > 65536:
        shift += 1
    n_buckets = (n_regions >> shift) + 1
    start = np.zeros(n_buckets + 1, dtype=np.int64)
    n_pend = 0
    for i in range(n):
        g = out[i]
        if g < -1:
            s = -2 - g
            if s >= n_regions:
                c = cand[cand_start[s - n_regions]]
                s = c if c >= 0 else ~c
            start[(s >> shift) + 1] += 1
            n_pend += 1
    for b in range(n_buckets):
        start[b + 1] += start[b]
    idx = np.empty(n_pend, dtype=np.int64)
    code = np.empty(n_pend, dtype=np.int32)
    xs = np.empty(n_pend, dtype=np.float64)
    ys = np.empty(n_pend, dtype=np.float64)
    for i in range(n):
        g = out[i]
        if g < -1:
            s = -2 - g
            if s >= n_regions:
                c = cand[cand_start[s - n_regions]]
                s = c if c >= 0 else ~c
            b = s >> shift
            k = start[b]
            start[b] = k + 1
            x, y = _mapped(i, px, py, pz, m, affine, use_z)
            idx[k] = i
            code[k] = g
            xs[k] = x
            ys[k] = y
    return idx, code, xs, ys


@numba.njit(cache=True, nogil=True)
def _test_undecided(
    idx, code, xs, ys, cand_start, cand, is_circle, edge_start, edges, circles, n_regions, out
):  # pragma: no cover - compiled
    """3. Exact tests of the bucketed points; returns the extra (point, region) pairs of overlapping regions."""
    extra_pt = np.empty(256, dtype=np.int64)
    extra_region = np.empty(256, dtype=np.int32)
    n_extra = 0
    for k in range(idx.shape[0]):
        i = idx[k]
        s = -2 - code[k]
        x = xs[k]
        y = ys[k]
        if s < n_regions:  # a single candidate
            if is_circle:
                hit = _in_circle(s, x, y, circles)
            else:
                hit = _in_polygon(s, x, y, edge_start, edges)
            out[i] = s if hit else -1
            continue
        slot = s - n_regions
        first = -1
        for c in range(cand_start[slot], cand_start[slot + 1]):
            r = cand[c]
            if r < 0:
                r = ~r
                hit = True
            elif is_circle:
                hit = _in_circle(r, x, y, circles)
            else:
                hit = _in_polygon(r, x, y, edge_start, edges)
            if hit:
                if first < 0:
                    first = r
                else:
                    if n_extra >= extra_pt.shape[0]:
                        extra_pt = _grow(extra_pt, n_extra)
                        extra_region = _grow(extra_region, n_extra)
                    extra_pt[n_extra] = i
                    extra_region[n_extra] = r
                    n_extra += 1
        out[i] = first
    return extra_pt[:n_extra].copy(), extra_region[:n_extra].copy()


def _coords(a: np.ndarray) -> np.ndarray:
    """float32 (common for transcripts; read as is, converted to float64 inside the kernels) or float64."""
    a = np.asarray(a)
    return np.ascontiguousarray(a, dtype=np.float32 if a.dtype == np.float32 else np.float64)


def _affine_args(linear: np.ndarray | None, offset: np.ndarray | None) -> tuple[np.ndarray, bool, bool]:
    """A 2 x 4 matrix ``[[a, b, c, tx], [d, e, f, ty]]`` mapping (x, y, z) to the 2-D frame, and flags."""
    m = np.zeros((2, 4), dtype=np.float64)
    m[0, 0] = m[1, 1] = 1.0
    if linear is None:
        return m, False, False
    linear = np.asarray(linear, dtype=np.float64)
    offset = np.zeros(linear.shape[0]) if offset is None else np.asarray(offset, dtype=np.float64)
    if linear.shape[0] < 2 or linear.shape[1] not in (2, 3):
        raise ValueError(f"expected a 2x2 or 2x3 linear map, got shape {linear.shape}")
    m[:, :] = 0.0
    m[:, : linear.shape[1]] = linear[:2]
    m[:, 3] = offset[:2]
    identity = np.array_equal(m, np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    use_z = linear.shape[1] == 3 and bool(np.any(m[:, 2] != 0))
    return m, not identity, use_z


def locate_in_grid(
    grid: RegionGrid,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray | None = None,
    *,
    linear: np.ndarray | None = None,
    offset: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The region of each point, and the extra (point, region) pairs of points in several regions.

    Points ``(x, y[, z])`` are first mapped by ``linear @ p + offset`` (2 x 2 or 2 x 3; default identity) into
    the grid's frame. Returns ``region`` (int32 per point: the first region containing it, ``-1`` for none) and
    ``extra_points``, ``extra_regions`` (int64/int32) listing every further region of points inside overlapping
    regions. NaN coordinates are in no region. Edge rules: see the module notes.
    """
    px = _coords(x)
    py = _coords(y)
    n = len(px)
    if len(py) != n or (z is not None and len(z) != n):
        raise ValueError("x, y (and z) must have the same length")
    m, affine, use_z = _affine_args(linear, offset)
    if use_z and z is None:
        raise ValueError("the map depends on z but no z coordinates were given")
    if py.dtype != px.dtype or (use_z and np.asarray(z).dtype != px.dtype):
        px, py = px.astype(np.float64), py.astype(np.float64)  # mixed precisions: one common dtype
    pz = np.ascontiguousarray(z, dtype=px.dtype) if use_z else np.zeros(1, dtype=px.dtype)
    g = grid
    order = _spatial_order(g, px, py, pz, m, affine, use_z)
    if order is not None:  # unsorted points (e.g. the reference's files): located tile by tile, then put back
        px, py = px[order], py[order]
        pz = pz[order] if use_z else pz
    out = np.empty(n, dtype=np.int32)
    _grid_values(px, py, pz, m, affine, use_z, g.grid, g.nx, g.ny, g.x0, g.y0, g.inv_h, out)
    idx, code, xs, ys = _bucket_undecided(
        px, py, pz, m, affine, use_z, g.cand_start, g.cand, g.n_regions, out
    )
    extra_pt, extra_region = _test_undecided(
        idx,
        code,
        xs,
        ys,
        g.cand_start,
        g.cand,
        g.is_circle,
        g.edge_start,
        g.edges,
        g.circles,
        g.n_regions,
        out,
    )
    if order is not None:
        back = np.empty_like(out)
        back[order] = out
        return back, order[extra_pt], extra_region
    return out, extra_pt, extra_region


#: 2**_TILE_SHIFT grid cells square per tile of the spatial order (16: 1M unsorted transcripts among 100k cells
#: are located in ~68 ms, against ~75 ms with 32-cell tiles and ~90 ms with 4-cell ones); points probed; distinct
#: tiles above which the probed points count as unsorted (an area of 2M grid cells)
_TILE_SHIFT = 4
_PROBE = 4096
_UNSORTED_TILES = 2048


def _spatial_order(g: RegionGrid, px, py, pz, m, affine: bool, use_z: bool) -> np.ndarray | None:
    """A permutation visiting the points grid tile by grid tile, or ``None`` when they are already spatially
    coherent (a tissuestack store's rows are sorted) or too few to matter.

    Each point's lookup reads the grid cell under it; for points in random order over a large grid (tens of
    MB), almost every lookup misses the CPU caches: 2-2.5x slower than the same points in tile order (1M
    transcripts among 100k cells: 0.11-0.13 s against 0.045 s). The counting sort costs ~10 ms per 1M points.
    """
    n = len(px)
    if n < 16 * _PROBE:
        return None
    ntx = ((g.nx - 1) >> _TILE_SHIFT) + 1
    nty = ((g.ny - 1) >> _TILE_SHIFT) + 1
    if ntx * nty < 4 * _UNSORTED_TILES:
        return None  # a small grid stays in cache anyway
    args = (m, affine, use_z, g.nx, g.ny, g.x0, g.y0, g.inv_h, _TILE_SHIFT, ntx)
    probe = np.empty(_PROBE, dtype=np.int64)
    _tile_keys(px[:_PROBE], py[:_PROBE], pz[:_PROBE] if use_z else pz, *args, probe)
    if len(np.unique(probe)) <= _UNSORTED_TILES:
        return None
    keys = np.empty(n, dtype=np.int64)
    _tile_keys(px, py, pz, *args, keys)
    return _counting_order(keys, ntx * nty)


# ------------------------------------------------------------------------------------------------------------
# labels
# ------------------------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _lookup_labels(px, py, pz, m, labels, out):  # pragma: no cover - compiled
    """``labels`` is (planes, rows, cols); ``m`` (3 x 4) maps (x, y, z) to (col, row, plane) coordinates."""
    n = px.shape[0]
    nz, nr, nc = labels.shape
    for i in range(n):
        x = np.float64(px[i])
        y = np.float64(py[i])
        z = np.float64(pz[i]) if pz.shape[0] == n else 0.0
        u = m[0, 0] * x + m[0, 1] * y + m[0, 2] * z + m[0, 3]
        v = m[1, 0] * x + m[1, 1] * y + m[1, 2] * z + m[1, 3]
        w = m[2, 0] * x + m[2, 1] * y + m[2, 2] * z + m[2, 3]
        if not (u >= 0.0 and u < nc and v >= 0.0 and v < nr and w >= 0.0 and w < nz):
            out[i] = 0
            continue
        out[i] = labels[int(w), int(v), int(u)]


@numba.njit(cache=True, nogil=True)
def _pixel_of(px, py, pz, m, nz, nr, nc, out):  # pragma: no cover - compiled
    n = px.shape[0]
    for i in range(n):
        x = np.float64(px[i])
        y = np.float64(py[i])
        z = np.float64(pz[i]) if pz.shape[0] == n else 0.0
        u = m[0, 0] * x + m[0, 1] * y + m[0, 2] * z + m[0, 3]
        v = m[1, 0] * x + m[1, 1] * y + m[1, 2] * z + m[1, 3]
        w = m[2, 0] * x + m[2, 1] * y + m[2, 2] * z + m[2, 3]
        if not (u >= 0.0 and u < nc and v >= 0.0 and v < nr and w >= 0.0 and w < nz):
            out[i, 0] = -1
            continue
        out[i, 0] = int(w)
        out[i, 1] = int(v)
        out[i, 2] = int(u)


def _label_map(linear: np.ndarray | None, offset: np.ndarray | None, ndim: int) -> np.ndarray:
    """A 3 x 4 matrix mapping (x, y, z) to (col, row, plane); the plane is 0 for a 2-D raster."""
    m = np.zeros((3, 4), dtype=np.float64)
    if linear is None:
        m[0, 0] = m[1, 1] = 1.0
        m[2, 2] = 1.0 if ndim == 3 else 0.0
        return m
    linear = np.asarray(linear, dtype=np.float64)
    offset = np.zeros(linear.shape[0]) if offset is None else np.asarray(offset, dtype=np.float64)
    if linear.shape[0] != ndim or linear.shape[1] not in (2, 3):
        raise ValueError(f"expected a {ndim}x2 or {ndim}x3 linear map, got shape {linear.shape}")
    m[:ndim, : linear.shape[1]] = linear
    m[:ndim, 3] = offset
    return m


def lookup_labels(
    labels: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray | None = None,
    *,
    linear: np.ndarray | None = None,
    offset: np.ndarray | None = None,
) -> np.ndarray:
    """Label value under each point (0 outside the raster), for a 2-D ``(rows, cols)`` or 3-D
    ``(planes, rows, cols)`` raster in memory.

    Points are mapped by ``linear @ (x, y[, z]) + offset`` to raster coordinates ``(col, row[, plane])``
    (default identity) and looked up with the floor rule (module notes).
    """
    arr = np.asarray(labels)
    ndim = arr.ndim
    if ndim not in (2, 3):
        raise ValueError(f"labels must be 2-D or 3-D, got {ndim} dimensions")
    vol = arr[None] if ndim == 2 else arr
    if not vol.flags.c_contiguous:
        vol = np.ascontiguousarray(vol)
    px = np.ascontiguousarray(x, dtype=np.float64)
    py = np.ascontiguousarray(y, dtype=np.float64)
    n = len(px)
    m = _label_map(linear, offset, ndim)
    pz = np.ascontiguousarray(z, dtype=np.float64) if z is not None else np.zeros(0, dtype=np.float64)
    out = np.empty(n, dtype=vol.dtype)
    _lookup_labels(px, py, pz, m, vol, out)
    return out


def pixel_indices(
    shape: tuple[int, ...],
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray | None = None,
    *,
    linear: np.ndarray | None = None,
    offset: np.ndarray | None = None,
) -> np.ndarray:
    """``(plane, row, col)`` (int64, ``N x 3``; ``plane`` is ``-1`` outside) of each point in a raster of
    ``shape`` (2-D or 3-D), with the same mapping and floor rule as :func:`lookup_labels`."""
    ndim = len(shape)
    dims = (1, *shape) if ndim == 2 else tuple(shape)
    px = np.ascontiguousarray(x, dtype=np.float64)
    py = np.ascontiguousarray(y, dtype=np.float64)
    n = len(px)
    m = _label_map(linear, offset, ndim)
    pz = np.ascontiguousarray(z, dtype=np.float64) if z is not None else np.zeros(0, dtype=np.float64)
    out = np.zeros((n, 3), dtype=np.int64)
    _pixel_of(px, py, pz, m, dims[0], dims[1], dims[2], out)
    return out


@numba.njit(cache=True, nogil=True)
def _rows_lut(values, lut, out):  # pragma: no cover - compiled
    top = lut.shape[0]
    for i in range(values.shape[0]):
        v = values[i]
        out[i] = lut[v] if 0 <= v < top else -1


def rows_of_labels(values: np.ndarray, ids: np.ndarray, lut: np.ndarray | None = None) -> np.ndarray:
    """Row (position in the sorted ``ids``) of each label value, ``-1`` for values not in ``ids``.

    ``lut`` (from :func:`labels_lut`) makes it one array lookup per point.
    """
    values = np.asarray(values)
    if lut is not None:
        out = np.empty(len(values), dtype=np.int32)
        _rows_lut(values.astype(np.int64, copy=False), lut, out)
        return out
    pos = np.searchsorted(ids, values)
    pos = np.minimum(pos, max(len(ids) - 1, 0))
    ok = (ids[pos] == values) if len(ids) else np.zeros(len(values), dtype=bool)
    return np.where(ok, pos, -1).astype(np.int32)


def labels_lut(ids: np.ndarray, max_size: int = 1 << 26) -> np.ndarray | None:
    """A dense value -> row table for non-negative integer ids up to ``max_size``, else ``None``."""
    ids = np.asarray(ids)
    if len(ids) == 0 or ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= max_size:
        return None
    lut = np.full(int(ids.max()) + 1, -1, dtype=np.int32)
    lut[ids.astype(np.int64)] = np.arange(len(ids), dtype=np.int32)
    return lut


# ------------------------------------------------------------------------------------------------------------
# accumulating per region
# ------------------------------------------------------------------------------------------------------------


def _pair_arrays(rows, cols, extra_rows, extra_cols) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """int32 arrays for the count kernels (one compiled signature whatever the category code width)."""
    i32 = np.int32
    er = np.empty(0, dtype=i32) if extra_rows is None else np.ascontiguousarray(extra_rows, dtype=i32)
    ec = np.empty(0, dtype=i32) if extra_cols is None else np.ascontiguousarray(extra_cols, dtype=i32)
    return np.ascontiguousarray(rows, dtype=i32), np.ascontiguousarray(cols, dtype=i32), er, ec


@numba.njit(cache=True, nogil=True)
def _count_dense(rows, cols, extra_rows, extra_cols, n_cols, out):  # pragma: no cover - compiled
    for i in range(rows.shape[0]):
        r = rows[i]
        c = cols[i]
        if r >= 0 and c >= 0:
            out[r * n_cols + c] += 1
    for i in range(extra_rows.shape[0]):
        r = extra_rows[i]
        c = extra_cols[i]
        if r >= 0 and c >= 0:
            out[r * n_cols + c] += 1


def count_pairs_dense(
    rows: np.ndarray,
    cols: np.ndarray,
    n_rows: int,
    n_cols: int,
    extra_rows: np.ndarray | None = None,
    extra_cols: np.ndarray | None = None,
) -> np.ndarray:
    """Dense ``n_rows x n_cols`` int64 counts of the pairs ``(rows[i], cols[i])`` (negative entries skipped)."""
    out = np.zeros(n_rows * n_cols, dtype=np.int64)
    r, c, er, ec = _pair_arrays(rows, cols, extra_rows, extra_cols)
    _count_dense(r, c, er, ec, n_cols, out)
    return out.reshape(n_rows, n_cols)


@numba.njit(cache=True, nogil=True)
def _count_csr(rows, cols, extra_rows, extra_cols, n_rows, n_cols):  # pragma: no cover - compiled
    start = np.zeros(n_rows + 1, dtype=np.int64)
    for i in range(rows.shape[0]):
        r = rows[i]
        if r >= 0 and cols[i] >= 0:
            start[r + 1] += 1
    for i in range(extra_rows.shape[0]):
        r = extra_rows[i]
        if r >= 0 and extra_cols[i] >= 0:
            start[r + 1] += 1
    for r in range(n_rows):
        start[r + 1] += start[r]
    total = start[n_rows]
    grouped = np.empty(total, dtype=np.int32)
    pos = start[:-1].copy()
    for i in range(rows.shape[0]):
        r = rows[i]
        c = cols[i]
        if r >= 0 and c >= 0:
            grouped[pos[r]] = c
            pos[r] += 1
    for i in range(extra_rows.shape[0]):
        r = extra_rows[i]
        c = extra_cols[i]
        if r >= 0 and c >= 0:
            grouped[pos[r]] = c
            pos[r] += 1
    scratch = np.zeros(n_cols, dtype=np.int64)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    indices = np.empty(total, dtype=np.int32)
    data = np.empty(total, dtype=np.int64)
    nnz = 0
    for r in range(n_rows):
        a = start[r]
        b = start[r + 1]
        k0 = nnz
        for j in range(a, b):
            c = grouped[j]
            if scratch[c] == 0:
                indices[nnz] = c
                nnz += 1
            scratch[c] += 1
        for k in range(k0 + 1, nnz):  # insertion sort of the row's few columns: canonical CSR
            c = indices[k]
            j = k - 1
            while j >= k0 and indices[j] > c:
                indices[j + 1] = indices[j]
                j -= 1
            indices[j + 1] = c
        for k in range(k0, nnz):
            c = indices[k]
            data[k] = scratch[c]
            scratch[c] = 0
        indptr[r + 1] = nnz
    return indptr, indices[:nnz].copy(), data[:nnz].copy()


def count_pairs_csr(
    rows: np.ndarray,
    cols: np.ndarray,
    n_rows: int,
    n_cols: int,
    extra_rows: np.ndarray | None = None,
    extra_cols: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of the pairs ``(rows[i], cols[i])`` as canonical CSR arrays ``(indptr, indices, data)`` (column
    indices sorted within each row, no duplicates): a counting sort by row, then a scratch counter per row and an
    insertion sort of its (few) columns. Negative entries are skipped."""
    r, c, er, ec = _pair_arrays(rows, cols, extra_rows, extra_cols)
    return _count_csr(r, c, er, ec, n_rows, n_cols)


@numba.njit(cache=True, nogil=True)
def _reduce(rows, extra_pt, extra_rows, vals, with_m2, count, total, lo, hi, m2):  # pragma: no cover
    n = rows.shape[0]
    k = vals.shape[1]
    n_extra = extra_pt.shape[0]
    for i in range(n + n_extra):
        if i < n:
            r = rows[i]
            p = i
        else:
            r = extra_rows[i - n]
            p = extra_pt[i - n]
        if r < 0:
            continue
        for j in range(k):
            v = vals[p, j]
            if v != v:
                continue
            count[r, j] += 1
            total[r, j] += v
            if v < lo[r, j]:
                lo[r, j] = v
            if v > hi[r, j]:
                hi[r, j] = v
    if with_m2:
        for i in range(n + n_extra):
            if i < n:
                r = rows[i]
                p = i
            else:
                r = extra_rows[i - n]
                p = extra_pt[i - n]
            if r < 0:
                continue
            for j in range(k):
                v = vals[p, j]
                if v != v:
                    continue
                d = v - total[r, j] / count[r, j]
                m2[r, j] += d * d


def reduce_values(
    rows: np.ndarray,
    values: np.ndarray,
    n_rows: int,
    extra_points: np.ndarray | None = None,
    extra_rows: np.ndarray | None = None,
    *,
    with_m2: bool = False,
) -> dict[str, np.ndarray]:
    """Per-row statistics of ``values`` (``N x k``) over the points with ``rows[i] >= 0`` (plus the extra
    (point, row) pairs): ``count`` (non-NaN values), ``sum``, ``min``, ``max`` and, with ``with_m2``, the sum of
    squared deviations from each row's mean ``m2``. NaN values are skipped."""
    vals = np.asarray(values, dtype=np.float64)
    if vals.ndim == 1:
        vals = vals[:, None]
    k = vals.shape[1]
    count = np.zeros((n_rows, k), dtype=np.int64)
    total = np.zeros((n_rows, k), dtype=np.float64)
    lo = np.full((n_rows, k), np.inf)
    hi = np.full((n_rows, k), -np.inf)
    m2 = np.zeros((n_rows, k) if with_m2 else (0, 0), dtype=np.float64)
    ep = np.empty(0, dtype=np.int64) if extra_points is None else np.asarray(extra_points, dtype=np.int64)
    er = np.empty(0, dtype=np.int32) if extra_rows is None else np.asarray(extra_rows, dtype=np.int32)
    _reduce(np.ascontiguousarray(rows, dtype=np.int32), ep, er, vals, with_m2, count, total, lo, hi, m2)
    out = {"count": count, "sum": total, "min": lo, "max": hi}
    if with_m2:
        out["m2"] = m2
    return out


# ------------------------------------------------------------------------------------------------------------
# distinct label values
# ------------------------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _mark_present(flat, lo, present):  # pragma: no cover - compiled
    for i in range(flat.shape[0]):
        present[np.int64(flat[i]) - lo] = True


def unique_labels(block: np.ndarray, max_span: int = 1 << 27) -> np.ndarray:
    """Sorted distinct values of an integer array in O(n) (a presence table) when their span ``max - min`` is at
    most ``max_span``; otherwise ``np.unique``."""
    flat = np.ascontiguousarray(block).reshape(-1)
    if flat.size == 0 or flat.dtype.kind not in "iu":
        return np.unique(flat)
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo > max_span or hi >= 1 << 63:
        return np.unique(flat)
    present = np.zeros(hi - lo + 1, dtype=np.bool_)
    _mark_present(flat, lo, present)
    return (np.flatnonzero(present) + lo).astype(flat.dtype)


def union_labels(*parts: np.ndarray) -> np.ndarray:
    """Sorted distinct values of several arrays of sorted distinct values."""
    return unique_labels(np.concatenate(parts)) if len(parts) > 1 else parts[0]
