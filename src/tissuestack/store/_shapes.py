"""Shapes codec (docs/format.md §6): GeoParquet (formats 0.2 / 0.3) and legacy ragged arrays (format 0.1).

GeoParquet (0.2, 0.3)
---------------------
``shapes/<name>/shapes.parquet`` is one GeoParquet file as ``geopandas.to_parquet`` writes it, read and written
through the store's fsspec filesystem (local or remote):

* geometry column ``geometry``, encoded as WKB (default) or native GeoArrow (``geometry_encoding="geoarrow"``:
  ``point`` / ``polygon`` / ``multipolygon`` structs). Readers of both encodings get the same geometries, except
  that GeoArrow stores a column mixing Polygons and MultiPolygons as MultiPolygons only (so do the reference and
  geopandas);
* ``radius`` and every other column kept; no CRS;
* the index (the instance ids that tables refer to) kept through the pandas metadata: a RangeIndex as metadata
  only, a named index as a column of that name, an unnamed other index as ``__index_level_0__``.

The two versions differ only in the version string (0.2 in Zarr v2 stores, 0.3 in Zarr v3 stores).

Ragged arrays (0.1, legacy, Zarr v2 only)
-----------------------------------------
Arrays ``coords`` (N x 2), ``offset0``, ``offset1``, ``offset2`` (as many as the geometry type needs), ``Index``
and, for circles, ``radius``: shapely's ``to_ragged_array`` layout. The group attribute
``spatialdata_attrs.geos`` holds the geometry type. Only the geometry, ``radius`` and an integer index can be
stored: other columns are dropped (with a warning), a string index is refused (write 0.2 instead), and a mix of
Polygons and MultiPolygons comes back as MultiPolygons. Reading accepts integer or string ``Index`` arrays.

Writer option
-------------
``geometry_encoding`` is a keyword argument of :func:`write_shapes` (``"WKB"`` or ``"geoarrow"``, case-
insensitive); ``None`` uses the module default :data:`DEFAULT_GEOMETRY_ENCODING`. The orchestrator passes it
through ``element_options={"shapes": {"geometry_encoding": ...}}``; the 0.1 writer accepts and ignores it.
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
import zarr

from tissuestack._compute import paused_gc
from tissuestack.elements import get_meta, set_meta, shapes_axes
from tissuestack.elements._wkb_array import WKBGeometryArray
from tissuestack.errors import FormatError, StoreError
from tissuestack.store._registry import register_codec
from tissuestack.store._root import ElementLocation, open_local_parquet
from tissuestack.store._spatial_attrs import encode_spatial_attrs, meta_from_attrs, where

__all__ = [
    "DEFAULT_GEOMETRY_ENCODING",
    "GEOMETRY_ENCODINGS",
    "PARQUET_FILE",
    "SHAPES_VERSIONS",
    "describe_shapes",
    "describe_shapes_ragged",
    "read_shapes",
    "read_shapes_ragged",
    "write_shapes",
    "write_shapes_ragged",
]

#: GeoParquet versions (``0.2``: Zarr v2 stores, ``0.3``: Zarr v3 stores)
GEOPARQUET_VERSIONS: tuple[str, ...] = ("0.2", "0.3")
#: legacy ragged-array version (Zarr v2 stores only)
RAGGED_VERSION = "0.1"
SHAPES_VERSIONS: tuple[str, ...] = (RAGGED_VERSION, *GEOPARQUET_VERSIONS)

PARQUET_FILE = "shapes.parquet"
GEOMETRY_COLUMN = "geometry"
RADIUS_COLUMN = "radius"
#: accepted values of ``geometry_encoding`` (lower case) -> the name geopandas expects
GEOMETRY_ENCODINGS: dict[str, str] = {"wkb": "WKB", "geoarrow": "geoarrow"}
#: encoding used when the writer gets ``geometry_encoding=None``
DEFAULT_GEOMETRY_ENCODING = "WKB"

_COORDS = "coords"
_INDEX = "Index"
_OFFSET_PREFIX = "offset"
# geometry types a shapes element may hold (docs/format.md §6.2), GEOS id -> name
_GEOS_NAMES = {0: "POINT", 3: "POLYGON", 6: "MULTIPOLYGON"}


# ------------------------------------------------------------------------------------------------ helpers


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _parquet_label(loc: ElementLocation) -> str:
    return f"{loc.key}/{PARQUET_FILE}"


def _parquet_error(loc: ElementLocation, path: str, err: Exception) -> Exception:
    """The error to raise when ``shapes.parquet`` cannot be read: missing, not GeoParquet, or corrupt."""
    label = _parquet_label(loc)
    missing = isinstance(err, FileNotFoundError)
    if not missing:
        try:
            missing = not loc.root.fs.exists(path)
        except OSError:
            missing = False
    if missing:
        return StoreError(
            f"{loc.key}: missing file {label} (the shapes data; expected a GeoParquet file at {path})"
        )
    if isinstance(err, ValueError) and "geo metadata" in str(err):
        return FormatError(
            f"{label}: not a GeoParquet file (no 'geo' metadata); cannot read shapes {loc.key!r}"
        )
    return StoreError(f"{loc.key}: cannot read {label} (truncated or corrupt?): {type(err).__name__}: {err}")


def _read_footer(loc: ElementLocation) -> pq.FileMetaData:
    path = loc.file(PARQUET_FILE)
    try:
        if loc.root.is_local:
            return pq.read_metadata(path)
        with loc.root.fs.open(path, "rb") as fh:
            return pq.read_metadata(fh)
    except Exception as err:
        raise _parquet_error(loc, path, err) from err


def _geo_metadata(md: pq.FileMetaData, loc: ElementLocation) -> dict[str, Any]:
    raw = (md.metadata or {}).get(b"geo")
    if not raw:
        raise FormatError(f"{_parquet_label(loc)}: not a GeoParquet file (no 'geo' metadata)")
    try:
        geo = json.loads(raw)
    except ValueError as err:
        raise FormatError(f"{_parquet_label(loc)}: invalid 'geo' metadata: {err}") from err
    if not isinstance(geo, dict):
        raise FormatError(f"{_parquet_label(loc)}: invalid 'geo' metadata: expected a JSON object")
    return geo


def _describe(axes: str, n: int, geometry_types: Sequence[str]) -> str:
    """``shapes[xy] 1,000 polygons``; geometry types are added unless they are the obvious ones."""
    order = {"Point": 0, "Polygon": 1, "MultiPolygon": 2}
    types = sorted(
        {t.removesuffix(" Z") for t in geometry_types}, key=lambda t: (order.get(t, len(order)), t)
    )
    if types == ["Point"]:
        return f"shapes[{axes}] {n:,} circles"
    if types == ["Polygon"]:
        return f"shapes[{axes}] {n:,} polygons"
    if types and set(types) <= {"Polygon", "MultiPolygon"}:
        return f"shapes[{axes}] {n:,} polygons ({', '.join(types)})"
    return f"shapes[{axes}] {n:,} rows ({', '.join(types) or 'geometry types unknown'})"


def _axes_text(attrs: Mapping[str, Any], fallback: str = "xy") -> str:
    axes = attrs.get("axes")
    if isinstance(axes, list) and axes and all(isinstance(a, str) for a in axes):
        return "".join(axes)
    return fallback


def _version_of(attrs: Mapping[str, Any]) -> str | None:
    sd = attrs.get("spatialdata_attrs")
    return str(sd.get("version")) if isinstance(sd, Mapping) and "version" in sd else None


def _for_writing(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """A shallow copy to hand to geopandas: geometry column ``geometry``, no CRS, no ``attrs``.

    ``attrs`` would end up in the pandas metadata (and holds our metadata object, which is not JSON).
    """
    out = gdf.copy(deep=False)
    out.attrs = {}
    if out.active_geometry_name != GEOMETRY_COLUMN:
        out = out.rename_geometry(GEOMETRY_COLUMN)
    if out.crs is not None:
        out = out.set_crs(None, allow_override=True)
    return out


# ------------------------------------------------------------------------------------------------ GeoParquet


def write_shapes(
    gdf: gpd.GeoDataFrame,
    parent: zarr.Group,
    loc: ElementLocation,
    version: str,
    *,
    geometry_encoding: str | None = None,
) -> None:
    """Write a shapes element as GeoParquet (format 0.2 or 0.3; 0.1 is delegated to the ragged writer).

    Parameters
    ----------
    gdf
        The shapes element, with spatial metadata attached.
    parent
        The open ``shapes/`` group.
    loc
        Where the element goes (``loc.name`` may be a temporary name).
    version
        Shapes format version.
    geometry_encoding
        ``"WKB"`` or ``"geoarrow"`` (case-insensitive); ``None`` means :data:`DEFAULT_GEOMETRY_ENCODING`.
    """
    if version == RAGGED_VERSION:
        write_shapes_ragged(gdf, parent, loc, version, geometry_encoding=geometry_encoding)
        return
    if version not in GEOPARQUET_VERSIONS:
        raise FormatError(
            f"{loc.key}: cannot write shapes format version {version!r}; known: {SHAPES_VERSIONS}"
        )
    requested = DEFAULT_GEOMETRY_ENCODING if geometry_encoding is None else geometry_encoding
    encoding = GEOMETRY_ENCODINGS.get(str(requested).lower())
    if encoding is None:
        raise ValueError(
            f"{loc.key}: geometry_encoding must be 'WKB' or 'geoarrow', got {geometry_encoding!r}"
        )
    meta = get_meta(gdf)
    axes = shapes_axes(gdf)
    data = _for_writing(gdf)

    group = parent.create_group(loc.name)
    path = loc.file(PARQUET_FILE)
    try:
        if loc.root.is_local:
            data.to_parquet(path, geometry_encoding=encoding)
        else:
            with loc.root.fs.open(path, "wb") as fh:
                data.to_parquet(fh, geometry_encoding=encoding)
    except (OSError, StoreError):
        raise
    except Exception as err:  # e.g. an Arrow type error for an unsupported column
        raise StoreError(
            f"{loc.key}: cannot write {_parquet_label(loc)}: {type(err).__name__}: {err}"
        ) from err
    group.attrs.update(
        encode_spatial_attrs(
            encoding_type="ngff:shapes",
            axes=axes,
            transformations=meta.transformations,
            version=version,
            units=meta.units,
        )
    )


def read_shapes(
    group: zarr.Group,
    loc: ElementLocation,
    attrs: Mapping[str, Any],
    *,
    columns: Sequence[str] | None = None,
) -> gpd.GeoDataFrame:
    """Read a shapes element (GeoParquet, WKB or GeoArrow encoded; ragged arrays for format 0.1).

    ``columns`` restricts the attribute columns read (GeoParquet only); ``geometry`` and ``radius`` are always
    read. The index (instance ids) is restored and the spatial metadata attached.
    """
    if _version_of(attrs) == RAGGED_VERSION:
        return read_shapes_ragged(group, loc, attrs)
    path = loc.file(PARQUET_FILE)
    selected: list[str] | None = None
    if columns is not None:
        wanted = [columns] if isinstance(columns, str) else list(columns)
        md = _read_footer(loc)
        names = [n for n in md.schema.to_arrow_schema().names]
        missing = [c for c in wanted if c not in names]
        if missing:
            raise KeyError(f"{loc.key}: no column(s) {missing} in {_parquet_label(loc)}; columns are {names}")
        keep = [c for c in (GEOMETRY_COLUMN, RADIUS_COLUMN) if c in names and c not in wanted]
        selected = keep + wanted
    try:
        gdf = _read_wkb_lazily(loc, path, selected)
        if gdf is None:  # GeoArrow encoding (or an unexpected layout): geopandas decodes it
            with paused_gc():  # one geometry object per row
                if loc.root.is_local:
                    gdf = gpd.read_parquet(path, columns=selected)
                else:
                    gdf = gpd.read_parquet(path, columns=selected, filesystem=loc.root.fs)
    except (FormatError, StoreError):
        raise
    except Exception as err:
        raise _parquet_error(loc, path, err) from err
    if gdf.active_geometry_name != GEOMETRY_COLUMN:
        gdf = gdf.rename_geometry(GEOMETRY_COLUMN)
    if gdf.crs is not None:
        gdf.set_crs(None, allow_override=True, inplace=True)
    gdf.attrs = {}
    set_meta(gdf, meta_from_attrs(attrs, group, loc))
    return gdf


#: rows per record batch when reading a GeoParquet file (see :func:`_read_in_batches`)
_BATCH_ROWS = 1 << 17
#: a WKB geometry column of more (uncompressed) bytes than this is read into flat coordinate arrays (the numba
#: kernels decode it: their set-up is worth it from this size on, see ``kernels._ragged``)
_FLAT_READ_BYTES = 48 << 20


def _column_bytes(pf: pq.ParquetFile, name: str) -> int:
    """Uncompressed bytes of a column over the file's row groups (an upper bound of its values' bytes)."""
    md = pf.metadata
    try:
        j = list(md.schema.names).index(name)
    except ValueError:
        return 0
    return sum(md.row_group(i).column(j).total_uncompressed_size for i in range(md.num_row_groups))


def _storage(values: pa.Array) -> pa.Array:
    return values.storage if isinstance(values, pa.ExtensionArray) else values


def _read_in_batches(
    pf: pq.ParquetFile, columns: list[str] | None, flat_column: str | None = None, flat_bytes: int = 0
) -> tuple[pa.Table, list[str], Any]:
    """The file's table (``columns`` and the pandas index columns) as chunks of :data:`_BATCH_ROWS` rows, the
    names of its columns, and, with ``flat_column``, that WKB column decoded into flat coordinate arrays
    (:class:`~tissuestack.kernels._ragged.FlatGeometry`) and left out of the table (``None`` when its values are
    not all 2D (multi)polygons: the column is then kept). ``flat_bytes`` (the column's uncompressed size) sizes
    the coordinate array once.

    Read whole, a row group's binary column is built in a buffer that grows by reallocation: the process keeps
    about twice the column's size (1M polygons: +600 MB of RSS for 290 MB of WKB, where the allocator keeps the
    freed blocks). Batch by batch, each chunk is allocated at its final size (+300 MB); the chunks are kept as
    they are (the WKB decoder and ``to_pandas`` take chunked columns). Decoded batch by batch into flat arrays
    (the next batch is read while one is decoded), the WKB is never held whole: +280 MB for 1M polygons, and no
    WKB kept beside the flat arrays that plots, queries and aggregation use."""
    builder = None
    if flat_column is not None:
        from tissuestack.kernels._ragged import FlatBuilder, decode_polygons

        builder = FlatBuilder(coord_capacity=flat_bytes // 16)  # a WKB coordinate takes at least 16 bytes

    batches: list[pa.RecordBatch] = []
    names: list[str] | None = None
    pending: collections.deque = collections.deque()  # decodings not yet appended, in batch order
    flat_ok = True

    def append_done(wait: bool) -> None:
        nonlocal flat_ok
        while pending and (wait or pending[0].done()):
            piece = pending.popleft().result()
            if piece is None:
                flat_ok = False
            elif flat_ok:
                builder.add(piece)

    with contextlib.ExitStack() as stack:
        pool = None
        if builder is not None:
            from concurrent.futures import ThreadPoolExecutor

            # batches are decoded on two threads while the next ones are read; appended in order
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=2))
        for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=columns, use_pandas_metadata=True):
            if names is None:
                names = list(batch.schema.names)
            if pool is not None:
                append_done(wait=len(pending) >= 4)  # at most a few batches' WKB in flight
                if not flat_ok:
                    break
                pending.append(pool.submit(decode_polygons, _storage(batch.column(flat_column))))
                batch = batch.drop_columns([flat_column])
            batches.append(batch)
        if pool is not None:
            append_done(wait=True)
    if builder is not None and not flat_ok:
        return _read_in_batches(pf, columns)  # not flat coordinates: read again keeping the WKB
    if not batches:
        table = pf.read(columns=columns, use_pandas_metadata=True)
        return table, table.schema.names, None
    flat = builder.finish() if builder is not None else None
    return pa.Table.from_batches(batches), names, flat


def _read_wkb_lazily(loc: ElementLocation, path: str, columns: list[str] | None) -> gpd.GeoDataFrame | None:
    """The GeoParquet file as a GeoDataFrame whose WKB geometry column is decoded on first use
    (:class:`~tissuestack.elements._wkb_array.WKBGeometryArray`: over the WKB, or over flat coordinate arrays for
    a large polygon column), or ``None`` when the geometry column is not a plain WKB binary column (geopandas
    reads it then). Attribute columns and the index are restored from the pandas metadata exactly as
    ``geopandas.read_parquet`` does (``pyarrow.Table.to_pandas``)."""
    if loc.root.is_local:
        return _read_geoparquet(open_local_parquet(path), columns)
    with loc.root.fs.open(path, "rb") as fh:
        return _read_geoparquet(pq.ParquetFile(fh), columns)


def _wkb_primary(schema: pa.Schema, columns: list[str] | None) -> str | None:
    """The primary geometry column of a GeoParquet schema when it is the only one and plain WKB (binary), and is
    read (``columns``), else ``None``."""
    raw = (schema.metadata or {}).get(b"geo")
    if not raw:
        raise ValueError("Missing geo metadata in Parquet/Feather file.")
    try:
        geo = json.loads(raw)
    except ValueError:
        return None
    primary = geo.get("primary_column") if isinstance(geo, dict) else None
    spec = (geo.get("columns") or {}).get(primary) if isinstance(geo, dict) else None
    if not isinstance(spec, dict) or str(spec.get("encoding", "")).upper() != "WKB":
        return None
    if primary not in schema.names or len(geo.get("columns") or {}) != 1:
        return None
    if columns is not None and primary not in columns:
        return None
    kind = schema.field(primary).type
    storage = kind.storage_type if isinstance(kind, pa.ExtensionType) else kind
    if not (pa.types.is_binary(storage) or pa.types.is_large_binary(storage)):
        return None
    return primary


def _read_geoparquet(pf: pq.ParquetFile, columns: list[str] | None) -> gpd.GeoDataFrame | None:
    primary = _wkb_primary(pf.schema_arrow, columns)
    if primary is None:
        return None
    nbytes = _column_bytes(pf, primary)
    table, names, flat = _read_in_batches(pf, columns, primary if nbytes > _FLAT_READ_BYTES else None, nbytes)
    if flat is not None:
        array = WKBGeometryArray.from_flat(flat)
        frame = table.to_pandas()
    else:
        wkb = table.column(primary)
        if isinstance(wkb.type, pa.ExtensionType):
            wkb = pa.chunked_array([_storage(c) for c in wkb.chunks], type=wkb.type.storage_type)
        array = WKBGeometryArray(wkb)
        frame = table.drop_columns([primary]).to_pandas()
    # the geometry column where the file has it among the frame's columns
    before = [n for n in names[: names.index(primary)] if n in frame.columns]
    position = frame.columns.get_indexer(before).max() + 1 if before else 0
    frame.insert(int(position), primary, array)
    return gpd.GeoDataFrame(frame, geometry=primary)


def describe_shapes(group: zarr.Group, loc: ElementLocation, attrs: Mapping[str, Any]) -> str:
    """``shapes[xy] 1,000 polygons`` from the Parquet footer (or the array shapes for format 0.1) only."""
    if _version_of(attrs) == RAGGED_VERSION:
        return describe_shapes_ragged(group, loc, attrs)
    md = _read_footer(loc)
    geo = _geo_metadata(md, loc)
    primary = geo.get("primary_column", GEOMETRY_COLUMN)
    column = (geo.get("columns") or {}).get(primary) or {}
    types = [str(t) for t in column.get("geometry_types") or []]
    fallback = "xyz" if any(t.endswith(" Z") for t in types) else "xy"
    return _describe(_axes_text(attrs, fallback), md.num_rows, types)


# ------------------------------------------------------------------------------------------------ ragged (0.1)


def _geos_of(attrs: Mapping[str, Any], group: zarr.Group, loc: ElementLocation) -> shapely.GeometryType:
    sd = attrs.get("spatialdata_attrs")
    geos = sd.get("geos") if isinstance(sd, Mapping) else None
    if not isinstance(geos, Mapping) or "type" not in geos or "name" not in geos:
        raise FormatError(
            f"{where(group, loc)}: missing spatialdata_attrs.geos {{name, type}} (the geometry type of a "
            "format 0.1 shapes element)"
        )
    try:
        type_id = int(geos["type"])
    except (TypeError, ValueError):
        type_id = -1
    if type_id not in _GEOS_NAMES:
        raise FormatError(
            f"{where(group, loc)}: spatialdata_attrs.geos.type is {geos['type']!r}; expected 0 (POINT), "
            "3 (POLYGON) or 6 (MULTIPOLYGON)"
        )
    if str(geos["name"]).upper() != _GEOS_NAMES[type_id]:
        raise FormatError(
            f"{where(group, loc)}: spatialdata_attrs.geos name {geos['name']!r} does not match type {type_id} "
            f"({_GEOS_NAMES[type_id]})"
        )
    return shapely.GeometryType(type_id)


def _array(group: zarr.Group, loc: ElementLocation, name: str) -> np.ndarray:
    try:
        node = group[name]
    except KeyError:
        raise StoreError(f"{loc.key}: missing array {loc.key}/{name} (format 0.1 shapes)") from None
    if not isinstance(node, zarr.Array):
        raise FormatError(f"{loc.key}/{name}: expected a Zarr array, found a group")
    try:
        return np.asarray(node[...])
    except Exception as err:
        raise StoreError(
            f"{loc.key}: cannot read array {loc.key}/{name} (truncated or corrupt?): {type(err).__name__}: {err}"
        ) from err


def _offset_names(group: zarr.Group) -> list[str]:
    return sorted((n for n in group.array_keys() if n.startswith(_OFFSET_PREFIX)), key=_natural_key)


def _index_from(values: np.ndarray) -> pd.Index:
    values = values.ravel()
    if values.dtype.kind in "iu":
        return pd.Index(values)
    return pd.Index(values.astype(object).astype(str), dtype=object)


def write_shapes_ragged(
    gdf: gpd.GeoDataFrame,
    parent: zarr.Group,
    loc: ElementLocation,
    version: str = RAGGED_VERSION,
    *,
    geometry_encoding: str | None = None,  # accepted for a uniform writer signature; not used
) -> None:
    """Write a shapes element in the legacy ragged-array format 0.1 (Zarr v2 stores only).

    Raises
    ------
    FormatError
        If the store is Zarr v3, or the index is not integer (format 0.1 cannot store string ids).
    """
    if version != RAGGED_VERSION:
        raise FormatError(f"{loc.key}: the ragged-array writer writes shapes format 0.1, not {version!r}")
    if parent.metadata.zarr_format != 2:
        raise FormatError(
            f"{loc.key}: shapes format 0.1 (ragged arrays) exists only in Zarr v2 stores; this store is Zarr "
            f"v{parent.metadata.zarr_format}, write shapes format 0.3"
        )
    index = gdf.index
    if not (pd.api.types.is_integer_dtype(index.dtype) and not pd.api.types.is_bool_dtype(index.dtype)):
        raise FormatError(
            f"{loc.key}: shapes format 0.1 cannot store string (or other non-integer) ids: the index has dtype "
            f"{index.dtype}; write shapes format 0.2 instead, which keeps any index"
        )
    meta = get_meta(gdf)
    axes = shapes_axes(gdf)
    geoms = np.asarray(gdf.geometry.array)
    try:
        geometry_type, coords, offsets = shapely.to_ragged_array(geoms)
    except Exception as err:
        raise FormatError(f"{loc.key}: cannot encode the geometries as ragged arrays: {err}") from err
    type_id = int(geometry_type)
    if type_id not in _GEOS_NAMES:
        raise FormatError(
            f"{loc.key}: geometry type {geometry_type.name} cannot be stored as shapes; expected points or "
            "(multi)polygons"
        )
    dropped = [str(c) for c in gdf.columns if c != gdf.active_geometry_name and c != RADIUS_COLUMN]
    if type_id != 0 and RADIUS_COLUMN in gdf.columns:
        dropped.append(RADIUS_COLUMN)
    if dropped:
        warnings.warn(
            f"{loc.key}: shapes format 0.1 stores only the geometry, radius and index; dropping column(s) "
            f"{dropped} (write format 0.2 to keep them)",
            UserWarning,
            stacklevel=2,
        )

    group = parent.create_group(loc.name)
    group.create_array(_COORDS, data=np.ascontiguousarray(coords, dtype=np.float64))
    for i, offset in enumerate(offsets):
        # int32 as the reference writes it, unless the counts do not fit
        dtype = np.int32 if offset.size == 0 or int(offset[-1]) <= np.iinfo(np.int32).max else np.int64
        group.create_array(f"{_OFFSET_PREFIX}{i}", data=np.ascontiguousarray(offset, dtype=dtype))
    group.create_array(_INDEX, data=np.ascontiguousarray(index.to_numpy(dtype=np.int64)))
    if type_id == 0:
        if RADIUS_COLUMN not in gdf.columns:
            raise FormatError(f"{loc.key}: circles need a {RADIUS_COLUMN!r} column")
        group.create_array(RADIUS_COLUMN, data=np.ascontiguousarray(gdf[RADIUS_COLUMN].to_numpy()))
    group.attrs.update(
        encode_spatial_attrs(
            encoding_type="ngff:shapes",
            axes=axes,
            transformations=meta.transformations,
            version=version,
            sd_attrs={"geos": {"name": _GEOS_NAMES[type_id], "type": type_id}},
            units=meta.units,
        )
    )


def read_shapes_ragged(group: zarr.Group, loc: ElementLocation, attrs: Mapping[str, Any]) -> gpd.GeoDataFrame:
    """Read a legacy format 0.1 shapes element (ragged arrays) as a GeoDataFrame."""
    geometry_type = _geos_of(attrs, group, loc)
    coords = _array(group, loc, _COORDS)
    if coords.ndim != 2 or coords.shape[1] not in (2, 3):
        raise FormatError(
            f"{loc.key}/{_COORDS}: expected an (N, 2) or (N, 3) array, got shape {coords.shape}"
        )
    offsets = tuple(_array(group, loc, n).ravel().astype(np.int64) for n in _offset_names(group))
    index = _index_from(_array(group, loc, _INDEX))
    try:
        geoms = shapely.from_ragged_array(
            geometry_type, np.ascontiguousarray(coords, dtype=np.float64), offsets or None
        )
    except Exception as err:
        raise FormatError(
            f"{loc.key}: the arrays {[_COORDS, *_offset_names(group)]} do not describe {geometry_type.name} "
            f"geometries: {err}"
        ) from err
    if len(geoms) != len(index):
        raise FormatError(f"{loc.key}: {len(geoms)} geometries but {len(index)} values in {loc.key}/{_INDEX}")
    data: dict[str, Any] = {}
    if geometry_type == shapely.GeometryType.POINT:
        radius = _array(group, loc, RADIUS_COLUMN).ravel()
        if len(radius) != len(index):
            raise FormatError(
                f"{loc.key}: {len(index)} circles but {len(radius)} values in {loc.key}/{RADIUS_COLUMN}"
            )
        data[RADIUS_COLUMN] = radius
    gdf = gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(geoms, index=index), index=index)
    gdf = gdf[[GEOMETRY_COLUMN, *data]]
    set_meta(gdf, meta_from_attrs(attrs, group, loc))
    return gdf


def describe_shapes_ragged(group: zarr.Group, loc: ElementLocation, attrs: Mapping[str, Any]) -> str:
    """``shapes[xy] 2 polygons (MultiPolygon)`` from the array metadata of a format 0.1 element."""
    geometry_type = _geos_of(attrs, group, loc)
    try:
        n = int(group[_INDEX].shape[0])
    except KeyError:
        raise StoreError(f"{loc.key}: missing array {loc.key}/{_INDEX} (format 0.1 shapes)") from None
    name = {"POINT": "Point", "POLYGON": "Polygon", "MULTIPOLYGON": "MultiPolygon"}[geometry_type.name]
    return _describe(_axes_text(attrs), n, [name])


# ------------------------------------------------------------------------------------------------ registry

for _version in GEOPARQUET_VERSIONS:
    register_codec("shapes", _version, read=read_shapes, write=write_shapes, describe=describe_shapes)
register_codec(
    "shapes",
    RAGGED_VERSION,
    read=read_shapes_ragged,
    write=write_shapes_ragged,
    describe=describe_shapes_ragged,
)
