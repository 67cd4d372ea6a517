"""Vectorized point-in-polygon with shapely "covers" semantics (points on the boundary are inside).

The polygon's rings (exterior and holes of every part) become one flat list of edges, bucketed into horizontal
slabs so that each point only looks at the edges whose y-range reaches its slab. A numba kernel (compiled on first
use, cached on disk, releasing the GIL so dask threads run it in parallel) computes the even-odd crossing number of
each point. Points within a tiny tolerance of an edge are classified ambiguous by the kernel and decided by
``shapely.intersects_xy`` (GEOS, robust predicates), so the result equals ``shapely.intersects_xy(polygon, x, y)``
for a valid polygon while running at numba speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import shapely

__all__ = ["PreparedPolygon", "points_in_polygon"]

_OUTSIDE, _INSIDE, _AMBIGUOUS = 0, 1, 2


@numba.njit(cache=True, nogil=True)
def _classify(px, py, ax, ay, bx, by, slab_start, slab_edges, y0, h, nslabs, bounds, tol):  # pragma: no cover
    n = px.shape[0]
    out = np.zeros(n, dtype=np.uint8)
    xmin, ymin, xmax, ymax = bounds[0], bounds[1], bounds[2], bounds[3]
    for i in range(n):
        x = px[i]
        y = py[i]
        if not (x >= xmin - tol and x <= xmax + tol and y >= ymin - tol and y <= ymax + tol):
            continue  # also rejects NaN
        b = int((y - y0) / h)
        if b < 0:
            b = 0
        elif b >= nslabs:
            b = nslabs - 1
        inside = False
        ambiguous = False
        for k in range(slab_start[b], slab_start[b + 1]):
            e = slab_edges[k]
            x1 = ax[e]
            y1 = ay[e]
            x2 = bx[e]
            y2 = by[e]
            lox = min(x1, x2) - tol
            hix = max(x1, x2) + tol
            loy = min(y1, y2) - tol
            hiy = max(y1, y2) + tol
            if x >= lox and x <= hix and y >= loy and y <= hiy:
                dx = x2 - x1
                dy = y2 - y1
                cross = dx * (y - y1) - dy * (x - x1)
                if abs(cross) <= tol * (abs(dx) + abs(dy)):
                    ambiguous = True
                    break
            if (y1 > y) != (y2 > y):
                xint = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
                if x < xint:
                    inside = not inside
        if ambiguous:
            out[i] = _AMBIGUOUS
        elif inside:
            out[i] = _INSIDE
    return out


@dataclass(frozen=True)
class PreparedPolygon:
    """A (Multi)Polygon turned into slab-indexed edge arrays for :func:`points_in_polygon`."""

    geometry: shapely.Geometry
    ax: np.ndarray
    ay: np.ndarray
    bx: np.ndarray
    by: np.ndarray
    slab_start: np.ndarray
    slab_edges: np.ndarray
    y0: float
    h: float
    nslabs: int
    bounds: np.ndarray
    tol: float

    @classmethod
    def from_geometry(cls, geometry: shapely.Geometry) -> PreparedPolygon:
        """Index the edges of a Polygon or MultiPolygon (expected valid; see ``shapely.make_valid``)."""
        if shapely.get_type_id(geometry) not in (3, 6):
            raise TypeError(f"expected a Polygon or MultiPolygon, got {geometry.geom_type}")
        rings = shapely.get_rings(shapely.get_parts(geometry))
        coords, ring_index = shapely.get_coordinates(rings, return_index=True)
        # consecutive coordinates of the same ring are edges (rings are closed: last == first)
        same = ring_index[1:] == ring_index[:-1]
        a = coords[:-1][same]
        b = coords[1:][same]
        bounds = np.asarray(shapely.bounds(geometry), dtype=np.float64)
        extent = float(max(bounds[2] - bounds[0], bounds[3] - bounds[1]))
        scale = float(np.abs(bounds).max()) + extent
        tol = 1e-9 * max(scale, 1e-300)
        n_edges = len(a)
        y0, y1 = float(bounds[1]), float(bounds[3])
        nslabs = int(max(1, min(n_edges, 65_536)))
        h = (y1 - y0) / nslabs if y1 > y0 else 1.0
        lo = np.minimum(a[:, 1], b[:, 1]) - tol
        hi = np.maximum(a[:, 1], b[:, 1]) + tol
        first = np.clip(np.floor((lo - y0) / h), 0, nslabs - 1).astype(np.int64)
        last = np.clip(np.floor((hi - y0) / h), 0, nslabs - 1).astype(np.int64)
        counts = last - first + 1
        edge_ids = np.repeat(np.arange(n_edges, dtype=np.int64), counts)
        offsets = np.arange(len(edge_ids), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        slab_of = np.repeat(first, counts) + offsets
        order = np.argsort(slab_of, kind="stable")
        slab_edges = edge_ids[order]
        slab_start = np.zeros(nslabs + 1, dtype=np.int64)
        np.cumsum(np.bincount(slab_of, minlength=nslabs), out=slab_start[1:])
        shapely.prepare(geometry)
        return cls(
            geometry,
            np.ascontiguousarray(a[:, 0]),
            np.ascontiguousarray(a[:, 1]),
            np.ascontiguousarray(b[:, 0]),
            np.ascontiguousarray(b[:, 1]),
            slab_start,
            slab_edges,
            y0,
            float(h),
            nslabs,
            bounds,
            tol,
        )


def points_in_polygon(
    polygon: PreparedPolygon | shapely.Geometry, x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """Boolean mask of the points ``(x[i], y[i])`` covered by ``polygon`` (interior or boundary).

    Equals ``shapely.intersects_xy(polygon, x, y)`` (the "covers" rule) for valid polygons; NaN coordinates are
    outside. ``x`` and ``y`` are converted to float64.
    """
    prepared = polygon if isinstance(polygon, PreparedPolygon) else PreparedPolygon.from_geometry(polygon)
    px = np.ascontiguousarray(x, dtype=np.float64)
    py = np.ascontiguousarray(y, dtype=np.float64)
    if px.shape != py.shape or px.ndim != 1:
        raise ValueError(
            f"x and y must be 1-D arrays of the same length, got shapes {px.shape} and {py.shape}"
        )
    if len(px) == 0 or len(prepared.ax) == 0:
        return np.zeros(len(px), dtype=bool)
    code = _classify(
        px,
        py,
        prepared.ax,
        prepared.ay,
        prepared.bx,
        prepared.by,
        prepared.slab_start,
        prepared.slab_edges,
        prepared.y0,
        prepared.h,
        prepared.nslabs,
        prepared.bounds,
        prepared.tol,
    )
    result = code == _INSIDE
    ambiguous = np.flatnonzero(code == _AMBIGUOUS)
    if len(ambiguous):
        result[ambiguous] = shapely.intersects_xy(prepared.geometry, px[ambiguous], py[ambiguous])
    return result
