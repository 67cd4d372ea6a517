"""Joins between spatial elements (labels, shapes, points) and the tables that annotate them.

A table row annotates one *instance* of one element: the pair ``(obs[region_key], obs[instance_key])``. The
instances of an element are

- shapes: the index labels of the GeoDataFrame (unique, in row order);
- points: the distinct values of the points' ``instance_key`` column (in order of first appearance, partition
  by partition); a points frame is filtered row-wise and lazily (``isin`` on that column);
- labels: the distinct values of the (full resolution) raster, sorted; the background value (often 0) is an
  instance like any other, it simply has no table row in the usual case. Labels cannot be filtered or
  reordered, so joins leave them unchanged.

Every matching step is vectorized (``pd.Index.get_indexer``/``isin``); instance ids may be integers of any
width, strings or categoricals of either, in any order. Integer ids on one side and string ids on the other are
compared as strings (``1`` matches ``"1"``), as ``filter_table_by_instances`` does.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anndata as ad
import dask.array as da
import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd

from tissuestack._compute import scheduler
from tissuestack._container import SpatialData
from tissuestack.elements import get_kind_protocol, get_table_keys, kind_of, table_rows
from tissuestack.elements._instances import (
    comparable_ids,
    element_instances,
    id_kind,
    plain_ids,
    points_instance_key,
)
from tissuestack.elements._meta import copy_meta

__all__ = [
    "JoinHow",
    "MatchRows",
    "element_instances",
    "filter_table",
    "join_spatialelement_table",
    "match_element_to_table",
    "match_table_to_element",
]

JoinHow = Literal["left", "left_exclusive", "inner", "right", "right_exclusive"]
MatchRows = Literal["no_control", "left", "right"]
_HOWS: tuple[str, ...] = ("left", "left_exclusive", "inner", "right", "right_exclusive")
_MATCH_ROWS: tuple[str, ...] = ("no_control", "left", "right")


# ------------------------------------------------------------------------------------------------------------
# instance ids
# ------------------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------------------
# element side: filtering and reordering
# ------------------------------------------------------------------------------------------------------------


def _take_shapes(gdf: gpd.GeoDataFrame, positions: np.ndarray) -> gpd.GeoDataFrame | None:
    if len(positions) == 0:
        return None  # a shapes element needs at least one geometry
    out = gdf.iloc[positions]
    copy_meta(gdf, out)
    return out


def _points_isin(ddf: dd.DataFrame, key: str, ids: pd.Index) -> dd.Series:
    """Lazy row mask: the instance column of ``ddf`` is one of ``ids``."""
    column = ddf[key]
    dtype = ddf.dtypes[key]
    if isinstance(dtype, pd.CategoricalDtype):
        column = column.astype(dtype.categories.dtype)
    col_kind, ids_kind = id_kind(dtype), id_kind(ids.dtype)
    if col_kind == "int" and ids_kind == "str":
        column = column.astype(str)
    elif col_kind == "str" and ids_kind == "int":
        ids = ids.astype(str)
    return column.isin(ids.tolist())


def _with_order(
    part: pd.DataFrame,
    key: str,
    ids: np.ndarray,
    str_ids: bool,
    names: tuple[str, str, str],
    partition_info: dict | None = None,
) -> pd.DataFrame:
    # a fresh Index per task: the lazily built hash table of a shared pandas Index is not thread-safe
    # (concurrent first use can report a unique index as non-unique)
    lookup = pd.Index(ids)
    values = part[key]
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(values.dtype.categories.dtype)
    if str_ids:
        values = values.astype(str)
    number = 0 if partition_info is None else partition_info["number"]
    o, p, r = names
    return part.assign(**{o: lookup.get_indexer(values), p: number, r: np.arange(len(part))})


def _sort_points_like(ddf: dd.DataFrame, key: str, ids: pd.Index) -> dd.DataFrame:
    """Points ordered like ``ids`` (table order) by a lazy, stable sort: points of one instance keep their order."""
    str_ids = id_kind(ddf.dtypes[key]) == "int" and id_kind(ids.dtype) == "str"
    if id_kind(ddf.dtypes[key]) == "str" and id_kind(ids.dtype) == "int":
        ids = ids.astype(str)
    taken = set(ddf.columns)
    names = tuple(_free_name(f"__{what}", taken) for what in ("order", "part", "row"))
    meta = ddf._meta.assign(**{n: np.zeros(0, dtype=np.int64) for n in names})
    with_order = ddf.map_partitions(_with_order, key, ids.to_numpy(), str_ids, names, meta=meta)
    return with_order.sort_values(list(names)).drop(columns=list(names))


def _free_name(base: str, taken: set[str]) -> str:
    name = base
    while name in taken:
        name += "_"
    taken.add(name)
    return name


# ------------------------------------------------------------------------------------------------------------
# the join
# ------------------------------------------------------------------------------------------------------------


@dataclass
class _Rows:
    """Table rows of one region: their positions in the table (table order) and their instance ids."""

    positions: np.ndarray
    ids: pd.Index


def _region_rows(table: ad.AnnData, region_key: str, instance_key: str) -> dict[str, _Rows]:
    obs = table.obs
    regions = obs[region_key]
    codes = regions.cat.codes.to_numpy() if isinstance(regions.dtype, pd.CategoricalDtype) else None
    ids_all = plain_ids(obs[instance_key])
    out: dict[str, _Rows] = {}
    categories = regions.cat.categories if codes is not None else pd.Index(regions.unique())
    for code, region in enumerate(categories):  # one pass per region, not per row
        mask = codes == code if codes is not None else np.asarray(regions == region)
        positions = np.flatnonzero(mask)
        out[str(region)] = _Rows(positions, ids_all[positions])
    return out


def _check_how(how: str, match_rows: str) -> None:
    if how not in _HOWS:
        raise ValueError(f"how must be one of {list(_HOWS)}, got {how!r}")
    if match_rows not in _MATCH_ROWS:
        raise ValueError(f"match_rows must be one of {list(_MATCH_ROWS)}, got {match_rows!r}")


def _resolve_inputs(
    sdata: SpatialData | None,
    spatial_element_names: str | Sequence[str] | None,
    spatial_elements: Any,
    table_name: str | None,
    table: ad.AnnData | None,
) -> tuple[list[str], list[Any], ad.AnnData, str]:
    if spatial_element_names is None:
        raise ValueError(
            "pass spatial_element_names: the table refers to elements by name (its region column), so every "
            "joined element needs its name"
        )
    names = [spatial_element_names] if isinstance(spatial_element_names, str) else list(spatial_element_names)
    if not names:
        raise ValueError("spatial_element_names is empty; expected one or more element names")
    if len(set(names)) != len(names):
        raise ValueError(f"spatial_element_names lists an element more than once: {names}")
    if spatial_elements is None:
        if sdata is None:
            raise ValueError("pass either sdata (to look elements up by name) or spatial_elements")
        elements = [sdata[n] for n in names]
    else:
        if isinstance(spatial_elements, list | tuple):
            elements = list(spatial_elements)
        else:
            elements = [spatial_elements]
        if len(elements) != len(names):
            raise ValueError(
                f"got {len(elements)} spatial_elements for {len(names)} spatial_element_names; expected one "
                "element per name"
            )
    for n, e in zip(names, elements, strict=True):
        kind = kind_of(e)
        if not kind.has_instances:
            raise ValueError(
                f"element {n!r} is {kind.name}; only labels, shapes and points can be joined with a table"
            )
    if table is None:
        if sdata is None or table_name is None:
            raise ValueError("pass either sdata and table_name, or table")
        if sdata.kind_of(table_name) != "tables":
            raise ValueError(f"{table_name!r} is a {sdata.kind_of(table_name)} element, not a table")
        table = sdata[table_name]
    label = f"table {table_name!r}" if table_name else "the table"
    return names, elements, table, label


def _annotation_keys(table: ad.AnnData, names: Iterable[str], label: str) -> tuple[list[str], str, str]:
    regions, region_key, instance_key = get_table_keys(table)
    if regions is None:
        raise ValueError(f"{label} annotates no element (no region/instance keys); it cannot be joined")
    missing = [n for n in names if n not in regions]
    if missing:
        raise ValueError(f"{label} does not annotate {missing}; it annotates {regions}")
    return regions, region_key, instance_key


def _join_one(
    name: str,
    element: Any,
    rows: _Rows,
    how: str,
    match_rows: str,
) -> tuple[Any, np.ndarray]:
    """Join one element with its table rows; returns the new element and the table row positions to keep."""
    protocol = kind_of(element)
    kind = protocol.name
    if not protocol.filterable:
        if how == "left_exclusive":
            raise ValueError(
                f"labels element {name!r}: how='left_exclusive' would keep the instances without a table row, "
                "but a labels raster cannot be filtered; use element_instances() and the table ids instead"
            )
        if match_rows == "right" and how in ("inner", "right"):
            raise ValueError(
                f"labels element {name!r}: match_rows='right' would reorder the element like the table rows, "
                "but a labels raster cannot be reordered; use match_rows='left' or 'no_control'"
            )
    points_key = points_instance_key(element, name) if protocol.lazy_rows else None

    # the element's instances, where they are needed (points: one pass over the instance column)
    need_instances = (
        not protocol.lazy_rows
        or how in ("left", "inner", "right_exclusive")
        or (how == "right" and match_rows == "left")
    )
    t_ids = rows.ids
    if need_instances:
        instances = protocol.instances(element, name)
        inst_cmp, t_cmp = comparable_ids(instances, t_ids)
        e2t = t_cmp.get_indexer(inst_cmp)  # per element instance: position among the region's rows, or -1
        matched = e2t >= 0
        t_in_e = np.zeros(len(t_ids), dtype=bool)
        t_in_e[e2t[matched]] = True
        rows_in_element_order = rows.positions[e2t[matched]]
        if len(t_ids) and not t_in_e.any():
            dtypes = (
                f"; table ids are {t_ids.dtype}, element ids {instances.dtype}"
                if t_ids.dtype != instances.dtype
                else ""
            )
            warnings.warn(
                f"join of {kind} element {name!r}: none of the {len(t_ids):,} table rows for {name!r} matches one "
                f"of its {len(instances):,} instances (table ids e.g. {list(t_ids[:3])}, element ids e.g. "
                f"{list(instances[:3])}{dtypes}); the join finds no pairs",
                UserWarning,
                stacklevel=4,
            )
        elif how == "inner" and not t_in_e.all():
            warnings.warn(
                f"join of {kind} element {name!r}: {int((~t_in_e).sum()):,} of the {len(t_ids):,} table rows for "
                f"{name!r} match none of its instances; the inner join leaves them out",
                UserWarning,
                stacklevel=4,
            )

    # table side
    if how == "left":
        table_rows = rows_in_element_order if match_rows == "left" else rows.positions[t_in_e]
    elif how == "left_exclusive":
        table_rows = np.empty(0, dtype=np.intp)
    elif how == "inner":
        table_rows = rows_in_element_order if match_rows == "left" else rows.positions[t_in_e]
    elif how == "right":
        if match_rows == "left":
            table_rows = np.concatenate([rows_in_element_order, rows.positions[~t_in_e]])
        else:
            table_rows = rows.positions
    else:  # right_exclusive
        table_rows = rows.positions[~t_in_e]

    # element side
    if how == "right_exclusive":
        return None, table_rows
    if how == "left" or not protocol.filterable:
        return element, table_rows
    if not protocol.lazy_rows:  # shapes: take rows
        if how == "left_exclusive":
            return _take_shapes(element, np.flatnonzero(~matched)), table_rows
        keep = np.flatnonzero(matched)
        if match_rows == "right":
            keep = keep[np.argsort(e2t[keep], kind="stable")]
        return _take_shapes(element, keep), table_rows
    # points: lazy row filter (and lazy stable sort for match_rows="right")
    inside = _points_isin(element, points_key, t_ids)
    if how == "left_exclusive":
        out = element[~inside]
    elif match_rows == "right":
        out = _sort_points_like(element[inside], points_key, t_ids)
    else:
        out = element[inside]
    copy_meta(element, out)
    return out, table_rows


def _join(
    names: list[str],
    elements: list[Any],
    table: ad.AnnData,
    label: str,
    how: str,
    match_rows: str,
) -> tuple[dict[str, Any], ad.AnnData]:
    """The join; the table may come out with no rows."""
    _check_how(how, match_rows)
    _, region_key, instance_key = _annotation_keys(table, names, label)
    by_region = _region_rows(table, region_key, instance_key)
    empty = _Rows(np.empty(0, dtype=np.intp), pd.Index([]))
    out: dict[str, Any] = {}
    parts: list[np.ndarray] = []
    for name, element in zip(names, elements, strict=True):
        new, positions = _join_one(name, element, by_region.get(name, empty), how, match_rows)
        out[name] = new
        parts.append(positions.astype(np.intp, copy=False))
    positions = np.concatenate(parts) if parts else np.empty(0, dtype=np.intp)
    if match_rows != "left":
        positions = np.sort(positions)  # keep the table's order
    return out, table_rows(table, positions, regions=names)


def join_spatialelement_table(
    sdata: SpatialData | None = None,
    spatial_element_names: str | Sequence[str] | None = None,
    spatial_elements: Any = None,
    table_name: str | None = None,
    table: ad.AnnData | None = None,
    how: JoinHow = "left",
    match_rows: MatchRows = "no_control",
) -> tuple[dict[str, Any], ad.AnnData | None]:
    """Join labels, shapes or points elements with a table that annotates them, on (region, instance).

    Parameters
    ----------
    sdata
        Where to look the elements (by name) and the table (by ``table_name``) up, unless they are passed.
    spatial_element_names
        Name(s) of the element(s); the table's region column refers to elements by these names. Required.
    spatial_elements
        The element object(s), one per name, in the same order (default: ``sdata[name]``).
    table_name, table
        The table, by name in ``sdata`` or as an object.
    how
        - ``"left"``: every element instance. The element is returned unchanged; the table keeps the rows whose
          instance is in the element (instances without a row simply have none).
        - ``"left_exclusive"``: the element filtered to the instances without a table row; the table is ``None``.
        - ``"inner"``: the instances present on both sides; element and table both filtered.
        - ``"right"``: every table row of the joined regions; the element filtered to the instances with a row.
        - ``"right_exclusive"``: the table rows whose instance is not in the element; the element is ``None``.
    match_rows
        - ``"no_control"``: both sides keep their own order.
        - ``"left"``: table rows ordered like the element's instances (element by element, in the order of
          ``spatial_element_names``). With ``how="right"``, the rows of each element whose instance is not in
          the element follow its matched rows, in table order.
        - ``"right"``: elements ordered like the table rows. Points are then sorted lazily by a stable
          multi-partition sort (a shuffle: points of one instance keep their relative order).

        Ignored where it has no effect (exclusive joins; ``"right"`` with ``how="left"``).

    Returns
    -------
    tuple
        ``({name: element or None}, table or None)``. The table is restricted to the rows of the joined
        elements (its ``region`` lists those elements), and is ``None`` when no row remains. A shapes element
        filtered to no instance is ``None``; a points frame is always returned (lazily filtered, possibly
        empty). An element returned unchanged is the same object.

    Notes
    -----
    Labels cannot be filtered or reordered: they are returned unchanged for ``"left"``, ``"inner"`` and
    ``"right"`` (only the table side is filtered/ordered) and are ``None`` for ``"right_exclusive"``.
    ``how="left_exclusive"``, and ``match_rows="right"`` with ``"inner"``/``"right"``, raise ``ValueError`` on
    labels. Their instances are the distinct raster values (computed once, per chunk); a background value
    such as 0 is treated as an instance, which normally has no table row.

    Raises
    ------
    ValueError
        Unknown ``how``/``match_rows``; missing inputs; an element that is not labels/shapes/points, or that the
        table does not annotate; a table that annotates nothing; an impossible operation on labels; points
        without an instance column.
    """
    names, elements, table, label = _resolve_inputs(
        sdata, spatial_element_names, spatial_elements, table_name, table
    )
    out, joined = _join(names, elements, table, label, how, match_rows)
    if how == "left_exclusive" or joined.n_obs == 0:
        return out, None
    return out, joined


def _left_matched_rows(
    name: str, element: Any, table: ad.AnnData, label: str
) -> tuple[np.ndarray, pd.Index, str]:
    """Positions of the table rows of element ``name`` in the element's instance order, the ids of those
    instances and the table's instance key (a left join with ``match_rows="left"``, without copying the table).
    """
    _, region_key, instance_key = _annotation_keys(table, [name], label)
    rows = _region_rows(table, region_key, instance_key).get(name)
    instances = element_instances(element, name=name)
    if rows is None:
        return np.empty(0, dtype=np.intp), instances[:0], instance_key
    inst_cmp, t_cmp = comparable_ids(instances, rows.ids)
    e2t = t_cmp.get_indexer(inst_cmp)
    matched = e2t >= 0
    return rows.positions[e2t[matched]], instances[matched], instance_key


def _single_annotating_table(sdata: SpatialData, element_name: str, table_name: str | None) -> str:
    if table_name is not None:
        return table_name
    tables = sdata.get_annotating_tables(element_name)
    if len(tables) != 1:
        found = f"tables {tables} annotate it" if tables else "no table annotates it"
        raise ValueError(f"element {element_name!r}: pass table_name; {found}")
    return tables[0]


def match_table_to_element(
    sdata: SpatialData, element_name: str, table_name: str | None = None
) -> ad.AnnData:
    """The table rows of ``element_name``, ordered like the element's instances.

    A left join with ``match_rows="left"``: instances without a table row are skipped, table rows whose
    instance is not in the element are dropped. ``table_name`` may be omitted when exactly one table annotates
    the element. The result may have no rows (it is never ``None``).
    """
    table_name = _single_annotating_table(sdata, element_name, table_name)
    names, elements, table, label = _resolve_inputs(sdata, element_name, None, table_name, None)
    _, joined = _join(names, elements, table, label, "left", "left")
    return joined


def match_element_to_table(sdata: SpatialData, element_name: str, table_name: str) -> tuple[Any, ad.AnnData]:
    """The element filtered to the instances with a table row and ordered like those rows, and those rows.

    An inner join with ``match_rows="right"``, so that the two sides correspond one to one (shapes row ``i`` is
    table row ``i``; points are grouped by instance in table-row order). Table rows whose instance is not in
    the element are dropped (the reference implementation keeps them; they have nothing to match). Labels
    cannot be reordered and raise ``ValueError``; a shapes element with no matched instance comes back as
    ``None``.
    """
    names, elements, table, label = _resolve_inputs(sdata, element_name, None, table_name, None)
    if not kind_of(elements[0]).filterable:
        raise ValueError(
            f"labels element {element_name!r} cannot be filtered or reordered like the table rows; use "
            "match_table_to_element to order the table like the labels instead"
        )
    out, joined = _join(names, elements, table, label, "inner", "right")
    return out[element_name], joined


# ------------------------------------------------------------------------------------------------------------
# filtering a table and propagating to its elements
# ------------------------------------------------------------------------------------------------------------

Predicate = np.ndarray | pd.Series | Sequence[bool] | Callable[[Any], Any] | str


def _mask(predicate: Any, frame: pd.DataFrame, axis: str, label: str) -> np.ndarray:
    """Boolean mask over the rows of ``frame`` (obs or var) from a mask, a callable or a query string."""
    if isinstance(predicate, str):
        try:
            result = frame.eval(predicate)
        except Exception as err:
            raise ValueError(f"{label}: cannot evaluate {axis} query {predicate!r}: {err}") from err
    elif callable(predicate):
        result = predicate(frame)
    else:
        result = predicate
    return _as_mask(result, len(frame), f"{label}: the {axis} filter")


def _as_mask(result: Any, n: int, what: str) -> np.ndarray:
    if isinstance(result, da.Array):
        result = result.compute(scheduler=scheduler())
    if isinstance(result, pd.Series | pd.Index):
        if not pd.api.types.is_bool_dtype(result.dtype):
            raise ValueError(f"{what} gave dtype {result.dtype}; expected booleans")
        if result.isna().any():
            raise ValueError(f"{what} gave missing values; expected True or False for every entry")
        result = result.to_numpy(dtype=bool)
    mask = np.asarray(result)
    if mask.dtype != bool:
        raise ValueError(f"{what} gave dtype {mask.dtype}; expected a boolean mask")
    mask = mask.ravel() if mask.ndim == 2 and 1 in mask.shape else mask
    if mask.shape != (n,):
        raise ValueError(f"{what} gave a mask of shape {mask.shape}; expected ({n},)")
    return mask


def filter_table(
    sdata: SpatialData,
    table_name: str,
    obs: Predicate | None = None,
    var: Predicate | None = None,
    X: Callable[[Any], Any] | None = None,
    *,
    propagate: bool = True,
) -> SpatialData:
    """Filter a table by predicates on ``obs``, ``var`` and ``X``, and its shapes/points to the surviving rows.

    Parameters
    ----------
    sdata
        The SpatialData holding the table. It is not modified.
    table_name
        The table to filter.
    obs, var
        Row (``obs``) or column (``var``) filter: a boolean mask (array or Series, taken positionally), a
        callable on the DataFrame returning one, or a query string evaluated with ``DataFrame.eval`` (e.g.
        ``"cell_type == 'tumour' and area > 20"``; backquote column names with spaces).
    X
        A callable on ``table.X`` (sparse or dense, as stored) returning a row mask, e.g.
        ``lambda X: np.asarray(X.sum(1)).ravel() > 10``. Combined with ``obs`` by "and".
    propagate
        Also filter the shapes and points elements the table annotates to the instances whose rows survive
        (rows are matched by region and instance). Labels cannot be filtered and are kept unchanged. A shapes
        element left without any instance is dropped from the result (a shapes element needs at least one
        geometry), with a warning. The table keeps its ``region`` list.

    Returns
    -------
    SpatialData
        A new object sharing every element that is not filtered (unloaded elements stay unloaded).

    Raises
    ------
    ValueError
        A predicate that is not a boolean mask of the right length, or a query that cannot be evaluated.
    """
    if sdata.kind_of(table_name) != "tables":
        raise ValueError(f"{table_name!r} is a {sdata.kind_of(table_name)} element, not a table")
    table = sdata[table_name]
    label = f"table {table_name!r}"
    rows = np.ones(table.n_obs, dtype=bool)
    if obs is not None:
        rows &= _mask(obs, table.obs, "obs", label)
    if X is not None:
        if not callable(X):
            raise ValueError(f"{label}: X must be a callable on the matrix returning a row mask")
        rows &= _as_mask(X(table.X), table.n_obs, f"{label}: the X filter")
    cols = np.ones(table.n_vars, dtype=bool) if var is None else _mask(var, table.var, "var", label)
    new_table = table[rows, cols].copy()

    out = sdata.subset(list(sdata), filter_tables=False, include_orphan_tables=True)
    regions, region_key, instance_key = get_table_keys(table)
    dropped: list[str] = []
    if propagate and regions is not None:
        by_region = _region_rows(new_table, region_key, instance_key)
        for name in regions:
            if name not in sdata or not get_kind_protocol(sdata.kind_of(name)).filterable:
                continue
            element = sdata[name]
            ids = by_region[name].ids if name in by_region else pd.Index([])
            if not get_kind_protocol(sdata.kind_of(name)).lazy_rows:  # shapes: take rows
                index, ids = comparable_ids(plain_ids(element.index), ids)
                new = _take_shapes(element, np.flatnonzero(index.isin(ids)))
            else:
                key = points_instance_key(element, name)
                new = element[_points_isin(element, key, ids)]
                copy_meta(element, new)
            if new is None:
                del out[name]
                dropped.append(name)
            else:
                out.replace(name, new)
    if dropped:
        warnings.warn(
            f"filter_table: no instance of shapes element(s) {dropped} survives the filter of {label}; they are "
            "left out of the result",
            UserWarning,
            stacklevel=2,
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not elements of this SpatialData")
        warnings.filterwarnings("ignore", message=".*match no instance of")  # as in the input: said there
        out.replace(table_name, new_table)
    return out
