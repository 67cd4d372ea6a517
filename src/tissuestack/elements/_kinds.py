"""Dispatch on the five element kinds: detect the kind of an object, its axes, and parse/validate it."""

from __future__ import annotations

from typing import Any, Literal

import anndata as ad
import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import xarray as xr

from tissuestack.elements._meta import has_meta
from tissuestack.elements._points import PointsModel, points_axes
from tissuestack.elements._raster import (
    Image2DModel,
    Image3DModel,
    Labels2DModel,
    Labels3DModel,
    get_raster_model,
    raster_levels,
)
from tissuestack.elements._shapes import ShapesModel, shapes_axes
from tissuestack.elements._tables import TableModel
from tissuestack.errors import ValidationError

__all__ = ["KINDS", "SPATIAL_KINDS", "Kind", "get_axes", "get_kind", "parse_as", "validate_as"]

Kind = Literal["images", "labels", "points", "shapes", "tables"]
KINDS: tuple[Kind, ...] = ("images", "labels", "points", "shapes", "tables")
SPATIAL_KINDS: tuple[Kind, ...] = ("images", "labels", "points", "shapes")


def get_kind(element: Any) -> Kind:
    """The kind of an element object, from its type (and, for rasters, its dims)."""
    if isinstance(element, xr.DataArray | xr.DataTree):
        return get_raster_model(element).kind  # type: ignore[return-value]
    if isinstance(element, gpd.GeoDataFrame):
        return "shapes"
    if isinstance(element, dd.DataFrame):
        return "points"
    if isinstance(element, ad.AnnData):
        return "tables"
    raise TypeError(
        f"cannot tell the element kind of a {type(element).__name__}: expected an xarray DataArray/DataTree "
        "(images, labels), a dask DataFrame (points), a GeoDataFrame (shapes) or an AnnData (tables). "
        "Parse raw data with a model, e.g. tissuestack.Image2DModel.parse(array), or assign it through a kind "
        "view such as sdata.images['name'] = array"
    )


def get_axes(element: Any) -> tuple[str, ...]:
    """Intrinsic axes of a spatial element, in its canonical order."""
    if isinstance(element, xr.DataArray | xr.DataTree):
        return tuple(str(d) for d in raster_levels(element)[0].dims)
    if isinstance(element, gpd.GeoDataFrame):
        return shapes_axes(element)
    if isinstance(element, dd.DataFrame):
        return points_axes(element)
    raise TypeError(f"a {type(element).__name__} has no spatial axes")


def _raster_model_for(kind: Kind, element: Any, name: str | None):
    ndim = (
        raster_levels(element)[0].ndim
        if isinstance(element, xr.DataArray | xr.DataTree)
        else np.ndim(element)
    )
    if kind == "images":
        if isinstance(element, xr.DataArray | xr.DataTree):
            dims = raster_levels(element)[0].dims
            return Image3DModel if "z" in dims else Image2DModel
        return Image3DModel if ndim == 4 else Image2DModel
    if isinstance(element, xr.DataArray | xr.DataTree):
        dims = raster_levels(element)[0].dims
        return Labels3DModel if "z" in dims else Labels2DModel
    if ndim not in (2, 3):
        label = f"labels element {name!r}" if name else "labels"
        raise ValidationError(f"{label}: data has {ndim} dimensions, expected 2 (y, x) or 3 (z, y, x)")
    return Labels3DModel if ndim == 3 else Labels2DModel


def parse_as(kind: Kind, element: Any, name: str | None = None) -> Any:
    """Bring ``element`` into the canonical form of ``kind``.

    Objects that already carry spatial metadata (parsed before, or taken from a SpatialData object) are only
    validated; raw data (numpy arrays, pandas frames, shapely arrays, ...) is parsed with the kind's default
    options.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown element kind {kind!r}; expected one of {KINDS}")
    if kind == "tables":
        if not isinstance(element, ad.AnnData):
            raise ValidationError(f"table {name!r}: expected an AnnData, got {type(element).__name__}")
        TableModel.validate(element, name=name)
        return element
    if kind in ("images", "labels"):
        model = _raster_model_for(kind, element, name)
        if isinstance(element, xr.DataArray | xr.DataTree) and has_meta(element):
            model.validate(element, name=name)
            return element
        return model.parse(element, name=name)
    if kind == "points":
        if isinstance(element, dd.DataFrame) and has_meta(element):
            PointsModel.validate(element, name=name)
            return element
        return PointsModel.parse(element, name=name)
    if isinstance(element, gpd.GeoDataFrame) and has_meta(element):
        ShapesModel.validate(element, name=name)
        return element
    return ShapesModel.parse(element, name=name)


def validate_as(kind: Kind, element: Any, name: str | None = None) -> None:
    """Validate an element of a known kind."""
    if kind == "tables":
        TableModel.validate(element, name=name)
    elif kind in ("images", "labels"):
        _raster_model_for(kind, element, name).validate(element, name=name)
    elif kind == "points":
        PointsModel.validate(element, name=name)
    else:
        ShapesModel.validate(element, name=name)
