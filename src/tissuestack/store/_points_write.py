"""Writing a points element: a bounded-memory spatial sort into Parquet files (see :mod:`tissuestack.store._points`
for the layout and the algorithm)."""

from __future__ import annotations

import itertools
import json
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import zarr

from tissuestack._compute import scheduler
from tissuestack.elements import get_meta, points_axes
from tissuestack.errors import FormatError, StoreError, ValidationError
from tissuestack.store._points_layout import (
    DATASET,
    DEFAULT_ROW_GROUP_SIZE,
    DEFAULT_ROWS_PER_FILE,
    FOOTER_KEY,
    IN_MEMORY_ROWS,
    KEY_BITS,
    KEY_COLUMN,
    MIN_ROWS_PER_TASK,
    NULL_INDEX,
    POINTS_VERSIONS,
    SAMPLE_ROWS,
    Grid,
    coords_of,
)
from tissuestack.store._root import ElementLocation
from tissuestack.store._spatial_attrs import encode_spatial_attrs

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


def _parallel_keys(grid: Grid, part: pd.DataFrame, pool: ThreadPoolExecutor, workers: int) -> np.ndarray:
    """Hilbert keys of every row, computed in row chunks on the pool (numpy releases the GIL)."""
    x, y = coords_of(part, "x"), coords_of(part, "y")
    n = len(x)
    if workers < 2 or n < 2 * MIN_ROWS_PER_TASK:
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
    grid = Grid.from_bounds(*(bounds or (np.nan,) * 4))
    n = len(part)
    n_files = max(1, -(-n // rows_per_file), min(workers, n // MIN_ROWS_PER_TASK))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        keys = _parallel_keys(grid, part, pool, workers)
        # reorder in pandas (numpy takes per block), then convert: faster than an Arrow take on dictionaries
        table = _to_arrow(part.take(_argsort_keys(keys)))
        cuts = [(n * k) // n_files for k in range(n_files + 1)]
        slices = [table.slice(cuts[k], cuts[k + 1] - cuts[k]) for k in range(n_files)]
        list(pool.map(writer.write, slices, range(n_files)))
    return n_files


class NonFiniteCoordinates(ValueError):
    """Coordinates that are NaN or infinite, found while writing (the caller names the element)."""

    def __init__(self, axis: str, count: int) -> None:
        super().__init__(axis, count)
        self.axis, self.count = axis, count


def _bounds_of(part: pd.DataFrame) -> tuple[float, float, float, float]:
    """Min/max of x and y, computed on the columns' own dtype (no float64 copy).

    Raises :class:`NonFiniteCoordinates` when a coordinate is NaN or infinite (min/max propagate NaN, so one
    pass detects both).
    """
    out = []
    for axis in ("x", "y"):
        v = part[axis].to_numpy()
        if not v.size:
            out.extend([np.nan, np.nan])
            continue
        lo, hi = v.min(), v.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise NonFiniteCoordinates(axis, int((~np.isfinite(v)).sum()))
        out.extend([float(lo), float(hi)])
    return out[0], out[1], out[2], out[3]


@dataclass
class _Scan:
    n: int
    bounds: tuple[float, float, float, float]
    sample: np.ndarray  # (m, 2) coordinates


def _scan(part: pd.DataFrame, sample_rows: int) -> _Scan:
    n = len(part)
    x, y = coords_of(part, "x"), coords_of(part, "y")
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
    part: pd.DataFrame, index: int, grid: Grid, boundaries: np.ndarray, folder: str
) -> tuple[np.ndarray, pa.Schema | None]:
    """Group one partition's rows by output file and write them as one IPC record batch per file."""
    n_files = len(boundaries) + 1
    if len(part) == 0:
        return np.zeros(n_files, dtype=np.int64), None
    keys = grid.keys(coords_of(part, "x"), coords_of(part, "y"))
    bucket = np.searchsorted(boundaries, keys, side="right").astype(np.min_scalar_type(n_files))
    counts = np.bincount(bucket, minlength=n_files).astype(np.int64)
    order = np.argsort(bucket, kind="stable")  # radix sort of small integers
    table = _to_arrow(part)
    schema = table.schema
    table = table.append_column(KEY_COLUMN, pa.array(keys)).take(pa.array(order)).combine_chunks()
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
            keys = piece.column(KEY_COLUMN)
            piece = piece.drop_columns([KEY_COLUMN])
            if not piece.schema.equals(schema):
                piece = piece.cast(schema)
            pieces.append(piece.append_column(KEY_COLUMN, keys))
    table = pa.concat_tables(pieces)
    order = _argsort_keys(table.column(KEY_COLUMN).to_numpy())
    table = table.drop_columns([KEY_COLUMN]).take(pa.array(order))
    return writer.write(table.replace_schema_metadata(schema.metadata), out_index)


def _unify(schemas: Sequence[pa.Schema]) -> pa.Schema:
    first = schemas[0]
    if all(s.equals(first) for s in schemas[1:]):
        return first
    unified = pa.unify_schemas(list(schemas), promote_options="permissive")
    return unified.with_metadata(first.metadata)


def n_workers() -> int:
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
    """Write a points element: spatially sorted Parquet files, then the group attributes (docs/format.md §5).

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
    workers = n_workers()
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

    try:
        if isinstance(df, pd.DataFrame) or df.npartitions == 1:
            part = df if isinstance(df, pd.DataFrame) else df.partitions[0].compute(scheduler=scheduler())
            _write_in_memory(part, make_writer, rows_per_file, workers)
        elif known_rows is not None and known_rows <= IN_MEMORY_ROWS:
            # small enough to sort in memory, and the count is known: skip the scanning pass
            _write_in_memory(df.compute(scheduler=scheduler()), make_writer, rows_per_file, workers)
        else:
            _write_partitioned(df, loc, make_writer, rows_per_file, workers, spill_dir)
    except NonFiniteCoordinates as err:
        name = loc.name.split(".tmp-")[0].lstrip(".") if loc.name.startswith(".") else loc.name
        raise ValidationError(
            f"points element {name!r}: column {err.axis!r} holds NaN or infinite values"
            f"{f' ({err.count:,} in one partition)' if err.count else ''}; expected finite coordinates. Drop "
            f"those rows first, e.g. df[np.isfinite(df.x) & np.isfinite(df.y)]"
        ) from None

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
            units=meta.units,
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
    per_part = max(64, SAMPLE_ROWS // df.npartitions)
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

    grid = Grid.from_bounds(*bounds)
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
