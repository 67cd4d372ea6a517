"""Xenium Explorer selections: read its CSV / GeoJSON exports as a shapes element, and write shapes back.

Formats (``docs/vendors.md`` §1.2)
-------------------------------------------

* CSV (``<name>_coordinates.csv``): comment lines starting with ``#`` (Xenium Explorer writes two, e.g.
  ``#Selection name: Selection 1`` and ``#Area (µm^2): ...``), then a header and one row per polygon vertex.
  The columns are ``X`` and ``Y`` in µm, and, when several selections were exported together, a name column
  (``Selection`` or ``Name``). The rows of one selection follow each other; a selection made of several rings
  lists each ring closed (its first vertex repeated at its end) before the next one. Rings inside another ring
  of the same selection are holes, rings inside a hole are islands (even-odd nesting), so one selection becomes
  a Polygon (possibly with holes) or a MultiPolygon.
* GeoJSON: a FeatureCollection (or one Feature, or a list of Features) of Polygon / MultiPolygon geometries in
  µm. The selection name is the feature's ``name`` property (QuPath and Xenium Explorer), else its
  ``classification`` name, else its ``id``; a ``classification`` object becomes its name. Features that share a
  name are one selection (their polygons are parts of one MultiPolygon).

Coordinates are µm with the origin at the top left of the morphology image, i.e. the ``global`` coordinate
system of :func:`tissuestack.io.xenium`, where the cells and transcripts are. Selections read here are placed
there with an Identity and in the morphology pixel system (``pixels``) with ``Scale(1 / pixel_size)``, exactly
like the reader's vector elements, so that they overlay the cells.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tissuestack._geojson import geojson_features
from tissuestack.errors import ReaderError, ValidationError

if TYPE_CHECKING:
    import geopandas as gpd

    from tissuestack._container import SpatialData
    from tissuestack.transforms import BaseTransformation

__all__ = [
    "XENIUM_PIXEL_SIZE",
    "add_xenium_explorer_selection",
    "write_xenium_explorer_selection",
    "xenium_explorer_selection",
]

#: µm per morphology pixel on every Xenium instrument so far (``experiment.xenium`` ``pixel_size``)
XENIUM_PIXEL_SIZE = 0.2125
#: CSV columns holding the selection name, in the order they are looked for (case-insensitive)
CSV_NAME_COLUMNS = ("selection", "name", "selection name", "selection_name", "annotation", "label")
#: GeoJSON properties holding the selection name, in the order they are looked for
GEOJSON_NAME_KEYS = ("name", "Name", "selection", "Selection", "label")
#: elements of a Xenium reading whose transformations the selections take (intrinsic coordinates in µm)
LIKE_ELEMENTS = ("cell_boundaries", "nucleus_boundaries", "cell_circles", "transcripts")
CSV_SUFFIXES = (".csv", ".csv.gz", ".txt", ".tsv")
GEOJSON_SUFFIXES = (".geojson", ".json", ".geojson.gz", ".json.gz")
_SELECTION_COMMENT = re.compile(r"^\s*selection\s*name\s*:\s*(.*?)\s*$", re.IGNORECASE)


@dataclass
class _Selection:
    """One selection being assembled: its polygons (each a list of rings, exterior first) and properties."""

    name: str
    polygons: list[list[np.ndarray]] = field(default_factory=list)
    properties: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ small helpers


def _where(path: Path) -> str:
    return repr(str(path))


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise ReaderError(f"Xenium Explorer selection file {_where(path)} does not exist")
    if path.is_dir():
        raise ReaderError(
            f"Xenium Explorer selection file {_where(path)} is a directory; expected a .csv or .geojson export"
        )
    try:
        data = path.read_bytes()
        if path.name.lower().endswith(".gz"):
            data = gzip.decompress(data)
    except (OSError, EOFError) as err:
        raise ReaderError(f"{_where(path)}: cannot read the file (truncated?): {err}") from err
    return data


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:  # not UTF-8: e.g. "µm" of a comment line saved in a Windows code page
        return data.decode("cp1252", errors="replace")


def _json_loads(text: str) -> Any:
    """``json.loads``, through orjson when it is installed (several times faster on large exports)."""
    try:
        import orjson
    except ImportError:
        return json.loads(text)
    return orjson.loads(text)


def _detect_format(path: Path, text: str) -> str:
    lower = path.name.lower()
    if lower.endswith(GEOJSON_SUFFIXES):
        return "geojson"
    if lower.endswith(CSV_SUFFIXES):
        return "csv"
    return "geojson" if text.lstrip()[:1] in ("{", "[") else "csv"


def _distinct_at_most_3(ring: np.ndarray) -> int:
    """The number of distinct vertices of ``ring``, counted up to 3 (two vectorized passes, no sort)."""
    if len(ring) == 0:
        return 0
    not_first = (ring != ring[0]).any(axis=1)
    if not not_first.any():
        return 1
    second = ring[int(np.argmax(not_first))]
    return 3 if (not_first & (ring != second).any(axis=1)).any() else 2


def _check_ring(ring: np.ndarray, path: Path, what: str) -> np.ndarray:
    """A ring as a closed float64 (n, 2) array; ReaderError when it has fewer than 3 distinct vertices."""
    closed = len(ring) > 1 and bool((ring[0] == ring[-1]).all())
    distinct = _distinct_at_most_3(ring)
    if distinct < 3:
        raise ReaderError(
            f"{_where(path)}: {what} has {distinct} distinct vertices; expected a polygon ring of at least 3 "
            "distinct vertices"
        )
    return ring if closed else np.concatenate([ring, ring[:1]])


def _split_rings(coords: np.ndarray) -> list[np.ndarray]:
    """Cut one run of vertex rows into rings: a ring ends where its first vertex comes back (after at least 3
    other vertices); a last ring that does not come back is one ring (closed here)."""
    rings = []
    start, n = 0, len(coords)
    while start < n:
        first = coords[start]
        rest = coords[start + 3 :]
        back = np.flatnonzero((rest[:, 0] == first[0]) & (rest[:, 1] == first[1]))
        end = start + 3 + int(back[0]) + 1 if len(back) else n
        rings.append(coords[start:end])
        start = end
    return rings


def _nest(rings: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Group the rings of one selection into polygons by even-odd nesting: a ring inside an odd number of the
    others is a hole of the innermost ring around it, the others are exteriors (parts) in file order. Candidate
    pairs come from an STRtree, so that a selection of many rings costs about k log k, not k x k tests."""
    import shapely

    if len(rings) == 1:
        return [rings]
    polygons = shapely.polygons([shapely.linearrings(r) for r in rings])
    try:
        inner, outer = shapely.STRtree(polygons).query(polygons, predicate="within")
    except shapely.errors.GEOSException:  # invalid (self-intersecting) rings: each ring is its own part
        return [[r] for r in rings]
    keep = inner != outer
    inner, outer = inner[keep], outer[keep]
    # identical rings lie within each other: only the later one counts as inside the earlier one
    n = len(rings)
    pair = inner * n + outer
    mutual = np.isin(pair, outer * n + inner)
    keep = ~mutual | (inner > outer)
    inner, outer = inner[keep], outer[keep]
    depth = np.bincount(inner, minlength=n)
    parts: dict[int, list[np.ndarray]] = {int(i): [rings[i]] for i in np.flatnonzero(depth % 2 == 0)}
    holes = depth[inner] % 2 == 1
    # the parent of a hole is its innermost container: the one of greatest depth
    order = np.lexsort((depth[outer[holes]], inner[holes]))
    hole_inner, hole_outer = inner[holes][order], outer[holes][order]
    last = np.append(hole_inner[1:] != hole_inner[:-1], True) if len(hole_inner) else np.zeros(0, dtype=bool)
    for i, parent in zip(hole_inner[last].tolist(), hole_outer[last].tolist(), strict=True):
        if parent in parts:
            parts[parent].append(rings[i])
        else:  # overlapping rather than nested rings: keep the ring as a part of its own
            parts[i] = [rings[i]]
    return [parts[i] for i in sorted(parts)]


def _geometries(selections: Sequence[_Selection]) -> np.ndarray:
    """Polygon (one part) or MultiPolygon per selection, built from ragged arrays in a few vectorized calls."""
    import shapely

    rings = [ring for s in selections for polygon in s.polygons for ring in polygon]
    ring_sizes = np.array([len(r) for r in rings], dtype=np.int64)
    polygon_sizes = np.array([len(p) for s in selections for p in s.polygons], dtype=np.int64)
    part_counts = np.array([len(s.polygons) for s in selections], dtype=np.int64)
    coords = np.concatenate(rings) if rings else np.zeros((0, 2))
    offsets = tuple(
        np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        for sizes in (ring_sizes, polygon_sizes, part_counts)
    )
    multi = shapely.from_ragged_array(shapely.GeometryType.MULTIPOLYGON, coords, offsets)
    single = part_counts == 1
    out = multi.copy()
    out[single] = shapely.get_geometry(multi[single], 0)
    return out


def _transformations(
    coordinate_system: str, pixel_size: float | None, pixel_coordinate_system: str | None
) -> dict[str, BaseTransformation]:
    from tissuestack.transforms import Identity, Scale

    out: dict[str, BaseTransformation] = {coordinate_system: Identity()}
    if pixel_coordinate_system and pixel_size is not None:
        if not (math.isfinite(pixel_size) and pixel_size > 0):
            raise ValueError(f"pixel_size must be a positive number of µm per pixel, got {pixel_size!r}")
        out[pixel_coordinate_system] = Scale([1 / pixel_size, 1 / pixel_size], axes=("x", "y"))
    return out


# ------------------------------------------------------------------------------------------------ CSV


def _header(path: Path, text: str) -> tuple[int, int, list[str]]:
    """``(line index, character offset)`` of the header line after the leading ``#`` comment and blank lines,
    and the comments' text."""
    comments: list[str] = []
    offset, line = 0, 0
    while offset < len(text):
        end = text.find("\n", offset)
        end = len(text) if end < 0 else end
        stripped = text[offset:end].strip()
        if stripped and not stripped.startswith("#"):
            return line, offset, comments
        if stripped:
            comments.append(stripped[1:].strip())
        offset, line = end + 1, line + 1
    raise ReaderError(
        f"{_where(path)}: no header line after the comment lines; expected a Xenium Explorer selection "
        "export ('#' comment lines, then a header such as 'Selection,X,Y' and one row per vertex)"
    )


def _data_line_numbers(body: str, header: int, n: int) -> np.ndarray:
    """1-based file line of each of the ``n`` data rows (blank lines, which the parser skips, are counted)."""
    if not re.search(r"\n[ \t\r]*\n", body.rstrip("\r\n") + "\n"):
        return np.arange(n) + header + 2
    lines = body.splitlines()[1:]
    kept = np.flatnonzero([bool(line.strip()) for line in lines])
    return kept[:n] + header + 2


def _bad_coordinate(path: Path, raw: Any, column: str, line_numbers: np.ndarray) -> ReaderError | None:
    """The error naming the first non-numeric or non-finite value of ``raw``; ``None`` when all are good."""
    import pandas as pd

    values = pd.to_numeric(raw.astype(str).str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if not bad.any():
        return None
    k = int(np.flatnonzero(bad)[0])
    return ReaderError(
        f"{_where(path)}: line {int(line_numbers[k])}: {column!r} is {raw.iloc[k]!r}; expected finite numeric "
        f"coordinates in µm ({int(bad.sum())} bad value(s) in column {column!r})"
    )


def _arrow_columns(
    body: str, sep: str, found: list[str], usecols: list[str], x_key: str, y_key: str, name_key: str | None
) -> Any:
    """The used columns parsed by Arrow's CSV reader (multithreaded, correctly rounded floats: coordinates
    survive a round trip exactly), as a pandas frame; ``None`` when a coordinate is not a finite number."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    types = {x_key: pa.float64(), y_key: pa.float64()}
    if name_key is not None:
        types[name_key] = pa.string()
    try:
        table = pacsv.read_csv(
            pa.py_buffer(body.encode("utf-8")),
            read_options=pacsv.ReadOptions(column_names=found, skip_rows=1),
            parse_options=pacsv.ParseOptions(delimiter=sep),
            convert_options=pacsv.ConvertOptions(
                column_types=types, include_columns=usecols, strings_can_be_null=False
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    frame = table.to_pandas()
    if (
        frame[[x_key, y_key]].isna().to_numpy().any()
        or not np.isfinite(frame[[x_key, y_key]].to_numpy()).all()
    ):
        return None
    return frame


def _pandas_columns(path: Path, body: str, header: int, sep: str, usecols: list[str]) -> Any:
    """The used columns as text (slow path, for error messages and numbers with spaces around them)."""
    import pandas as pd

    try:
        frame = pd.read_csv(
            io.StringIO(body),
            sep=sep,
            usecols=lambda c: str(c).strip() in usecols,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
        )
    except (ValueError, pd.errors.ParserError) as err:
        raise ReaderError(f"{_where(path)}: not a readable CSV table after line {header}: {err}") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _csv_selections(path: Path, text: str, name_column: str | None) -> list[_Selection]:
    import csv

    import pandas as pd

    header, offset, comments = _header(path, text)
    body = text[offset:]
    head = body.split("\n", 1)[0]
    sep = "," if "," in head else "\t" if "\t" in head else ";" if ";" in head else ","
    found = [c.strip() for c in next(csv.reader([head.rstrip("\r")], delimiter=sep))]
    columns = {c.lower(): c for c in found}
    missing = [c for c in ("x", "y") if c not in columns]
    if missing:
        raise ReaderError(
            f"{_where(path)}: no {' / '.join(repr(c.upper()) for c in missing)} column; expected vertex "
            f"coordinates in µm in columns 'X' and 'Y' (header line {header + 1} has {found})"
        )
    if name_column is not None:
        if name_column.strip().lower() not in columns:
            raise ReaderError(
                f"{_where(path)}: no column {name_column!r} (name_column); the header has {found}"
            )
        name_key = columns[name_column.strip().lower()]
    else:
        name_key = next((columns[c] for c in CSV_NAME_COLUMNS if c in columns), None)
    x_key, y_key = columns["x"], columns["y"]
    usecols = [x_key, y_key] + ([name_key] if name_key is not None else [])
    frame = _arrow_columns(body, sep, found, usecols, x_key, y_key, name_key)
    if frame is None:  # find and report the first bad value, or read numbers with spaces around them
        frame = _pandas_columns(path, body, header, sep, usecols)
        line_numbers = _data_line_numbers(body, header, len(frame))
        for key in (x_key, y_key):
            err = _bad_coordinate(path, frame[key].fillna(""), key, line_numbers)
            if err is not None:
                raise err
        frame[x_key] = frame[x_key].str.strip().to_numpy(dtype=str).astype(np.float64)  # correctly rounded
        frame[y_key] = frame[y_key].str.strip().to_numpy(dtype=str).astype(np.float64)
    if len(frame) == 0:
        raise ReaderError(f"{_where(path)}: no vertex rows after the header; expected one row per vertex")
    xy = np.column_stack([frame[x_key].to_numpy(np.float64), frame[y_key].to_numpy(np.float64)])
    line_numbers = _data_line_numbers(body, header, len(frame))

    if name_key is None:
        named = [m.group(1) for c in comments if (m := _SELECTION_COMMENT.match(c)) and m.group(1)]
        stem = path.name
        for suffix in (".gz", ".csv", ".txt", ".tsv"):
            stem = stem[: -len(suffix)] if stem.lower().endswith(suffix) else stem
        stem = re.sub(r"_coordinates$", "", stem)
        codes = np.zeros(len(frame), dtype=np.int64)
        uniques = np.array([named[0] if named else stem], dtype=object)
    else:
        raw_codes, raw_uniques = pd.factorize(frame[name_key].fillna(""))
        stripped, merged = pd.factorize(pd.Index(raw_uniques).astype(str).str.strip())
        codes, uniques = stripped[raw_codes], np.asarray(merged, dtype=object)
        empty = uniques[codes] == ""
        if empty.any():
            k = int(np.flatnonzero(empty)[0])
            raise ReaderError(
                f"{_where(path)}: line {int(line_numbers[k])}: empty {name_key!r}; expected the name of the "
                f"selection the vertex belongs to in every row ({int(empty.sum())} empty)"
            )

    starts = np.flatnonzero(np.concatenate([[True], codes[1:] != codes[:-1]]))
    ends = np.append(starts[1:], len(codes))
    by_name: dict[str, list[np.ndarray]] = {}
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        name, row = str(uniques[codes[a]]), a
        for ring in _split_rings(xy[a:b]):
            what = f"selection {name!r} (the ring from line {int(line_numbers[row])})"
            by_name.setdefault(name, []).append(_check_ring(ring, path, what))
            row += len(ring)
    return [_Selection(name, _nest(rings)) for name, rings in by_name.items()]


# ------------------------------------------------------------------------------------------------ GeoJSON


def _property_value(value: Any) -> Any:
    if isinstance(value, Mapping) and "name" in value:  # QuPath classification {"name": ..., "color": [...]}
        return value["name"]
    if isinstance(value, dict | list | tuple):
        return json.dumps(value)
    return value


def _geojson_rings(coords: Any, path: Path, what: str) -> list[np.ndarray]:
    if not isinstance(coords, list) or not coords:
        raise ReaderError(
            f"{_where(path)}: {what} has no rings; expected a list of rings of [x, y] positions"
        )
    rings = []
    for r, ring in enumerate(coords):
        label = f"{what}, ring {r}"
        try:
            array = np.asarray(ring, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ReaderError(
                f"{_where(path)}: {label} has non-numeric coordinates; expected [x, y] positions in µm"
            ) from err
        if array.ndim != 2 or array.shape[1] not in (2, 3):
            raise ReaderError(
                f"{_where(path)}: {label} has coordinates of shape {array.shape}; expected a list of [x, y] "
                "positions"
            )
        array = array[:, :2]
        if not np.isfinite(array).all():
            raise ReaderError(
                f"{_where(path)}: {label} has non-finite coordinates; expected finite µm values"
            )
        rings.append(_check_ring(array, path, label))
    return rings


def _geojson_selections(path: Path, text: str, name_column: str | None) -> list[_Selection]:
    try:
        obj = _json_loads(text)
    except ValueError as err:
        raise ReaderError(f"{_where(path)}: not valid JSON (truncated?): {err}") from err
    features = geojson_features(
        obj,
        _where(path),
        ReaderError,
        "a FeatureCollection of Polygon / MultiPolygon features (or one Feature, or a list of them)",
    )
    if not features:
        raise ReaderError(f"{_where(path)}: no features; expected at least one selection polygon")
    out: dict[str, _Selection] = {}
    for i, feature in enumerate(features):
        props = dict(feature.get("properties") or {})
        if name_column is not None:
            if name_column not in props:
                raise ReaderError(
                    f"{_where(path)}: feature {i} has no property {name_column!r} (name_column); it has "
                    f"{sorted(props)}"
                )
            name = props.pop(name_column)
        else:
            key = next((k for k in GEOJSON_NAME_KEYS if props.get(k) not in (None, "")), None)
            if key is not None:
                name = props.pop(key)
            elif _property_value(props.get("classification")) not in (None, ""):
                name = _property_value(props["classification"])
            elif feature.get("id") is not None:
                name = feature["id"]
            else:
                name = f"Selection {i + 1}"
        name = str(_property_value(name))
        what = f"feature {i} ({name!r})"
        geometry = feature.get("geometry")
        kind = geometry.get("type") if isinstance(geometry, Mapping) else None
        if kind == "Polygon":
            polygons = [_geojson_rings(geometry.get("coordinates"), path, what)]
        elif kind == "MultiPolygon":
            parts = geometry.get("coordinates")
            if not isinstance(parts, list) or not parts:
                raise ReaderError(f"{_where(path)}: {what} is a MultiPolygon without polygons")
            polygons = [_geojson_rings(p, path, f"{what}, polygon {k}") for k, p in enumerate(parts)]
        else:
            shown = (
                kind if kind is not None else ("no geometry" if geometry is None else type(geometry).__name__)
            )
            raise ReaderError(
                f"{_where(path)}: {what} has geometry {shown!r}; expected a Polygon or MultiPolygon"
            )
        selection = out.get(name)
        if selection is None:
            out[name] = _Selection(name, polygons, {k: _property_value(v) for k, v in props.items()})
        else:
            selection.polygons.extend(polygons)
    return list(out.values())


# ------------------------------------------------------------------------------------------------ public API


def xenium_explorer_selection(
    path: str | os.PathLike,
    *,
    name_column: str | None = None,
    format: str | None = None,
    coordinate_system: str = "global",
    pixel_size: float | None = XENIUM_PIXEL_SIZE,
    pixel_coordinate_system: str | None = "pixels",
) -> gpd.GeoDataFrame:
    """Read Xenium Explorer selections (CSV or GeoJSON export, coordinates in µm) as a shapes element.

    Parameters
    ----------
    path
        A ``*_coordinates.csv`` export (``#`` comment lines, then ``X``, ``Y`` and optionally ``Selection`` /
        ``Name`` columns, one row per vertex) or a GeoJSON FeatureCollection of Polygon / MultiPolygon features;
        ``.gz`` compressed files too.
    name_column
        The CSV column or GeoJSON property holding the selection names. Default: ``Selection``, ``Name``, ...
        (CSV, case-insensitive) or ``name`` then the ``classification`` name then the feature ``id`` (GeoJSON).
        A CSV without a name column is one selection named after its ``#Selection name:`` comment, else the file
        name (without ``_coordinates.csv``).
    format
        ``"csv"`` or ``"geojson"``; default from the file name (``.csv``, ``.geojson``, ``.json``), else from
        the content.
    coordinate_system
        The µm coordinate system (Identity): ``global`` of :func:`tissuestack.io.xenium`, where the cells are.
    pixel_size, pixel_coordinate_system
        µm per morphology pixel (``experiment.xenium``) and the name of the morphology pixel coordinate system,
        which gets ``Scale(1 / pixel_size)`` on x and y as the reader's shapes do; ``None`` for either omits it.

    Returns
    -------
    geopandas.GeoDataFrame
        One row per selection (a Polygon, with holes if any, or a MultiPolygon when a selection has several
        parts), indexed by the selection names (strings) in file order; GeoJSON properties become columns.

    Raises
    ------
    ReaderError
        The file is missing, or malformed: no ``X`` / ``Y`` columns, non-numeric coordinates, a ring with fewer
        than 3 distinct vertices, geometries other than polygons. The message names the file, the line or
        feature, and what was expected.
    """
    import geopandas as gpd
    import pandas as pd

    from tissuestack.elements import ShapesModel

    p = Path(path)
    text = _decode(_read_bytes(p))
    kind = format.lower() if format else _detect_format(p, text)
    if kind not in ("csv", "geojson"):
        raise ValueError(f"format must be 'csv' or 'geojson', got {format!r}")
    if kind == "csv":
        selections = _csv_selections(p, text, name_column)
    else:
        selections = _geojson_selections(p, text, name_column)
    geoms = _geometries(selections)
    index = pd.Index([s.name for s in selections], dtype=object)
    columns: dict[str, Any] = {}
    keys = list(dict.fromkeys(k for s in selections for k in s.properties if k != "geometry"))
    if keys:
        properties = pd.DataFrame([s.properties for s in selections], columns=keys)
        columns = {k: properties[k].to_numpy() for k in keys}  # arrays: nothing aligns on another index
    gdf = gpd.GeoDataFrame({"geometry": geoms, **columns}, index=index, geometry="geometry", crs=None)
    transformations = _transformations(coordinate_system, pixel_size, pixel_coordinate_system)
    return ShapesModel.parse(gdf, transformations=transformations, name=p.name)


def add_xenium_explorer_selection(
    sdata: SpatialData,
    path: str | os.PathLike,
    name: str = "selections",
    *,
    like: str | None = None,
    overwrite: bool = False,
    **options: Any,
) -> gpd.GeoDataFrame:
    """Read Xenium Explorer selections and add them to ``sdata`` as the shapes element ``name``.

    Parameters
    ----------
    sdata
        Typically the result of :func:`tissuestack.io.xenium`.
    path
        The CSV or GeoJSON export (see :func:`xenium_explorer_selection`).
    name
        Element name.
    like
        An element of ``sdata`` whose intrinsic coordinates are µm (a Xenium reading's shapes or points) whose
        transformations the selections take, so that they land where it is in every coordinate system. Default:
        the first of ``cell_boundaries``, ``nucleus_boundaries``, ``cell_circles``, ``transcripts`` present,
        else the transformations of :func:`xenium_explorer_selection` (``global`` and ``pixels``). An element
        found here replaces the transformations that ``coordinate_system`` / ``pixel_size`` would give.
    overwrite
        Replace an existing element called ``name``.
    **options
        Passed to :func:`xenium_explorer_selection` (``name_column``, ``format``, ``pixel_size``, ...).

    Returns
    -------
    geopandas.GeoDataFrame
        The element added.
    """
    from tissuestack.elements import ShapesModel, get_meta

    shapes = xenium_explorer_selection(path, **options)
    if like is None:
        like = next((n for n in LIKE_ELEMENTS if n in sdata), None)
    if like is not None:
        if like not in sdata:
            raise KeyError(f"like: no element named {like!r} in the SpatialData object")
        if sdata.kind_of(like) not in ("shapes", "points"):
            raise ValueError(
                f"like: {like!r} is a {sdata.kind_of(like)} element; expected shapes or points in µm (rasters are "
                "in pixels)"
            )
        transformations = dict(get_meta(sdata[like]).transformations)
        shapes = ShapesModel.parse(shapes, transformations=transformations, name=name)
    if name in sdata and not overwrite:
        raise KeyError(f"an element named {name!r} exists already; pass overwrite=True to replace it")
    if name in sdata:
        del sdata[name]
    sdata.add(name, shapes, kind="shapes")
    return sdata[name]


def _export_geometries(shapes: gpd.GeoDataFrame, transformation: BaseTransformation) -> np.ndarray:
    import shapely

    from tissuestack.elements._shapes import RADIUS_COLUMN, shapes_type
    from tissuestack.transforms import Identity

    geoms = np.asarray(shapes.geometry.array)
    if shapes_type(shapes) == "circles":  # selections are polygons: circles as 64-gons
        geoms = shapely.buffer(geoms, shapes[RADIUS_COLUMN].to_numpy(dtype=np.float64), quad_segs=16)
    if not isinstance(transformation, Identity):
        geoms = shapely.transform(geoms, lambda xy: transformation.apply(xy, ("x", "y")))
    return geoms


def _scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
    except ImportError:  # pragma: no cover
        pass
    return value


def _csv_bytes(names: Sequence[str], geoms: np.ndarray, coordinate_system: str) -> bytes:
    """``Selection,X,Y`` rows after two comment lines, built by Arrow kernels (no Python loop per vertex)."""
    import csv

    import pyarrow as pa
    import pyarrow.compute as pc
    import shapely

    from tissuestack._version import __version__

    head = io.StringIO()
    head.write(f"#Xenium Explorer selections written by tissuestack {__version__}\n")
    head.write(
        f"#Coordinates in µm (coordinate system {coordinate_system!r}); rings closed, holes after their ring\n"
    )
    writer = csv.writer(head, lineterminator="\n")
    writer.writerow(["Selection", "X", "Y"])
    quoted = []
    for name in names:  # CSV quoting once per name, not per vertex
        one = io.StringIO()
        csv.writer(one, lineterminator="").writerow([name])
        quoted.append(one.getvalue())
    parts, part_owner = shapely.get_parts(geoms, return_index=True)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    coords, vertex_ring = shapely.get_coordinates(rings, return_index=True)
    owner = part_owner[ring_part[vertex_ring]]
    text = pa.large_string()
    owners = pc.take(pa.array(quoted, type=text), pa.array(owner))
    # Arrow formats floats as the shortest text that parses back to the same value (as repr does)
    xs = pc.cast(pa.array(coords[:, 0]), text)
    ys = pc.cast(pa.array(coords[:, 1]), text)
    rows = pc.binary_join_element_wise(owners, xs, ys, pa.scalar(",", type=text))
    lines = pc.binary_join_element_wise(
        rows, pa.scalar("", type=text), pa.scalar("\n", type=text)
    )  # row + newline
    if len(lines) == 0:
        body = b""
    else:
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)
        start, end = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
        body = lines.buffers()[2].to_pybytes()[start:end]
    return head.getvalue().encode("utf-8") + body


@functools.cache
def _geos_geojson_is_exact() -> bool:
    """Whether GEOS writes GeoJSON coordinates as the shortest text that parses back to the same floats (older
    GEOS versions round them); checked once on values that need 17 significant digits."""
    import shapely

    xy = [0.1 + 0.2, 1 / 3]
    try:
        return json.loads(shapely.to_geojson(shapely.Point(xy)))["coordinates"] == xy
    except Exception:  # pragma: no cover - any failure means: do not use it
        return False


def _geometry_json(geoms: np.ndarray) -> list[str]:
    import shapely
    import shapely.geometry

    if _geos_geojson_is_exact():
        return shapely.to_geojson(geoms).tolist()  # vectorized, in GEOS
    return [json.dumps(shapely.geometry.mapping(g), allow_nan=False) for g in geoms]


def _geojson_text(names: Sequence[str], geoms: np.ndarray, shapes: gpd.GeoDataFrame, name_key: str) -> str:
    columns = [c for c in shapes.columns if c != shapes.geometry.name and c != name_key]
    values = {c: shapes[c].tolist() for c in columns}
    features = []
    for i, (name, geometry) in enumerate(zip(names, _geometry_json(geoms), strict=True)):
        properties: dict[str, Any] = {"name": name}
        for column in columns:
            value = _scalar(values[column][i])
            if column == "classification" and value is not None:
                value = {"name": value}
            elif not isinstance(value, str | int | float | bool | type(None)):
                value = str(value)
            properties[str(column)] = value
        features.append(
            f'{{"type": "Feature", "geometry": {geometry}, "properties": {json.dumps(properties, allow_nan=False)}}}'
        )
    return '{"type": "FeatureCollection", "features": [' + ",\n".join(features) + "]}\n"


def write_xenium_explorer_selection(
    shapes: gpd.GeoDataFrame | str,
    path: str | os.PathLike,
    *,
    format: str | None = None,
    coordinate_system: str = "global",
    sdata: SpatialData | None = None,
    name_column: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write shapes as Xenium Explorer selections (CSV or GeoJSON, coordinates in µm).

    Parameters
    ----------
    shapes
        A shapes element (polygons, multipolygons or circles, written as 64-gons), or its name in ``sdata``.
    path
        Output file (gzip-compressed when it ends with ``.gz``); replaced atomically (written to a temporary
        file next to it first).
    format
        ``"csv"`` (``Selection,X,Y``, one row per vertex, every ring closed, holes after their exterior, after
        two ``#`` comment lines as Xenium Explorer writes them) or ``"geojson"`` (a FeatureCollection, the name
        in the ``name`` property, the other columns as properties). Default from the suffix of ``path``
        (``.geojson`` / ``.json``: GeoJSON, else CSV).
    coordinate_system
        The µm coordinate system: the geometries are transformed from the element's coordinates into it (e.g.
        from morphology pixels); with ``sdata`` the path may go through other elements.
    sdata
        The SpatialData object holding the element (needed when ``shapes`` is a name).
    name_column
        Column holding the selection names; default the index.
    overwrite
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        The file written. :func:`xenium_explorer_selection` reads it back into the same geometries and names.
    """
    from tissuestack.elements import get_kind
    from tissuestack.ops._resolve import transformation_to

    element_name = None
    if isinstance(shapes, str):
        if sdata is None:
            raise TypeError("shapes is an element name: pass the SpatialData object holding it as sdata=")
        element_name = shapes
        shapes = sdata[shapes]
    elif sdata is not None:
        element_name = next((n for n, e in sdata.spatial_items() if e is shapes), None)
    if get_kind(shapes) != "shapes":
        raise ValidationError(f"expected a shapes element, got a {get_kind(shapes)} element")
    label = repr(element_name) if element_name else "the shapes element"
    p = Path(path)
    kind = format.lower() if format else ("geojson" if p.name.lower().endswith(GEOJSON_SUFFIXES) else "csv")
    if kind not in ("csv", "geojson"):
        raise ValueError(f"format must be 'csv' or 'geojson', got {format!r}")
    if p.exists() and not overwrite:
        raise FileExistsError(f"{str(p)!r} exists; pass overwrite=True to replace it")

    if name_column is not None:
        if name_column not in shapes.columns:
            raise ValidationError(
                f"{label}: no column {name_column!r} (name_column); it has {list(shapes.columns)}"
            )
        raw = shapes[name_column].to_numpy()
    else:
        raw = shapes.index.to_numpy()
    names = [str(v) for v in raw.tolist()]
    if len(set(names)) != len(names):
        raise ValidationError(
            f"{label}: the selection names (as text) are not unique; expected one name per row"
        )
    if any(not n.strip() or n != n.strip() or "\n" in n for n in names):
        raise ValidationError(
            f"{label}: empty selection names or names with surrounding spaces / line breaks; expected names that "
            "survive a CSV round trip"
        )
    t = transformation_to(shapes, coordinate_system, sdata=sdata if element_name else None, name=element_name)
    geoms = _export_geometries(shapes, t)
    if kind == "csv":
        data = _csv_bytes(names, geoms, coordinate_system)
    else:
        data = _geojson_text(names, geoms, shapes, name_column or "").encode("utf-8")
    if p.name.lower().endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p
