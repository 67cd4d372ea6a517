"""Instance ids of labels, shapes and points elements, and how a table's ids match them.

Integer ids meeting string ids compare as strings (a table read from CSV often holds ``"12"`` for cell 12).
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import xarray as xr

from tissuestack._compute import scheduler
from tissuestack.elements._kinds import kind_of
from tissuestack.elements._meta import get_meta
from tissuestack.elements._raster import raster_levels
from tissuestack.elements._tables import get_table_keys

__all__ = [
    "comparable_ids",
    "element_instances",
    "id_kind",
    "labels_instances",
    "plain_ids",
    "points_instance_key",
    "points_instances",
    "table_id_mismatch",
]


def id_kind(dtype: Any) -> str:
    """``"int"``, ``"str"`` or ``"other"``: how instance ids of this dtype compare."""
    if isinstance(dtype, pd.CategoricalDtype):
        dtype = dtype.categories.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "other"
    if pd.api.types.is_integer_dtype(dtype):
        return "int"
    if pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
        return "str"
    return "other"


def plain_ids(values: Any) -> pd.Index:
    """Instance ids as a plain (non-categorical) index."""
    index = pd.Index(values)
    if isinstance(index.dtype, pd.CategoricalDtype):
        index = pd.Index(np.asarray(index), dtype=index.dtype.categories.dtype)
    return index


def comparable_ids(a: pd.Index, b: pd.Index) -> tuple[pd.Index, pd.Index]:
    """Make two id indexes comparable: integer ids meeting string ids are turned into strings."""
    ka, kb = id_kind(a.dtype), id_kind(b.dtype)
    if ka == "int" and kb == "str":
        a = a.astype(str)
    elif ka == "str" and kb == "int":
        b = b.astype(str)
    return a, b


def labels_instances(element: xr.DataArray | xr.DataTree) -> pd.Index:
    """Sorted distinct values of a labels raster (full resolution), unique per chunk then combined."""
    data = raster_levels(element)[0].data
    if isinstance(data, da.Array):
        (values,) = dask.compute(da.unique(data), scheduler=scheduler())
    else:
        values = np.unique(np.asarray(data))
    return pd.Index(values)


def _first_seen(values: pd.Series) -> np.ndarray:
    return pd.unique(np.asarray(values))


def points_instance_key(element: dd.DataFrame, name: str | None) -> str:
    key = get_meta(element).instance_key
    if key is None or key not in element.columns:
        label = f"points element {name!r}" if name else "points element"
        raise ValueError(
            f"{label} has no instance_key column, so no table row can refer to its points; parse it with "
            "PointsModel.parse(..., instance_key=...)"
        )
    return key


def points_instances(element: dd.DataFrame, key: str) -> pd.Index:
    """Distinct values of a points instance column, in order of first appearance (one pass over one column)."""
    parts = [dask.delayed(_first_seen)(p) for p in element[key].to_delayed()]
    uniques = dask.compute(*parts, scheduler=scheduler())
    if not uniques:
        return plain_ids(pd.Series([], dtype=element.dtypes[key]))
    return plain_ids(pd.unique(np.concatenate([np.asarray(u) for u in uniques])))


def element_instances(element: Any, *, name: str | None = None) -> pd.Index:
    """The instance ids of a labels, shapes or points element (see the module notes for their order).

    Labels are scanned once (distinct values per chunk, combined); points read only their instance column.
    """
    return kind_of(element).instances(element, name)


def table_id_mismatch(table: Any, region: str, element: Any) -> tuple[int, int, str] | None:
    """``(rows, unmatched rows, description)`` for the rows of ``table`` annotating ``region`` whose instance id
    is not an instance of ``element``; ``None`` when every row matches (or there is none)."""
    _, region_key, instance_key = get_table_keys(table)
    rows = np.asarray(table.obs[region_key] == region)
    if not rows.any():
        return None
    wanted = plain_ids(table.obs[instance_key].to_numpy()[rows])
    have = element_instances(element, name=region)
    a, b = comparable_ids(wanted, have)
    unmatched = ~np.asarray(a.isin(b))
    n_bad = int(unmatched.sum())
    if not n_bad:
        return None
    share = (
        f"none of its {len(wanted):,} rows for {region!r} match an instance of {region!r}"
        if n_bad == len(wanted)
        else f"{n_bad:,} of its {len(wanted):,} rows for {region!r} match no instance of {region!r}"
    )
    sample = ", ".join(repr(v) for v in pd.unique(np.asarray(wanted[unmatched]))[:3].tolist())
    theirs = ", ".join(repr(v) for v in np.asarray(have[:3]).tolist())
    dtypes = (
        f" (table ids are {wanted.dtype}, element ids {have.dtype})" if wanted.dtype != have.dtype else ""
    )
    message = f"{share}: ids such as {sample} are not among the element's ids ({theirs}, ...){dtypes}"
    return len(wanted), n_bad, message
