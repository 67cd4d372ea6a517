"""Queries of shapes elements (envelopes and an STRtree cached per element, exact tests in target coordinates).
Semantics in :mod:`tissuestack.query._bbox`."""

from __future__ import annotations

import math
from typing import Any

import geopandas as gpd
import numpy as np
import shapely

from tissuestack.elements import get_meta, set_meta
from tissuestack.elements._shapes import RADIUS_COLUMN, shapes_type
from tissuestack.errors import NoPathError
from tissuestack.query._index import ShapesIndex, shapes_index
from tissuestack.query._region import Region, prune_bounds, widened
from tissuestack.transforms import AffineMap, BaseTransformation, affine_map, apply_affine

_SPATIAL = ("x", "y", "z")
_BOX_COLUMN = "__tissuestack_box__"
_WIDEN = 1e-9  # relative widening of back-transformed bounds used for pruning only
_SNAP = 1e-9  # pixel bounds this close to an integer are snapped to it before floor/ceil


# ================================================================================================ shapes
def _transform_geoms(geoms: np.ndarray, linear: np.ndarray, offset: np.ndarray) -> np.ndarray:
    return shapely.transform(geoms, lambda c: apply_affine([c[:, 0], c[:, 1]], linear, offset))


def _inner_boxes(amap: AffineMap, reg: Region) -> tuple[np.ndarray, np.ndarray]:
    """Intrinsic boxes ``(n, 2)`` slightly inside the preimage of each target box (axis-aligned maps only)."""
    inner = [widened(amap.intrinsic_bounds(reg.lo[i], reg.hi[i], reg.axes), -1.0) for i in range(reg.n)]
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
    if circles:
        geoms = shapely.points(index.flat.coords[uniq])
    else:  # only the candidates become shapely objects (a lazy WKB array decodes just these)
        geoms = np.asarray(gdf.geometry.array[uniq])
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
    bounds = prune_bounds(amap, reg) if reg.polygon is None else None
    if reg.polygon is not None and amap.inverse is not None:
        b = widened(amap.intrinsic_bounds(reg.lo[0], reg.hi[0], reg.axes))
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
