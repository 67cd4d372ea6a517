"""Aggregation of shapes by shapes (``values`` and ``by`` each circles, polygons or multipolygons).

Semantics
---------
Every value geometry ``v`` and region ``b`` form a pair with a weight ``w``:

* ``fractions=False``: ``w = 1`` when ``v`` and ``b`` overlap with **positive area** (their interiors meet).
  Geometries that only touch (a shared edge or vertex, a circle tangent to a polygon) are **not** members.
* ``fractions=True``: ``w = area(v ∩ b) / area(v)``, the share of the value's own area inside the region
  (cell-type fractions per Visium spot). Touching pairs have ``w = 0`` and are dropped; a value of zero area
  contributes nothing.

Circles are exact discs: the area of a disc intersected with a polygon is computed analytically (sum over the
polygon's edges of the area of the triangle ``(centre, a, b)`` intersected with the disc, see
:func:`tissuestack.kernels._zonal.disc_polygon_areas`), two discs intersect in a lens of closed form, and a
disc's area is ``pi r**2``. Only when circles must be mapped through a transformation that is not a similarity
(an ellipse) are they replaced by a 512-vertex regular polygon whose radius is enlarged so that its area is
exactly ``pi r**2`` (shape error below 0.002% of the radius); the transformation is always applied to the
cheaper side, preferring the one that keeps the circles exact.

Result columns, with ``w`` as above and ``v`` a value's key:

* no ``value_key``: one column ``"count"`` = ``sum(w)`` (a fractional count with fractions).
* one categorical key: one column per category (sparse CSR): ``agg_func="sum"`` gives ``sum(w)`` over the
  values of that category (with fractions: the expected number of cells of each type in the spot);
  ``"count"`` gives the number of member values (weights ignored). Other functions raise.
* numeric keys (one column each, dense): ``sum = sum(w v)``, ``count = sum(w)``, ``mean = sum(w v) / sum(w)``,
  ``std`` the weighted sample standard deviation ``sqrt(sum(w (v - mean)**2) / (V1 - V2 / V1))`` with
  ``V1 = sum(w)``, ``V2 = sum(w**2)`` (reliability weights; without fractions this is pandas' ``ddof=1``
  std, NaN below two members), ``min`` / ``max`` over the member values (weights ignored). NaN values are
  skipped. A region without members gets ``0`` for sum and count and NaN otherwise.

Key values are the columns of the values element (the front end copies table columns into it for
``values_table``).

Candidate pairs come from one ``shapely.STRtree`` query over arrays (``dwithin`` for circles against the
centres, ``intersects`` for polygons), areas from shapely 2 array functions or the numba disc kernel: no
Python loop per geometry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import shapely
from pandas.api.types import is_bool_dtype, is_numeric_dtype
from shapely.errors import GEOSException

from tissuestack.elements._shapes import RADIUS_COLUMN, shapes_type
from tissuestack.kernels._ragged import FlatGeometry, box_pairs, from_shapely
from tissuestack.kernels._zonal import disc_polygon_areas
from tissuestack.ops._aggregate_pairs import PairInput, PairResult
from tissuestack.ops._shapes_flat import flat_geometry
from tissuestack.transforms import AffineMap

__all__ = ["shapes_by_shapes", "xy_map"]

_CIRCLE_QUAD_SEGS = 128  # 512 vertices when a circle must become a polygon (non-similarity transformation)


# ============================================================================================ transformations
def xy_map(m: AffineMap, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``(2 x 2, 2)`` linear part and offset of ``m`` restricted to input and output axes ``x``, ``y``.

    Raises ``ValueError`` (naming ``what``) when ``x``/``y`` are missing or depend on another input axis.
    """
    try:
        rows = [m.out_axes.index(a) for a in ("x", "y")]
        cols = [m.in_axes.index(a) for a in ("x", "y")]
    except ValueError:
        raise ValueError(
            f"{what}: the transformation maps axes {m.in_axes} to {m.out_axes}; both need x and y"
        ) from None
    others = [j for j, a in enumerate(m.in_axes) if a not in ("x", "y")]
    if others and np.any(m.linear[np.ix_(rows, others)] != 0):
        raise ValueError(
            f"{what}: x and y of the target depend on the {m.in_axes[others[0]]!r} axis; aggregation needs a "
            "transformation that keeps the x/y plane"
        )
    return m.linear[np.ix_(rows, cols)].astype(np.float64), m.offset[rows].astype(np.float64)


def _is_identity(lin: np.ndarray, off: np.ndarray) -> bool:
    return bool(np.array_equal(lin, np.eye(2)) and not off.any())


def _similarity_scale(lin: np.ndarray) -> float | None:
    """``s`` when ``lin`` is ``s`` times a rotation/reflection, else ``None``."""
    g = lin.T @ lin
    s2 = float(g[0, 0])
    if s2 > 0 and np.allclose(g, s2 * np.eye(2), rtol=1e-12, atol=1e-12 * s2):
        return math.sqrt(s2)
    return None


# ============================================================================================ sides
@dataclass
class _Side:
    """One side of the aggregation in the working frame: circles (centres, radii) or polygons, as flat
    coordinate arrays; shapely geometries only when a path needs them (polygons by polygons, circles by circles,
    circles turned into polygons)."""

    flat: FlatGeometry  # points (the centres) for circles
    radius: np.ndarray | None  # None for polygons
    make_geoms: Callable[[], np.ndarray] | None = None  # the element's own geometries (untransformed side)
    _geoms: np.ndarray | None = None

    @property
    def circles(self) -> bool:
        return self.radius is not None

    def __len__(self) -> int:
        return len(self.flat)

    @property
    def geoms(self) -> np.ndarray:
        """Shapely geometries (Points for circles), made on first use."""
        if self._geoms is None:
            if self.make_geoms is not None:
                self._geoms = self.make_geoms()
            elif self.circles:
                self._geoms = shapely.points(self.flat.coords)
            else:
                self._geoms = self.flat.to_shapely()
        return self._geoms

    @property
    def cost(self) -> int:
        """Coordinates to transform."""
        return len(self.flat.coords)

    def areas(self, index: np.ndarray) -> np.ndarray:
        if self.circles:
            return math.pi * self.radius[index] ** 2
        return self.flat.areas[index]

    def boxes(self) -> np.ndarray:
        """``(n, 4)`` bounding boxes (of the discs for circles)."""
        if self.circles:
            c, r = self.flat.coords, self.radius
            return np.column_stack([c[:, 0] - r, c[:, 1] - r, c[:, 0] + r, c[:, 1] + r])
        return self.flat.bounds


def _side(gdf: Any) -> _Side:
    flat = flat_geometry(gdf)  # from the store's WKB when there is one: no shapely objects

    def geoms() -> np.ndarray:
        return np.asarray(gdf.geometry.array)

    if len(flat) and shapes_type(gdf) == "circles":
        return _Side(flat, gdf[RADIUS_COLUMN].to_numpy(dtype=np.float64), geoms)
    return _Side(flat, None, geoms)


def _circles_as_polygons(side: _Side) -> _Side:
    """Regular polygons with the exact area of the discs (vertices on a slightly larger circle)."""
    n = 4 * _CIRCLE_QUAD_SEGS
    grow = math.sqrt(2 * math.pi / (n * math.sin(2 * math.pi / n)))
    polygons = shapely.buffer(side.geoms, side.radius * grow, quad_segs=_CIRCLE_QUAD_SEGS)
    return _Side(from_shapely(polygons), None, None, polygons)


def _transform(side: _Side, lin: np.ndarray, off: np.ndarray) -> _Side:
    if not side.circles:
        return _Side(side.flat.transformed(lin, off), None)
    scale = _similarity_scale(lin)
    if scale is None:
        return _Side(_circles_as_polygons(side).flat.transformed(lin, off), None)
    return _Side(side.flat.transformed(lin, off), side.radius * scale)


def _place(values: _Side, by: _Side, inp: PairInput) -> tuple[_Side, _Side]:
    """Both sides in one frame: transform the side that keeps circles exact, then the cheaper one."""
    lin, off = xy_map(inp.values_to_by, f"aggregating {inp.values_name!r} by {inp.by_name!r}")
    if _is_identity(lin, off):
        return values, by
    if abs(np.linalg.det(lin)) == 0:
        raise ValueError(
            f"the transformation from {inp.values_name!r} to {inp.by_name!r} is singular on x/y; "
            "shapes cannot be aggregated through it"
        )
    inv = np.linalg.inv(lin)
    inv_off = -inv @ off
    similar = _similarity_scale(lin) is not None
    # (exact?, cost) of transforming each side
    options = [
        ((values.circles and not similar), values.cost, "values"),
        ((by.circles and not similar), by.cost, "by"),
    ]
    options.sort(key=lambda o: (o[0], o[1]))
    if options[0][2] == "values":
        return _transform(values, lin, off), by
    return values, _transform(by, inv, inv_off)


# ============================================================================================ pairs
def _lens_area(d: np.ndarray, r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """Area of the intersection of two discs with radii ``r1``, ``r2`` whose centres are ``d`` apart."""
    out = np.zeros(len(d))
    small = np.minimum(r1, r2)
    inside = d <= np.abs(r1 - r2)
    out[inside] = math.pi * small[inside] ** 2
    part = ~inside & (d < r1 + r2)
    if part.any():
        d_, a, b = d[part], r1[part], r2[part]
        c1 = np.clip((d_ * d_ + a * a - b * b) / (2 * d_ * a), -1.0, 1.0)
        c2 = np.clip((d_ * d_ + b * b - a * a) / (2 * d_ * b), -1.0, 1.0)
        k = (-d_ + a + b) * (d_ + a - b) * (d_ - a + b) * (d_ + a + b)
        out[part] = a * a * np.arccos(c1) + b * b * np.arccos(c2) - 0.5 * np.sqrt(np.maximum(k, 0.0))
    return out


def _disc_polygon(
    discs: _Side, d_idx: np.ndarray, polys: _Side, p_idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(intersection area, overlaps with positive area, polygon area)`` of each disc/polygon pair.

    A polygon whose bounding box lies in the disc is inside it (the disc is convex): its own area, no kernel.
    """
    n = len(d_idx)
    inter, overlaps, poly_area = np.zeros(n), np.zeros(n, dtype=bool), np.zeros(n)
    if n == 0:
        return inter, overlaps, poly_area
    cx, cy, r = discs.flat.x, discs.flat.y, discs.radius
    x0, y0, x1, y1 = polys.flat.bounds[p_idx].T
    pcx, pcy = cx[d_idx], cy[d_idx]
    far_x = np.maximum(np.abs(x0 - pcx), np.abs(x1 - pcx))
    far_y = np.maximum(np.abs(y0 - pcy), np.abs(y1 - pcy))
    inside = far_x * far_x + far_y * far_y <= r[d_idx] ** 2
    if inside.any():
        poly_area[inside] = polys.flat.areas[p_idx[inside]]
        inter[inside] = poly_area[inside]
        overlaps[inside] = poly_area[inside] > 0
    rest = np.flatnonzero(~inside)
    if len(rest):
        flat = polys.flat
        inter[rest], overlaps[rest], poly_area[rest] = disc_polygon_areas(
            cx,
            cy,
            r,
            d_idx[rest].astype(np.int64),
            p_idx[rest].astype(np.int64),
            flat.x,
            flat.y,
            flat.ring_offsets,
            flat.ring_sign,
            flat.geom_ring_offsets,
        )
    return inter, overlaps, poly_area


def _pairs(values: _Side, by: _Side, fractions: bool, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(value index, region index, weight)`` of every member pair (weight 1, or the area fraction)."""
    if len(values) == 0 or len(by) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    if values.circles and by.circles:
        tree = shapely.STRtree(by.geoms)
        reach = values.radius + float(by.radius.max())
        v, b = tree.query(values.geoms, predicate="dwithin", distance=reach)
        d = shapely.distance(values.geoms[v], by.geoms[b])
        keep = d < values.radius[v] + by.radius[b]
        v, b, d = v[keep], b[keep], d[keep]
        if not fractions:
            return v, b, np.ones(len(v))
        return _weights(v, b, _lens_area(d, values.radius[v], by.radius[b]), values.areas(v))
    elif values.circles or by.circles:
        discs, polys = (values, by) if values.circles else (by, values)
        # candidates: the pairs whose bounding boxes meet (the exact areas below drop the others)
        if len(discs) <= len(polys):  # few discs (spots): their boxes in the grid
            p_idx, d_idx = box_pairs(polys.boxes(), discs.boxes())
        else:
            d_idx, p_idx = box_pairs(discs.boxes(), polys.boxes())
        inter, overlaps, poly_area = _disc_polygon(discs, d_idx, polys, p_idx)
        v, b = (d_idx, p_idx) if values.circles else (p_idx, d_idx)
        if not fractions:
            return v[overlaps], b[overlaps], np.ones(int(overlaps.sum()))
        area = math.pi * discs.radius[d_idx] ** 2 if values.circles else poly_area
        return _weights(v, b, inter, area)
    else:
        # the tree on the larger side, queried with the smaller one
        try:
            if len(values.geoms) >= len(by.geoms):
                b, v = shapely.STRtree(values.geoms).query(by.geoms, predicate="intersects")
            else:
                v, b = shapely.STRtree(by.geoms).query(values.geoms, predicate="intersects")
            # few regions, each tested against many values: prepare them for the predicates
            few = len(by.geoms) <= len(values.geoms)
            unprepared = by.geoms[~shapely.is_prepared(by.geoms)] if few else by.geoms[:0]
            shapely.prepare(unprepared)
            try:
                gv, gb = values.geoms[v], by.geoms[b]
                if not fractions:
                    keep = ~shapely.touches(gb, gv)
                    return v[keep], b[keep], np.ones(int(keep.sum()))
                area = shapely.area(gv)
                inter = area.copy()  # values inside their region count whole
                rest = ~shapely.covers(gb, gv)
                inter[rest] = shapely.area(shapely.intersection(gv[rest], gb[rest]))
            finally:
                shapely.destroy_prepared(unprepared)
        except GEOSException as err:
            raise ValueError(
                f"{what}: a geometry is invalid ({err}); repair the shapes first, e.g. with shapely.make_valid"
            ) from None
        return _weights(v, b, inter, area)


def _weights(
    v: np.ndarray, b: np.ndarray, inter: np.ndarray, area: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fractions ``inter / area`` (at most 1); pairs with no overlapping area are dropped."""
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(area > 0, np.minimum(inter / area, 1.0), 0.0)
    keep = w > 0
    return v[keep], b[keep], w[keep]


# ============================================================================================ value keys
def _value_frame(inp: PairInput) -> pd.DataFrame | None:
    if not inp.value_keys:
        return None
    missing = [k for k in inp.value_keys if k not in inp.values.columns]
    if missing:
        cols = [c for c in inp.values.columns if c != inp.values.geometry.name]
        raise KeyError(
            f"shapes element {inp.values_name!r} has no column {missing[0]!r}; its columns are {cols}"
        )
    return pd.DataFrame(inp.values[list(inp.value_keys)])


def _grouped_numeric(vals: np.ndarray, b: np.ndarray, w: np.ndarray, n: int, agg: str) -> np.ndarray:
    """Fraction-weighted statistic of each column of ``vals`` (pairs x keys) per region (n x keys)."""
    out = np.empty((n, vals.shape[1]))
    for j in range(vals.shape[1]):
        x = vals[:, j]
        ok = ~np.isnan(x)
        bj, wj, xj = b[ok], w[ok], x[ok]
        sw = np.bincount(bj, weights=wj, minlength=n)
        if agg == "count":
            out[:, j] = sw
            continue
        swx = np.bincount(bj, weights=wj * xj, minlength=n)
        if agg == "sum":
            out[:, j] = swx
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(sw > 0, swx / sw, np.nan)
        if agg == "mean":
            out[:, j] = mean
        elif agg == "std":
            dev = np.bincount(bj, weights=wj * (xj - mean[bj]) ** 2, minlength=n)
            sw2 = np.bincount(bj, weights=wj * wj, minlength=n)
            with np.errstate(invalid="ignore", divide="ignore"):
                denom = sw - sw2 / sw
                out[:, j] = np.where(denom > 1e-12 * sw, np.sqrt(dev / denom), np.nan)
        else:
            ext = np.full(n, np.inf if agg == "min" else -np.inf)
            (np.minimum if agg == "min" else np.maximum).at(ext, bj, xj)
            out[:, j] = np.where(sw > 0, ext, np.nan)
    return out


# ============================================================================================ entry point
def shapes_by_shapes(inp: PairInput) -> PairResult:
    """Aggregate shapes ``inp.values`` by shapes ``inp.by`` (see the module notes for the semantics)."""
    what = f"aggregating shapes {inp.values_name!r} by shapes {inp.by_name!r}"
    n = len(inp.by)
    if len(inp.by_instances) != n:
        raise ValueError(f"{what}: by_instances has {len(inp.by_instances)} ids for {n} regions")
    frame = _value_frame(inp)
    agg = inp.agg_func
    categorical = None
    if frame is not None:
        cat_keys = [k for k in frame.columns if isinstance(frame[k].dtype, pd.CategoricalDtype)]
        bad = [
            k
            for k in frame.columns
            if k not in cat_keys and not (is_numeric_dtype(frame[k].dtype) or is_bool_dtype(frame[k].dtype))
        ]
        if bad:
            raise TypeError(
                f"{what}: column {bad[0]!r} has dtype {frame[bad[0]].dtype}; value keys must be numeric or "
                "categorical (convert strings with .astype('category'))"
            )
        if cat_keys:
            if len(frame.columns) > 1:
                raise ValueError(
                    f"{what}: aggregate one categorical key at a time (got {list(frame.columns)}); its "
                    "categories become the columns"
                )
            if agg not in ("sum", "count"):
                raise ValueError(
                    f"{what}: agg_func {agg!r} is not defined for the categorical key {cat_keys[0]!r}; use "
                    "'sum' (weighted by fractions) or 'count'"
                )
            categorical = frame[cat_keys[0]]
    elif agg not in ("sum", "count"):
        raise ValueError(
            f"{what}: without value_key the result is the number of values per region; agg_func must be "
            f"'sum' or 'count', got {agg!r}"
        )

    values, by = _place(_side(inp.values), _side(inp.by), inp)
    v, b, w = _pairs(values, by, inp.fractions, what)
    b = b.astype(np.int64)
    uns = {"fractions": bool(inp.fractions), "agg_func": agg}

    if frame is None:
        X = np.bincount(b, weights=w, minlength=n).reshape(n, 1)
        return PairResult(X, ["count"], uns=uns)
    if categorical is not None:
        codes = categorical.cat.codes.to_numpy()[v]
        cats = [str(c) for c in categorical.cat.categories]
        ok = codes >= 0
        weights = w[ok] if agg == "sum" else np.ones(int(ok.sum()))
        X = sp.coo_matrix((weights, (b[ok], codes[ok])), shape=(n, len(cats))).tocsr()
        X.sum_duplicates()
        return PairResult(X, cats, uns=uns)
    vals = np.column_stack([frame[k].to_numpy(dtype=np.float64, na_value=np.nan) for k in frame.columns])[v]
    X = _grouped_numeric(vals, b, w, n, agg)
    return PairResult(X, [str(k) for k in frame.columns], uns=uns)
