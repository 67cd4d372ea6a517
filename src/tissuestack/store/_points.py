"""Points codec (FORMAT.md §5): a spatially sorted Parquet dataset inside the element group.

Layout and compatibility
------------------------
``points/<name>/points.parquet/part.<i>.parquet`` (``i = 0..n-1``), plain Parquet as Dask writes it, so the
reference (``dask.dataframe.read_parquet``) and every other Parquet tool read it:

* the index is a column, ``__null_dask_index__`` for an unnamed index, declared as index in the pandas metadata;
* the feature column (and every other categorical column) is an Arrow ``dictionary<string>`` that carries the
  full category list in every file and every row group, so categories are "known";
* each file's footer also carries a ``tissuestack`` key-value entry (ignored by other readers) with the category
  lists and the sort parameters, so that opening needs footers only.

Spatial sort (write)
--------------------
Rows are ordered along a Hilbert curve of (x, y), quantized on a ``2**16 x 2**16`` grid with square cells over the
global bounds (isotropic, so compact curve segments are compact in space). Files are contiguous key ranges and
row groups (``row_group_size`` rows, 65,536 by default) are contiguous sub-ranges, so each covers a compact
region and its min/max statistics on x, y (and z) let a spatial query skip everything it does not touch.
The Hilbert key is computed with two lookups in an 8-bit-per-axis state table (:func:`hilbert_key`), vectorized
over whole partitions.

The write is bounded in memory and never holds all points at once when the input has several partitions:

1. **Scan** (one pass, coordinates only, projected through the input graph): per partition the row count,
   x/y min/max and a systematic sample of coordinates.
2. The global bounds fix the quantization; the keys of the sample give ``K - 1`` quantile boundaries that split
   the key space into ``K = ceil(n / rows_per_file)`` ranges of about ``rows_per_file`` rows (2,000,000 by
   default), one per output file.
3. **Spill** (one pass over the full input, partition by partition, parallel): compute the key, the range of each
   row (``searchsorted``), group the rows by range (an O(n) radix sort) and append them, with their key, as
   one Arrow IPC record batch per range to a per-partition spill file (uncompressed, memory-mapped later).
4. **Assemble** (parallel over ranges): gather the range's batches from all spill files, sort them by key (two
   16-bit radix passes), and write ``part.<k>.parquet`` (Snappy, dictionary encoding for dictionary and string
   columns, min/max statistics on the coordinate columns, the only ones the rows are ordered by).

Peak memory is about ``n_workers x (one input partition + one output file)``. Shortcuts: a single-partition
input is already in memory and is sorted and split directly; input with at most ``rows_per_file`` rows is
written as one sorted file. Spill files go to a hidden folder inside the element folder for local stores (same
disk as the output) and to the system temporary folder for remote stores (or ``spill_dir``); they are deleted
when the write ends.

Read
----
:func:`read_points` opens the footers only (row counts, schema, categories) and returns
``dask.dataframe.read_parquet`` over the files in natural order through a pyarrow filesystem, the variant of
dask-expr that pushes both column projections and row filters (``df[df.x > v]``) down to the Parquet reader,
which then skips row groups by their statistics. Pandas dtypes recorded in the pandas metadata (nullable
integers, categories with their full category list, strings as dask returns them) are restored with lazy
``astype`` calls, which keep the pushdown. Servers without byte-range support (Python's ``http.server``) are
read through a local whole-file cache. :func:`points_row_group_stats` lists the row-group bounding boxes from
the footers, for spatial engines that prune row groups themselves.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dask
import dask.dataframe as dd
import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import zarr
from fsspec.implementations.cached import SimpleCacheFileSystem

from tissuestack._compute import import_distributed, scheduler
from tissuestack.elements import get_meta, points_axes, record_of, set_meta
from tissuestack.errors import FormatError, StoreError
from tissuestack.store._registry import register_codec
from tissuestack.store._root import ElementLocation
from tissuestack.store._spatial_attrs import encode_spatial_attrs, meta_from_attrs

__all__ = [
    "DEFAULT_ROWS_PER_FILE",
    "DEFAULT_ROW_GROUP_SIZE",
    "IN_MEMORY_ROWS",
    "POINTS_VERSIONS",
    "PointsScan",
    "describe_points",
    "hilbert_key",
    "points_files",
    "points_row_group_stats",
    "points_scan",
    "read_points",
    "scan_row_groups",
    "write_points",
]

POINTS_VERSIONS: tuple[str, ...] = ("0.1", "0.2")
#: target rows per output file (one dask partition when read back)
DEFAULT_ROWS_PER_FILE = 2_000_000
# inputs up to this many rows are sorted in memory (one compute, no spill files); larger ones stream
IN_MEMORY_ROWS = 4_000_000
# below this many rows per file or key chunk, splitting work across threads costs more than it gains
_MIN_ROWS_PER_TASK = 500_000
#: rows per Parquet row group (the unit a spatial query reads)
DEFAULT_ROW_GROUP_SIZE = 65_536

DATASET = "points.parquet"
NULL_INDEX = "__null_dask_index__"  # Dask's name for an unnamed index column
FOOTER_KEY = b"tissuestack"  # our own key-value entry in each Parquet footer
KEY_BITS = 16  # quantization bits per axis of the Hilbert key
_KEY_COLUMN = "__tissuestack_hilbert_key__"  # only in spill files
_SAMPLE_ROWS = 500_000  # total coordinate sample used for the file boundaries
_PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")


# ------------------------------------------------------------------------------------------------ Hilbert key


@functools.cache
def _hilbert_tables() -> tuple[np.ndarray, np.ndarray]:
    """State tables of the 2D Hilbert curve, 8 bits per axis per step.

    The curve is the classic one (``xy2d``): at each level the quadrant digit is ``(3 * rx) ^ ry`` and the
    lower bits are then complemented (when ``ry == 0 and rx == 1``) and swapped (when ``ry == 0``). Both
    operations commute, so the transform accumulated over the higher bits is one of four states
    ``swap | complement << 1``. Entry ``state << 16 | xbyte << 8 | ybyte`` gives 16 key bits and the next state.
    """
    xs, ys = (a.ravel().astype(np.uint32) for a in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    digits = np.empty((4, 65536), dtype=np.uint16)
    states = np.empty((4, 65536), dtype=np.uint8)
    for state in range(4):
        swap, complement = state & 1, state >> 1
        x, y = (xs ^ 255, ys ^ 255) if complement else (xs, ys)
        if swap:
            x, y = y, x
        d = np.zeros(65536, dtype=np.uint32)
        swaps = np.zeros(65536, dtype=np.uint32)
        flips = np.zeros(65536, dtype=np.uint32)
        for bit in range(7, -1, -1):
            rx = (x >> bit) & 1
            ry = (y >> bit) & 1
            d = (d << 2) | ((3 * rx) ^ ry)
            flip = (ry == 0) & (rx == 1)
            mask = np.uint32((1 << bit) - 1)
            x = np.where(flip, x ^ mask, x)
            y = np.where(flip, y ^ mask, y)
            turn = ry == 0
            x, y = np.where(turn, y, x), np.where(turn, x, y)
            swaps ^= turn
            flips ^= flip
        digits[state] = d
        states[state] = (swaps ^ swap) | ((flips ^ complement) << 1)
    return digits.ravel(), states.ravel()


def hilbert_key(qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
    """Hilbert index (uint32) of integer grid coordinates ``0 <= qx, qy < 2**16``, vectorized."""
    digits, states = _hilbert_tables()
    qx = np.asarray(qx, dtype=np.uint32)
    qy = np.asarray(qy, dtype=np.uint32)
    first = ((qx >> 8) << 8) | (qy >> 8)
    high = digits[first].astype(np.uint32)
    second = (states[first].astype(np.uint32) << 16) | ((qx & 255) << 8) | (qy & 255)
    return (high << 16) | digits[second]


@dataclass(frozen=True)
class _Grid:
    """Quantization of (x, y) onto the ``2**KEY_BITS`` grid with square cells."""

    x0: float
    y0: float
    scale: float

    @classmethod
    def from_bounds(cls, xmin: float, xmax: float, ymin: float, ymax: float) -> _Grid:
        if not all(np.isfinite([xmin, xmax, ymin, ymax])):
            return cls(0.0, 0.0, 0.0)
        extent = max(xmax - xmin, ymax - ymin)
        scale = (2**KEY_BITS - 1) / extent if extent > 0 else 0.0
        return cls(float(xmin), float(ymin), float(scale))

    def _quantize(self, v: np.ndarray, origin: float) -> np.ndarray:
        q = (np.asarray(v, dtype=np.float64) - origin) * self.scale
        np.nan_to_num(q, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        np.clip(q, 0, 2**KEY_BITS - 1, out=q)
        return q.astype(np.uint32)

    def keys(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return hilbert_key(self._quantize(x, self.x0), self._quantize(y, self.y0))


def _coords(part: pd.DataFrame, axis: str) -> np.ndarray:
    return part[axis].to_numpy(dtype=np.float64, na_value=np.nan)


# ------------------------------------------------------------------------------------------------ files


def _natural_key(path: str) -> list[Any]:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _relative(loc: ElementLocation, path: str) -> str:
    """``points/<name>/points.parquet/part.0.parquet`` for messages."""
    base = loc.file(DATASET)
    tail = path[len(base) :].lstrip("/\\") if path.startswith(base) else path.rstrip("/").rsplit("/", 1)[-1]
    return f"{loc.key}/{DATASET}" + (f"/{tail}" if tail else "")


def points_files(loc: ElementLocation) -> list[str]:
    """Filesystem paths of the Parquet files of a points element, in natural order (``part.2`` < ``part.10``).

    ``points.parquet`` may be a folder of files or a single file. Raises ``StoreError`` when it is missing or
    holds no Parquet file.
    """
    fs = loc.root.fs
    path = loc.file(DATASET)
    try:
        entries = fs.ls(path, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        entries = None
    except OSError as err:
        raise StoreError(f"{loc.key}: cannot list {loc.key}/{DATASET}: {err}") from err
    if entries:
        files = [
            e["name"]
            for e in entries
            if e.get("type") != "directory"
            and e["name"].rstrip("/").endswith(_PARQUET_SUFFIXES)
            and not e["name"].rstrip("/").rsplit("/", 1)[-1].startswith((".", "_"))
        ]
        if files:
            return sorted(files, key=_natural_key)
    try:
        is_file = fs.isfile(path)
    except OSError:
        is_file = False
    if is_file:
        return [path]
    if entries:
        raise StoreError(f"{loc.key}: {loc.key}/{DATASET} holds no Parquet file (expected part.<i>.parquet)")
    raise StoreError(
        f"{loc.key}: missing {loc.key}/{DATASET} (the points data; expected a Parquet dataset at {path})"
    )


class _NoRangeRequests(Exception):
    """The server cannot serve byte ranges (e.g. Python's ``http.server``): read whole files instead."""


def _read_footer(loc: ElementLocation, path: str, fs: fsspec.AbstractFileSystem) -> pq.FileMetaData:
    try:
        if loc.root.is_local:
            return pq.read_metadata(path)
        with fs.open(path, "rb") as fh:
            return pq.read_metadata(fh)
    except FileNotFoundError as err:
        raise StoreError(f"{loc.key}: missing file {_relative(loc, path)}") from err
    except Exception as err:  # ArrowInvalid (truncated, not Parquet), OSError
        if isinstance(err, ValueError) and "range requests" in str(err):
            raise _NoRangeRequests(str(err)) from err
        raise StoreError(
            f"{loc.key}: cannot read the Parquet footer of {_relative(loc, path)} (truncated or corrupt?): {err}"
        ) from err


def _footers_with(
    loc: ElementLocation, files: Sequence[str], fs: fsspec.AbstractFileSystem
) -> list[pq.FileMetaData]:
    if loc.root.is_local or len(files) <= 2:
        return [_read_footer(loc, f, fs) for f in files]
    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:  # remote: hide latency
        return list(pool.map(lambda f: _read_footer(loc, f, fs), files))


def _url_scheme(loc: ElementLocation) -> str:
    return loc.root.url.split("://", 1)[0] if "://" in loc.root.url else ""


def _serves_byte_ranges(loc: ElementLocation, fs: fsspec.AbstractFileSystem, url: str) -> bool:
    """Whether an HTTP store's server answers range requests (probed once per opened store, 4 bytes)."""
    if loc.root.byte_ranges is None:
        try:
            loc.root.byte_ranges = len(fs.cat_file(url, start=0, end=4)) == 4
        except Exception:  # let the footer read report the problem
            return True
    return loc.root.byte_ranges


def _footers(
    loc: ElementLocation, files: Sequence[str]
) -> tuple[list[pq.FileMetaData], fsspec.AbstractFileSystem]:
    """Footers of ``files`` and the filesystem to read the files through.

    That is the store's filesystem, except on servers without byte-range support, where whole files are
    downloaded once into a local cache and read from there.
    """
    fs = loc.root.fs
    if _url_scheme(loc) in ("http", "https") and not _serves_byte_ranges(loc, fs, files[0]):
        fs = SimpleCacheFileSystem(fs=fs)
    try:
        return _footers_with(loc, files, fs), fs
    except _NoRangeRequests:
        cached = SimpleCacheFileSystem(fs=fs)
        return _footers_with(loc, files, cached), cached


def _footer_info(md: pq.FileMetaData) -> dict[str, Any]:
    raw = (md.metadata or {}).get(FOOTER_KEY)
    if not raw:
        return {}
    try:
        info = json.loads(raw)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


class _URLHandler(pafs.FSSpecHandler):
    """``FSSpecHandler`` for filesystems that need full URLs (HTTP): dask strips the protocol from paths."""

    def __init__(self, fs: fsspec.AbstractFileSystem, scheme: str) -> None:
        super().__init__(fs)
        self._prefix = f"{scheme}://"

    def _url(self, path: str) -> str:
        return path if "://" in path else self._prefix + path.lstrip("/")

    def _path(self, url: str) -> str:
        return url[len(self._prefix) :] if url.startswith(self._prefix) else url

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        infos = super().get_file_info([self._url(p) for p in paths])
        return [
            pafs.FileInfo(p, i.type, mtime=i.mtime, size=i.size) for p, i in zip(paths, infos, strict=True)
        ]

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        url_selector = pafs.FileSelector(
            self._url(selector.base_dir), selector.allow_not_found, selector.recursive
        )
        try:
            infos = super().get_file_info_selector(url_selector)
        except (FileNotFoundError, NotADirectoryError) as err:
            raise type(err)(selector.base_dir) from err
        return [pafs.FileInfo(self._path(i.path), i.type, mtime=i.mtime, size=i.size) for i in infos]

    def open_input_file(self, path: str) -> Any:
        return super().open_input_file(self._url(path))

    def open_input_stream(self, path: str) -> Any:
        return super().open_input_stream(self._url(path))


def _arrow_filesystem(loc: ElementLocation, fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """A pyarrow filesystem over the element's files (dask-expr pushes filters down only through these)."""
    if loc.root.is_local:
        return pafs.LocalFileSystem()
    scheme = _url_scheme(loc)
    if scheme in ("http", "https"):
        return pafs.PyFileSystem(_URLHandler(fs, scheme))
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


# ------------------------------------------------------------------------------------------------ write


def _known_categoricals(df: dd.DataFrame, feature_key: str | None) -> dd.DataFrame:
    """Categorical columns with known categories (the feature column made categorical if needed)."""
    updates: dict[str, Any] = {}
    for column, dtype in df.dtypes.items():
        is_cat = isinstance(dtype, pd.CategoricalDtype)
        if column == feature_key and not is_cat:
            updates[column] = df[column].astype("category").cat.as_known()
        elif is_cat and not df[column].cat.known:
            updates[column] = df[column].cat.as_known()
    return df.assign(**updates) if updates else df


def _known_categoricals_pandas(df: pd.DataFrame, feature_key: str | None) -> pd.DataFrame:
    if feature_key is not None and not isinstance(df[feature_key].dtype, pd.CategoricalDtype):
        return df.assign(**{feature_key: df[feature_key].astype("category")})
    return df


def _to_arrow(part: pd.DataFrame) -> pa.Table:
    """A pandas partition as Arrow, index as a column (``__null_dask_index__`` when unnamed), as Dask does."""
    if part.attrs:  # our metadata mirror and user attrs are not part of the points data
        part = part.copy(deep=False)
        part.attrs = {}
    if part.index.name is None:
        part = part.rename_axis(NULL_INDEX)
    return pa.Table.from_pandas(part, preserve_index=True)


def _categories_info(dtypes: pd.Series) -> dict[str, list[Any]]:
    """Category lists of the categorical columns that JSON can carry exactly (strings, integers)."""
    out: dict[str, list[Any]] = {}
    for column, dtype in dtypes.items():
        if isinstance(dtype, pd.CategoricalDtype):
            values = dtype.categories.tolist()
            if all(isinstance(v, str) for v in values) or all(
                isinstance(v, int) and not isinstance(v, bool) for v in values
            ):
                out[str(column)] = values
    return out


@dataclass
class _Writer:
    """Writes sorted tables as ``part.<k>.parquet`` files of one element."""

    loc: ElementLocation
    row_group_size: int
    compression: str | None
    footer: bytes

    @property
    def folder(self) -> str:
        return self.loc.file(DATASET)

    def prepare(self) -> None:
        fs = self.loc.root.fs
        if self.loc.root.is_local:
            os.makedirs(self.folder, exist_ok=True)
        else:
            fs.makedirs(self.folder, exist_ok=True)

    def write(self, table: pa.Table, k: int) -> int:
        metadata = dict(table.schema.metadata or {})
        metadata[FOOTER_KEY] = self.footer
        table = table.replace_schema_metadata(metadata)
        dictionary_columns = [
            f.name
            for f in table.schema
            if pa.types.is_dictionary(f.type)
            or pa.types.is_string(f.type)
            or pa.types.is_large_string(f.type)
        ]
        options: dict[str, Any] = {
            "row_group_size": self.row_group_size,
            "compression": self.compression,
            "use_dictionary": dictionary_columns or False,
            # min/max statistics where they prune: the coordinates (the rows are not sorted by anything else)
            "write_statistics": [a for a in ("x", "y", "z") if a in table.column_names],
        }
        name = f"part.{k}.parquet"
        if self.loc.root.is_local:
            pq.write_table(table, os.path.join(self.folder, name), **options)
        else:
            with self.loc.root.fs.open(posixpath.join(self.folder, name), "wb") as fh:
                pq.write_table(table, fh, **options)
        return table.num_rows


def _argsort_keys(keys: np.ndarray) -> np.ndarray:
    """Stable argsort of uint32 keys as two 16-bit radix passes (numpy radix-sorts 16-bit integers)."""
    low = (keys & 0xFFFF).astype(np.uint16)
    first = np.argsort(low, kind="stable")
    high = (keys >> 16).astype(np.uint16)[first]
    return first[np.argsort(high, kind="stable")]


def _parallel_keys(grid: _Grid, part: pd.DataFrame, pool: ThreadPoolExecutor, workers: int) -> np.ndarray:
    """Hilbert keys of every row, computed in row chunks on the pool (numpy releases the GIL)."""
    x, y = _coords(part, "x"), _coords(part, "y")
    n = len(x)
    if workers < 2 or n < 2 * _MIN_ROWS_PER_TASK:
        return grid.keys(x, y)
    cuts = np.linspace(0, n, workers + 1).astype(int)
    chunks = pool.map(lambda ab: grid.keys(x[ab[0] : ab[1]], y[ab[0] : ab[1]]), itertools.pairwise(cuts))
    return np.concatenate(list(chunks))


def _write_in_memory(
    part: pd.DataFrame,
    make_writer: Callable[[Sequence[float] | None], _Writer],
    rows_per_file: int,
    workers: int,
) -> int:
    """Sort one in-memory frame and write it as contiguous, equally sized files (written in parallel).

    At least one file per worker once there are enough rows, so that encoding uses every core.
    """
    bounds = _bounds_of(part) if len(part) else None
    writer = make_writer(bounds)
    grid = _Grid.from_bounds(*(bounds or (np.nan,) * 4))
    n = len(part)
    n_files = max(1, -(-n // rows_per_file), min(workers, n // _MIN_ROWS_PER_TASK))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        keys = _parallel_keys(grid, part, pool, workers)
        # reorder in pandas (numpy takes per block), then convert: faster than an Arrow take on dictionaries
        table = _to_arrow(part.take(_argsort_keys(keys)))
        cuts = [(n * k) // n_files for k in range(n_files + 1)]
        slices = [table.slice(cuts[k], cuts[k + 1] - cuts[k]) for k in range(n_files)]
        list(pool.map(writer.write, slices, range(n_files)))
    return n_files


def _bounds_of(part: pd.DataFrame) -> tuple[float, float, float, float]:
    """Finite min/max of x and y, computed on the columns' own dtype (no float64 copy)."""
    out = []
    for axis in ("x", "y"):
        v = part[axis].to_numpy()
        if not v.size:
            out.extend([np.nan, np.nan])
            continue
        lo, hi = np.nanmin(v), np.nanmax(v)
        if not (np.isfinite(lo) and np.isfinite(hi)):  # rare: infinities present
            finite = v[np.isfinite(v)]
            lo, hi = (finite.min(), finite.max()) if finite.size else (np.nan, np.nan)
        out.extend([float(lo), float(hi)])
    return out[0], out[1], out[2], out[3]


@dataclass
class _Scan:
    n: int
    bounds: tuple[float, float, float, float]
    sample: np.ndarray  # (m, 2) coordinates


def _scan(part: pd.DataFrame, sample_rows: int) -> _Scan:
    n = len(part)
    x, y = _coords(part, "x"), _coords(part, "y")
    # evenly strided rows: distinct by construction, no dedup pass needed
    idx = (
        np.arange(0, n, max(1, -(-n // max(sample_rows, 1))), dtype=np.int64) if n else np.empty(0, np.int64)
    )
    return _Scan(n, _bounds_of(part) if n else (np.nan,) * 4, np.column_stack([x[idx], y[idx]]))


def _combine_bounds(scans: Sequence[_Scan]) -> tuple[float, float, float, float]:
    b = np.array([s.bounds for s in scans if s.n], dtype=np.float64).reshape(-1, 4)
    finite = b[np.isfinite(b).all(axis=1)]
    if not len(finite):
        return (np.nan, np.nan, np.nan, np.nan)
    return (
        float(finite[:, 0].min()),
        float(finite[:, 1].max()),
        float(finite[:, 2].min()),
        float(finite[:, 3].max()),
    )


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    batches = table.combine_chunks().to_batches()
    if len(batches) == 1:
        return batches[0]
    return pa.RecordBatch.from_pylist([], schema=table.schema)


def _spill(
    part: pd.DataFrame, index: int, grid: _Grid, boundaries: np.ndarray, folder: str
) -> tuple[np.ndarray, pa.Schema | None]:
    """Group one partition's rows by output file and write them as one IPC record batch per file."""
    n_files = len(boundaries) + 1
    if len(part) == 0:
        return np.zeros(n_files, dtype=np.int64), None
    keys = grid.keys(_coords(part, "x"), _coords(part, "y"))
    bucket = np.searchsorted(boundaries, keys, side="right").astype(np.min_scalar_type(n_files))
    counts = np.bincount(bucket, minlength=n_files).astype(np.int64)
    order = np.argsort(bucket, kind="stable")  # radix sort of small integers
    table = _to_arrow(part)
    schema = table.schema
    table = table.append_column(_KEY_COLUMN, pa.array(keys)).take(pa.array(order)).combine_chunks()
    starts = np.concatenate([[0], np.cumsum(counts)])
    with ipc.new_file(os.path.join(folder, f"{index}.arrow"), table.schema) as sink:
        for k in range(n_files):
            sink.write_batch(_one_batch(table.slice(int(starts[k]), int(counts[k]))))
    return counts, schema


def _assemble(
    k: int, sources: Sequence[int], folder: str, schema: pa.Schema, writer: _Writer, out_index: int
) -> int:
    """Gather output range ``k`` from the spill files of ``sources``, sort it by key and write it."""
    pieces = []
    for i in sources:
        with pa.memory_map(os.path.join(folder, f"{i}.arrow")) as source:
            batch = ipc.open_file(source).get_batch(k)
            piece = pa.Table.from_batches([batch])
            keys = piece.column(_KEY_COLUMN)
            piece = piece.drop_columns([_KEY_COLUMN])
            if not piece.schema.equals(schema):
                piece = piece.cast(schema)
            pieces.append(piece.append_column(_KEY_COLUMN, keys))
    table = pa.concat_tables(pieces)
    order = _argsort_keys(table.column(_KEY_COLUMN).to_numpy())
    table = table.drop_columns([_KEY_COLUMN]).take(pa.array(order))
    return writer.write(table.replace_schema_metadata(schema.metadata), out_index)


def _unify(schemas: Sequence[pa.Schema]) -> pa.Schema:
    first = schemas[0]
    if all(s.equals(first) for s in schemas[1:]):
        return first
    unified = pa.unify_schemas(list(schemas), promote_options="permissive")
    return unified.with_metadata(first.metadata)


def _n_workers() -> int:
    configured = dask.config.get("num_workers", None)
    return int(configured) if configured else max(1, os.cpu_count() or 1)


def write_points(
    df: dd.DataFrame | pd.DataFrame,
    parent: zarr.Group,
    loc: ElementLocation,
    version: str,
    *,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    compression: str | None = "snappy",
    spill_dir: str | os.PathLike | None = None,
) -> None:
    """Write a points element: spatially sorted Parquet files, then the group attributes (FORMAT.md §5).

    Parameters
    ----------
    df
        The points frame (dask, or pandas) with spatial metadata attached.
    parent
        The open ``points/`` group; the element group ``loc.name`` is created in it.
    loc
        Where the element goes (``loc.name`` may be a temporary name).
    version
        Points format version, ``"0.1"`` (Zarr v2) or ``"0.2"`` (Zarr v3).
    rows_per_file
        Target rows per output file (one partition when read back).
    row_group_size
        Rows per Parquet row group.
    compression
        Parquet compression codec.
    spill_dir
        Local folder for the temporary spill files of a multi-partition write (default: a hidden folder in the
        element folder for local stores, the system temporary folder for remote ones).
    """
    if version not in POINTS_VERSIONS:
        raise FormatError(
            f"{loc.key}: cannot write points format version {version!r}; known: {POINTS_VERSIONS}"
        )
    if rows_per_file < 1 or row_group_size < 1:
        raise ValueError("rows_per_file and row_group_size must be positive")
    meta = get_meta(df)
    known_rows = meta.n_rows
    axes = points_axes(df)
    if isinstance(df, pd.DataFrame):
        df = _known_categoricals_pandas(df, meta.feature_key)
    else:
        df = _known_categoricals(df, meta.feature_key)
    index_name = df.index.name if df.index.name is not None else NULL_INDEX
    if index_name in df.columns:
        raise StoreError(
            f"{loc.key}: the index name {index_name!r} is also a column name; rename one of them"
        )

    group = parent.create_group(loc.name)
    workers = _n_workers()
    categories = _categories_info(df.dtypes)

    def make_writer(bounds: Sequence[float] | None) -> _Writer:
        sort = {
            "curve": "hilbert",
            "bits": KEY_BITS,
            "bounds": [float(b) for b in bounds] if bounds else None,
        }
        footer = json.dumps({"categories": categories, "sort": sort}).encode()
        writer = _Writer(loc, row_group_size, compression, footer)
        writer.prepare()
        return writer

    if isinstance(df, pd.DataFrame) or df.npartitions == 1:
        part = df if isinstance(df, pd.DataFrame) else df.partitions[0].compute(scheduler=scheduler())
        _write_in_memory(part, make_writer, rows_per_file, workers)
    elif known_rows is not None and known_rows <= IN_MEMORY_ROWS:
        # small enough to sort in memory, and the count is known: skip the scanning pass
        _write_in_memory(df.compute(scheduler=scheduler()), make_writer, rows_per_file, workers)
    else:
        _write_partitioned(df, loc, make_writer, rows_per_file, workers, spill_dir)

    sd_attrs: dict[str, str] = {}
    if meta.instance_key is not None:
        sd_attrs["instance_key"] = meta.instance_key
    if meta.feature_key is not None:
        sd_attrs["feature_key"] = meta.feature_key
    group.attrs.update(
        encode_spatial_attrs(
            encoding_type="ngff:points",
            axes=axes,
            transformations=meta.transformations,
            version=version,
            sd_attrs=sd_attrs,
        )
    )


def _write_partitioned(
    df: dd.DataFrame,
    loc: ElementLocation,
    make_writer: Callable[[Sequence[float] | None], _Writer],
    rows_per_file: int,
    workers: int,
    spill_dir: str | os.PathLike | None,
) -> None:
    # pass 1: counts, bounds and a coordinate sample (x, y columns only)
    per_part = max(64, _SAMPLE_ROWS // df.npartitions)
    scans: list[_Scan] = list(
        dask.compute(
            *[dask.delayed(_scan)(p, per_part) for p in df[["x", "y"]].to_delayed()], scheduler=scheduler()
        )
    )
    n = sum(s.n for s in scans)
    bounds = _combine_bounds(scans)
    if n <= IN_MEMORY_ROWS:  # small enough to sort in memory
        _write_in_memory(df.compute(scheduler=scheduler()), make_writer, rows_per_file, workers)
        return
    writer = make_writer(bounds if n else None)

    grid = _Grid.from_bounds(*bounds)
    n_files = -(-n // rows_per_file)
    sample = np.concatenate([s.sample for s in scans])
    sample_keys = np.sort(grid.keys(sample[:, 0], sample[:, 1]))
    boundaries = sample_keys[(np.arange(1, n_files) * len(sample_keys)) // n_files]

    folder = _spill_folder(loc, spill_dir)
    try:
        # pass 2: spill every partition grouped by output range
        spilled = dask.compute(
            *[dask.delayed(_spill)(p, i, grid, boundaries, folder) for i, p in enumerate(df.to_delayed())],
            scheduler=scheduler(),
        )
        counts = np.array([c for c, _ in spilled], dtype=np.int64).reshape(len(spilled), n_files)
        schemas = [s for _, s in spilled if s is not None]
        schema = _unify(schemas)
        # pass 3: assemble, sort and write each non-empty range
        ranges = [k for k in range(n_files) if counts[:, k].sum() > 0]
        jobs = [
            (k, [i for i in range(len(spilled)) if counts[i, k] > 0], out) for out, k in enumerate(ranges)
        ]
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
            list(pool.map(lambda job: _assemble(job[0], job[1], folder, schema, writer, job[2]), jobs))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _spill_folder(loc: ElementLocation, spill_dir: str | os.PathLike | None) -> str:
    if spill_dir is not None:
        return tempfile.mkdtemp(prefix=".tissuestack-sort-", dir=os.fspath(spill_dir))
    if loc.root.is_local:
        folder = loc.file(f".sort-{uuid.uuid4().hex[:8]}")
        os.makedirs(folder)
        return folder
    return tempfile.mkdtemp(prefix="tissuestack-sort-")


# ------------------------------------------------------------------------------------------------ read


def _categories(
    loc: ElementLocation,
    files: Sequence[str],
    footers: Sequence[pq.FileMetaData],
    columns: Sequence[str],
    fs: fsspec.AbstractFileSystem,
) -> dict[str, list[Any]]:
    """Full category lists of dictionary columns: from our footer entry, else from the dictionaries."""
    out: dict[str, list[Any]] = {}
    infos = [_footer_info(md).get("categories") or {} for md in footers]
    for column in columns:
        lists = [info.get(column) for info in infos]
        if all(isinstance(v, list) for v in lists) and all(v == lists[0] for v in lists):
            out[column] = lists[0]
            continue

        # other writers' files: the union of the dictionaries of the whole column (read as a dictionary, plain
        # strings included), every row group of every file: a value first met late in a file is still a category
        def dictionaries(path: str, column: str = column) -> list[list[Any]]:
            try:
                if loc.root.is_local:
                    chunk = (
                        pq.ParquetFile(path, read_dictionary=[column]).read(columns=[column]).column(column)
                    )
                else:
                    with fs.open(path, "rb") as fh:
                        chunk = (
                            pq.ParquetFile(fh, read_dictionary=[column]).read(columns=[column]).column(column)
                        )
            except Exception as err:
                raise StoreError(
                    f"{loc.key}: cannot read column {column!r} of {_relative(loc, path)}: {err}"
                ) from err
            out = []
            for arr in chunk.chunks:
                dictionary = arr.dictionary if pa.types.is_dictionary(arr.type) else arr.unique()
                out.append(dictionary.to_pylist())
            return out

        values: dict[Any, None] = {}
        with ThreadPoolExecutor(max_workers=min(len(files), _n_workers()) or 1) as pool:
            for lists in pool.map(
                dictionaries, [p for p, md in zip(files, footers, strict=True) if md.num_rows]
            ):
                for lst in lists:
                    for v in lst:
                        if v is not None:
                            values.setdefault(v, None)
        plain = _is_arrow_string(footers[0].schema.to_arrow_schema().field(column).type)
        # plain strings have no category order: sorted, as pandas orders the categories it infers
        out[column] = sorted(values) if plain else list(values)
    return out


def _is_arrow_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _arrow_strings_as_pyarrow(t: pa.DataType) -> pd.StringDtype | None:
    """``types_mapper``: Arrow strings to pandas ``string[pyarrow]`` without going through Python objects."""
    return pd.StringDtype("pyarrow") if _is_arrow_string(t) else None


def _same_dtype(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except TypeError:
        return False


def read_points(
    group: zarr.Group,
    loc: ElementLocation,
    attrs: Mapping[str, Any],
    *,
    columns: Sequence[str] | None = None,
) -> dd.DataFrame:
    """Lazy dask DataFrame over the Parquet files of a points element (footers are read, no data).

    ``columns`` restricts the columns read; the coordinate columns are always included.
    """
    files = points_files(loc)
    footers, fs = _footers(loc, files)
    n_rows = sum(md.num_rows for md in footers)
    schema = footers[0].schema.to_arrow_schema()
    for path, md in zip(files[1:], footers[1:], strict=True):
        if md.schema.names != footers[0].schema.names:
            raise FormatError(
                f"{_relative(loc, path)}: columns {md.schema.names} differ from those of "
                f"{_relative(loc, files[0])} ({footers[0].schema.names}); expected one schema for all files"
            )
    try:  # pandas dtypes and index as recorded in the pandas metadata
        target = schema.empty_table().to_pandas()
    except Exception as err:
        raise FormatError(
            f"{loc.key}: cannot interpret the schema of {_relative(loc, files[0])}: {err}"
        ) from err
    names = list(target.columns)
    for axis in ("x", "y"):
        if axis not in names:
            raise FormatError(
                f"{_relative(loc, files[0])}: missing coordinate column {axis!r}; columns are {names}"
            )
    pandas_md = schema.pandas_metadata or {}
    index_columns = [c for c in pandas_md.get("index_columns", []) if isinstance(c, str)]
    index: str | bool = index_columns[0] if len(index_columns) == 1 else False

    selected: list[str] | None = None
    if columns is not None:
        wanted = [columns] if isinstance(columns, str) else list(columns)
        missing = [c for c in wanted if c not in names]
        if missing:
            raise KeyError(f"{loc.key}: no column(s) {missing} in the points data; columns are {names}")
        selected = [a for a in ("x", "y", "z") if a in names and a not in wanted] + wanted

    # strings as dask's own reader returns them: string[pyarrow] under dask's default convert-string setting
    strings = dask.config.get("dataframe.convert-string") in (None, True)
    string_dtype: Any = pd.StringDtype("pyarrow") if strings else np.dtype(object)
    import_distributed()  # before dask-expr imports it inside a dask.config.set block, perhaps in a thread
    df = dd.read_parquet(
        files,
        filesystem=_arrow_filesystem(loc, fs),
        index=index,
        columns=selected,
        arrow_to_pandas={"types_mapper": _arrow_strings_as_pyarrow} if strings else None,
    )
    if index == NULL_INDEX or (index and df.index.name == NULL_INDEX):
        df = df.rename_axis(None)
    # categorical columns, and the feature column even where another writer stored it as plain strings (a
    # feature column is categorical in every points element)
    feature_key = (attrs.get("spatialdata_attrs") or {}).get("feature_key")
    categorical = [
        c
        for c in df.columns
        if isinstance(target[c].dtype, pd.CategoricalDtype)
        or (c == feature_key and _is_arrow_string(schema.field(c).type))
    ]
    categories = _categories(loc, files, footers, categorical, fs)
    # the pyarrow-filesystem reader builds its meta from the pandas metadata but converts the data without it:
    # cast where the two can differ (categories, nullable integers, strings), which keeps the pushdown
    fixes: dict[str, Any] = {}
    for column in df.columns:
        want = target[column].dtype
        if column in categories:
            ordered = bool(getattr(want, "ordered", False))
            fixes[column] = pd.CategoricalDtype(categories[column], ordered=ordered)
        elif _is_arrow_string(schema.field(column).type):
            fixes[column] = string_dtype
        elif isinstance(want, pd.api.extensions.ExtensionDtype) or not _same_dtype(df.dtypes[column], want):
            fixes[column] = want
    if fixes:
        df = df.astype(fixes)
    set_meta(df, meta_from_attrs(attrs, group, loc, n_rows=n_rows))
    read_columns = None if selected is None else selected + ([index] if isinstance(index, str) else [])
    record = record_of(df)
    if (
        record is not None
    ):  # this exact frame reads its rows straight from these files (derived frames do not)
        record.source = PointsScan(loc, list(files), footers, fs, read_columns, strings, df._meta)
    return df


# ------------------------------------------------------------------------------------------------ direct scans


class PointsScan:
    """How a frame returned by :func:`read_points` reads its files, so that a query can read just the row groups
    whose statistics meet its region (with pyarrow, no dask-expr planning) and get partitions identical to the
    frame's own (same columns, dtypes, index)."""

    def __init__(
        self,
        loc: ElementLocation,
        files: list[str],
        footers: list[pq.FileMetaData],
        fs: fsspec.AbstractFileSystem,
        columns: list[str] | None,
        strings: bool,
        meta: pd.DataFrame,
    ):
        self.loc = loc
        self.files = files
        self.footers = footers
        self.fs = fs
        self.columns = columns
        self.strings = strings
        self.meta = meta
        self._stats: pd.DataFrame | None = None

    def __dask_tokenize__(self) -> str:
        return f"points-scan-{self.loc.root.url}-{self.loc.key}-{id(self)}"

    def __getstate__(self) -> dict[str, Any]:  # shipped to distributed workers without the footers
        return {k: v for k, v in self.__dict__.items() if k not in ("footers", "_stats")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, footers=[], _stats=None)

    def row_group_stats(self) -> pd.DataFrame:
        """:func:`points_row_group_stats` of the files (from the footers read when the frame was opened)."""
        if self._stats is None:
            self._stats = _row_group_stats(self.files, self.footers)
        return self._stats

    def tasks(self, keep: np.ndarray, rows_per_task: int = 1 << 20) -> list[tuple[str, tuple[int, ...]]]:
        """``(file, row groups)`` reads covering the row groups selected by ``keep`` (a mask over
        :meth:`row_group_stats`), in file order, each of about ``rows_per_task`` rows at most."""
        stats = self.row_group_stats()
        out: list[tuple[str, tuple[int, ...]]] = []
        for path, group in stats[keep].groupby("file", sort=False):
            current: list[int] = []
            rows = 0
            for rg, n in zip(group["row_group"].tolist(), group["n_rows"].tolist(), strict=True):
                if current and rows + n > rows_per_task:
                    out.append((path, tuple(current)))
                    current, rows = [], 0
                current.append(rg)
                rows += n
            if current:
                out.append((path, tuple(current)))
        return out

    def _table(self, task: tuple[str, tuple[int, ...]], columns: list[str] | None, **kwargs: Any) -> pa.Table:
        path, row_groups = task
        try:
            if self.loc.root.is_local:
                return pq.ParquetFile(path, **kwargs).read_row_groups(list(row_groups), columns=columns)
            with self.fs.open(path, "rb") as fh:
                return pq.ParquetFile(fh, **kwargs).read_row_groups(list(row_groups), columns=columns)
        except Exception as err:
            raise StoreError(
                f"{self.loc.key}: cannot read row groups of {_relative(self.loc, path)}: {err}"
            ) from err

    def read_arrays(
        self,
        task: tuple[str, tuple[int, ...]],
        columns: Sequence[str],
        categories: Mapping[str, pd.Index] | None = None,
    ) -> dict[str, np.ndarray]:
        """Some columns of some row groups of one file as numpy arrays, straight from pyarrow (no pandas frame).

        Columns named in ``categories`` come back as int32 codes into those categories (-1 for nulls and
        values not among them), whether the file stores them dictionary-encoded (ours) or as plain strings (the
        reference's): they are read as dictionaries, and each chunk's small dictionary is mapped once.
        Numeric columns come back as they are stored (zero-copy where pyarrow allows).
        """
        cats = dict(categories or {})
        table = self._table(task, list(columns), read_dictionary=[c for c in cats if c in columns] or None)
        out: dict[str, np.ndarray] = {}
        for name in columns:
            column = table.column(name)
            if name in cats:
                out[name] = _codes_of(column, cats[name])
            else:
                out[name] = column.to_numpy()
        return out

    def read(self, task: tuple[str, tuple[int, ...]]) -> pd.DataFrame:
        """The rows of some row groups of one file, conformed to the frame's partitions."""
        table = self._table(task, self.columns)
        frame = table.to_pandas(types_mapper=_arrow_strings_as_pyarrow if self.strings else None)
        meta = self.meta
        if isinstance(meta.index, pd.RangeIndex):  # no index column: dask numbers each partition from 0
            frame.index = pd.RangeIndex(len(frame))
        elif frame.index.dtype != meta.index.dtype:
            frame.index = frame.index.astype(meta.index.dtype)
        if self.strings and frame.index.dtype == object and pd.api.types.infer_dtype(frame.index) == "string":
            frame.index = frame.index.astype(pd.StringDtype("pyarrow"))  # as dask's string conversion does
        frame.index.name = meta.index.name
        frame = frame[list(meta.columns)] if list(frame.columns) != list(meta.columns) else frame
        fixes = {c: meta.dtypes[c] for c in meta.columns if not _same_dtype(frame.dtypes[c], meta.dtypes[c])}
        return frame.astype(fixes) if fixes else frame


def _codes_of(column: pa.ChunkedArray, categories: pd.Index) -> np.ndarray:
    """int32 codes of a (dictionary or string) column into ``categories``; -1 for nulls and unknown values."""
    parts = []
    for chunk in column.chunks:
        if not pa.types.is_dictionary(chunk.type):
            chunk = chunk.dictionary_encode()
        lut = categories.get_indexer(chunk.dictionary.to_pandas()).astype(np.int32)
        idx = chunk.indices
        if idx.null_count:
            idx = idx.fill_null(-1)
        codes = idx.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        lut = np.append(lut, np.int32(-1))  # index -1 (a null) -> -1
        parts.append(lut[codes])
    if not parts:
        return np.empty(0, dtype=np.int32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def points_scan(df: dd.DataFrame) -> PointsScan | None:
    """The :class:`PointsScan` of a frame exactly as :func:`read_points` returned it (kept in the frame's
    record; a frame derived by any further dask operation has a record of its own, without it)."""
    record = record_of(df)
    source = record.source if record is not None else None
    return source if isinstance(source, PointsScan) else None


def _read_scan(scan_and_task: tuple[PointsScan, tuple[str, tuple[int, ...]]]) -> pd.DataFrame:
    scan, task = scan_and_task
    return scan.read(task)


def scan_row_groups(scan: PointsScan, keep: np.ndarray) -> dd.DataFrame | None:
    """A lazy frame over the row groups selected by ``keep`` (``None`` when none is)."""
    tasks = scan.tasks(keep)
    if not tasks:
        return None
    return dd.from_map(
        _read_scan,
        [(scan, t) for t in tasks],
        meta=scan.meta,
        divisions=[None] * (len(tasks) + 1),
        enforce_metadata=False,
        label="read-points-row-groups",
    )


# ------------------------------------------------------------------------------------------------ metadata only


def describe_points(group: zarr.Group, loc: ElementLocation, attrs: Mapping[str, Any]) -> str:
    """``points[xy] 2,000,000 rows in 8 files`` from the Parquet footers only."""
    files = points_files(loc)
    footers, _ = _footers(loc, files)
    names = set(footers[0].schema.names)
    axes = "".join(a for a in ("x", "y", "z") if a in names)
    n = sum(md.num_rows for md in footers)
    return f"points[{axes}] {n:,} rows in {len(files)} file{'s' if len(files) != 1 else ''}"


def _stat(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def points_row_group_stats(loc: ElementLocation) -> pd.DataFrame:
    """One row per (file, row group): ``file`` (path), ``row_group``, ``n_rows``, ``x_min``, ``x_max``,
    ``y_min``, ``y_max`` (and ``z_min``, ``z_max`` for 3D points), from the Parquet footers only.

    Missing statistics are NaN (such row groups cannot be pruned).
    """
    files = points_files(loc)
    footers, _ = _footers(loc, files)
    return _row_group_stats(files, footers)


def _row_group_stats(files: Sequence[str], footers: Sequence[pq.FileMetaData]) -> pd.DataFrame:
    names = footers[0].schema.names
    axes = [a for a in ("x", "y", "z") if a in names]
    rows: dict[str, list[Any]] = {"file": [], "row_group": [], "n_rows": []}
    for a in axes:
        rows[f"{a}_min"] = []
        rows[f"{a}_max"] = []
    for path, md in zip(files, footers, strict=True):
        positions = {md.schema.column(j).path: j for j in range(md.num_columns)}
        for r in range(md.num_row_groups):
            rg = md.row_group(r)
            rows["file"].append(path)
            rows["row_group"].append(r)
            rows["n_rows"].append(rg.num_rows)
            for a in axes:
                j = positions.get(a)
                stats = rg.column(j).statistics if j is not None else None
                ok = stats is not None and stats.has_min_max
                rows[f"{a}_min"].append(_stat(stats.min) if ok else np.nan)
                rows[f"{a}_max"].append(_stat(stats.max) if ok else np.nan)
    out = pd.DataFrame(rows)
    return out.astype({"row_group": np.int64, "n_rows": np.int64} | {c: np.float64 for c in out.columns[3:]})


for _version in POINTS_VERSIONS:
    register_codec("points", _version, read=read_points, write=write_points, describe=describe_points)
