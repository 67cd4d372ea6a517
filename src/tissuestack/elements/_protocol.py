"""One protocol object per element kind, registered by Python type and by name.

Everything that differs between the five kinds (how an object of the kind is recognised, parsed and validated,
its axes, extent, queries, transformation, instances, one-line description and its store codec) is a method or
an attribute of one :class:`ElementKind` singleton, so that code elsewhere asks the object of an element's kind
instead of comparing kind names::

    kind = kind_of(element)                  # the protocol of an element, from its type
    kind = get_kind_protocol("labels")       # the protocol of a kind, by name
    kind.extent(element, t) if kind.is_spatial else None

The registry maps Python types to candidate protocols: a type may carry more than one kind (an xarray
``DataArray`` holds images or labels), and the first candidate whose :meth:`ElementKind.matches` accepts the
object wins. Behaviour that lives in upper layers (extent and transform in ``ops``, queries in ``query``, codecs
in ``store``) stays there, next to the code it shares: the method that delegates to it imports it when called,
so that the elements layer imports no upper layer and ``import tissuestack.elements`` loads no ops, query or
store module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import anndata as ad
import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
import xarray as xr

from tissuestack.elements._meta import has_meta
from tissuestack.errors import ValidationError

__all__ = [
    "IMAGES",
    "LABELS",
    "POINTS",
    "SHAPES",
    "TABLES",
    "ElementKind",
    "ImagesKind",
    "LabelsKind",
    "PointsKind",
    "ShapesKind",
    "TablesKind",
    "get_kind_protocol",
    "kind_of",
    "kind_protocols",
    "register_kind",
]


class ElementKind:
    """What one element kind does; subclass it (one singleton per kind) and :func:`register_kind` it.

    Attributes
    ----------
    name
        The kind's name, also its folder in a store (``"images"``, ``"labels"``, ...).
    is_spatial
        Whether elements of the kind have coordinates, hence spatial metadata (coordinate transformations, the
        files they are read from), axes and extents. Tables do not.
    is_raster
        Whether elements are xarray rasters (with pyramids, chunks and pixel axes).
    has_channels
        Whether elements have a channel axis ``c`` with channel names.
    nearest_only
        Whether values are ids that must never be interpolated or averaged (labels): resampling uses nearest.
    default_order
        The interpolation order used to resample elements of a raster kind when none is given.
    has_instances
        Whether elements have instance ids a table can refer to (labels values, shapes index, points key).
    filters_tables
        Whether a query narrows the table rows annotating an element to its surviving instances (labels,
        shapes); the rows of a points region are kept whole.
    filterable
        Whether rows of an element can be selected or reordered (a raster cannot).
    lazy_rows
        Whether rows are a lazy frame: filtered with lazy masks, and read in a pass only where needed (points).
    in_memory
        Whether elements are held in memory once loaded, never read lazily from their files (shapes).
    has_areas
        Whether instances cover areas (labels regions, shapes geometries): they can be filled and outlined,
        and they are the regions values are aggregated by.
    annotates_regions
        Whether elements annotate other elements (regions) by instance id (tables).
    load_reads_files
        Whether loading a stored element reads its data files (Parquet footers), so that problems with those
        files also fail the load (points, shapes; rasters read only metadata until their chunks are computed).
    listed_in_store
        Whether the store keeps a list of the elements of the kind (the NGFF ``labels`` list).
    """

    name: ClassVar[str]
    is_spatial: ClassVar[bool] = True
    is_raster: ClassVar[bool] = False
    has_channels: ClassVar[bool] = False
    nearest_only: ClassVar[bool] = False
    default_order: ClassVar[int | None] = None
    has_instances: ClassVar[bool] = False
    filters_tables: ClassVar[bool] = False
    filterable: ClassVar[bool] = False
    lazy_rows: ClassVar[bool] = False
    in_memory: ClassVar[bool] = False
    has_areas: ClassVar[bool] = False
    annotates_regions: ClassVar[bool] = False
    load_reads_files: ClassVar[bool] = False
    listed_in_store: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def __reduce__(self) -> tuple[Any, ...]:  # singletons pickle (and copy) by name
        return (get_kind_protocol, (self.name,))

    # ------------------------------------------------------------------------------------------ model
    def matches(self, obj: Any) -> bool:
        """Whether ``obj`` (of a type registered for this kind) is an element of this kind."""
        return True

    def parse(self, obj: Any, name: str | None = None) -> Any:
        """Bring ``obj`` into the canonical form of the kind (only validated if it is parsed already)."""
        raise NotImplementedError

    def validate(self, obj: Any, name: str | None = None) -> None:
        """Raise a ``ValidationError`` unless ``obj`` is a valid element of the kind."""
        raise NotImplementedError

    def axes(self, obj: Any) -> tuple[str, ...]:
        """Intrinsic axes of an element, in canonical order."""
        raise TypeError(f"a {type(obj).__name__} has no spatial axes")

    def describe(self, obj: Any) -> str:
        """One line describing an element from its metadata (dtypes, shapes, partition counts)."""
        return type(obj).__name__

    def columns(self, obj: Any) -> Any:
        """The data columns of an element (not its geometry): a ``pandas.Index``, empty for a raster."""
        return pd.Index([])

    # ------------------------------------------------------------------------------------------ ops
    def _no_coordinates(self, what: str) -> ValidationError:
        return ValidationError(f"a {self.name} element has no {what}")

    def extent(self, obj: Any, t: Any, exact: bool = True, name: str | None = None) -> dict | None:
        """Axis-aligned extent of an element placed by transformation ``t``; ``None`` when it has no data."""
        raise self._no_coordinates("extent")

    def query(self, obj: Any, t: Any, region: Any) -> list[Any]:
        """The parts of an element placed by ``t`` inside a query region (one result, or None, per box)."""
        raise TypeError(f"a {self.name} element has no coordinates to query")

    def query_bbox(
        self,
        obj: Any,
        axes: Iterable[str],
        min_coordinate: Any,
        max_coordinate: Any,
        target_coordinate_system: str,
    ) -> Any:
        """:func:`tissuestack.bounding_box_query` of one element of this kind."""
        from tissuestack.ops._resolve import transformation_to
        from tissuestack.query._region import Region, check_box

        axes, lo, hi, many = check_box(axes, min_coordinate, max_coordinate)
        t = transformation_to(obj, target_coordinate_system) if self.is_spatial else None
        results = self.query(obj, t, Region(axes, lo, hi))
        return results if many else results[0]

    def transform(
        self, obj: Any, t: Any, cs: str, maintain_positioning: bool = False, order: int | None = None
    ) -> Any:
        """A new element whose data is expressed in coordinate system ``cs``, reached by ``t``."""
        raise self._no_coordinates("coordinates to transform")

    def centroids(self, obj: Any, t: Any) -> Any:
        """Frame of the centroid of each instance (columns ``x, y[, z]``), placed by ``t``."""
        raise ValidationError(
            f"centroids are defined for labels, shapes and points elements, not for {self.name}"
        )

    def instances(self, obj: Any, name: str | None = None) -> Any:
        """The instance ids of an element (a ``pandas.Index``) that tables refer to."""
        raise ValueError(f"element {name!r} is {self.name}; only labels, shapes and points have instances")

    # ------------------------------------------------------------------------------------------ store
    def read_version(self, attrs: Mapping[str, Any], group: Any, loc: Any) -> str:
        """The element format version of the element stored in ``group``."""
        from tissuestack.store._spatial_attrs import read_version

        return read_version(attrs, group, loc)

    def read_meta(self, attrs: Mapping[str, Any], group: Any, loc: Any) -> Any:
        """The spatial metadata (``ElementMeta``) of a stored element, from its attributes only."""
        from tissuestack.store._spatial_attrs import meta_from_attrs

        return meta_from_attrs(attrs, group, loc)

    def read_options(self, *, lazy_tables: bool = False) -> dict[str, Any]:
        """Keyword arguments of this kind's codec readers, from the options of opening a store."""
        return {}

    def file_problems(
        self, loc: Any, files: Iterable[str], *, strict: bool = True, deep: bool = False
    ) -> list:
        """Problems (``StoreProblem``) of the data files of the stored element at ``loc`` (for ``inspect``)."""
        return []

    def codec(self, version: str) -> Any:
        """The registered store codec of this kind in element format ``version``."""
        from tissuestack.store import _registry

        return _registry.get_codec(self.name, version)

    def read(
        self,
        group: Any,
        loc: Any,
        attrs: Mapping[str, Any],
        version: str,
        *,
        attach_meta: bool = True,
        **options: Any,
    ) -> Any:
        """Read the element stored in ``group`` with this kind's codec of ``version``.

        With ``attach_meta``, spatial metadata read from ``attrs`` is attached when the codec leaves it out
        (raster codecs do: a deferred element of an opened store attaches what was read when it was opened).
        """
        from tissuestack.elements._meta import set_meta
        from tissuestack.errors import FormatError

        codec = self.codec(version)
        if codec.read is None:
            raise FormatError(f"{loc}: reading {self.name} format {version} is not supported")
        element = codec.read(group, loc, attrs, **options)
        if attach_meta and self.is_spatial and not has_meta(element):
            meta = self.read_meta(attrs, group, loc)
            if meta is not None:
                set_meta(element, meta)
        return element

    def write(self, obj: Any, parent: Any, loc: Any, version: str, **options: Any) -> None:
        """Write ``obj`` under the type group ``parent`` with this kind's codec of ``version``.

        ``obj`` may be a :class:`Deferred` element: it is loaded once the codec is known to write ``version``.
        """
        from tissuestack.elements._deferred import Deferred
        from tissuestack.errors import FormatError

        codec = self.codec(version)
        if codec.write is None:
            raise FormatError(f"writing {self.name} format {version} is not supported")
        if isinstance(obj, Deferred):
            obj = obj.load()
        codec.write(obj, parent, loc, version, **options)

    def write_metadata(
        self, group: Any, obj: Any, meta: Any, *, transformations: bool = True, channel_names: bool = True
    ) -> None:
        """Rewrite only the transformations (and channel names) of a stored element in ``group``."""
        if not transformations:
            return
        from tissuestack.elements._deferred import Deferred
        from tissuestack.transforms import transformations_to_ngff

        axes = tuple(group.attrs.asdict().get("axes") or ()) if isinstance(obj, Deferred) else self.axes(obj)
        ngff = transformations_to_ngff(meta.transformations, tuple(axes), meta.units)
        group.attrs.update({"coordinateTransformations": ngff})


# ================================================================================================ rasters
class _RasterKind(ElementKind):
    is_raster = True

    def matches(self, obj: Any) -> bool:
        from tissuestack.elements._raster import get_raster_model

        return get_raster_model(obj).kind == self.name

    def models(self) -> tuple[Any, Any]:
        """The 2D and 3D raster models of the kind."""
        raise NotImplementedError

    def model(self, obj: Any, name: str | None = None) -> Any:
        """The raster model (2D or 3D) of ``obj`` (raw data: from its number of dimensions)."""
        from tissuestack.elements._raster import raster_levels

        two_d, three_d = self.models()
        if isinstance(obj, xr.DataArray | xr.DataTree):
            return three_d if "z" in raster_levels(obj)[0].dims else two_d
        ndim = np.ndim(obj)
        if self.has_channels:
            return three_d if ndim == 4 else two_d
        if ndim not in (2, 3):
            label = f"{self.name} element {name!r}" if name else self.name
            raise ValidationError(f"{label}: data has {ndim} dimensions, expected 2 (y, x) or 3 (z, y, x)")
        return three_d if ndim == 3 else two_d

    def parse(self, obj: Any, name: str | None = None) -> Any:
        model = self.model(obj, name)
        if isinstance(obj, xr.DataArray | xr.DataTree) and has_meta(obj):
            model.validate(obj, name=name)
            return obj
        return model.parse(obj, name=name)

    def validate(self, obj: Any, name: str | None = None) -> None:
        self.model(obj, name).validate(obj, name=name)

    def axes(self, obj: Any) -> tuple[str, ...]:
        from tissuestack.elements._raster import raster_levels

        return tuple(str(d) for d in raster_levels(obj)[0].dims)

    def describe(self, obj: Any) -> str:
        from tissuestack.elements._raster import raster_levels

        levels = raster_levels(obj)
        axes = "".join(str(d) for d in levels[0].dims)
        shapes = ", ".join("(" + ", ".join(str(s) for s in lvl.shape) + ")" for lvl in levels)
        typ = "DataTree" if len(levels) > 1 else "DataArray"
        return f"{typ}[{axes}] {shapes} {levels[0].dtype}"

    def extent(self, obj: Any, t: Any, exact: bool = True, name: str | None = None) -> dict | None:
        from tissuestack.ops._extent import _raster_extent, spatial_map

        return _raster_extent(obj, spatial_map(obj, t))

    def query(self, obj: Any, t: Any, region: Any) -> list[Any]:
        from tissuestack.query._raster_query import query_raster

        return query_raster(obj, t, region)

    def resample_order(self, order: int | None) -> int:
        """The interpolation order to resample with: ``order``, checked, or the kind's default."""
        if order is None:
            return 0 if self.nearest_only else int(self.default_order or 0)
        if isinstance(order, bool) or not isinstance(order, int | np.integer) or not 0 <= order <= 5:
            raise ValidationError(f"order must be an interpolation order 0 (nearest) .. 5, got {order!r}")
        if self.nearest_only and order != 0:
            raise ValidationError(
                f"{self.name} are resampled with order=0 (nearest) only, got order={order}: interpolated ids "
                "would be ids of no object"
            )
        return int(order)

    def transform(
        self, obj: Any, t: Any, cs: str, maintain_positioning: bool = False, order: int | None = None
    ) -> Any:
        from tissuestack.ops._transform import _transform_raster

        return _transform_raster(obj, t, cs, maintain_positioning, order)

    def read_version(self, attrs: Mapping[str, Any], group: Any, loc: Any) -> str:
        from tissuestack.store._raster import raster_version

        return raster_version(attrs, group, loc)

    def read_meta(self, attrs: Mapping[str, Any], group: Any, loc: Any) -> Any:
        from tissuestack.store._raster import raster_meta

        return raster_meta(attrs, group, loc)

    def file_problems(
        self, loc: Any, files: Iterable[str], *, strict: bool = True, deep: bool = False
    ) -> list:
        from tissuestack.store._check import raster_chunk_problems
        from tissuestack.store._root import quiet_zarr

        with quiet_zarr():
            group = loc.root.open_group(use_consolidated=False)[loc.key]
        return raster_chunk_problems(loc, group, files, strict=strict, deep=deep)

    def write_metadata(
        self, group: Any, obj: Any, meta: Any, *, transformations: bool = True, channel_names: bool = True
    ) -> None:
        from tissuestack.elements._deferred import Deferred
        from tissuestack.elements._raster import raster_levels
        from tissuestack.store._raster import write_channel_names, write_raster_transformations

        if transformations:
            attrs = group.attrs.asdict()
            ms = attrs["ome"]["multiscales"] if "ome" in attrs else attrs["multiscales"]
            axes = tuple(a["name"] if isinstance(a, Mapping) else a for a in ms[0]["axes"])
            write_raster_transformations(group, meta, axes)
        if channel_names and self.has_channels and not isinstance(obj, Deferred):
            write_channel_names(group, raster_levels(obj)[0].coords["c"].values.tolist())


class ImagesKind(_RasterKind):
    """Images: ``(c, y, x)`` or ``(c, z, y, x)`` rasters, single-scale or pyramids."""

    name = "images"
    has_channels = True
    default_order = 1

    def models(self) -> tuple[Any, Any]:
        from tissuestack.elements._raster import Image2DModel, Image3DModel

        return Image2DModel, Image3DModel


class LabelsKind(_RasterKind):
    """Labels: integer ``(y, x)`` or ``(z, y, x)`` rasters whose values are instance ids (0: background)."""

    name = "labels"
    nearest_only = True
    default_order = 0
    has_instances = True
    filters_tables = True
    has_areas = True
    listed_in_store = True

    def models(self) -> tuple[Any, Any]:
        from tissuestack.elements._raster import Labels2DModel, Labels3DModel

        return Labels2DModel, Labels3DModel

    def centroids(self, obj: Any, t: Any) -> Any:
        from tissuestack.ops._centroids import _labels_centroids
        from tissuestack.ops._extent import spatial_map

        return _labels_centroids(obj, spatial_map(obj, t))

    def instances(self, obj: Any, name: str | None = None) -> Any:
        from tissuestack.elements._instances import labels_instances

        return labels_instances(obj)


# ================================================================================================ points, shapes
class _ParquetKind(ElementKind):
    """Points and shapes: frames with a row per point or geometry, stored as Parquet."""

    has_instances = True
    filterable = True
    load_reads_files = True


class PointsKind(_ParquetKind):
    """Points: a lazy dask DataFrame with coordinate columns ``x, y[, z]``."""

    name = "points"
    lazy_rows = True

    def parse(self, obj: Any, name: str | None = None) -> Any:
        from tissuestack.elements._points import PointsModel

        if isinstance(obj, dd.DataFrame) and has_meta(obj):
            PointsModel.validate(obj, name=name)
            return obj
        return PointsModel.parse(obj, name=name)

    def validate(self, obj: Any, name: str | None = None) -> None:
        from tissuestack.elements._points import PointsModel

        PointsModel.validate(obj, name=name)

    def axes(self, obj: Any) -> tuple[str, ...]:
        from tissuestack.elements._points import points_axes

        return points_axes(obj)

    def file_problems(
        self, loc: Any, files: Iterable[str], *, strict: bool = True, deep: bool = False
    ) -> list:
        from tissuestack.store._check import points_parquet_problems

        return points_parquet_problems(loc, deep=deep)

    def describe(self, obj: Any) -> str:
        from tissuestack.elements._meta import get_meta

        axes = "".join(self.axes(obj))
        meta = get_meta(obj) if has_meta(obj) else None
        rows = f"{meta.n_rows:,} rows" if meta is not None and meta.n_rows is not None else "rows not counted"
        cols = ", ".join(str(c) for c in obj.columns)
        keys = []
        if meta is not None and meta.feature_key:
            keys.append(f"feature_key={meta.feature_key!r}")
        if meta is not None and meta.instance_key:
            keys.append(f"instance_key={meta.instance_key!r}")
        extra = f", {', '.join(keys)}" if keys else ""
        return f"dask DataFrame[{axes}] {rows}, {obj.npartitions} partitions, columns ({cols}){extra}"

    def columns(self, obj: Any) -> Any:
        return pd.Index(obj.columns)

    def extent(self, obj: Any, t: Any, exact: bool = True, name: str | None = None) -> dict | None:
        from tissuestack.ops._extent import _points_extent, spatial_map

        return _points_extent(obj, spatial_map(obj, t), exact, name)

    def query(self, obj: Any, t: Any, region: Any) -> list[Any]:
        from tissuestack.query._points_query import query_points

        return query_points(obj, t, region)

    def transform(
        self, obj: Any, t: Any, cs: str, maintain_positioning: bool = False, order: int | None = None
    ) -> Any:
        from tissuestack.ops._extent import spatial_map
        from tissuestack.ops._transform import _new_transformations, _transform_points
        from tissuestack.transforms import Identity

        transformations = _new_transformations(obj, t, cs, Identity(), maintain_positioning)
        return _transform_points(obj, spatial_map(obj, t), transformations)

    def centroids(self, obj: Any, t: Any) -> Any:
        from tissuestack.ops._centroids import _points_centroids
        from tissuestack.ops._extent import spatial_map

        return _points_centroids(obj, spatial_map(obj, t))

    def instances(self, obj: Any, name: str | None = None) -> Any:
        from tissuestack.elements._instances import points_instance_key, points_instances

        return points_instances(obj, points_instance_key(obj, name))


class ShapesKind(_ParquetKind):
    """Shapes: a GeoDataFrame of polygons, multipolygons or circles (points with a ``radius`` column)."""

    name = "shapes"
    filters_tables = True
    in_memory = True
    has_areas = True

    def parse(self, obj: Any, name: str | None = None) -> Any:
        from tissuestack.elements._shapes import ShapesModel

        if isinstance(obj, gpd.GeoDataFrame) and has_meta(obj):
            ShapesModel.validate(obj, name=name)
            return obj
        return ShapesModel.parse(obj, name=name)

    def validate(self, obj: Any, name: str | None = None) -> None:
        from tissuestack.elements._shapes import ShapesModel

        ShapesModel.validate(obj, name=name)

    def axes(self, obj: Any) -> tuple[str, ...]:
        from tissuestack.elements._shapes import shapes_axes

        return shapes_axes(obj)

    def file_problems(
        self, loc: Any, files: Iterable[str], *, strict: bool = True, deep: bool = False
    ) -> list:
        from tissuestack.store._check import shapes_parquet_problems

        return shapes_parquet_problems(loc, deep=deep)

    def describe(self, obj: Any) -> str:
        from tissuestack.elements._shapes import shapes_type

        return f"GeoDataFrame[{''.join(self.axes(obj))}] {len(obj):,} {shapes_type(obj)}"

    def columns(self, obj: Any) -> Any:
        return obj.columns.drop(obj.geometry.name)

    def extent(self, obj: Any, t: Any, exact: bool = True, name: str | None = None) -> dict | None:
        from tissuestack.ops._extent import _shapes_extent

        return _shapes_extent(obj, t, exact)

    def query(self, obj: Any, t: Any, region: Any) -> list[Any]:
        from tissuestack.query._shapes_query import query_shapes

        return query_shapes(obj, t, region)

    def transform(
        self, obj: Any, t: Any, cs: str, maintain_positioning: bool = False, order: int | None = None
    ) -> Any:
        from tissuestack.ops._extent import spatial_map
        from tissuestack.ops._transform import _new_transformations, _transform_shapes
        from tissuestack.transforms import Identity

        transformations = _new_transformations(obj, t, cs, Identity(), maintain_positioning)
        return _transform_shapes(obj, spatial_map(obj, t), transformations)

    def centroids(self, obj: Any, t: Any) -> Any:
        from tissuestack.ops._centroids import _shapes_centroids

        return _shapes_centroids(obj, t)

    def instances(self, obj: Any, name: str | None = None) -> Any:
        from tissuestack.elements._instances import plain_ids

        return plain_ids(obj.index)


# ================================================================================================ tables
class TablesKind(ElementKind):
    """Tables: AnnData objects, optionally annotating spatial elements (regions) by instance id."""

    name = "tables"
    is_spatial = False
    annotates_regions = True

    def parse(self, obj: Any, name: str | None = None) -> Any:
        from tissuestack.elements._tables import TableModel

        if not isinstance(obj, ad.AnnData):
            raise ValidationError(f"table {name!r}: expected an AnnData, got {type(obj).__name__}")
        TableModel.validate(obj, name=name)
        return obj

    def validate(self, obj: Any, name: str | None = None) -> None:
        from tissuestack.elements._tables import TableModel

        TableModel.validate(obj, name=name)

    def describe(self, obj: Any) -> str:
        from tissuestack.elements._tables import get_table_keys

        region, region_key, instance_key = get_table_keys(obj)
        link = (
            f", annotating {region} by ({region_key!r}, {instance_key!r})"
            if region
            else ", annotating nothing"
        )
        return f"AnnData {obj.n_obs:,} x {obj.n_vars:,}{link}"

    def read_version(self, attrs: Mapping[str, Any], group: Any, loc: Any) -> str:
        from tissuestack.errors import FormatError
        from tissuestack.store._spatial_attrs import where

        if "version" not in attrs:
            raise FormatError(f"{where(group, loc)}: missing 'version' (the tables format version)")
        return str(attrs["version"])

    def read_meta(self, attrs: Mapping[str, Any], group: Any, loc: Any) -> Any:
        return None

    def read_options(self, *, lazy_tables: bool = False) -> dict[str, Any]:
        return {"lazy_x": lazy_tables}

    def write_metadata(
        self, group: Any, obj: Any, meta: Any, *, transformations: bool = True, channel_names: bool = True
    ) -> None:
        return None  # tables have no transformations


# ================================================================================================ registry
IMAGES = ImagesKind()
LABELS = LabelsKind()
POINTS = PointsKind()
SHAPES = ShapesKind()
TABLES = TablesKind()

_BY_NAME: dict[str, ElementKind] = {}
_BY_TYPE: dict[type, list[ElementKind]] = {}


def register_kind(protocol: ElementKind, types: Iterable[type] = ()) -> ElementKind:
    """Register an element kind protocol under its name and for objects of ``types`` (and their subclasses).

    Registering a protocol under a name already registered replaces it (also as a candidate of its types).
    Returns ``protocol``, so that it can be used as ``KIND = register_kind(MyKind(), [MyType])``.
    """
    name = getattr(protocol, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"an element kind protocol needs a non-empty string name, got {name!r}")
    old = _BY_NAME.get(name)
    if old is not None:
        for candidates in _BY_TYPE.values():
            candidates[:] = [protocol if p is old else p for p in candidates]
    _BY_NAME[name] = protocol
    for typ in types:
        candidates = _BY_TYPE.setdefault(typ, [])
        if protocol not in candidates:
            candidates.append(protocol)
    return protocol


def kind_protocols() -> dict[str, ElementKind]:
    """Every registered element kind protocol, by name."""
    return dict(_BY_NAME)


def get_kind_protocol(name: str | ElementKind) -> ElementKind:
    """The protocol of the element kind ``name`` (a protocol is returned as is)."""
    if isinstance(name, ElementKind):
        return name
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown element kind {name!r}; expected one of {tuple(_BY_NAME)}") from None


def _no_kind(obj: Any) -> TypeError:
    return TypeError(
        f"cannot tell the element kind of a {type(obj).__name__}: expected an xarray DataArray/DataTree "
        "(images, labels), a dask DataFrame (points), a GeoDataFrame (shapes) or an AnnData (tables). "
        "Parse raw data with a model, e.g. tissuestack.Image2DModel.parse(array), or assign it through a kind "
        "view such as sdata.images['name'] = array"
    )


def kind_of(obj: Any) -> ElementKind:
    """The protocol of the kind of element ``obj``, from its type (and, for rasters, its dims).

    Raises
    ------
    TypeError
        For an object of no registered element type (raw arrays and frames must be parsed first).
    ValidationError
        For a raster whose dims match no raster model.
    """
    for typ in type(obj).__mro__:
        for protocol in _BY_TYPE.get(typ, ()):
            if protocol.matches(obj):
                return protocol
    raise _no_kind(obj)


register_kind(IMAGES, (xr.DataArray, xr.DataTree))
register_kind(LABELS, (xr.DataArray, xr.DataTree))
register_kind(POINTS, (dd.DataFrame,))
register_kind(SHAPES, (gpd.GeoDataFrame,))
register_kind(TABLES, (ad.AnnData,))
