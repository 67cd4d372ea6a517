"""Shapes elements: circles or polygons as a ``geopandas.GeoDataFrame``.

A shapes element is either

* **circles**: every geometry is a ``Point`` and a numeric ``radius`` column holds finite radii > 0, or
* **polygons**: every geometry is a ``Polygon`` or ``MultiPolygon`` (both may be mixed),

in a geometry column named ``geometry`` without a CRS (docs/format.md §6). The index holds the instance ids
that tables refer to, so it must be unique. All checks use shapely 2 array functions over every row.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from geopandas.array import GeometryArray, from_shapely
from pandas.api.types import is_bool_dtype, is_numeric_dtype
from shapely.errors import GEOSException

from tissuestack._geojson import geojson_features
from tissuestack.elements._meta import ElementMeta, get_meta, has_meta, normalize_transformations, set_meta
from tissuestack.elements._record import record_of
from tissuestack.elements._wkb_array import geometry_type_ids
from tissuestack.errors import ValidationError
from tissuestack.transforms import BaseTransformation

__all__ = ["GEOMETRY_COLUMN", "RADIUS_COLUMN", "ShapesModel", "shapes_axes", "shapes_type"]

GEOMETRY_COLUMN = "geometry"
RADIUS_COLUMN = "radius"

_POINT = int(shapely.GeometryType.POINT)
_POLYGON_TYPES = (int(shapely.GeometryType.POLYGON), int(shapely.GeometryType.MULTIPOLYGON))
_MISSING = -1
_SHOW = 5  # how many offending index labels an error message lists
_GEOJSON_SUFFIXES = (".geojson", ".json")


def _label(name: str | None) -> str:
    return f"shapes element {name!r}" if name else "shapes"


def _first_labels(index: pd.Index, mask: np.ndarray, n: int = _SHOW) -> str:
    """The first ``n`` index labels where ``mask`` is true, as Python reprs (``'a'``, ``3``)."""
    labels = index[mask][:n].tolist()
    text = ", ".join(repr(label) for label in labels)
    return text + (", ..." if int(mask.sum()) > n else "")


def _geometry_array(gdf: gpd.GeoDataFrame) -> np.ndarray:
    """The geometries as a numpy object array (no copy)."""
    return np.asarray(gdf.geometry.array)


_TYPE_NAMES = {
    -1: "missing",
    0: "Point",
    1: "LineString",
    2: "LinearRing",
    3: "Polygon",
    4: "MultiPoint",
    5: "MultiLineString",
    6: "MultiPolygon",
    7: "GeometryCollection",
}


def _type_name(type_id: int) -> str:
    return _TYPE_NAMES.get(type_id, f"geometry type {type_id}")


def shapes_type(gdf: gpd.GeoDataFrame) -> Literal["circles", "polygons"]:
    """Whether a shapes element holds ``"circles"`` (all Points) or ``"polygons"`` (all (Multi)Polygons).

    Raises
    ------
    ValidationError
        If the element is empty or its geometries are neither all Points nor all Polygons/MultiPolygons.
    """
    type_ids = geometry_type_ids(gdf.geometry.array)[0]  # from the WKB headers of shapes read from a store
    if type_ids.size and (type_ids == _POINT).all():
        return "circles"
    if type_ids.size and np.isin(type_ids, _POLYGON_TYPES).all():
        return "polygons"
    raise ValidationError(
        "shapes: cannot tell circles from polygons: expected all geometries to be Point or all to be "
        "Polygon/MultiPolygon (and at least one row); use ShapesModel.validate for details"
    )


def shapes_axes(gdf: gpd.GeoDataFrame) -> tuple[str, ...]:
    """Intrinsic axes of a shapes element: ``("x", "y")``, or ``("x", "y", "z")`` if any geometry has z."""
    return ("x", "y", "z") if bool(geometry_type_ids(gdf.geometry.array)[1].any()) else ("x", "y")


def _geometry_type_id(geometry: int | str | shapely.GeometryType, label: str) -> shapely.GeometryType:
    try:
        if isinstance(geometry, str):
            return shapely.GeometryType[geometry.upper()]
        return shapely.GeometryType(int(geometry))
    except (KeyError, ValueError, TypeError):
        raise ValidationError(
            f"{label}: geometry {geometry!r} is not a shapely geometry type; expected 0 (Point), 3 (Polygon) "
            "or 6 (MultiPolygon)"
        ) from None


class ShapesModel:
    """Parse and validate shapes elements (a ``GeoDataFrame`` of circles or polygons)."""

    kind = "shapes"

    @classmethod
    def parse(
        cls,
        data: Any,
        *,
        geometry: int | str | shapely.GeometryType | None = None,
        offsets: Sequence[np.ndarray] | None = None,
        radius: float | Sequence[float] | np.ndarray | None = None,
        index: Sequence[Any] | pd.Index | None = None,
        transformations: BaseTransformation | Mapping[str, BaseTransformation] | None = None,
        name: str | None = None,
    ) -> gpd.GeoDataFrame:
        """Turn ``data`` into a validated shapes element.

        Parameters
        ----------
        data
            One of

            * a ``GeoDataFrame`` (its active geometry column is renamed to ``geometry``) or ``GeoSeries``;
            * a sequence or numpy object array of shapely geometries;
            * GeoJSON: a path (``str``/``Path`` ending in ``.geojson`` or ``.json``), a dict or a JSON string
              holding a FeatureCollection, a Feature or a list of Features (properties become columns; when
              every feature has an ``id`` and ``index`` is not given, the ids become the index);
            * a numeric numpy array ``(N, 2)`` of circle centres, with ``radius``;
            * ragged coordinates as produced by :func:`shapely.to_ragged_array`: ``data`` is the coordinate
              array, ``geometry`` the geometry type (0 / ``"Point"``, 3 / ``"Polygon"``, 6 /
              ``"MultiPolygon"``) and ``offsets`` the offset arrays;
            * a pandas DataFrame with columns ``x``, ``y`` and ``radius`` (circles); other columns are kept.
        geometry, offsets
            Geometry type and offsets of ragged input (see above).
        radius
            Circles: one radius for all or one per row; stored in (or replacing) the ``radius`` column.
        index
            New index (the instance ids), one label per row.
        transformations
            A transformation (to ``"global"``) or a mapping coordinate system -> transformation. ``None`` keeps
            the metadata attached to ``data``, else identity to ``"global"``.
        name
            Element name, used in error messages only.

        Returns
        -------
        geopandas.GeoDataFrame
            A new frame (the input is not modified) with geometry column ``geometry``, no CRS, and the spatial
            metadata attached.

        Raises
        ------
        ValidationError
            If the input cannot be turned into a valid shapes element.
        """
        label = _label(name)
        existing = get_meta(data) if has_meta(data) else None
        if (geometry is not None or offsets is not None) and not isinstance(data, np.ndarray):
            raise ValidationError(
                f"{label}: geometry/offsets describe ragged numpy coordinates; got a {type(data).__name__}"
            )
        gdf = _to_geodataframe(data, geometry, offsets, label)

        n = len(gdf)
        if index is not None:
            new_index = index if isinstance(index, pd.Index) else pd.Index(np.asarray(index))
            if len(new_index) != n:
                raise ValidationError(f"{label}: index has {len(new_index)} labels but there are {n} shapes")
            gdf.index = new_index
        if radius is not None:
            gdf[RADIUS_COLUMN] = _radius_column(radius, n, gdf, label)
        if gdf.crs is not None:
            gdf.set_crs(None, allow_override=True, inplace=True)

        meta = ElementMeta(
            normalize_transformations(transformations, existing),
            source=existing.source if existing is not None else None,  # as ElementMeta.copy does
        )
        _repair_polygons(gdf, label)
        set_meta(gdf, meta)
        cls.validate(gdf, name=name)
        return gdf

    @classmethod
    def validate(cls, gdf: gpd.GeoDataFrame, name: str | None = None) -> None:
        """Check every row of a shapes element (vectorized).

        Checks, in order: ``gdf`` is a GeoDataFrame with at least one row; the geometry column is
        ``geometry``; no geometry is missing; all geometries are Points (circles) or all are
        Polygons/MultiPolygons; none is empty; circles have a numeric ``radius`` column whose values are all
        finite and > 0; the index (instance ids) is unique; spatial metadata with a transformation is attached.
        3D geometries only raise a warning. Polygons must be valid (no self-intersection, bow-tie, ring
        touching itself in a line, ...): :meth:`parse` repairs invalid ones with a warning. The validity check
        is computed once per element object (cached on its record).

        Raises
        ------
        ValidationError
            On the first problem found; the message lists counts and the first offending index labels.
        """
        label = _label(name)
        if not isinstance(gdf, gpd.GeoDataFrame):
            raise ValidationError(f"{label}: expected a geopandas.GeoDataFrame, got {type(gdf).__name__}")
        if len(gdf) == 0:
            raise ValidationError(f"{label}: has no rows; a shapes element needs at least one geometry")
        active = gdf.active_geometry_name
        if active != GEOMETRY_COLUMN:
            raise ValidationError(
                f"{label}: the geometry column is {active!r}, expected {GEOMETRY_COLUMN!r} "
                "(ShapesModel.parse renames it)"
            )
        geoms = _geometry_array(gdf)
        index = gdf.index
        type_ids = shapely.get_type_id(geoms)

        missing = type_ids == _MISSING
        if missing.any():
            raise ValidationError(
                f"{label}: column 'geometry' has {int(missing.sum())} missing (None) geometries, at index "
                f"{_first_labels(index, missing)}; expected a geometry in every row"
            )

        is_point = type_ids == _POINT
        is_polygon = np.isin(type_ids, _POLYGON_TYPES)
        bad = ~(is_point | is_polygon)
        if bad.any():
            parts = []
            for type_id in np.unique(type_ids[bad]).tolist():
                mask = type_ids == type_id
                parts.append(f"{int(mask.sum())} {_type_name(type_id)} (index {_first_labels(index, mask)})")
            raise ValidationError(
                f"{label}: column 'geometry' has unsupported geometry types: {'; '.join(parts)}; expected all "
                "Point (circles) or all Polygon/MultiPolygon"
            )
        if is_point.any() and is_polygon.any():
            raise ValidationError(
                f"{label}: column 'geometry' mixes {int(is_point.sum())} Point (index "
                f"{_first_labels(index, is_point)}) with {int(is_polygon.sum())} Polygon/MultiPolygon (index "
                f"{_first_labels(index, is_polygon)}); expected all Point (circles) or all Polygon/MultiPolygon"
            )

        empty = shapely.is_empty(geoms)
        if empty.any():
            raise ValidationError(
                f"{label}: column 'geometry' has {int(empty.sum())} empty geometries, at index "
                f"{_first_labels(index, empty)}; expected non-empty geometries"
            )

        if is_point.all():
            _validate_radius(gdf, label)

        if index.has_duplicates:
            dup = index.duplicated(keep=False)
            repeated = index[dup].unique()
            raise ValidationError(
                f"{label}: the index (instance ids) has duplicates: "
                f"{', '.join(repr(v) for v in repeated[:_SHOW].tolist())}{', ...' if len(repeated) > _SHOW else ''} "
                f"({int(dup.sum())} rows); expected unique ids"
            )

        if is_polygon.all():
            invalid = _invalid_polygons(gdf, geoms)
            if invalid.any():
                first = int(np.flatnonzero(invalid)[0])
                raise ValidationError(
                    f"{label}: column 'geometry' has {int(invalid.sum())} invalid polygon(s), at index "
                    f"{_first_labels(index, invalid)} (the first: {shapely.is_valid_reason(geoms[first])}); "
                    "expected valid polygons. ShapesModel.parse(gdf) repairs them (shapely.make_valid)"
                )

        if bool(shapely.has_z(geoms).any()):
            warnings.warn(
                f"{label}: some geometries have a z coordinate; shapes are expected to be 2D and operations may "
                "ignore z",
                UserWarning,
                stacklevel=2,
            )

        if not has_meta(gdf) or not get_meta(gdf).transformations:
            raise ValidationError(
                f"{label}: no spatial metadata (transformations) is attached; parse it with ShapesModel.parse"
            )


def _invalid_polygons(gdf: gpd.GeoDataFrame, geoms: np.ndarray) -> np.ndarray:
    """Per row: the polygon is invalid. Cached on the element's record while its geometry array is the same."""
    record = record_of(gdf)
    if record is None:
        return ~shapely.is_valid(geoms)
    return record.cached(
        "invalid_polygons", lambda: ~shapely.is_valid(geoms), depends_on=(gdf.geometry.array,)
    )


def _repair_polygons(gdf: gpd.GeoDataFrame, label: str) -> None:
    """Replace invalid polygons by their repaired polygonal form, in place, with a warning naming them."""
    geoms = _geometry_array(gdf)
    type_ids = shapely.get_type_id(geoms)
    polygonal = np.isin(type_ids, _POLYGON_TYPES)
    if not polygonal.any() or not polygonal.all():
        return  # circles, or mixed/unsupported types that validate() reports
    invalid = ~shapely.is_valid(geoms)
    if not invalid.any():
        return
    where = np.flatnonzero(invalid)
    reason = shapely.is_valid_reason(geoms[where[0]])
    fixed = shapely.make_valid(geoms[where], method="structure", keep_collapsed=False)
    lost = shapely.is_empty(fixed) | (shapely.area(fixed) == 0)
    if lost.any():
        bad = np.zeros(len(geoms), dtype=bool)
        bad[where[lost]] = True
        raise ValidationError(
            f"{label}: column 'geometry' has {int(lost.sum())} invalid polygon(s) without area, at index "
            f"{_first_labels(gdf.index, bad)}; expected polygons enclosing an area"
        )
    fixed = shapely.force_2d(fixed) if not shapely.has_z(geoms[where]).any() else fixed
    new = geoms.copy()
    new[where] = fixed
    gdf[GEOMETRY_COLUMN] = gpd.GeoSeries(new, index=gdf.index)
    warnings.warn(
        f"{label}: repaired {len(where)} invalid polygon(s) with shapely.make_valid, at index "
        f"{_first_labels(gdf.index, invalid)} (the first: {reason}); their outlines changed where they crossed "
        "themselves",
        UserWarning,
        stacklevel=3,
    )


# ------------------------------------------------------------------------------------------------------------
# input conversion
# ------------------------------------------------------------------------------------------------------------


def _to_geodataframe(
    data: Any,
    geometry: int | str | shapely.GeometryType | None,
    offsets: Sequence[np.ndarray] | None,
    label: str,
) -> gpd.GeoDataFrame:
    if isinstance(data, gpd.GeoDataFrame):
        return _from_geodataframe(data, label)
    if isinstance(data, gpd.GeoSeries):
        return gpd.GeoDataFrame(
            {GEOMETRY_COLUMN: data.array.copy()}, index=data.index.copy(), geometry=GEOMETRY_COLUMN
        )
    if isinstance(data, pd.DataFrame):
        return _from_dataframe(data, label)
    if isinstance(data, Mapping):
        return _from_geojson(data, label)
    if isinstance(data, str | PathLike):
        return _from_geojson_text_or_path(data, label)
    if isinstance(data, np.ndarray) and geometry is not None:
        return _from_ragged(data, geometry, offsets, label)
    if isinstance(data, np.ndarray) and data.dtype.kind in "iuf":
        return _from_centres(data, label)
    if isinstance(data, Sequence) and data and not isinstance(data[0], shapely.Geometry | None):
        try:  # nested lists of numbers: circle centres
            array = np.asarray(data)
        except ValueError:
            array = None
        if array is not None and array.dtype.kind in "iuf":
            return _from_centres(array, label)
    if isinstance(data, np.ndarray | Sequence | GeometryArray):
        return _from_geometries(data, label)
    raise ValidationError(
        f"{label}: cannot parse a {type(data).__name__}; expected a GeoDataFrame, GeoSeries, shapely geometries, "
        "GeoJSON (path, dict or string), numpy coordinates or a DataFrame with x, y and radius"
    )


def _from_geodataframe(data: gpd.GeoDataFrame, label: str) -> gpd.GeoDataFrame:
    gdf = data.copy()
    active = gdf.active_geometry_name
    if active is None:
        if GEOMETRY_COLUMN not in gdf.columns:
            raise ValidationError(f"{label}: the GeoDataFrame has no geometry column; expected 'geometry'")
        return gdf.set_geometry(GEOMETRY_COLUMN)
    if active != GEOMETRY_COLUMN:
        if GEOMETRY_COLUMN in gdf.columns:
            raise ValidationError(
                f"{label}: the active geometry column is {active!r} but another column is called 'geometry'; "
                "drop or rename it so the geometries can be stored as 'geometry'"
            )
        gdf = gdf.rename_geometry(GEOMETRY_COLUMN)
    return gdf


def _from_dataframe(data: pd.DataFrame, label: str) -> gpd.GeoDataFrame:
    if GEOMETRY_COLUMN in data.columns:
        return gpd.GeoDataFrame(data.copy(), geometry=GEOMETRY_COLUMN)
    for axis in ("x", "y"):
        if axis not in data.columns:
            raise ValidationError(
                f"{label}: column {axis!r} is missing; a DataFrame of circles needs columns 'x', 'y' and 'radius'"
            )
    axes = ["x", "y", "z"] if "z" in data.columns else ["x", "y"]
    for axis in axes:
        if not is_numeric_dtype(data[axis].dtype) or is_bool_dtype(data[axis].dtype):
            raise ValidationError(f"{label}: column {axis!r} has dtype {data[axis].dtype}, expected numeric")
    coords = data[axes].to_numpy(dtype=np.float64)
    rest = data.drop(columns=axes)
    return gpd.GeoDataFrame(rest.copy(), geometry=shapely.points(coords), crs=None)


def _from_centres(data: np.ndarray, label: str) -> gpd.GeoDataFrame:
    if data.ndim != 2 or data.shape[1] not in (2, 3):
        raise ValidationError(
            f"{label}: numeric input must be circle centres of shape (N, 2) (or (N, 3)), got shape {data.shape}; "
            "for ragged coordinates pass geometry= and offsets="
        )
    return gpd.GeoDataFrame(geometry=shapely.points(data))


def _from_ragged(
    coords: np.ndarray,
    geometry: int | str | shapely.GeometryType,
    offsets: Sequence[np.ndarray] | None,
    label: str,
) -> gpd.GeoDataFrame:
    geometry_type = _geometry_type_id(geometry, label)
    try:
        geoms = shapely.from_ragged_array(
            geometry_type, np.asarray(coords, dtype=np.float64), None if offsets is None else tuple(offsets)
        )
    except (ValueError, TypeError, IndexError) as err:
        raise ValidationError(
            f"{label}: cannot build {_type_name(int(geometry_type))} geometries from the ragged coordinates and "
            f"offsets: {err}"
        ) from err
    return gpd.GeoDataFrame(geometry=geoms)


def _from_geometries(data: Any, label: str) -> gpd.GeoDataFrame:
    geoms = np.asarray(data, dtype=object)
    if geoms.ndim != 1:
        raise ValidationError(
            f"{label}: expected a 1-D sequence of shapely geometries, got shape {geoms.shape}"
        )
    not_geometry = ~(shapely.is_geometry(geoms) | shapely.is_missing(geoms))
    if not_geometry.any():
        first = np.flatnonzero(not_geometry)[:_SHOW].tolist()
        raise ValidationError(
            f"{label}: {int(not_geometry.sum())} items are not shapely geometries (positions {first}); expected "
            "a sequence of shapely geometries"
        )
    return gpd.GeoDataFrame(geometry=from_shapely(geoms))


def _from_geojson_text_or_path(data: str | PathLike, label: str) -> gpd.GeoDataFrame:
    if isinstance(data, str) and data.lstrip()[:1] in ("{", "["):
        try:
            parsed = json.loads(data)
        except json.JSONDecodeError as err:
            raise ValidationError(f"{label}: the string is not valid GeoJSON: {err}") from err
        return _from_geojson(parsed, label)
    path = Path(data)
    if path.suffix.lower() not in _GEOJSON_SUFFIXES:
        raise ValidationError(
            f"{label}: cannot read shapes from {str(path)!r}; expected a GeoJSON file ending in .geojson or .json"
        )
    with path.open(encoding="utf-8") as fh:
        try:
            parsed = json.load(fh)
        except json.JSONDecodeError as err:
            raise ValidationError(f"{label}: file {str(path)!r} is not valid GeoJSON: {err}") from err
    return _from_geojson(parsed, f"{label} (file {str(path)!r})")


def _from_geojson(obj: Any, label: str) -> gpd.GeoDataFrame:
    features = geojson_features(
        obj, label, ValidationError, "a FeatureCollection, a Feature or a list of Features"
    )
    try:
        gdf = gpd.GeoDataFrame.from_features(features)
    except (ValueError, TypeError, KeyError, AttributeError, GEOSException) as err:
        raise ValidationError(f"{label}: cannot read the GeoJSON features: {err}") from err
    ids = [f.get("id") for f in features]
    if features and all(i is not None for i in ids):
        gdf.index = pd.Index(ids)
    if gdf.active_geometry_name != GEOMETRY_COLUMN:  # pragma: no cover - from_features names it 'geometry'
        gdf = gdf.rename_geometry(GEOMETRY_COLUMN)
    return gdf


def _radius_column(radius: Any, n: int, gdf: gpd.GeoDataFrame, label: str) -> np.ndarray:
    type_ids = shapely.get_type_id(_geometry_array(gdf))
    if np.isin(type_ids, _POLYGON_TYPES).any():
        raise ValidationError(f"{label}: radius applies to circles (Point geometries) only, got polygons")
    values = np.asarray(radius)
    if values.dtype.kind not in "iuf":
        raise ValidationError(f"{label}: radius must be numeric, got dtype {values.dtype}")
    if values.ndim == 0:
        return np.full(n, values, dtype=np.float64 if values.dtype.kind == "f" else values.dtype)
    if values.shape != (n,):
        raise ValidationError(f"{label}: radius has shape {values.shape}, expected a scalar or ({n},)")
    return values.copy()


def _validate_radius(gdf: gpd.GeoDataFrame, label: str) -> None:
    if RADIUS_COLUMN not in gdf.columns:
        raise ValidationError(
            f"{label}: column 'radius' is missing; circles (Point geometries) need a numeric radius > 0 per row"
        )
    column = gdf[RADIUS_COLUMN]
    if not is_numeric_dtype(column.dtype) or is_bool_dtype(column.dtype):
        raise ValidationError(f"{label}: column 'radius' has dtype {column.dtype}, expected a numeric dtype")
    values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        shown = [
            f"{label_!r}: {value}"
            for label_, value in zip(gdf.index[bad][:_SHOW].tolist(), values[bad][:_SHOW], strict=True)
        ]
        more = ", ..." if int(bad.sum()) > _SHOW else ""
        raise ValidationError(
            f"{label}: column 'radius' has {int(bad.sum())} values that are not finite numbers > 0, at index "
            f"{', '.join(shown)}{more}"
        )
