"""``tissuestack.aggregate``: values of one element summarised per region of another, as an AnnData table.

The front end resolves ``values`` and ``by`` (element objects or names in ``sdata``), validates the common
arguments, composes the transformation from the intrinsic frame of ``values`` to the intrinsic frame of ``by``
through ``target_coordinate_system``, and calls the implementation registered for the pair of element kinds
(:mod:`tissuestack.ops._aggregate_pairs`). Its result becomes an AnnData whose rows are the instances of ``by``
in the order of ``by`` and whose columns are the categories of a categorical value key or the numeric value keys.

Regions and values are compared in the intrinsic frame of ``by``: each implementation maps the cheaper side
(usually points into the regions' frame, folded into its kernels). Points are streamed partition by partition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import dask
import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp

from tissuestack._compute import scheduler, warm_numba
from tissuestack._container import SpatialData
from tissuestack.elements import (
    SPATIAL_KINDS,
    ElementKind,
    TableModel,
    get_axes,
    get_kind_protocol,
    get_meta,
    get_table_keys,
    kind_of,
    points_axes,
    raster_levels,
)
from tissuestack.errors import TransformationError, ValidationError
from tissuestack.ops._aggregate_pairs import AGG_FUNCS, PairInput, PairResult, get_pair
from tissuestack.ops._joins import element_instances
from tissuestack.ops._resolve import _name_in, resolve_element
from tissuestack.transforms import AffineMap, BaseTransformation, affine_map

__all__ = ["INSTANCE_KEY", "REGION_KEY", "aggregate", "store_aggregation"]

#: obs column of the result holding the instance ids of ``by`` with their original dtype
INSTANCE_KEY = "instance_id"
#: obs column (categorical) naming the annotated element, when the table annotates one
REGION_KEY = "region"
_CATEGORY_FUNCS = ("count", "sum")
# relative tolerance under which a composed values -> by map is taken to be exactly the identity (both elements
# carrying the same scale, e.g. 0.2125 * (1 / 0.2125) = 1.0000000000000002)
_SNAP = 1e-12


# ------------------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------------------


def _resolve(
    element: Any, sdata: SpatialData | None, role: str, cs: str
) -> tuple[Any, str | None, BaseTransformation]:
    if isinstance(element, str):
        name: str | None = element
        if sdata is not None and name not in sdata:
            known = ", ".join(repr(n) for kind in SPATIAL_KINDS for n in getattr(sdata, kind))
            raise KeyError(f"{role}={name!r}: no such element in sdata (spatial elements: {known})")
    elif sdata is not None:
        try:
            name = _name_in(sdata, element)
        except KeyError:
            raise KeyError(
                f"the {role} element passed is not an element of the given sdata; pass its name, or omit sdata"
            ) from None
    else:
        name = None
    obj, transformation = resolve_element(element, cs, sdata)
    return obj, name, transformation


def _spatial_axes(element: Any, kind: ElementKind) -> tuple[str, ...]:
    """The spatial axes a pair works in, in x, y[, z] order (shapes: always the plane x, y)."""
    if kind.lazy_rows:  # points
        return points_axes(element)
    if kind.in_memory:  # shapes
        return ("x", "y")
    dims = get_axes(element)
    return tuple(a for a in ("x", "y", "z") if a in dims)


def _value_columns(element: Any, kind: ElementKind) -> pd.Series | None:
    """Column name -> dtype of the columns a value key may name (``None``: the kind has no columns)."""
    if kind.lazy_rows:  # points
        return element.dtypes  # coordinates too (e.g. the mean x per region)
    if kind.in_memory:  # shapes
        return element.dtypes.drop(element.geometry.name)
    return None


def _is_numeric(dtype: Any) -> bool:
    if isinstance(dtype, pd.CategoricalDtype):
        return False
    return bool(pd.api.types.is_numeric_dtype(dtype))  # includes bool


def _as_keys(value_key: str | Sequence[str] | None) -> list[str] | None:
    if value_key is None:
        return None
    keys = [value_key] if isinstance(value_key, str) else list(value_key)
    if not keys:
        raise ValueError("value_key is empty; pass a column name, a list of column names, or None")
    for k in keys:
        if not isinstance(k, str):
            raise TypeError(f"value_key entries must be strings, got {type(k).__name__} ({k!r})")
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"value_key lists {dup} more than once")
    return keys


def _check_value_keys(
    keys: list[str] | None,
    values: Any,
    kind: ElementKind,
    label: str,
    agg_func: str,
    fractions: bool,
) -> tuple[list[str] | None, bool]:
    """Validated value keys (defaults filled in) and whether they name one categorical column."""
    if kind.has_channels:  # images: the keys name channels
        if keys is None:
            return None, False
        level = raster_levels(values)[0]
        channels = list(level.coords["c"].values) if "c" in level.coords else []
        names = [str(c) for c in channels]
        unknown = [k for k in keys if k not in names]
        if unknown:
            raise KeyError(f"value_key {unknown} not found among the channels of {label}; channels: {names}")
        return keys, False
    columns = _value_columns(values, kind)
    if columns is None:  # labels as values: the implementation interprets the keys
        return keys, False
    if keys is None:
        if kind.lazy_rows:  # points: the feature key by default
            feature = get_meta(values).feature_key
            if feature is not None and feature in columns.index:
                keys = [feature]
        if keys is None:
            if agg_func not in _CATEGORY_FUNCS:
                raise ValueError(
                    f"without value_key, aggregating {label} counts its {kind.name} per region: "
                    f"agg_func must be 'count' or 'sum', got {agg_func!r}; "
                    "pass value_key to aggregate a column"
                )
            return None, False
    for key in keys:
        if key not in columns.index:
            available = ", ".join(repr(c) for c in columns.index) or "none"
            raise KeyError(f"value_key {key!r} is not a column of {label}; available columns: {available}")
    categorical = [k for k in keys if isinstance(columns[k], pd.CategoricalDtype)]
    if categorical:
        if len(keys) > 1:
            raise ValueError(
                f"value_key {keys}: a categorical column ({categorical[0]!r}) gives one column per category, so "
                "it must be the only value key; aggregate other columns in a separate call"
            )
        key = categorical[0]
        if agg_func not in _CATEGORY_FUNCS:
            raise ValueError(
                f"agg_func={agg_func!r} is not defined for the categorical column {key!r} of {label}; use 'count' "
                "or 'sum' (both count the elements of each category per region)"
            )
        if fractions and agg_func == "count":
            raise ValueError(
                f"fractions=True with the categorical column {key!r} needs agg_func='sum' (the summed overlap "
                "fractions per category); 'count' would ignore the fractions"
            )
        return keys, True
    for key in keys:
        if not _is_numeric(columns[key]):
            raise ValueError(
                f"column {key!r} of {label} has dtype {columns[key]}, which agg_func={agg_func!r} cannot "
                "aggregate: expected a numeric column, or a single categorical column to count per category "
                "(convert strings with .astype('category'))"
            )
    return keys, False


def _values_from_table(
    values: Any,
    name: str | None,
    kind: ElementKind,
    keys: list[str] | None,
    sdata: SpatialData | None,
    table: str,
) -> Any:
    """A shallow copy of shapes ``values`` with the value keys taken from a table annotating them."""
    from tissuestack.ops._values import get_values

    if not kind.in_memory:  # shapes
        raise ValueError(f"values_table is supported for shapes values only, not {kind.name}")
    if sdata is None or name is None:
        raise ValueError("values_table needs sdata and values given by name (the table refers to it by name)")
    if keys is None:
        raise ValueError("values_table needs value_key (the obs columns or var names to aggregate)")
    frame = get_values(keys, sdata=sdata, element_name=name, table_name=table)
    frame = frame.reindex(pd.Index(values.index))  # instances without a table row get missing values
    out = values.copy(deep=False)
    for key in keys:
        if key in out.columns:
            raise ValueError(f"value_key {key!r} is both a column of shapes {name!r} and in table {table!r}")
        out[key] = (
            frame[key].to_numpy()
            if not isinstance(frame[key].dtype, pd.CategoricalDtype)
            else frame[key].values
        )
    return out


# ------------------------------------------------------------------------------------------------------------
# transformations
# ------------------------------------------------------------------------------------------------------------


def _values_to_by(
    values_t: BaseTransformation,
    values_axes: tuple[str, ...],
    by_t: BaseTransformation,
    by_axes: tuple[str, ...],
    values_label: str,
    by_label: str,
    cs: str,
) -> tuple[AffineMap, AffineMap | None]:
    """The affine map intrinsic values -> intrinsic by (through ``cs``) and its inverse when it exists."""
    natural = by_t.output_axes(by_axes)
    bm = affine_map(by_t, by_axes, natural)
    if bm.inverse is None:
        raise TransformationError(
            f"the transformation of {by_label} to coordinate system {cs!r} is not invertible on its axes "
            f"{by_axes}, so values cannot be mapped into its regions"
        )
    inv, c = bm.inverse
    produced = values_t.output_axes(values_axes)
    missing = [a for a in bm.inv_axes if a not in produced]
    if missing:
        raise ValueError(
            f"{values_label} (axes {values_axes}) has no {'/'.join(missing)} coordinate in {cs!r}, which "
            f"{by_label} (axes {by_axes}) needs; a 2D element cannot be aggregated by 3D regions"
        )
    vm = affine_map(values_t, values_axes, bm.inv_axes)
    linear = inv @ vm.linear
    offset = inv @ vm.offset + c
    # the same axes on both sides and (up to rounding) no change: make it exactly the selection of those axes
    selection = np.array([[float(v == b) for v in values_axes] for b in by_axes])
    scale = max(1.0, float(np.abs(vm.offset).max(initial=0.0)), float(np.abs(c).max(initial=0.0)))
    if np.allclose(linear, selection, rtol=0, atol=_SNAP) and np.all(np.abs(offset) <= _SNAP * scale):
        linear = selection
        offset = np.zeros(len(by_axes))
    square = linear.shape[0] == linear.shape[1]
    inverse = None
    if square and np.linalg.matrix_rank(linear) == linear.shape[0]:
        li = np.linalg.inv(linear)
        inverse = (li, -li @ offset)
    forward = AffineMap(values_axes, by_axes, linear, offset, inverse, by_axes)
    backward = None
    if inverse is not None:
        backward = AffineMap(by_axes, values_axes, inverse[0], inverse[1], (linear, offset), values_axes)
    return forward, backward


# ------------------------------------------------------------------------------------------------------------
# rows
# ------------------------------------------------------------------------------------------------------------


def _labels_ids(by: Any) -> pd.Index:
    """Sorted distinct values of a labels raster (full resolution), chunk by chunk in O(n) each."""
    from tissuestack.kernels._points_in_regions import union_labels, unique_labels

    data = raster_levels(by)[0].data
    if not isinstance(data, da.Array):
        return pd.Index(unique_labels(np.asarray(data)))
    parts = [dask.delayed(unique_labels)(block) for block in data.to_delayed().ravel()]
    while len(parts) > 1:
        parts = [dask.delayed(union_labels)(*parts[i : i + 16]) for i in range(0, len(parts), 16)]
    (ids,) = dask.compute(parts[0], scheduler=scheduler())
    return pd.Index(ids)


def _by_instances(by: Any, kind: ElementKind, name: str | None) -> pd.Index:
    """Instance ids of ``by`` in the order of ``by``; for labels the sorted values without the background 0."""
    if kind.is_raster:  # labels
        ids = _labels_ids(by)
        return ids[ids != 0]
    return element_instances(by, name=name)


def _assemble(
    result: PairResult,
    ids: pd.Index,
    by_name: str | None,
    uns: dict[str, Any],
    pair: str,
) -> ad.AnnData:
    n = len(ids)
    columns = [str(c) for c in result.columns]
    X = result.X
    if sp.issparse(X):
        X = sp.csr_matrix(X)
    else:
        X = np.asarray(X)
        if X.dtype.kind not in "fc":
            X = X.astype(np.float64)
    if X.ndim != 2 or X.shape != (n, len(columns)):
        raise RuntimeError(
            f"the {pair} aggregation returned X of shape {X.shape}, expected ({n}, {len(columns)}) "
            "(one row per region, one column per name); this is a bug"
        )
    obs = pd.DataFrame(index=pd.Index(ids.astype(str), dtype=object))
    obs[INSTANCE_KEY] = np.asarray(ids)
    if result.obs is not None:
        extra = result.obs.set_axis(obs.index, axis=0)
        clash = [c for c in extra.columns if c in (INSTANCE_KEY, REGION_KEY)]
        if clash:
            raise RuntimeError(f"the {pair} aggregation returned reserved obs columns {clash}; this is a bug")
        obs = pd.concat([obs, extra], axis=1)
    var = pd.DataFrame(index=pd.Index(columns, dtype=object))
    if result.var is not None:
        var = pd.concat([var, result.var.set_axis(var.index, axis=0)], axis=1)
    adata = ad.AnnData(X=X, obs=obs, var=var, uns={**result.uns, "aggregation": uns})
    if by_name is not None:
        _annotate(adata, by_name)
    return adata


def _annotate(adata: ad.AnnData, by_name: str) -> None:
    adata.obs[REGION_KEY] = pd.Categorical.from_codes(
        np.zeros(adata.n_obs, dtype=np.int8), categories=[by_name]
    )
    TableModel.parse(adata, region=by_name, region_key=REGION_KEY, instance_key=INSTANCE_KEY)


# ------------------------------------------------------------------------------------------------------------
# public
# ------------------------------------------------------------------------------------------------------------


def aggregate(
    values: Any,
    by: Any,
    *,
    sdata: SpatialData | None = None,
    value_key: str | Sequence[str] | None = None,
    agg_func: str = "sum",
    fractions: bool = False,
    target_coordinate_system: str = "global",
    values_table: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> ad.AnnData:
    """Aggregate the ``values`` element per region (instance) of the ``by`` element.

    Parameters
    ----------
    values
        The element to aggregate (points, shapes, image or labels), or its name in ``sdata``.
    by
        The regions: a shapes (circles, polygons, multipolygons) or labels element, or its name in ``sdata``.
    sdata
        Where names are looked up; with it, transformations may also go through other elements of its
        coordinate-system graph.
    value_key
        Points and shapes: a categorical column (one output column per category, counted per region), or one or
        more numeric columns (one output column each). Default: the points' feature key (e.g. the gene), else
        the number of elements per region (one column ``"count"``). Images: the channels to aggregate (default
        all).
    agg_func
        One of ``"sum"``, ``"mean"``, ``"min"``, ``"max"``, ``"count"``, ``"std"`` (sample standard deviation).
        A categorical column takes ``"count"`` or ``"sum"`` (the same counts; with ``fractions`` only
        ``"sum"``). Regions without values get 0 for ``sum``/``count`` and NaN for the others.
    fractions
        Shapes by shapes only: weight each value by the fraction of its area that lies in the region.
    target_coordinate_system
        The coordinate system in which ``values`` and ``by`` are compared. Both must reach it.
    values_table
        For shapes values: a table of ``sdata`` annotating ``values`` in which ``value_key`` is looked up (obs
        columns or var names) instead of the element's own columns.
    options
        Extra options for the implementation of the pair (see its documentation).

    Returns
    -------
    anndata.AnnData
        One row per instance of ``by`` in the order of ``by`` (shapes: row order; labels: sorted label values
        without the background 0); ``obs_names`` are the instance ids as strings and ``obs["instance_id"]``
        holds them with their original dtype. One column per category or value key (``var_names``). ``X`` is a
        sparse CSR matrix of counts for a categorical value key, else a dense float matrix. When ``by`` has a
        name (given by name, or an element of ``sdata``), the table annotates it (region ``by``, region key
        ``"region"``, instance key ``"instance_id"``), ready for ``sdata.tables[name] = table``; see also
        :func:`store_aggregation`. ``uns["aggregation"]`` records the arguments.

    Raises
    ------
    KeyError
        An unknown element name or value key (the message lists the available ones).
    ValueError
        An unsupported pair of element kinds, an unknown ``agg_func`` or one the pair does not support,
        ``fractions`` with a pair other than shapes by shapes, a non-numeric column with a numeric function.
    TransformationError, NoPathError
        When ``values`` or ``by`` cannot be placed in ``target_coordinate_system``.
    """
    warm_numba()  # every aggregation runs numba kernels: their one-time set-up overlaps reading the elements
    if agg_func not in AGG_FUNCS:
        raise ValueError(f"unknown agg_func {agg_func!r}; expected one of {', '.join(AGG_FUNCS)}")
    cs = target_coordinate_system
    values_el, values_name, values_t = _resolve(values, sdata, "values", cs)
    by_el, by_name, by_t = _resolve(by, sdata, "by", cs)
    if values_el is by_el:
        raise ValueError("values and by are the same element; aggregate an element by another one")
    vproto, bproto = kind_of(values_el), kind_of(by_el)
    vkind, bkind = vproto.name, bproto.name
    values_label = f"{vkind} element {values_name!r}" if values_name else f"the {vkind} values"
    by_label = f"{bkind} element {by_name!r}" if by_name else f"the {bkind} regions"
    if not bproto.has_areas:
        raise ValueError(f"by must be a shapes or labels element (the regions), got {by_label}")
    pair = f"{vkind} -> {bkind}"
    implementation = get_pair(vkind, bkind)
    if fractions and (vkind, bkind) != ("shapes", "shapes"):
        raise ValueError(
            f"fractions=True weights values by their area of overlap, which needs shapes values aggregated by "
            f"shapes; got {pair}"
        )
    keys = _as_keys(value_key)
    if values_table is not None:
        values_el = _values_from_table(values_el, values_name, vproto, keys, sdata, values_table)
    keys, _ = _check_value_keys(keys, values_el, vproto, values_label, agg_func, fractions)

    values_axes = _spatial_axes(values_el, vproto)
    by_axes = _spatial_axes(by_el, bproto)
    forward, backward = _values_to_by(values_t, values_axes, by_t, by_axes, values_label, by_label, cs)
    ids = _by_instances(by_el, bproto, by_name)

    request = PairInput(
        values=values_el,
        by=by_el,
        values_name=values_name or "values",
        by_name=by_name or "by",
        values_to_by=forward,
        by_to_values=backward,
        value_keys=keys,
        agg_func=agg_func,
        fractions=bool(fractions),
        by_instances=ids,
        options=dict(options or {}),
    )
    result = implementation(request)
    record: dict[str, Any] = {
        "values": values_name or "",
        "by": by_name or "",
        "agg_func": agg_func,
        "fractions": bool(fractions),
        "target_coordinate_system": cs,
    }
    if keys is not None:
        record["value_key"] = list(keys)
    return _assemble(result, ids, by_name, record, pair)


def store_aggregation(
    sdata: SpatialData,
    adata: ad.AnnData,
    by: str,
    table_name: str,
    *,
    overwrite: bool = False,
    write: bool = False,
) -> ad.AnnData:
    """Store an aggregation result in ``sdata`` as table ``table_name`` annotating element ``by``.

    Parameters
    ----------
    sdata
        The SpatialData object to store the table in.
    adata
        A result of :func:`aggregate` (its ``obs["instance_id"]`` holds the instance ids of ``by``).
    by
        Name of the shapes or labels element of ``sdata`` the rows refer to.
    table_name
        Name of the new table.
    overwrite
        Replace an existing table of that name (never an element of another kind).
    write
        Also write the table into the store backing ``sdata`` (``sdata.write_element``).

    Returns
    -------
    anndata.AnnData
        ``adata`` itself, now annotating ``by`` (region ``by``, region key ``"region"``, instance key
        ``"instance_id"``).

    Raises
    ------
    KeyError
        ``by`` is not an element of ``sdata``; ``table_name`` exists and ``overwrite`` is false.
    ValidationError
        ``by`` is not shapes or labels; ``adata`` has no ``"instance_id"`` column; shapes instance ids that are
        not in ``by``.
    """
    kind = sdata.kind_of(by)
    if not get_kind_protocol(kind).has_areas:
        raise ValidationError(f"an aggregation table annotates shapes or labels; {by!r} is a {kind} element")
    if INSTANCE_KEY not in adata.obs.columns:
        raise ValidationError(
            f"the table has no obs column {INSTANCE_KEY!r} with the instance ids of {by!r}; expected a result of "
            "tissuestack.aggregate"
        )
    if table_name in sdata:
        if not overwrite:
            raise KeyError(
                f"an element named {table_name!r} exists already; pass overwrite=True to replace it"
            )
        if sdata.kind_of(table_name) != "tables":
            raise KeyError(
                f"{table_name!r} is a {sdata.kind_of(table_name)} element; choose another table name"
            )
    if get_kind_protocol(kind).in_memory:  # shapes: their ids must be in the element
        ids = pd.Index(adata.obs[INSTANCE_KEY])
        known = pd.Index(sdata[by].index)
        if ids.dtype != known.dtype:
            ids, known = ids.astype(str), known.astype(str)
        missing = ids[~ids.isin(known)]
        if len(missing):
            raise ValidationError(
                f"{len(missing)} instance ids of the table are not in shapes {by!r} (first: "
                f"{missing[:5].tolist()}); was it aggregated by another element?"
            )
    regions, _, _ = get_table_keys(adata)
    if regions != [by]:
        _annotate(adata, by)
    sdata.tables[table_name] = adata
    if write:
        sdata.write_element(table_name, overwrite=overwrite)
    return adata
