"""The flat coordinate arrays of a shapes element (:class:`~tissuestack.kernels._ragged.FlatGeometry`), cached on
its record.

Large polygon elements read from a store are flat arrays already (the geometry array holds them). Other shapes read
from a store keep their WKB (:class:`~tissuestack.elements._wkb_array.WKBGeometryArray`): the arrays
are decoded straight from it, without shapely objects (about 6x faster than decoding the geometries and far less
memory). Other shapes (in memory, or whose geometries were written to) go through ``shapely.to_ragged_array``.
The arrays live as long as the element and are rebuilt when its geometry array is replaced or written to.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tissuestack.elements import record_of
from tissuestack.elements._wkb_array import WKBGeometryArray
from tissuestack.kernels._ragged import FlatGeometry, from_shapely, from_wkb

__all__ = ["flat_geometry"]


def flat_geometry(gdf: Any) -> FlatGeometry:
    """The :class:`FlatGeometry` of a shapes element (points or (multi)polygons; x/y only)."""
    array = gdf.geometry.array
    if isinstance(array, WKBGeometryArray) and array.flat is not None:
        return array.flat  # read as flat arrays: they are the geometries
    wkb = array.wkb if isinstance(array, WKBGeometryArray) else None

    def build() -> FlatGeometry:
        if wkb is not None:
            return from_wkb(wkb)
        return from_shapely(np.asarray(array))

    record = record_of(gdf)
    if record is None:
        return build()
    return record.cached("flat-geometry", build, depends_on=(array,), params=wkb is not None)
