"""Points codec (docs/format.md §5): a spatially sorted Parquet dataset inside the element group.

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

import io
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask
import dask.dataframe as dd
import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from tissuestack._compute import guard_distributed_config, scheduler
from tissuestack.elements import record_of, set_meta
from tissuestack.errors import FormatError, StoreError
from tissuestack.store._parquet_pages import chunk_dictionary
from tissuestack.store._points_files import (
    arrow_filesystem,
    footer_info,
    points_files,
    read_footers,
    relative_path,
)
from tissuestack.store._points_layout import (
    DEFAULT_ROW_GROUP_SIZE,
    DEFAULT_ROWS_PER_FILE,
    IN_MEMORY_ROWS,
    NULL_INDEX,
    POINTS_VERSIONS,
    hilbert_key,
)
from tissuestack.store._points_write import n_workers, write_points
from tissuestack.store._registry import register_codec
from tissuestack.store._root import ElementLocation, open_local_parquet
from tissuestack.store._spatial_attrs import meta_from_attrs

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
    "read_points_columns",
    "scan_row_groups",
    "write_points",
]

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
    infos = [footer_info(md).get("categories") or {} for md in footers]
    for column in columns:
        lists = [info.get(column) for info in infos]
        if all(isinstance(v, list) for v in lists) and all(v == lists[0] for v in lists):
            out[column] = lists[0]
            continue

        # other writers' files: the union of the dictionaries of the whole column (read as a dictionary, plain
        # strings included), every row group of every file: a value first met late in a file is still a category
        def dictionaries(path: str, md: pq.FileMetaData, column: str = column) -> list[list[Any]]:
            pages = _page_dictionaries(loc, fs, path, md, column)
            if pages is not None:  # from the dictionary pages alone (a few KB read, nothing decoded)
                return pages
            try:
                if loc.root.is_local:
                    chunk = open_local_parquet(path, read_dictionary=[column]).read(columns=[column]).column(column)
                else:
                    with fs.open(path, "rb") as fh:
                        chunk = (
                            pq.ParquetFile(fh, read_dictionary=[column]).read(columns=[column]).column(column)
                        )
            except Exception as err:
                raise StoreError(
                    f"{loc.key}: cannot read column {column!r} of {relative_path(loc, path)}: {err}"
                ) from err
            out = []
            for arr in chunk.chunks:
                dictionary = arr.dictionary if pa.types.is_dictionary(arr.type) else arr.unique()
                out.append(dictionary.to_pylist())
            return out

        values: dict[Any, None] = {}
        with ThreadPoolExecutor(max_workers=min(len(files), n_workers()) or 1) as pool:
            nonempty = [(p, md) for p, md in zip(files, footers, strict=True) if md.num_rows]
            for lists in pool.map(dictionaries, [p for p, _ in nonempty], [md for _, md in nonempty]):
                for lst in lists:
                    for v in lst:
                        if v is not None:
                            values.setdefault(v, None)
        plain = _is_arrow_string(footers[0].schema.to_arrow_schema().field(column).type)
        # plain strings have no category order: sorted, as pandas orders the categories it infers
        out[column] = sorted(values) if plain else list(values)
    return out


def _page_dictionaries(
    loc: ElementLocation, fs: fsspec.AbstractFileSystem, path: str, md: pq.FileMetaData, column: str
) -> list[list[Any]] | None:
    """The dictionary of ``column`` in every row group of one file, from the dictionary pages
    (:func:`~tissuestack.store._parquet_pages.chunk_dictionary`), or ``None`` when some row group's cannot be
    vouched for (then the column is decoded)."""
    leaves = [md.schema.column(j).path for j in range(md.num_columns)]
    if leaves.count(column) != 1:
        return None
    j = leaves.index(column)
    out = []
    try:
        with open(path, "rb") if loc.root.is_local else fs.open(path, "rb") as fh:
            for rg in range(md.num_row_groups):
                if loc.root.is_local:
                    values = chunk_dictionary(fh, md, rg, j)
                else:  # one request for the chunk's bytes, not one per page header
                    chunk = md.row_group(rg).column(j)
                    start = chunk.dictionary_page_offset
                    if start is None:
                        return None
                    fh.seek(int(start))
                    window = _Window(fh.read(int(chunk.total_compressed_size)), int(start))
                    values = chunk_dictionary(window, md, rg, j)
                if values is None:
                    return None
                out.append(values)
    except Exception:  # unreadable here (a server refusing ranges, say): the column is decoded instead
        return None
    return out


class _Window(io.BytesIO):
    """Bytes read from a file at offset ``base``, addressed with the file's offsets."""

    def __init__(self, data: bytes, base: int):
        super().__init__(data)
        self.base = base

    def seek(self, pos: int, whence: int = 0) -> int:
        return super().seek(pos - self.base if whence == 0 else pos, whence) + self.base


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
    footers, fs = read_footers(loc, files)
    n_rows = sum(md.num_rows for md in footers)
    schema = footers[0].schema.to_arrow_schema()
    for path, md in zip(files[1:], footers[1:], strict=True):
        if md.schema.names != footers[0].schema.names:
            raise FormatError(
                f"{relative_path(loc, path)}: columns {md.schema.names} differ from those of "
                f"{relative_path(loc, files[0])} ({footers[0].schema.names}); expected one schema for all files"
            )
    try:  # pandas dtypes and index as recorded in the pandas metadata
        target = schema.empty_table().to_pandas()
    except Exception as err:
        raise FormatError(
            f"{loc.key}: cannot interpret the schema of {relative_path(loc, files[0])}: {err}"
        ) from err
    names = list(target.columns)
    for axis in ("x", "y"):
        if axis not in names:
            raise FormatError(
                f"{relative_path(loc, files[0])}: missing coordinate column {axis!r}; columns are {names}"
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
    guard_distributed_config()  # dask-expr may import distributed inside a dask.config.set block (see there)
    df = dd.read_parquet(
        files,
        filesystem=arrow_filesystem(loc, fs),
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
                return open_local_parquet(path, **kwargs).read_row_groups(list(row_groups), columns=columns)
            with self.fs.open(path, "rb") as fh:
                return pq.ParquetFile(fh, **kwargs).read_row_groups(list(row_groups), columns=columns)
        except Exception as err:
            raise StoreError(
                f"{self.loc.key}: cannot read row groups of {relative_path(self.loc, path)}: {err}"
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

    def read(
        self,
        task: tuple[str, tuple[int, ...]],
        select: Callable[[pa.Table], tuple[np.ndarray, dict[str, np.ndarray]]] | None = None,
    ) -> pd.DataFrame:
        """The rows of some row groups of one file, conformed to the frame's partitions.

        ``select`` (a query's row test) maps the table read to the positions of the rows to keep (in output
        order) and extra columns for them (e.g. box numbers); only those rows are converted to pandas (a query
        keeping a small share of each row group converts just that share)."""
        table = self._table(task, self.columns)
        extra: dict[str, np.ndarray] = {}
        if select is not None:
            rows, extra = select(table)
            table = table.take(pa.array(rows, type=pa.int64()))
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
        frame = frame.astype(fixes) if fixes else frame
        return frame.assign(**extra) if extra else frame


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


def read_points_columns(df: dd.DataFrame, columns: Sequence[str]) -> pd.DataFrame | None:
    """Whole ``columns`` of a points frame exactly as :func:`read_points` returned it, straight from its Parquet
    row groups as arrays (pyarrow, only those columns, categorical columns as codes into their known categories),
    in parallel tasks; ``None`` when the frame is not such a frame or a string column has no known categories
    (then read it through dask)."""
    scan = points_scan(df)
    meta = scan.meta if scan is not None else None
    wanted = list(columns)
    if meta is None or not set(wanted) <= set(meta.columns):
        return None
    dtypes = meta.dtypes
    cats = {
        c: dtypes[c].categories
        for c in wanted
        if isinstance(dtypes[c], pd.CategoricalDtype) and dtypes[c].categories is not None
    }
    if any(c not in cats and not (isinstance(dtypes[c], np.dtype) and dtypes[c].kind in "biuf") for c in wanted):
        return None  # strings without known categories, nullable or other extension columns: through dask
    stats = scan.row_group_stats()
    tasks = scan.tasks(np.ones(len(stats), dtype=bool))
    if not tasks:
        return meta[wanted].iloc[:0]
    # every task fills its own rows of arrays allocated once (no concatenation of the parts: for 20M rows that
    # copy and its fresh memory cost ~0.7 s)
    rows = {(f, int(g)): int(n) for f, g, n in zip(stats["file"], stats["row_group"], stats["n_rows"], strict=True)}
    counts = [sum(rows[(path, int(g))] for g in groups) for path, groups in tasks]
    starts = np.r_[0, np.cumsum(counts)].astype(np.int64)
    out = {c: np.empty(int(starts[-1]), dtype=np.int32 if c in cats else dtypes[c]) for c in wanted}

    def fill(k: int) -> int:
        part = scan.read_arrays(tasks[k], wanted, cats)
        n = len(part[wanted[0]]) if wanted else 0
        if n != counts[k]:
            raise StoreError(
                f"{scan.loc.key}: {relative_path(scan.loc, tasks[k][0])} has {n} rows in row groups "
                f"{list(tasks[k][1])}, its footer says {counts[k]}"
            )
        for c in wanted:
            out[c][starts[k] : starts[k + 1]] = part[c]
        return n

    dask.compute(*[dask.delayed(fill)(k) for k in range(len(tasks))], scheduler=scheduler())
    columns = {
        c: pd.Categorical.from_codes(out[c], dtype=dtypes[c], validate=False) if c in cats else out[c]
        for c in wanted
    }
    return pd.DataFrame(columns, copy=False)  # copy=False: the columns are not stacked into one block


def _read_scan(job: tuple[PointsScan, tuple[str, tuple[int, ...]], Callable[..., Any] | None]) -> pd.DataFrame:
    scan, task, select = job
    return scan.read(task, select)


def scan_row_groups(
    scan: PointsScan,
    keep: np.ndarray,
    select: Callable[[pa.Table], tuple[np.ndarray, dict[str, np.ndarray]]] | None = None,
    meta: pd.DataFrame | None = None,
) -> dd.DataFrame | None:
    """A lazy frame over the row groups selected by ``keep`` (``None`` when none is); with ``select`` (see
    :meth:`PointsScan.read`) just the rows it keeps, with its extra columns (``meta`` then describes them)."""
    tasks = scan.tasks(keep)
    if not tasks:
        return None
    return dd.from_map(
        _read_scan,
        [(scan, t, select) for t in tasks],
        meta=scan.meta if meta is None else meta,
        divisions=[None] * (len(tasks) + 1),
        enforce_metadata=False,
        label="read-points-row-groups",
    )


# ------------------------------------------------------------------------------------------------ metadata only


def describe_points(group: zarr.Group, loc: ElementLocation, attrs: Mapping[str, Any]) -> str:
    """``points[xy] 2,000,000 rows in 8 files`` from the Parquet footers only."""
    files = points_files(loc)
    footers, _ = read_footers(loc, files)
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
    footers, _ = read_footers(loc, files)
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
