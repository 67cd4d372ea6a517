"""Xenium transcripts: transcripts.parquet as a lazy points frame (whole row groups per partition)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tissuestack.errors import ReaderError
from tissuestack.io._xenium_common import (
    _LOW_CARDINALITY,
    _TRANSCRIPT_COORDS,
    CELL_ID,
    TRANSCRIPTS_FILE,
    _parquet_file,
    _rel,
    _require_columns,
    _Specs,
    _to_str,
)

# ------------------------------------------------------------------------------------------------ transcripts

_PARTITION_ROWS = 1_000_000  # target rows per transcripts partition (whole row groups)


@dataclass(frozen=True)
class _TranscriptsSource:
    """What every transcripts partition needs: the file, the column renames and the shared categories."""

    path: str
    columns: tuple[str, ...]  # output column names, in order
    source_of: tuple[tuple[str, str], ...]  # output name -> file column
    categoricals: tuple[tuple[str, tuple[str, ...]], ...]  # output column -> its categories (all values)
    strings: tuple[str, ...]  # output columns read as strings (binary decoded)
    min_qv: float | None

    def __dask_tokenize__(self) -> tuple:
        return (self.path, self.columns, self.source_of, hash(self.categoricals), self.strings, self.min_qv)


def _column_categories(folder: Path, columns: Sequence[str]) -> dict[str, list[str]]:
    """Every value of low-cardinality string columns: one pass over those columns only, row group by row group,
    read as Parquet dictionaries (the data pages hold dictionary indices, so this is cheap and bounded)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / TRANSCRIPTS_FILE
    values: dict[str, set[str]] = {name: set() for name in columns}
    try:
        pf = pq.ParquetFile(path, read_dictionary=list(columns))
        for i in range(pf.metadata.num_row_groups):
            table = pf.read_row_group(i, columns=list(columns))
            for name in columns:
                for chunk in table.column(name).chunks:
                    dictionary = chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk.unique()
                    values[name].update(_to_str(dictionary.drop_null()).tolist())
            del table
    except ReaderError:
        raise
    except Exception as err:
        raise ReaderError(
            f"{_rel(folder, path)}: cannot read column(s) {list(columns)} (truncated?): {err}"
        ) from err
    finally:
        pa.default_memory_pool().release_unused()  # the allocator would keep the pages otherwise
    return {name: sorted(v) for name, v in values.items()}


def _string_dtype():
    return pd.StringDtype("pyarrow")


def _arrow_types_mapper():
    import pyarrow as pa

    dtype = _string_dtype()
    return {pa.string(): dtype, pa.large_string(): dtype}.get


def _dictionary_codes(col: Any, lookup: pd.Index, path: str, name: str) -> np.ndarray:
    """int32 codes of a (dictionary or plain) string column into ``lookup`` (-1 for nulls)."""
    import pyarrow as pa

    codes = []
    for chunk in col.chunks:
        if pa.types.is_dictionary(chunk.type):
            position = lookup.get_indexer(_to_str(chunk.dictionary)).astype(np.int32)
            idx = chunk.indices.to_numpy(zero_copy_only=False)
            if chunk.null_count:
                valid = chunk.is_valid().to_numpy(zero_copy_only=False)
                codes.append(np.where(valid, position[np.where(valid, idx, 0)], -1).astype(np.int32))
            else:
                codes.append(position[idx])
        else:
            code = lookup.get_indexer(_to_str(chunk.fill_null(""))).astype(np.int32)
            if chunk.null_count:
                code[~chunk.is_valid().to_numpy(zero_copy_only=False)] = -1
            codes.append(code)
    code = np.concatenate(codes) if codes else np.zeros(0, dtype=np.int32)
    if col.null_count == 0 and code.size and (code < 0).any():
        raise ReaderError(f"{path!r}: column {name} has values the first pass over the file did not see")
    return code


def _transcripts_partition(
    spec: tuple[int, tuple[int, ...]], columns: list[str] | None = None, *, source: _TranscriptsSource
) -> pd.DataFrame:
    """Read the row groups of one partition and convert them to the points frame (projection pushed down).

    Low-cardinality strings (``feature_name``, ...) become categoricals with the shared categories straight from
    the Parquet dictionary indices; other strings stay Arrow-backed (no Python objects); numbers are zero-copy.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    start, row_groups = spec
    wanted = list(source.columns) if columns is None else [c for c in source.columns if c in columns]
    mapping = dict(source.source_of)
    categoricals = dict(source.categoricals)
    file_columns = [mapping[c] for c in wanted]
    if source.min_qv is not None and "qv" not in file_columns:
        file_columns.append("qv")
    dictionary_columns = [mapping[c] for c in wanted if c in categoricals]
    try:
        pf = pq.ParquetFile(source.path, read_dictionary=dictionary_columns or None)
        table = pf.read_row_groups(list(row_groups), columns=file_columns, use_threads=False)
    except Exception as err:
        first, last = (row_groups[0], row_groups[-1]) if row_groups else (0, 0)
        raise ReaderError(
            f"{source.path!r}: cannot read row groups {first}-{last} (truncated?): {err}"
        ) from err
    n = table.num_rows
    if source.min_qv is not None:
        qv = table.column("qv")
        mask = pc.fill_null(pc.greater_equal(qv, pa.scalar(source.min_qv, qv.type)), False)
        keep = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
        table = table.take(pa.array(keep))
        index: pd.Index = pd.Index(keep + start, dtype=np.int64)
    else:
        index = pd.RangeIndex(start, start + n)
    arrays = []
    for name in wanted:
        col = table.column(mapping[name])
        if name in categoricals:
            values = categoricals[name]
            code = _dictionary_codes(col, pd.Index(values), source.path, name)
            arrays.append(
                pa.DictionaryArray.from_arrays(
                    pa.array(code, type=pa.int32(), mask=code < 0 if col.null_count else None),
                    pa.array(values, type=pa.string()),
                )
            )
        elif name in source.strings:
            if pa.types.is_dictionary(col.type):
                col = col.cast(col.type.value_type)
            if not pa.types.is_string(col.type):
                col = pc.cast(col, pa.string())
            arrays.append(col)
        else:
            arrays.append(col)
    frame = pa.table(arrays, names=wanted).to_pandas(
        types_mapper=_arrow_types_mapper(), split_blocks=True, self_destruct=True
    )
    frame.index = index
    return frame


def _row_group_partitions(md: Any, target: int) -> list[tuple[int, tuple[int, ...]]]:
    """Consecutive row groups gathered into partitions of about ``target`` rows: ``(first row, groups)``."""
    parts: list[tuple[int, tuple[int, ...]]] = []
    current: list[int] = []
    start = rows_in = row = 0
    for i in range(md.num_row_groups):
        rows = md.row_group(i).num_rows
        if current and rows_in + rows > target:
            parts.append((start, tuple(current)))
            current, rows_in = [], 0
        if not current:
            start = row
        current.append(i)
        rows_in += rows
        row += rows
    if current or not parts:
        parts.append((start, tuple(current)))
    return parts


def _transcripts_plan(
    folder: Path, min_qv: float | None
) -> tuple[_TranscriptsSource, list[tuple[int, tuple[int, ...]]], int, Any]:
    """Check ``transcripts.parquet`` (footer and schema only, plus one pass over ``feature_name``) and plan
    its partitions: the shared source, the partitions, the row count and the Arrow schema."""
    import pyarrow as pa

    pf = _parquet_file(folder, TRANSCRIPTS_FILE, "decoded transcripts", "pass transcripts=False to skip them")
    path = folder / TRANSCRIPTS_FILE
    schema = pf.schema_arrow
    names = schema.names
    _require_columns(
        folder, path, names, ("x_location", "y_location", "feature_name"), "transcript positions and genes"
    )
    for axis in ("x_location", "y_location", "z_location"):
        if axis in names and not (
            pa.types.is_floating(schema.field(axis).type) or pa.types.is_integer(schema.field(axis).type)
        ):
            raise ReaderError(
                f"{_rel(folder, path)}: column {axis} has type {schema.field(axis).type}; expected numbers"
            )
    if min_qv and "qv" not in names:
        raise ReaderError(f"{_rel(folder, path)}: min_qv={min_qv} needs a 'qv' column, found {list(names)}")
    out_columns: list[str] = []
    source_of: list[tuple[str, str]] = []
    strings: list[str] = []
    for column in names:
        if column.startswith("__"):  # pandas index columns of re-saved files
            continue
        out = _TRANSCRIPT_COORDS.get(column, column)
        if out in ("x", "y", "z") and out in names and column != out:
            raise ReaderError(f"{_rel(folder, path)}: has both {column!r} and {out!r}; expected one of them")
        out_columns.append(out)
        source_of.append((out, column))
        t = schema.field(column).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if column != "feature_name" and (
            pa.types.is_string(t)
            or pa.types.is_large_string(t)
            or pa.types.is_binary(t)
            or pa.types.is_large_binary(t)
        ):
            strings.append(out)
    low = ["feature_name"] + [c for c in _LOW_CARDINALITY if c in strings]
    strings = [c for c in strings if c not in low]
    categories = _column_categories(folder, [dict(source_of)[c] for c in low])
    source = _TranscriptsSource(
        str(path),
        tuple(out_columns),
        tuple(source_of),
        tuple((c, tuple(categories[dict(source_of)[c]])) for c in low),
        tuple(strings),
        float(min_qv) if min_qv else None,
    )
    md = pf.metadata
    return source, _row_group_partitions(md, _PARTITION_ROWS), int(md.num_rows), schema


def _transcripts(folder: Path, specs: _Specs, options: dict[str, Any]):
    import dask.dataframe as dd

    from tissuestack.elements import PointsModel, get_meta

    min_qv = options["min_qv"]
    source, parts, total, schema = _transcripts_plan(folder, min_qv)
    starts = [start for start, _ in parts]
    ddf = dd.from_map(
        _transcripts_partition,
        parts,
        source=source,
        meta=_convert_empty(schema.empty_table(), source),
        divisions=(*starts, max(total - 1, starts[-1])) if total else None,
        label="xenium-transcripts",
        enforce_metadata=False,
    )
    points = PointsModel.parse(
        ddf,
        feature_key="feature_name",
        instance_key=CELL_ID if CELL_ID in source.columns else None,
        transformations=specs.transformations("vector", options["pixel_coordinate_system"]),
        name="transcripts",
    )
    if not min_qv:
        get_meta(points).n_rows = total
    return points


def _convert_empty(empty: Any, source: _TranscriptsSource) -> pd.DataFrame:
    """The (empty) frame a partition produces, used as dask ``meta``."""
    categoricals = dict(source.categoricals)
    mapping = dict(source.source_of)
    columns: dict[str, Any] = {}
    for name in source.columns:
        if name in categoricals:
            columns[name] = pd.Categorical([], categories=list(categoricals[name]))
        elif name in source.strings:
            columns[name] = pd.array([], dtype=_string_dtype())
        else:
            columns[name] = empty.column(mapping[name]).to_pandas()
    return pd.DataFrame(columns, index=pd.RangeIndex(0, 0), columns=list(source.columns))
