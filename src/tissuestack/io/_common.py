"""Small helpers shared by the readers: file checks, lazy tabular sources and compressed-CSV spilling."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tissuestack._compute import import_distributed
from tissuestack.errors import ReaderError

__all__ = [
    "frame_columns",
    "lazy_frame",
    "raster_kind",
    "require_dir",
    "require_file",
    "spill_csv_to_parquet",
    "tabular_format",
]

#: rows per chunk when a compressed CSV is streamed into a temporary Parquet file
CSV_SPILL_ROWS = 1_000_000

#: element kind of each value of the image readers' ``kind`` option
_READER_KINDS = {"image": "images", "labels": "labels"}


def raster_kind(kind: str) -> Any:
    """The :class:`~tissuestack.elements.ElementKind` of an image reader's ``kind`` option.

    ``"image"`` gives the images protocol, ``"labels"`` the labels protocol.
    """
    from tissuestack.elements import get_kind_protocol

    return get_kind_protocol(_READER_KINDS[kind])


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
            import_distributed()  # dask-expr may import it inside a dask.config.set block (see there)
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


_SPILL_DIRS: list[str] = []


def _cleanup_spills() -> None:
    for folder in _SPILL_DIRS:
        shutil.rmtree(folder, ignore_errors=True)


atexit.register(_cleanup_spills)


def spill_csv_to_parquet(path: Path, *, columns: list[str] | None, dtype: Mapping[str, Any], sep: str | None):
    """Stream a compressed CSV (which cannot be split) into a temporary Parquet file, chunk by chunk.

    Compressed text can only be read from the start, so a lazy frame over it would be one partition that has to
    fit in memory. Instead the file is decoded once, ``CSV_SPILL_ROWS`` rows at a time, into a Parquet file of
    one row group per chunk, removed when the process exits.

    Parameters
    ----------
    path
        The (compressed) CSV file.
    columns
        The columns to keep (``None``: all).
    dtype
        pandas dtypes by column, applied to every chunk.
    sep
        The field separator; default a tab for ``.tsv`` files, else a comma.

    Returns
    -------
    dask.dataframe.DataFrame
        A lazy frame over the temporary Parquet file, one partition per chunk.

    Raises
    ------
    ReaderError
        The file cannot be decoded or parsed, or a later chunk's column types differ from the first chunk's
        (the message names the rows and suggests ``dtype=``).
    """
    import dask.dataframe as dd
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tempfile.mkdtemp(prefix="tissuestack-csv-")
    _SPILL_DIRS.append(folder)
    target = os.path.join(folder, "points.parquet")
    writer = None
    schema = None
    try:
        reader = pd.read_csv(
            path,
            usecols=columns,
            dtype=dict(dtype),
            sep=sep if sep is not None else ("\t" if ".tsv" in path.name.lower() else ","),
            chunksize=CSV_SPILL_ROWS,
            compression="infer",
        )
        for k, chunk in enumerate(reader):
            if schema is None:
                table = pa.Table.from_pandas(chunk, preserve_index=False)
                schema = table.schema
                writer = pq.ParquetWriter(target, schema)
            else:
                try:
                    table = pa.Table.from_pandas(chunk, schema=schema, preserve_index=False)
                except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
                    raise ReaderError(
                        f"{str(path)!r}: rows {k * CSV_SPILL_ROWS}-{(k + 1) * CSV_SPILL_ROWS} do not match the "
                        f"column types of the first rows ({err}); pass dtype={{column: type}} for that column"
                    ) from err
            writer.write_table(table)
        if writer is None:  # no rows at all
            pd.read_csv(path, usecols=columns, dtype=dict(dtype), nrows=0, compression="infer").to_parquet(
                target
            )
    except ReaderError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    except Exception as err:  # decompression / parse errors
        shutil.rmtree(folder, ignore_errors=True)
        raise ReaderError(f"{str(path)!r}: cannot read the CSV: {err}") from err
    finally:
        if writer is not None:
            writer.close()
    import_distributed()
    return dd.read_parquet(target, split_row_groups=True)
