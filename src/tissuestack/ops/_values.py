"""Values by key: from element columns, or from a table (obs columns, var names, obsm) matched to an element."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anndata as ad
import dask
import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp

from tissuestack._compute import scheduler
from tissuestack._container import SpatialData
from tissuestack.elements import kind_of
from tissuestack.ops._joins import _left_matched_rows

__all__ = ["get_values"]

_ELEMENT = "element"
_OBS = "obs"
_VAR = "var"
_OBSM = "obsm"


def _as_keys(value_key: str | Sequence[str]) -> list[str]:
    keys = [value_key] if isinstance(value_key, str) else list(value_key)
    if not keys:
        raise ValueError("value_key is empty; expected a key or a list of keys")
    for k in keys:
        if not isinstance(k, str):
            raise TypeError(f"value keys must be strings, got {type(k).__name__} ({k!r})")
    dup = pd.Index(keys)
    dup = dup[dup.duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"value_key lists {dup} more than once")
    return keys


def _dense(matrix: Any) -> np.ndarray:
    if sp.issparse(matrix):
        return matrix.toarray()
    if isinstance(matrix, da.Array):
        matrix = matrix.compute(scheduler=scheduler())
        if sp.issparse(matrix):
            return matrix.toarray()
    if hasattr(matrix, "to_memory"):  # backed sparse datasets
        matrix = matrix.to_memory()
        if sp.issparse(matrix):
            return matrix.toarray()
    return np.asarray(matrix)


def get_values(
    value_key: str | Sequence[str],
    sdata: SpatialData | None = None,
    element_name: str | None = None,
    element: Any = None,
    table_name: str | None = None,
    table_layer: str | None = None,
    return_obsm_as_is: bool = False,
) -> pd.DataFrame | np.ndarray:
    """Values of one or several keys, one column per key.

    A key is looked up in the columns of the element (shapes or points; not the geometry) and, when
    ``table_name`` is given, in the table's ``obs`` columns, its ``var_names`` (values from ``X``, or from the
    layer ``table_layer``) and its ``obsm`` keys. Each key must be found in exactly one of these places, and all
    keys in the same place.

    Parameters
    ----------
    value_key
        A key or a list of keys.
    sdata
        Where ``element_name`` and ``table_name`` are looked up.
    element_name
        The element (labels, shapes or points). Also needed with ``element`` when values come from a table: it
        is the region name the table's rows refer to.
    element
        The element object (default: ``sdata[element_name]``).
    table_name
        A table of ``sdata`` to look keys up in as well.
    table_layer
        Take ``var_names`` values from this layer instead of ``X``.
    return_obsm_as_is
        For a single ``obsm`` key: return the (row-matched) array itself instead of a DataFrame.

    Returns
    -------
    pandas.DataFrame or numpy.ndarray
        - element columns: the columns, indexed like the element (points: only those columns are computed);
        - table values with an element: one row per element instance that has a table row, in the element's
          instance order (shapes: row order; points: first appearance; labels: sorted values); the index holds
          the instance ids and is named after the table's instance key. Instances without a table row are
          absent (``reindex`` to get them as missing values);
        - table values without an element: every table row, in table order, indexed by ``obs_names``.

        ``obsm`` keys give one column per array column, named ``{key}_0``, ``{key}_1``, ... (an ``obsm``
        DataFrame keeps its column names). ``var_names`` values are dense (sparse matrices are densified for
        the selected rows and columns only).

    Raises
    ------
    KeyError
        A key found nowhere (the message lists where it looked); an unknown ``table_layer``.
    ValueError
        A key found in several places; keys from different places; missing inputs; ``return_obsm_as_is``
        with keys that are not exactly one ``obsm`` key; an element that the table does not annotate.
    """
    keys = _as_keys(value_key)
    if (element_name is not None and element is None) or table_name is not None:
        if sdata is None:
            raise ValueError("pass sdata to look element_name/table_name up (or pass element)")
    if element is None and element_name is not None:
        element = sdata[element_name]
    table: ad.AnnData | None = None
    if table_name is not None:
        if sdata.kind_of(table_name) != "tables":
            raise ValueError(f"{table_name!r} is a {sdata.kind_of(table_name)} element, not a table")
        table = sdata[table_name]
    if element is None and table is None:
        raise ValueError("pass an element (element_name or element) and/or a table (table_name)")

    protocol = kind_of(element) if element is not None else None
    kind = protocol.name if protocol is not None else None
    if protocol is not None and not protocol.has_instances:
        raise ValueError(f"element {element_name!r} is {kind}; values come from labels, shapes or points")
    columns = protocol.columns(element) if protocol is not None else pd.Index([])
    element_label = f"{kind} element {element_name!r}" if element_name else f"the {kind} element"
    table_label = f"table {table_name!r}"

    places: list[tuple[str, str, Any]] = []  # (source, description, container supporting `in`)
    if kind is not None:
        places.append((_ELEMENT, f"columns of {element_label}", columns))
    if table is not None:
        places.append((_OBS, f"obs columns of {table_label}", table.obs.columns))
        places.append((_VAR, f"var_names of {table_label}", table.var_names))
        places.append((_OBSM, f"obsm of {table_label}", table.obsm.keys()))

    source_of: dict[str, str] = {}
    for key in keys:
        found = [(src, desc) for src, desc, where in places if key in where]
        if not found:
            looked = "; ".join(desc for _, desc, _ in places)
            hint = "" if table is not None else " (pass table_name to also look in a table)"
            raise KeyError(f"key {key!r} not found; looked in: {looked}{hint}")
        if len(found) > 1:
            raise ValueError(
                f"key {key!r} is ambiguous: found in {' and '.join(d for _, d in found)}; rename one of them"
            )
        source_of[key] = found[0][0]
    sources = set(source_of.values())
    if len(sources) > 1:
        raise ValueError(
            f"value keys come from different places ({source_of}); get values of each place in a separate call"
        )
    source = sources.pop()
    if return_obsm_as_is and (source != _OBSM or len(keys) != 1):
        raise ValueError("return_obsm_as_is=True needs exactly one key, an obsm key")
    if table_layer is not None and table is not None and table_layer not in table.layers:
        raise KeyError(f"{table_label} has no layer {table_layer!r}; layers are {list(table.layers)}")

    if source == _ELEMENT:
        frame = element[keys]
        if dask.is_dask_collection(frame):  # points: one pass over the wanted columns
            return frame.compute(scheduler=scheduler())
        return pd.DataFrame(frame)

    # values from the table, row-matched to the element's instances
    if element is None:
        positions = np.arange(table.n_obs)
        index = table.obs_names.copy()
    else:
        if element_name is None:
            raise ValueError(
                "pass element_name with element: the table's rows refer to elements by name (region)"
            )
        positions, ids, instance_key = _left_matched_rows(element_name, element, table, table_label)
        index = pd.Index(ids, name=instance_key)

    if source == _OBS:
        out = table.obs[keys].iloc[positions].copy()
        out.index = index
        return out
    if source == _VAR:
        cols = table.var_names.get_indexer(keys)
        sub = table[positions, cols]
        matrix = sub.X if table_layer is None else sub.layers[table_layer]
        if matrix is None:
            raise ValueError(f"{table_label} has no X; pass table_layer to read var values from a layer")
        return pd.DataFrame(_dense(matrix), index=index, columns=keys)
    # obsm
    frames = []
    for key in keys:
        value = table.obsm[key]
        if isinstance(value, pd.DataFrame):
            taken = value.iloc[positions]
            if return_obsm_as_is:
                return taken
            frames.append(taken.set_axis(index, axis=0))
            continue
        taken = _dense(value[positions]) if not sp.issparse(value) else value[positions]
        if return_obsm_as_is:
            return taken
        taken = np.asarray(taken).reshape(len(positions), -1)
        frames.append(pd.DataFrame(taken, index=index, columns=[f"{key}_{i}" for i in range(taken.shape[1])]))
    return pd.concat(frames, axis=1) if len(frames) > 1 else frames[0]
