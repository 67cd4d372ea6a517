"""Small helpers shared by the readers: file checks and lazy tabular sources."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tissuestack.errors import ReaderError

__all__ = ["frame_columns", "lazy_frame", "require_dir", "require_file", "tabular_format"]


def require_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a :class:`~pathlib.Path`; a :class:`ReaderError` naming ``what`` when it is not a file."""
    p = Path(path)
    if not p.is_file():
        state = "is a directory" if p.is_dir() else "does not exist"
        raise ReaderError(f"{what}: expected a file at {str(p)!r}, but it {state}")
    return p


def require_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a :class:`~pathlib.Path`; a :class:`ReaderError` naming ``what`` when it is not a folder."""
    p = Path(path)
    if not p.is_dir():
        state = "is a file" if p.is_file() else "does not exist"
        raise ReaderError(f"{what}: expected a folder at {str(p)!r}, but it {state}")
    return p


_CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz", ".csv.bz2", ".csv.zst")
_PARQUET_SUFFIXES = (".parquet", ".pq", ".geoparquet")


def tabular_format(path: str | os.PathLike) -> str:
    """``"parquet"`` or ``"csv"`` from the file name (a Parquet dataset folder counts as parquet)."""
    p = Path(path)
    name = p.name.lower()
    if p.is_dir() or name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    raise ReaderError(
        f"{str(p)!r}: unknown table file type; expected one of {', '.join(_PARQUET_SUFFIXES + _CSV_SUFFIXES)}"
    )


def frame_columns(path: str | os.PathLike, *, sep: str | None = None) -> list[str]:
    """The column names of a CSV or Parquet file, reading only its header / schema."""
    import pandas as pd
    import pyarrow.parquet as pq

    p = Path(path)
    if tabular_format(p) == "parquet":
        try:
            return list(pq.read_schema(p).names) if p.is_file() else list(pq.ParquetDataset(p).schema.names)
        except Exception as err:
            raise ReaderError(f"{str(p)!r}: not a readable Parquet file ({err})") from err
    try:
        head = pd.read_csv(p, nrows=0, sep=_sep(p, sep))
    except Exception as err:
        raise ReaderError(f"{str(p)!r}: not a readable CSV file ({err})") from err
    return [str(c) for c in head.columns]


def _sep(path: Path, sep: str | None) -> str:
    if sep is not None:
        return sep
    name = path.name.lower()
    return "\t" if name.endswith((".tsv", ".tsv.gz")) else ","


def lazy_frame(
    path: str | os.PathLike,
    *,
    columns: list[str] | None = None,
    sep: str | None = None,
    blocksize: int | str | None = "32MiB",
    **read_kwargs: Any,
):
    """A dask DataFrame over a CSV (optionally compressed) or Parquet file, reading nothing yet.

    Compressed CSVs cannot be split, so they become one partition; Parquet files are split into partitions of
    whole row groups of about ``blocksize`` bytes (at least one row group each).
    """
    import dask.dataframe as dd

    p = Path(path)
    fmt = tabular_format(p)
    try:
        if fmt == "parquet":
            # several row groups per partition up to ``blocksize``: a single big file is not one partition
            read_kwargs.setdefault("split_row_groups", "infer")
            return dd.read_parquet(str(p), columns=columns, blocksize=blocksize, **read_kwargs)
        compressed = p.name.lower().endswith((".gz", ".bz2", ".zst", ".xz"))
        return dd.read_csv(
            str(p),
            usecols=columns,
            sep=_sep(p, sep),
            blocksize=None if compressed else blocksize,
            compression="infer",
            **read_kwargs,
        )
    except ReaderError:
        raise
    except Exception as err:
        raise ReaderError(f"{str(p)!r}: cannot open as {fmt} ({err})") from err
