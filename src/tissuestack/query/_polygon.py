"""Polygon queries on every element kind (see :mod:`tissuestack.query._bbox` for the shared semantics)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import shapely

from tissuestack.query._bbox import run_query
from tissuestack.query._region import Region

__all__ = ["check_polygon", "polygon_query"]

_POLYGONAL = (int(shapely.GeometryType.POLYGON), int(shapely.GeometryType.MULTIPOLYGON))


def check_polygon(polygon: Any) -> shapely.Polygon | shapely.MultiPolygon:
    """Validate a query polygon: 2D, non-empty, valid (invalid ones are repaired with a warning).

    Raises ``TypeError`` for anything but a shapely Polygon or MultiPolygon and ``ValueError`` for an empty
    polygon or one without area (also after repair). An invalid polygon (self-intersecting ring, bow-tie,
    overlapping parts, ...) is replaced by ``shapely.make_valid(polygon)`` restricted to its polygonal parts, and a
    ``UserWarning`` says so; any z coordinate is dropped.
    """
    if not isinstance(polygon, shapely.Polygon | shapely.MultiPolygon):
        raise TypeError(
            f"the query region must be a shapely Polygon or MultiPolygon, got {type(polygon).__name__}"
        )
    if polygon.is_empty:
        raise ValueError("the query polygon is empty")
    polygon = shapely.force_2d(polygon)
    if not shapely.is_valid(polygon):
        reason = shapely.is_valid_reason(polygon)
        repaired = shapely.make_valid(polygon)
        parts = shapely.get_parts(repaired)
        parts = parts[np.isin(shapely.get_type_id(parts), _POLYGONAL)]
        repaired = shapely.union_all(parts) if len(parts) else shapely.Polygon()
        if repaired.is_empty or repaired.area == 0:
            raise ValueError(f"the query polygon is invalid ({reason}) and has no area once repaired")
        warnings.warn(
            f"the query polygon is invalid ({reason}); using shapely.make_valid(polygon) instead",
            UserWarning,
            stacklevel=3,
        )
        polygon = repaired
    if polygon.area == 0:
        raise ValueError("the query polygon has no area")
    return polygon


def polygon_query(
    sdata_or_element: Any,
    polygon: shapely.Polygon | shapely.MultiPolygon,
    target_coordinate_system: str,
    filter_table: bool = True,
    clip: bool = False,
) -> Any:
    """Select what lies inside a polygon (or multipolygon) of ``target_coordinate_system``.

    Parameters
    ----------
    sdata_or_element
        A SpatialData object or one image, labels, points or shapes element (with a direct transformation to the
        target coordinate system).
    polygon
        A shapely Polygon or MultiPolygon in target x/y coordinates (holes allowed). An invalid polygon is
        repaired with ``shapely.make_valid`` (with a warning); see :func:`check_polygon`.
    target_coordinate_system
        The coordinate system of the polygon; elements are placed there through the transformation graph.
    filter_table
        As in :func:`bounding_box_query`.
    clip
        Shapes: return polygon geometries clipped to the polygon (``shapely.intersection`` in target space,
        mapped back into intrinsic coordinates); shapes that only touch the polygon are dropped; circles are not
        clipped. Rasters: set the pixels whose centre lies outside the polygon to 0 (labels thus lose the
        instances outside, also for table filtering).

    Returns
    -------
    SpatialData, element or None
        As in :func:`bounding_box_query`.

    Notes
    -----
    * **Points**: exact, points on the polygon's boundary are inside (shapely "covers" semantics). Candidates are
      pruned by the polygon's bounding box back-transformed into intrinsic coordinates (pushed into the Parquet
      read for store-backed frames), then a numba point-in-polygon kernel decides the candidates in target
      coordinates (points within 1e-9 relative of an edge are decided by GEOS). Third coordinates are
      unconstrained. The result stays lazy.
    * **Shapes**: rows intersecting the polygon (touching counts).
    * **Rasters**: cropped to the polygon's bounds like a bounding-box query, masked when ``clip`` is set.
    """
    polygon = check_polygon(polygon)
    from tissuestack.kernels._pip import PreparedPolygon

    prepared = PreparedPolygon.from_geometry(polygon)
    b = np.asarray(shapely.bounds(polygon), dtype=np.float64)
    region = Region(("x", "y"), b[None, :2], b[None, 2:], prepared, clip)
    return run_query(sdata_or_element, region, target_coordinate_system, filter_table)[0]
