"""The values an element is coloured by: an element column, or an obs column / gene of an annotating table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from tissuestack._container import SpatialData
from tissuestack.elements import get_table_keys
from tissuestack.ops import get_values
from tissuestack.ops._values import _dense

__all__ = ["ColorSource", "find_color_source", "label_values", "table_has_key", "table_values_by_id"]


@dataclass(frozen=True)
class ColorSource:
    """Where ``key`` is found for one element: ``"element"`` (a column) or ``"table"`` (``table_name``)."""

    key: str
    place: str
    table_name: str | None = None


def _table_has(table: ad.AnnData, key: str) -> bool:
    return key in table.obs.columns or key in table.var_names


def table_has_key(sdata: SpatialData, table_name: str, key: str) -> bool:
    """Whether ``key`` is an obs column or var name of table ``table_name`` (from the store's parts of a table
    not loaded yet: its column and gene names, without loading it)."""
    stored = sdata._stored_table(table_name)
    if stored is not None:
        try:
            return stored.has(key)
        except Exception:  # an unreadable part: the loaded table reports the damage
            pass
    return _table_has(sdata.tables[table_name], key)


def find_color_source(
    sdata: SpatialData, name: str, columns: pd.Index | list[str], key: str, table_name: str | None
) -> ColorSource:
    """Where the colour key of element ``name`` lives; a ``KeyError`` lists the places looked in."""
    if table_name is not None:
        if not table_has_key(sdata, table_name, key):
            raise KeyError(
                f"element {name!r}: color key {key!r} is neither an obs column nor a var name of table "
                f"{table_name!r}"
            )
        return ColorSource(key, "table", table_name)
    if key in columns:
        return ColorSource(key, "element")
    tables = [t for t in sdata.get_annotating_tables(name) if table_has_key(sdata, t, key)]
    if len(tables) > 1:
        raise ValueError(f"element {name!r}: color key {key!r} is in tables {tables}; pass table_name")
    if not tables:
        annotating = sdata.get_annotating_tables(name)
        where = (
            f"nor in the tables annotating it ({annotating})" if annotating else "and no table annotates it"
        )
        raise KeyError(
            f"element {name!r}: color key {key!r} is not a column of the element {where}; pass a colour "
            "(e.g. 'red'), a column name, an obs column or a var name"
        )
    return ColorSource(key, "table", tables[0])


def table_values_by_id(
    sdata: SpatialData, name: str, element: Any, source: ColorSource, table_layer: str | None
) -> tuple[pd.Series, dict | None]:
    """Values of ``source.key`` indexed by the element's instance ids (instances without a row are absent),
    and the table's ``uns`` when the key is an obs column (for scanpy's ``{key}_colors``).

    An obs column of a table not loaded yet is read alone from the store, with the region and instance columns
    (for 1M rows: ~0.05 s instead of ~1 s to load the table)."""
    stored = sdata._stored_table(source.table_name)
    if stored is not None:
        try:
            light = _stored_obs_values(stored, name, source.key)
        except Exception:  # an unreadable part: the loaded table reports the damage
            light = None
        if light is not None:
            return light, stored.uns
    frame = get_values(
        source.key,
        sdata,
        element_name=name,
        element=element,
        table_name=source.table_name,
        table_layer=table_layer,
    )
    table = sdata.tables[source.table_name]
    uns = table.uns if source.key in table.obs.columns else None
    return frame[source.key], uns


def _stored_obs_values(stored: Any, name: str, key: str) -> pd.Series | None:
    """Obs column ``key`` of a stored table for the rows annotating element ``name``, indexed by instance id;
    ``None`` (the caller loads the table) when ``key``, the region or the instance column is not an obs column,
    or the table does not annotate ``name``."""
    regions, region_key, instance_key = stored.keys()
    columns = stored.obs_columns
    if not regions or name not in regions or not {key, region_key, instance_key} <= set(columns):
        return None
    rows = np.flatnonzero(np.asarray(pd.Categorical(stored.obs_column(region_key)) == name))
    values = stored.obs_column(key)[rows]
    ids = np.asarray(stored.obs_column(instance_key))[rows]
    return pd.Series(values, index=pd.Index(ids), name=key)


def label_values(
    sdata: SpatialData, name: str, source: ColorSource, table_layer: str | None
) -> tuple[pd.Series, dict | None]:
    """Values of ``source.key`` indexed by label id, from the table rows of labels element ``name``.

    Reads only the table (never the whole label image, which would be needed to list every label id).
    """
    table = sdata.tables[source.table_name]
    _, region_key, instance_key = get_table_keys(table)
    if region_key is None or instance_key is None:
        raise ValueError(f"table {source.table_name!r} annotates no element (no region/instance keys)")
    rows = np.flatnonzero(np.asarray(table.obs[region_key].astype(str) == name))
    ids = pd.Index(np.asarray(table.obs[instance_key].iloc[rows]))
    if source.key in table.obs.columns:
        return pd.Series(table.obs[source.key].iloc[rows].to_numpy(), index=ids, name=source.key), table.uns
    col = table.var_names.get_loc(source.key)
    matrix = table.X if table_layer is None else table.layers[table_layer]
    sub = matrix[rows][:, [col]] if not sp.issparse(matrix) else matrix[rows][:, col]
    return pd.Series(np.ravel(_dense(sub)).astype(float), index=ids, name=source.key), None
