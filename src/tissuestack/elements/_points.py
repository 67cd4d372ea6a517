"""Points elements: molecule or spot coordinates as a lazy ``dask.dataframe.DataFrame``.

A points element has numeric coordinate columns ``x``, ``y`` and optionally ``z`` (docs/format.md §5.3), an
optional categorical *feature* column (e.g. the gene of each transcript) whose categories are known in every
partition, and an optional *instance* column (e.g. the cell each transcript belongs to). Its transformations
and the names of the feature and instance columns live in the metadata registry of
:mod:`tissuestack.elements._meta`, because dask DataFrames have no ``attrs``.

Validation only looks at dtypes and metadata, never at the data: it is free on a larger-than-memory frame.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Mapping
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api.types import (
    is_bool_dtype,
    is_float_dtype,
    is_integer_dtype,
    is_object_dtype,
    is_string_dtype,
)

from tissuestack.elements._meta import ElementMeta, get_meta, has_meta, normalize_transformations, set_meta
from tissuestack.elements._record import record_of
from tissuestack.errors import ValidationError
from tissuestack.transforms import BaseTransformation

__all__ = [
    "COORDINATE_DTYPES",
    "DEFAULT_CHUNKSIZE",
    "PointsModel",
    "default_npartitions",
    "in_memory_partitions",
    "points_axes",
]

AXES: tuple[str, ...] = ("x", "y", "z")
#: dtypes allowed for the coordinate columns (docs/format.md §5.3)
COORDINATE_DTYPES: tuple[np.dtype, ...] = tuple(np.dtype(t) for t in ("int32", "int64", "float32", "float64"))
#: smallest and largest default partitions when an in-memory frame is turned into a dask frame
DEFAULT_CHUNKSIZE = 1_000_000
MAX_DEFAULT_CHUNKSIZE = 8_000_000

_ALLOWED_COORDINATES = "int32, int64, float32 or float64"
_INSTANCE_DTYPES = "an integer or string dtype, or categorical of integers or strings"


def _label(name: str | None) -> str:
    return f"points element {name!r}" if name else "points"


def points_axes(df: Any) -> tuple[str, ...]:
    """Intrinsic axes of a points frame: ``("x", "y")`` or, when a ``z`` column exists, ``("x", "y", "z")``."""
    return ("x", "y", "z") if "z" in df.columns else ("x", "y")


# ------------------------------------------------------------------------------------------------------------
# dtype predicates (work on numpy, pandas extension and pyarrow-backed dtypes)
# ------------------------------------------------------------------------------------------------------------


def _is_categorical(dtype: Any) -> bool:
    return isinstance(dtype, pd.CategoricalDtype)


def _is_int(dtype: Any) -> bool:
    return is_integer_dtype(dtype) and not is_bool_dtype(dtype) and not _is_categorical(dtype)


def _is_str(dtype: Any) -> bool:
    """String dtype: object (assumed to hold strings; dtype-only check), pandas ``string`` or arrow string."""
    if _is_categorical(dtype) or is_bool_dtype(dtype):
        return False
    return is_object_dtype(dtype) or is_string_dtype(dtype)


def _describe(dtype: Any) -> str:
    if _is_categorical(dtype):
        return f"categorical of {dtype.categories.dtype}"
    return str(dtype)


def _instance_dtype_ok(dtype: Any) -> bool:
    if _is_categorical(dtype):
        cats = dtype.categories.dtype
        return _is_int(cats) or _is_str(cats)
    return _is_int(dtype) or _is_str(dtype)


def _coordinate_target_dtype(dtype: Any) -> np.dtype | None:
    """The allowed dtype a numeric coordinate column is cast to, or ``None`` if it is not numeric."""
    if _is_categorical(dtype) or is_bool_dtype(dtype):
        return None
    if isinstance(dtype, np.dtype) and dtype in COORDINATE_DTYPES:
        return dtype
    if is_integer_dtype(dtype):
        if not isinstance(dtype, np.dtype):  # nullable / arrow integers may hold missing values
            return np.dtype("float64")
        if dtype == np.dtype("uint64"):  # would wrap around in int64
            return np.dtype("float64")
        return np.dtype("int64")
    if is_float_dtype(dtype):
        return np.dtype("float64")
    return None


# ------------------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------------------


class PointsModel:
    """Parse and validate points elements (a ``dask.dataframe.DataFrame`` with ``x``, ``y`` [, ``z``])."""

    kind = "points"

    @classmethod
    def parse(
        cls,
        data: pd.DataFrame | dd.DataFrame | np.ndarray | pa.Table,
        *,
        coordinates: Mapping[str, str] | None = None,
        feature_key: str | None = None,
        instance_key: str | None = None,
        transformations: BaseTransformation | Mapping[str, BaseTransformation] | None = None,
        npartitions: int | None = None,
        chunksize: int | None = None,
        annotation: pd.DataFrame | None = None,
        name: str | None = None,
    ) -> dd.DataFrame:
        """Turn ``data`` into a validated points element.

        Parameters
        ----------
        data
            A pandas DataFrame, dask DataFrame, pyarrow Table, or a numpy array of shape ``(N, 2)`` / ``(N, 3)``
            whose columns become ``x``, ``y`` [, ``z``].
        coordinates
            Axis -> source column, e.g. ``{"x": "global_x", "y": "global_y"}``; the source columns are renamed to
            the axis names. Not allowed for numpy input.
        feature_key
            Column with the feature (gene) identity; converted to a categorical with known categories (sorted
            unique values; computing them costs one pass over a dask frame whose column is not yet categorical
            with known categories).
        instance_key
            Column with the id of the instance (cell) each point belongs to: integer, string or categorical.
        transformations
            A transformation (to ``"global"``) or a mapping coordinate system -> transformation. ``None`` keeps
            the metadata already attached to ``data``, else identity to ``"global"``.
        npartitions, chunksize
            Partitioning of the result (at most one of them). In-memory input is split in chunks of
            ``chunksize`` rows or in ``npartitions`` partitions (default: see :func:`default_npartitions`); a dask frame keeps its
            partitions unless ``npartitions`` is given.
        annotation
            numpy input only: a pandas DataFrame with ``N`` rows of extra columns. Its index becomes the index of
            the points.
        name
            Element name, used in error messages only.

        Returns
        -------
        dask.dataframe.DataFrame
            A new frame (the input is not modified) with the spatial metadata attached (including the row
            count when it is known without computing: in-memory input, or a dask frame parsed before). Row order
            and the index are kept as they are (the index is not reset and need not be unique or sorted).

        Raises
        ------
        ValidationError
            If the input cannot be turned into a valid points element.
        """
        label = _label(name)
        if npartitions is not None and chunksize is not None:
            raise ValidationError(f"{label}: pass either npartitions or chunksize, not both")
        for arg, value in (("npartitions", npartitions), ("chunksize", chunksize)):
            if value is not None and (not isinstance(value, int | np.integer) or value < 1):
                raise ValidationError(f"{label}: {arg} must be a positive integer, got {value!r}")

        existing = get_meta(data) if has_meta(data) else None
        frame = cls._to_frame(data, coordinates=coordinates, annotation=annotation, label=label)

        # keys remembered from earlier parsing are kept when their column is still there
        if feature_key is None and existing is not None and existing.feature_key in frame.columns:
            feature_key = existing.feature_key
        if instance_key is None and existing is not None and existing.instance_key in frame.columns:
            instance_key = existing.instance_key

        _check_columns(frame, label)
        frame = _cast_coordinates(frame, label)
        if isinstance(frame, pd.DataFrame):
            _check_finite(frame, label)
        _check_key_column(frame, feature_key, "feature_key", label)
        _check_key_column(frame, instance_key, "instance_key", label)
        if instance_key is not None:
            _check_instance_column(frame, instance_key, label)

        n_rows: int | None
        source: tuple[str, str] | None = None  # in-memory input reads no store files
        if isinstance(frame, pd.DataFrame):
            n_rows = len(frame)
            if feature_key is not None and not _is_categorical(frame[feature_key].dtype):
                frame = frame.assign(**{feature_key: frame[feature_key].astype("category")})
            if npartitions is None and chunksize is None:
                npartitions = default_npartitions(len(frame))
            ddf = _from_pandas(frame, npartitions, chunksize or DEFAULT_CHUNKSIZE)
        else:
            if chunksize is not None:
                raise ValidationError(
                    f"{label}: chunksize applies to in-memory input only; use npartitions to repartition a "
                    "dask DataFrame"
                )
            ddf = frame
            # known for exactly this frame (a registry entry); renames/casts/repartitioning keep every row
            n_rows = existing.n_rows if existing is not None else None
            # a lazily read frame still reads its store files: keep where it comes from
            source = existing.source if existing is not None else None
            if npartitions is not None and npartitions != ddf.npartitions:
                ddf = ddf.repartition(npartitions=npartitions)
            if feature_key is not None:
                ddf = _known_categories(ddf, feature_key)

        meta = ElementMeta(
            normalize_transformations(transformations, existing),
            feature_key,
            instance_key,
            n_rows=n_rows,
            source=source,
        )
        set_meta(ddf, meta)
        cls.validate(ddf, name=name)
        return ddf

    @classmethod
    def validate(cls, df: dd.DataFrame, name: str | None = None) -> None:
        """Check that ``df`` is a valid points element, from dtypes and metadata only (no data is computed).

        Checks: ``df`` is a dask DataFrame; column names are unique; ``x`` and ``y`` (and ``z`` if present) have
        dtype int32, int64, float32 or float64; spatial metadata with at least one transformation is attached;
        the feature column exists and is categorical with known categories; the instance column exists and has
        an integer, string or categorical dtype.

        Raises
        ------
        ValidationError
            On the first problem found.
        """
        label = _label(name)
        if not isinstance(df, dd.DataFrame):
            raise ValidationError(f"{label}: expected a dask.dataframe.DataFrame, got {type(df).__name__}")
        _check_columns(df, label)
        dtypes = df.dtypes
        for axis in points_axes(df):
            dtype = dtypes[axis]
            if not (isinstance(dtype, np.dtype) and dtype in COORDINATE_DTYPES):
                raise ValidationError(
                    f"{label}: column {axis!r} has dtype {dtype}, expected {_ALLOWED_COORDINATES}"
                )
        if not has_meta(df):
            raise ValidationError(
                f"{label}: no spatial metadata is attached; parse it with PointsModel.parse (objects derived "
                "from a points frame by dask operations do not inherit it)"
            )
        meta = get_meta(df)
        if not meta.transformations:
            raise ValidationError(f"{label}: has no transformation; every element needs at least one")
        if meta.feature_key is not None:
            _check_key_column(df, meta.feature_key, "feature_key", label)
            dtype = dtypes[meta.feature_key]
            if not _is_categorical(dtype):
                raise ValidationError(
                    f"{label}: feature_key column {meta.feature_key!r} has dtype {dtype}, expected categorical "
                    "(PointsModel.parse converts it)"
                )
            if not df[meta.feature_key].cat.known:
                raise ValidationError(
                    f"{label}: feature_key column {meta.feature_key!r} is categorical with unknown categories; "
                    "expected known categories (use .cat.as_known() or PointsModel.parse)"
                )
        if meta.instance_key is not None:
            _check_key_column(df, meta.instance_key, "instance_key", label)
            dtype = dtypes[meta.instance_key]
            if not _instance_dtype_ok(dtype):
                raise ValidationError(
                    f"{label}: instance_key column {meta.instance_key!r} has dtype {_describe(dtype)}, "
                    f"expected {_INSTANCE_DTYPES}"
                )

    # --------------------------------------------------------------------------------------------------------
    @classmethod
    def _to_frame(
        cls,
        data: Any,
        *,
        coordinates: Mapping[str, str] | None,
        annotation: pd.DataFrame | None,
        label: str,
    ) -> pd.DataFrame | dd.DataFrame:
        """Bring every input form to a pandas or dask frame with the coordinate columns named x/y/z."""
        if annotation is not None and not isinstance(data, np.ndarray):
            raise ValidationError(
                f"{label}: annotation is only used with numpy input; add columns to the frame"
            )
        if isinstance(data, np.ndarray):
            if coordinates is not None:
                raise ValidationError(
                    f"{label}: coordinates maps column names and cannot be used with numpy input; the array "
                    "columns are x, y[, z] in this order"
                )
            return _from_numpy(data, annotation, label)
        if isinstance(data, pa.Table):
            frame: pd.DataFrame | dd.DataFrame = data.to_pandas()
        elif isinstance(data, pd.DataFrame | dd.DataFrame):
            frame = data
        else:
            raise ValidationError(
                f"{label}: cannot parse a {type(data).__name__}; expected a pandas or dask DataFrame, a pyarrow "
                "Table or a numpy array of shape (N, 2) or (N, 3)"
            )
        if coordinates is not None:
            frame = _rename_coordinates(frame, coordinates, label)
        return frame


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------


def _from_numpy(array: np.ndarray, annotation: pd.DataFrame | None, label: str) -> pd.DataFrame:
    if array.ndim != 2 or array.shape[1] not in (2, 3):
        raise ValidationError(
            f"{label}: a numpy array must have shape (N, 2) or (N, 3) for x, y[, z]; got shape {array.shape}"
        )
    axes = AXES[: array.shape[1]]
    index = None
    if annotation is not None:
        if not isinstance(annotation, pd.DataFrame):
            raise ValidationError(
                f"{label}: annotation must be a pandas DataFrame, got {type(annotation).__name__}"
            )
        if len(annotation) != array.shape[0]:
            raise ValidationError(
                f"{label}: annotation has {len(annotation)} rows but the coordinate array has {array.shape[0]}"
            )
        clash = [c for c in annotation.columns if c in axes]
        if clash:
            raise ValidationError(
                f"{label}: annotation column(s) {clash} clash with the coordinate columns taken from the array"
            )
        index = annotation.index
    frame = pd.DataFrame({axis: array[:, i] for i, axis in enumerate(axes)}, index=index)
    if annotation is not None:
        frame = pd.concat([frame, annotation], axis=1)
    return frame


def _rename_coordinates(
    frame: pd.DataFrame | dd.DataFrame, coordinates: Mapping[str, str], label: str
) -> pd.DataFrame | dd.DataFrame:
    if not isinstance(coordinates, Mapping):
        raise ValidationError(
            f"{label}: coordinates must map axis names to column names, got {type(coordinates).__name__}"
        )
    bad = [axis for axis in coordinates if axis not in AXES]
    if bad:
        raise ValidationError(
            f"{label}: coordinates has unknown axis {bad[0]!r}; expected keys among x, y, z"
        )
    sources = list(coordinates.values())
    if len(set(sources)) != len(sources):
        raise ValidationError(
            f"{label}: coordinates maps several axes to the same column: {dict(coordinates)}"
        )
    columns = list(frame.columns)
    for axis, source in coordinates.items():
        if source not in columns:
            raise ValidationError(
                f"{label}: column {source!r} (given for axis {axis!r} in coordinates) is not in the data; "
                f"columns are {columns}"
            )
    remaining = set(columns) - set(sources)
    for axis in coordinates:
        if axis in remaining:
            raise ValidationError(
                f"{label}: column {axis!r} already exists and would clash with column "
                f"{coordinates[axis]!r} renamed to {axis!r}; drop or rename it first"
            )
    return frame.rename(columns={source: axis for axis, source in coordinates.items() if source != axis})


class _Slice:
    """A row slice of an in-memory frame with a cheap dask token (dask would otherwise hash all the data)."""

    __slots__ = ("frame", "token")

    def __init__(self, frame: pd.DataFrame, token: str):
        self.frame = frame
        self.token = token

    def __dask_tokenize__(self) -> str:
        return self.token


def _partition(part: _Slice) -> pd.DataFrame:
    return part.frame


def default_npartitions(n_rows: int) -> int:
    """Partitions for an in-memory frame of ``n_rows``: a few per core, each 1M to 8M rows.

    The partitions are views of the frame (no memory cost), and per-task overhead dominates vectorized work
    on small partitions: 20M rows filter ~2x faster in 4 partitions than in 20 on 2 cores.
    """
    cores = os.cpu_count() or 1
    by_cores = min(-(-n_rows // DEFAULT_CHUNKSIZE), 2 * cores)
    return max(1, by_cores, -(-n_rows // MAX_DEFAULT_CHUNKSIZE))


class InMemoryPoints:
    """The source of a points frame that :class:`PointsModel` built from in-memory data: its pandas partitions
    (views of the input, in order). Kept in that frame's record only: a frame derived from it has other rows."""

    __slots__ = ("frames",)

    def __init__(self, frames: list[pd.DataFrame]):
        self.frames = frames

    def __repr__(self) -> str:
        return f"InMemoryPoints({len(self.frames)} partitions, {sum(len(f) for f in self.frames):,} rows)"


def in_memory_partitions(df: dd.DataFrame) -> list[pd.DataFrame] | None:
    """The pandas partitions of a points frame built from in-memory data by :class:`PointsModel` (views, no
    compute), or ``None`` for any other frame (read from files, or derived by further dask operations).

    Lets queries on in-memory points work on the partitions directly and return a single gathered partition
    instead of one per input partition plus a concatenation."""
    record = record_of(df)
    source = record.source if record is not None else None
    return source.frames if isinstance(source, InMemoryPoints) else None


def _in_memory_source(ddf: dd.DataFrame, frames: list[pd.DataFrame]) -> InMemoryPoints | None:
    """The partitions as the frame's source, when they are exactly what dask computes for it (not, e.g., object
    strings that dask converts to Arrow strings on the fly)."""
    meta = ddf._meta
    for f in frames:
        if list(f.columns) != list(meta.columns) or not f.dtypes.equals(meta.dtypes):
            return None
    return InMemoryPoints(frames)


def _from_pandas(frame: pd.DataFrame, npartitions: int | None, chunksize: int) -> dd.DataFrame:
    """A dask frame over row slices of ``frame``, in order, with unknown divisions.

    ``dd.from_pandas`` computes sorted divisions whenever the index is monotonic (a RangeIndex always is):
    seconds for tens of millions of rows, and it also hashes the whole frame for its name. Points need
    neither, so the frame is cut into views and each task holds only its own slice.
    """
    n = len(frame)
    if npartitions is None:
        npartitions = max(1, -(-n // max(chunksize, 1)))
    npartitions = max(1, min(npartitions, max(n, 1)))
    bounds = np.linspace(0, n, npartitions + 1).round().astype(int)
    token = uuid.uuid4().hex
    parts = [_Slice(frame.iloc[a:b], f"{token}-{i}") for i, (a, b) in enumerate(itertools.pairwise(bounds))]
    ddf = dd.from_map(
        _partition,
        parts,
        meta=frame.iloc[:0],
        divisions=[None] * (npartitions + 1),
        enforce_metadata=False,
        label="points-from-pandas",
    )
    record = record_of(ddf)
    if record is not None:
        record.source = _in_memory_source(ddf, [p.frame for p in parts])
    return ddf


def _check_columns(frame: pd.DataFrame | dd.DataFrame, label: str) -> None:
    columns = pd.Index(frame.columns)
    dup = columns[columns.duplicated()].unique().tolist()
    if dup:
        raise ValidationError(f"{label}: column name(s) {dup} occur more than once; expected unique columns")
    for axis in ("x", "y"):
        if axis not in columns:
            raise ValidationError(
                f"{label}: column {axis!r} is missing; expected coordinate columns 'x', 'y' (and optionally "
                "'z'), or pass coordinates={'x': ..., 'y': ...} to map source columns"
            )


def _check_finite(frame: pd.DataFrame, label: str) -> None:
    """Refuse NaN or infinite coordinates (in-memory input; dask input is checked when written)."""
    for axis in points_axes(frame):
        v = frame[axis].to_numpy()
        if v.size and v.dtype.kind == "f" and not (np.isfinite(v.min()) and np.isfinite(v.max())):
            bad = np.flatnonzero(~np.isfinite(v))
            raise ValidationError(
                f"{label}: column {axis!r} holds {bad.size:,} NaN or infinite value(s) (first at row {bad[0]}); "
                "expected finite coordinates. Drop those rows first, e.g. df[np.isfinite(df.x) & np.isfinite(df.y)]"
            )


def _cast_coordinates(frame: pd.DataFrame | dd.DataFrame, label: str) -> pd.DataFrame | dd.DataFrame:
    casts: dict[str, np.dtype] = {}
    for axis in points_axes(frame):
        dtype = frame.dtypes[axis]
        target = _coordinate_target_dtype(dtype)
        if target is None:
            raise ValidationError(
                f"{label}: column {axis!r} has dtype {_describe(dtype)}, expected a numeric dtype ({_ALLOWED_COORDINATES})"
            )
        if target != dtype:
            casts[axis] = target
    return frame.astype(casts) if casts else frame


def _check_key_column(frame: pd.DataFrame | dd.DataFrame, key: Any, which: str, label: str) -> None:
    if key is None:
        return
    if not isinstance(key, str):
        raise ValidationError(f"{label}: {which} must be a column name (str), got {type(key).__name__}")
    if key in AXES:
        raise ValidationError(f"{label}: {which} {key!r} is a coordinate axis; expected a separate column")
    if key not in frame.columns:
        raise ValidationError(
            f"{label}: {which} column {key!r} is missing; columns are {list(frame.columns)}"
        )


def _check_instance_column(frame: pd.DataFrame | dd.DataFrame, key: str, label: str) -> None:
    dtype = frame.dtypes[key]
    ok = _instance_dtype_ok(dtype)
    description = _describe(dtype)
    if ok and isinstance(frame, pd.DataFrame) and is_object_dtype(dtype):
        # in memory we can afford to look at the values of an object column (vectorized type inference)
        inferred = pd.api.types.infer_dtype(frame[key], skipna=True)
        ok = inferred in ("string", "empty")
        description = f"object (holding {inferred} values)"
    if not ok:
        raise ValidationError(
            f"{label}: instance_key column {key!r} has dtype {description}, expected {_INSTANCE_DTYPES} "
            "(e.g. convert float ids with .astype('Int64'))"
        )


def _known_categories(ddf: dd.DataFrame, key: str) -> dd.DataFrame:
    """Make column ``key`` of a dask frame categorical with known, sorted categories (one pass if needed)."""
    column = ddf[key]
    if _is_categorical(column.dtype) and column.cat.known:
        return ddf
    values = pd.Series(column.dropna().unique().compute())
    if _is_categorical(values.dtype):
        values = values.astype(values.dtype.categories.dtype)
    uniques = pd.Index(values)
    try:
        uniques = uniques.sort_values()
    except TypeError:  # mixed, unorderable values: keep the order of appearance
        pass
    return ddf.assign(**{key: column.astype(pd.CategoricalDtype(uniques))})
