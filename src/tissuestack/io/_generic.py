"""Generic readers: one image, one set of shapes or one table of points from a plain file.

* :func:`read_image`: TIFF / OME-TIFF (lazy, chunk by chunk, the file's own pyramid) and PNG / JPEG (pillow);
* :func:`read_shapes`: GeoJSON, GeoParquet, Parquet or CSV with a WKT / WKB geometry column (or x, y, radius);
* :func:`read_points`: CSV (optionally compressed) or Parquet as a lazy dask frame.

Each is also registered as a technology (``image``, ``shapes``, ``points``) for ``tissuestack convert``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tissuestack._geojson import geojson_features
from tissuestack.errors import ReaderError, ValidationError
from tissuestack.io._common import (
    frame_columns,
    lazy_frame,
    raster_kind,
    require_file,
    spill_csv_to_parquet,
    tabular_format,
)
from tissuestack.io._technology import Option, Technology

__all__ = [
    "IMAGE_TECHNOLOGY",
    "POINTS_TECHNOLOGY",
    "SHAPES_TECHNOLOGY",
    "iter_image",
    "iter_points",
    "iter_shapes",
    "read_image",
    "read_points",
    "read_shapes",
]

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
GEOJSON_SUFFIXES = (".geojson", ".json")
#: a PNG / JPEG is decoded whole; refuse to decode more than this many bytes of pixels
MAX_DECODED_BYTES = 4 * 1024**3

_COMPRESSED = (".gz", ".bz2", ".zst", ".xz", ".zip")
_STRIP_SUFFIXES = (
    ".ome.tiff",
    ".ome.tif",
    *TIFF_SUFFIXES,
    *PIL_SUFFIXES,
    *GEOJSON_SUFFIXES,
    ".geoparquet",
    ".parquet",
    ".pq",
    ".csv.gz",
    ".csv.bz2",
    ".csv.zst",
    ".csv.xz",
    ".tsv.gz",
    ".txt.gz",
    ".csv",
    ".tsv",
    ".txt",
)


def default_name(path: str | os.PathLike) -> str:
    """An element name from a file name: the name without its known suffixes, made valid."""
    from tissuestack.elements import sanitize_name

    base = Path(path).name
    lower = base.lower()
    for suffix in _STRIP_SUFFIXES:
        if lower.endswith(suffix) and len(base) > len(suffix):
            base = base[: -len(suffix)]
            break
    return sanitize_name(base)


def _default_transformations(
    transformations: Any, coordinate_system: str, scale: float | Sequence[float] | None = None
) -> Any:
    from tissuestack.transforms import Identity, Scale

    if transformations is not None:
        return transformations
    if scale is None:
        return {coordinate_system: Identity()}
    sy, sx = (float(scale), float(scale)) if np.isscalar(scale) else (float(scale[0]), float(scale[1]))
    return {coordinate_system: Scale([sy, sx], axes=("y", "x"))}


# ================================================================================================== images


def read_image(
    path: str | os.PathLike,
    *,
    kind: str = "image",
    dims: Sequence[str] | None = None,
    channel_names: Sequence[Any] | None = None,
    transformations: Any = None,
    pixel_size_um: float | tuple[float, float] | None = None,
    coordinate_system: str = "global",
    scale_factors: Sequence[Any] | None = None,
    chunks: int | Sequence[int] | Mapping[str, int] | None = None,
    series: int = 0,
    name: str | None = None,
):
    """Read one image (or labels) file into a raster element.

    TIFF / OME-TIFF files stay lazy (read chunk by chunk; a pyramid stored in the file becomes a multiscale
    element, see :func:`tissuestack.io._tiff.tiff_to_element`). PNG / JPEG / BMP / GIF / WebP files are decoded
    by pillow (whole: these formats cannot be read by region), refusing images above ``MAX_DECODED_BYTES``.

    Parameters
    ----------
    path
        The image file.
    kind
        ``"image"`` (dims ``(c, y, x)``) or ``"labels"`` (``(y, x)``, integer pixels).
    dims
        Names of the stored axes in file order, e.g. ``("y", "x", "c")``; default from the file.
    channel_names
        Channel names; default the OME-XML names (TIFF) or 0..n-1.
    transformations
        A transformation or a mapping coordinate system -> transformation. Default: ``Scale`` by the pixel
        size (µm) to ``coordinate_system`` when it is known, else ``Identity``.
    pixel_size_um
        (y, x) pixel size in µm (or one number); default from the TIFF metadata when present.
    coordinate_system
        Target of the default transformation.
    scale_factors
        Build a pyramid lazily (when the file has none), e.g. ``[2, 2, 2]``.
    chunks
        Dask chunks (int, mapping axis -> size, or tuple in canonical order).
    series
        TIFF image series.
    name
        Element name used in error messages.
    """
    if kind not in ("image", "labels"):
        raise ValueError(f"kind must be 'image' or 'labels', got {kind!r}")
    p = require_file(path, f"{kind} file")
    lower = p.name.lower()
    if lower.endswith(TIFF_SUFFIXES):
        from tissuestack.io._tiff import tiff_to_element

        return tiff_to_element(
            p,
            kind=kind,
            dims=dims,
            channel_names=channel_names,
            transformations=transformations,
            pixel_size_um=pixel_size_um,
            coordinate_system=coordinate_system,
            scale_factors=scale_factors,
            chunks=chunks,
            series=series,
            name=name,
        )
    if lower.endswith(PIL_SUFFIXES):
        return _read_pil(
            p,
            kind=kind,
            dims=dims,
            channel_names=channel_names,
            transformations=_default_transformations(transformations, coordinate_system, pixel_size_um),
            scale_factors=scale_factors,
            chunks=chunks,
            name=name,
        )
    raise ReaderError(
        f"{str(p)!r}: unknown image file type; expected one of {', '.join(TIFF_SUFFIXES + PIL_SUFFIXES)}"
    )


def _pil_array(path: Path, kind: Any) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
            mode = img.mode
            bands = len(img.getbands())
            itemsize = 4 if mode in ("I", "F", "I;32") else (2 if mode.startswith("I;16") else 1)
            decoded = width * height * max(bands, 1) * itemsize
            if decoded > MAX_DECODED_BYTES:
                raise ReaderError(
                    f"{str(path)!r}: a {width} x {height} {mode} image decodes to {decoded / 1024**3:.1f} GiB, "
                    f"above the {MAX_DECODED_BYTES / 1024**3:.0f} GiB limit for formats that cannot be read by "
                    "region; convert it to a tiled TIFF (e.g. with tifffile or vips) and read that instead"
                )
            # our own limit replaces pillow's decompression-bomb guard for this one image
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                if mode == "P":
                    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                elif mode in ("CMYK", "YCbCr", "LAB", "HSV") and kind.has_channels:  # images
                    img = img.convert("RGB")
                elif mode == "1":
                    img = img.convert("L")
                array = np.asarray(img)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except ReaderError:
        raise
    except Exception as err:  # pillow raises several types for broken files
        raise ReaderError(f"{str(path)!r} is not a readable image: {err}") from err
    return array


def _read_pil(path: Path, *, kind, dims, channel_names, transformations, scale_factors, chunks, name):
    from tissuestack.elements import Image2DModel, Labels2DModel

    protocol = raster_kind(kind)
    array = _pil_array(path, protocol)
    if dims is None:
        dims = ("y", "x") if array.ndim == 2 else ("y", "x", "c")
    if not protocol.has_channels:  # labels
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[..., 0]
            dims = tuple(d for d in dims if d != "c")
        if array.ndim != 2:
            raise ReaderError(
                f"{str(path)!r}: labels must have one channel, the image has shape {array.shape} "
                "(read it with kind='image')"
            )
        if not np.issubdtype(array.dtype, np.integer):
            raise ReaderError(f"{str(path)!r}: labels must hold integers, the image holds {array.dtype}")
        return Labels2DModel.parse(
            array,
            dims=dims,
            transformations=transformations,
            scale_factors=scale_factors,
            chunks=chunks,
            name=name,
        )
    return Image2DModel.parse(
        array,
        dims=dims,
        c_coords=channel_names,
        transformations=transformations,
        scale_factors=scale_factors,
        chunks=chunks,
        name=name,
    )


def iter_image(
    path: str | os.PathLike, *, name: str | None = None, **options: Any
) -> Iterator[tuple[str, Any]]:
    """The reader stream of the ``image`` technology: one element named ``name`` (default: the file name)."""
    element_name = name or default_name(path)
    for key in ("dims", "channel_names"):
        if options.get(key) == ():
            options[key] = None
    if options.get("scale_factors") == ():
        options["scale_factors"] = None
    if isinstance(options.get("pixel_size_um"), tuple) and len(options["pixel_size_um"]) == 1:
        options["pixel_size_um"] = options["pixel_size_um"][0]
    yield element_name, read_image(path, name=element_name, **options)


IMAGE_TECHNOLOGY = Technology(
    name="image",
    summary="one TIFF / OME-TIFF (lazy, with its pyramid) or PNG / JPEG file as an image or labels element",
    iter_elements=iter_image,
    options=(
        Option("name", str, None, "element name (default: the file name without its suffixes)"),
        Option("kind", str, "image", "element kind", choices=("image", "labels")),
        Option("dims", tuple, None, "stored axes in file order, e.g. y,x,c (default: from the file)"),
        Option("channel_names", tuple, None, "channel names (default: OME-XML names, else 0..n-1)"),
        Option("pixel_size_um", tuple, None, "pixel size in µm: one value or y,x (default: from the file)"),
        Option("coordinate_system", str, "global", "coordinate system of the default transformation"),
        Option("scale_factors", tuple, None, "build a pyramid when the file has none, e.g. 2,2,2"),
        Option("series", int, 0, "TIFF image series"),
    ),
)


# ================================================================================================== shapes


def _flatten_properties(frame: Any) -> Any:
    """Nested property objects become columns (``a.b``); remaining lists / dicts become JSON text."""
    import pandas as pd

    for column in list(frame.columns):
        values = frame[column]
        if values.dtype != object:
            continue
        nested = values.map(lambda v: isinstance(v, dict | list | tuple))
        if not nested.any():
            continue
        is_dict = values.map(lambda v: isinstance(v, dict))
        if is_dict.any() and (is_dict | values.isna()).all():
            flat = pd.json_normalize([v if isinstance(v, dict) else {} for v in values], sep=".")
            flat.index = frame.index
            flat.columns = [f"{column}.{c}" for c in flat.columns]
            frame = pd.concat([frame.drop(columns=[column]), _flatten_properties(flat)], axis=1)
        else:
            frame[column] = values.map(lambda v: json.dumps(v) if isinstance(v, dict | list | tuple) else v)
    return frame


def _geojson_frame(path: Path):
    import geopandas as gpd
    import pandas as pd
    import shapely

    try:
        with path.open(encoding="utf-8") as fh:
            obj = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReaderError(f"{str(path)!r} is not valid GeoJSON: {err}") from err
    features = geojson_features(
        obj, repr(str(path)), ReaderError, "a FeatureCollection, a Feature or a list of them"
    )
    try:
        geoms = [
            shapely.geometry.shape(f["geometry"]) if f.get("geometry") is not None else None for f in features
        ]
    except Exception as err:  # shapely raises several types for malformed coordinates
        raise ReaderError(f"{str(path)!r}: malformed GeoJSON geometry: {err}") from err
    props = pd.DataFrame(
        [dict(f.get("properties") or {}) for f in features], index=pd.RangeIndex(len(features))
    )
    props = _flatten_properties(props) if len(props.columns) else props
    if "geometry" in props.columns:
        props = props.rename(columns={"geometry": "geometry_property"})
    gdf = gpd.GeoDataFrame(props, geometry=gpd.GeoSeries(geoms, index=props.index), crs=None)
    ids = [f.get("id") for f in features]
    if features and all(i is not None for i in ids):
        gdf.index = pd.Index(ids)
    return gdf


def _geometry_from_column(frame: Any, column: str, path: Path):
    import geopandas as gpd
    import shapely

    values = frame[column]
    sample = values.dropna()
    sample = sample.iloc[0] if len(sample) else None
    try:
        if isinstance(sample, bytes | bytearray | memoryview):
            geoms = shapely.from_wkb(values.to_numpy(dtype=object))
        else:
            geoms = shapely.from_wkt(values.to_numpy(dtype=object))
    except Exception as err:  # GEOSException and friends
        raise ReaderError(
            f"{str(path)!r}: column {column!r} does not hold WKT / WKB geometries: {err}"
        ) from err
    return gpd.GeoDataFrame(frame.drop(columns=[column]), geometry=gpd.GeoSeries(geoms, index=frame.index))


def _table_frame(path: Path, geometry_column: str, sep: str | None):
    import geopandas as gpd
    import pandas as pd
    import pyarrow.parquet as pq

    fmt = tabular_format(path)
    if fmt == "parquet":
        geo = b"geo" in (pq.read_schema(path).metadata or {}) if path.is_file() else False
        try:
            if geo:
                gdf = gpd.read_parquet(path)
                return gdf.rename_geometry("geometry") if gdf.active_geometry_name != "geometry" else gdf
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow / geopandas raise several types
            raise ReaderError(f"{str(path)!r}: cannot read as (Geo)Parquet: {err}") from err
    else:
        try:
            frame = pd.read_csv(path, sep=sep if sep is not None else ("\t" if ".tsv" in path.name else ","))
        except Exception as err:  # pandas raises several types
            raise ReaderError(f"{str(path)!r}: cannot read as CSV: {err}") from err
    if geometry_column in frame.columns:
        return _geometry_from_column(frame, geometry_column, path)
    if {"x", "y"} <= set(frame.columns):
        return frame  # circles: the model builds points from x, y (and takes radius)
    raise ReaderError(
        f"{str(path)!r}: no geometry column {geometry_column!r} (WKT or WKB) and no 'x', 'y' columns; "
        f"columns are {list(frame.columns)}"
    )


def read_shapes(
    path: str | os.PathLike,
    *,
    index_column: str | None = None,
    radius: float | str | None = None,
    geometry_column: str = "geometry",
    transformations: Any = None,
    coordinate_system: str = "global",
    sep: str | None = None,
    name: str | None = None,
):
    """Read shapes (polygons, multipolygons, or circles) from a GeoJSON, (Geo)Parquet or CSV file.

    Parameters
    ----------
    path
        ``.geojson`` / ``.json`` FeatureCollection (feature properties become columns, nested objects are
        flattened to ``a.b`` columns; feature ids become the index when every feature has one); ``.parquet``
        GeoParquet or Parquet / ``.csv`` with a WKT or WKB ``geometry_column``, or with ``x``, ``y`` columns
        (circles).
    index_column
        Column whose values become the index (the instance ids); it is removed from the columns.
    radius
        Circles (Point geometries): one radius for all, or the name of the column holding each radius.
        Default: a ``radius`` column.
    geometry_column
        Column holding WKT / WKB geometries in a plain Parquet or CSV file.
    transformations
        A transformation or a mapping coordinate system -> transformation; default ``Identity`` to
        ``coordinate_system``.
    coordinate_system
        Target of the default transformation.
    sep
        CSV separator (default ``,``; tab for ``.tsv``).
    name
        Element name used in error messages.
    """
    import geopandas as gpd

    from tissuestack.elements import ShapesModel

    p = require_file(path, "shapes file") if not Path(path).is_dir() else Path(path)
    lower = p.name.lower()
    frame = _geojson_frame(p) if lower.endswith(GEOJSON_SUFFIXES) else _table_frame(p, geometry_column, sep)
    if index_column is not None:
        if index_column not in frame.columns:
            raise ReaderError(
                f"{str(p)!r}: index_column {index_column!r} is not a column; columns are "
                f"{[c for c in frame.columns if c != 'geometry']}"
            )
        frame = frame.set_index(index_column)
        frame.index.name = None
    radius_value = None
    if isinstance(radius, str):
        if radius not in frame.columns:
            raise ReaderError(
                f"{str(p)!r}: radius column {radius!r} is missing; columns are {list(frame.columns)}"
            )
        if radius != "radius":
            frame = frame.drop(columns=["radius"], errors="ignore").rename(columns={radius: "radius"})
    elif radius is not None:
        radius_value = float(radius)
    if isinstance(frame, gpd.GeoDataFrame) and frame.geometry.isna().any():
        missing = frame.index[frame.geometry.isna().to_numpy()][:5].tolist()
        raise ReaderError(
            f"{str(p)!r}: {int(frame.geometry.isna().sum())} features have no geometry: {missing}"
        )
    try:
        return ShapesModel.parse(
            frame,
            radius=radius_value,
            transformations=_default_transformations(transformations, coordinate_system),
            name=name,
        )
    except ValidationError as err:
        raise ReaderError(f"{str(p)!r}: {err}") from err


def iter_shapes(
    path: str | os.PathLike, *, name: str | None = None, **options: Any
) -> Iterator[tuple[str, Any]]:
    """The reader stream of the ``shapes`` technology: one element named ``name`` (default: the file name)."""
    element_name = name or default_name(path)
    radius = options.get("radius")
    if isinstance(radius, str):
        try:
            options["radius"] = float(radius)
        except ValueError:
            pass  # a column name
    yield element_name, read_shapes(path, name=element_name, **options)


SHAPES_TECHNOLOGY = Technology(
    name="shapes",
    summary="one GeoJSON, GeoParquet, or Parquet / CSV file with WKT geometries (or x, y, radius) as shapes",
    iter_elements=iter_shapes,
    options=(
        Option("name", str, None, "element name (default: the file name without its suffixes)"),
        Option(
            "index_column", str, None, "column holding the instance ids (default: feature ids, else 0..n-1)"
        ),
        Option("radius", str, None, "circles: a radius for all, or the column holding the radii"),
        Option("geometry_column", str, "geometry", "column with WKT / WKB geometries (Parquet / CSV)"),
        Option("coordinate_system", str, "global", "coordinate system of the Identity transformation"),
    ),
)


# ================================================================================================== points


def read_points(
    path: str | os.PathLike,
    *,
    coordinates: Mapping[str, str] | None = None,
    feature_key: str | None = None,
    instance_key: str | None = None,
    transformations: Any = None,
    coordinate_system: str = "global",
    columns: Sequence[str] | None = None,
    dtype: Mapping[str, Any] | None = None,
    sep: str | None = None,
    name: str | None = None,
):
    """Read points from a CSV (plain or compressed) or Parquet file as a lazy dask DataFrame.

    Nothing is loaded at once: Parquet files and plain CSVs are read partition by partition when computed.
    A compressed CSV cannot be split, so it is decoded once, a million rows at a time, into a temporary Parquet
    file (deleted at exit) that the frame then reads by row group. Only the header is read up front, to check
    the column mapping; a ``feature_key`` column costs one pass over that column (its categories).

    Parameters
    ----------
    path
        ``.csv``, ``.csv.gz`` (``.bz2``, ``.zst``, ``.xz``), ``.tsv`` or ``.parquet`` file (or Parquet folder).
    coordinates
        Axis -> column, e.g. ``{"x": "global_x", "y": "global_y", "z": "global_z"}``. Default: the columns
        ``x``, ``y`` (and ``z`` when present).
    feature_key
        Column with the feature (gene) names; stored as a categorical.
    instance_key
        Column with the id of the cell each point belongs to.
    transformations
        A transformation or mapping coordinate system -> transformation; default ``Identity`` to
        ``coordinate_system``.
    coordinate_system
        Target of the default transformation.
    columns
        Keep only these source columns (besides the coordinate, feature and instance columns); default all.
    dtype
        Column -> dtype for CSV input (coordinates are always read as float64).
    sep
        CSV separator (default ``,``; tab for ``.tsv``).
    name
        Element name used in error messages.

    Raises
    ------
    ReaderError
        The file is missing or unreadable, or the mapping names columns it does not have (all listed).
    """
    from tissuestack.elements import PointsModel

    p = Path(path)
    if not p.exists():
        raise ReaderError(f"points file {str(p)!r} does not exist")
    available = frame_columns(p, sep=sep)
    coords = dict(coordinates) if coordinates is not None else {"x": "x", "y": "y"}
    if coordinates is None and "z" in available:
        coords["z"] = "z"
    unknown_axes = sorted(set(coords) - {"x", "y", "z"})
    if unknown_axes or not {"x", "y"} <= set(coords):
        raise ReaderError(
            f"{str(p)!r}: coordinates must map the axes x, y (and optionally z) to columns, got {coords}"
        )
    wanted = list(dict.fromkeys([*coords.values(), *(k for k in (feature_key, instance_key) if k)]))
    if columns is not None:
        wanted = list(dict.fromkeys([*wanted, *columns]))
    missing = [c for c in wanted if c not in available]
    if missing:
        raise ReaderError(
            f"{str(p)!r}: missing column(s) {missing} (coordinates {coords}, feature_key {feature_key!r}, "
            f"instance_key {instance_key!r}); the file has columns {available}"
        )
    usecols = wanted if columns is not None else None
    kept = usecols if usecols is not None else available
    clashes = [axis for axis, col in coords.items() if axis in kept and col != axis]
    if clashes:
        raise ReaderError(
            f"{str(p)!r}: column(s) {clashes} exist but the coordinates map those axes to other columns "
            f"({coords}); pass columns= to leave them out"
        )
    csv_dtype = {col: "float64" for col in coords.values()}
    csv_dtype.update(dtype or {})
    fmt = tabular_format(p)
    if fmt == "csv" and p.name.lower().endswith(_COMPRESSED):
        frame = spill_csv_to_parquet(p, columns=usecols, dtype=csv_dtype, sep=sep)
    elif fmt == "csv":
        frame = lazy_frame(p, columns=usecols, sep=sep, dtype=csv_dtype)
    else:
        frame = lazy_frame(p, columns=usecols)
    try:
        return PointsModel.parse(
            frame,
            coordinates={axis: col for axis, col in coords.items() if axis != col} or None,
            feature_key=feature_key,
            instance_key=instance_key,
            transformations=_default_transformations(transformations, coordinate_system),
            name=name,
        )
    except ValidationError as err:
        raise ReaderError(f"{str(p)!r}: {err}") from err


def iter_points(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    x: str = "x",
    y: str = "y",
    z: str | None = None,
    columns: tuple[str, ...] | None = None,
    **options: Any,
) -> Iterator[tuple[str, Any]]:
    """The reader stream of the ``points`` technology: one element named ``name`` (default: the file name)."""
    element_name = name or default_name(path)
    coordinates: dict[str, str] | None = {"x": x, "y": y}
    if z is not None:
        coordinates["z"] = z
    elif x == "x" and y == "y":
        coordinates = None  # x, y and a z column when there is one
    points = read_points(
        path,
        coordinates=coordinates,
        columns=list(columns) if columns else None,
        name=element_name,
        **options,
    )
    yield element_name, points


POINTS_TECHNOLOGY = Technology(
    name="points",
    summary="one CSV (plain or compressed) or Parquet table of points, streamed (never loaded whole)",
    iter_elements=iter_points,
    options=(
        Option("name", str, None, "element name (default: the file name without its suffixes)"),
        Option("x", str, "x", "column of the x coordinates"),
        Option("y", str, "y", "column of the y coordinates"),
        Option(
            "z", str, None, "column of the z coordinates (default: 'z' when x, y are 'x', 'y' and it exists)"
        ),
        Option("feature_key", str, None, "column with the feature (gene) names"),
        Option("instance_key", str, None, "column with the cell id of each point"),
        Option("columns", tuple, None, "keep only these other columns (default: all)"),
        Option("coordinate_system", str, "global", "coordinate system of the Identity transformation"),
        Option("sep", str, None, "CSV separator (default ',', tab for .tsv)"),
    ),
)
