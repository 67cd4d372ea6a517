"""Tables: ``anndata.AnnData`` objects, optionally annotating regions (labels or shapes elements).

Which elements a table annotates is recorded in ``adata.uns["spatialdata_attrs"]`` (docs/format.md §7.2)::

    {"region": "cells" | ["cells", "nuclei"], "region_key": "region", "instance_key": "cell_id"}

``obs[region_key]`` (categorical) says which element each row annotates and ``obs[instance_key]`` the instance
id within it (label value or shapes index label). A table without the entry annotates nothing (an *orphan*
table) and is valid. Tables also follow the naming rules of docs/format.md §1.5 for their column and slot
keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_integer_dtype, is_object_dtype, is_string_dtype

from tissuestack.elements._naming import name_problem
from tissuestack.errors import ValidationError

__all__ = [
    "INSTANCE_KEY",
    "REGION_KEY",
    "REGION_KEY_KEY",
    "TABLE_ATTRS_KEY",
    "TableModel",
    "get_table_keys",
    "set_table_annotates",
    "table_rows",
]

#: key of the annotation metadata in ``adata.uns``
TABLE_ATTRS_KEY = "spatialdata_attrs"
REGION_KEY = "region"
REGION_KEY_KEY = "region_key"
INSTANCE_KEY = "instance_key"

_SHOW = 5
_KEYED_SLOTS = ("obsm", "obsp", "varm", "varp", "uns", "layers")
# integer dtypes the reference implementation accepts for instance ids; narrower ones are widened by parse
_WIDEN_INT = {np.dtype("int8"): np.dtype("int16"), np.dtype("uint8"): np.dtype("uint16")}


def _label(name: str | None) -> str:
    return f"table {name!r}" if name else "table"


def _shown(values: Iterable[Any], total: int) -> str:
    text = ", ".join(repr(v) for v in values)
    return text + (", ..." if total > _SHOW else "")


# ------------------------------------------------------------------------------------------------------------
# annotation keys
# ------------------------------------------------------------------------------------------------------------


def _regions_as_list(region: Any) -> list[Any] | None:
    if region is None:
        return None
    if isinstance(region, str):
        return [region]
    if isinstance(region, np.ndarray):
        return region.ravel().tolist()
    if isinstance(region, Iterable):
        return list(region)
    return [region]


def get_table_keys(adata: ad.AnnData) -> tuple[list[str] | None, str | None, str | None]:
    """What a table annotates: ``(regions, region_key, instance_key)``.

    Returns
    -------
    tuple
        The annotated element names as a list (a single region gives a one-item list), the ``obs`` column with
        the region of each row and the ``obs`` column with the instance ids; ``(None, None, None)`` for a table
        that annotates nothing.
    """
    return table_keys_from_uns(adata.uns)


def table_keys_from_uns(uns: Mapping[str, Any]) -> tuple[list[str] | None, str | None, str | None]:
    """:func:`get_table_keys` from a table's ``uns`` mapping alone (e.g. read from a store without the table)."""
    attrs = uns.get(TABLE_ATTRS_KEY)
    if not isinstance(attrs, Mapping):
        return None, None, None
    return (
        _regions_as_list(attrs.get(REGION_KEY)),
        attrs.get(REGION_KEY_KEY),
        attrs.get(INSTANCE_KEY),
    )


def _normalize_keys(
    region: Any, region_key: Any, instance_key: Any, label: str, *, from_uns: bool = False
) -> tuple[str | list[str], str, str] | None:
    """Check the three annotation keys; ``None`` when none is given. Raises on a partial or malformed set.

    New keys (``from_uns=False``) must name valid elements; stored keys (``from_uns=True``) need only be
    strings, since the reference implementation does not check region names either.
    """
    given = {REGION_KEY: region, REGION_KEY_KEY: region_key, INSTANCE_KEY: instance_key}
    missing = [k for k, v in given.items() if v is None]
    if len(missing) == 3:
        return None
    if missing:
        present = [k for k in given if k not in missing]
        where = f"uns[{TABLE_ATTRS_KEY!r}]: " if from_uns else ""
        raise ValidationError(
            f"{label}: {where}region, region_key and instance_key must be given together (or none of them); got "
            f"{', '.join(present)} without {', '.join(missing)}"
        )
    for key, value in ((REGION_KEY_KEY, region_key), (INSTANCE_KEY, instance_key)):
        if not isinstance(value, str) or not value:
            raise ValidationError(f"{label}: {key} must be a non-empty column name (str), got {value!r}")
    if region_key == instance_key:
        raise ValidationError(
            f"{label}: region_key and instance_key are both {region_key!r}; expected two different obs columns"
        )
    regions = _regions_as_list(region)
    if not regions:
        raise ValidationError(f"{label}: region is empty; expected one or more element names")
    for value in regions:
        problem = name_problem(value)
        if from_uns and isinstance(value, str) and value:
            problem = None
        if problem is not None:
            raise ValidationError(f"{label}: region {value!r} is not a valid element name: it {problem}")
    dup = pd.Index(regions)
    dup = dup[dup.duplicated()].unique().tolist()
    if dup:
        raise ValidationError(f"{label}: region lists {dup} more than once; expected distinct element names")
    out_region: str | list[str] = region if isinstance(region, str) else [str(r) for r in regions]
    return out_region, region_key, instance_key


# ------------------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------------------


class TableModel:
    """Parse and validate tables (``anndata.AnnData``) and their annotation metadata."""

    kind = "tables"
    ATTRS_KEY = TABLE_ATTRS_KEY

    @classmethod
    def parse(
        cls,
        adata: ad.AnnData,
        *,
        region: str | Sequence[str] | None = None,
        region_key: str | None = None,
        instance_key: str | None = None,
        name: str | None = None,
    ) -> ad.AnnData:
        """Set the annotation metadata of a table and validate it. **Modifies ``adata`` in place.**

        Parameters
        ----------
        adata
            The table. It is modified in place and returned (not copied).
        region
            Name(s) of the annotated labels/shapes element(s).
        region_key
            ``obs`` column telling which element each row annotates. When ``region`` is a single name and the
            column does not exist, it is created with that name in every row. It is converted to categorical.
        instance_key
            ``obs`` column with the instance id of each row within its element (integer, string or categorical;
            ``int8``/``uint8`` are widened to ``int16``/``uint16``, which the reference implementation requires).
        name
            Table name, used in error messages only.

        All three of ``region``, ``region_key`` and ``instance_key`` are given together, and replace any
        existing metadata. With none of them the keys already in ``uns`` (if any) are used (so the region column
        is made categorical as well); a table without them annotates nothing.

        Returns
        -------
        anndata.AnnData
            ``adata`` itself.

        Raises
        ------
        ValidationError
            If the keys are incomplete or the table is invalid. ``adata`` is then left as it was.
        """
        label = _label(name)
        if not isinstance(adata, ad.AnnData):
            raise ValidationError(f"{label}: expected an anndata.AnnData, got {type(adata).__name__}")
        keys = _normalize_keys(region, region_key, instance_key, label)
        if keys is None and isinstance(adata.uns.get(TABLE_ATTRS_KEY), Mapping):
            attrs = adata.uns[TABLE_ATTRS_KEY]
            keys = _normalize_keys(
                attrs.get(REGION_KEY),
                attrs.get(REGION_KEY_KEY),
                attrs.get(INSTANCE_KEY),
                label,
                from_uns=True,
            )
        if keys is None:
            cls.validate(adata, name=name)
            return adata
        region, region_key, instance_key = keys
        with _restore_on_error(adata, (region_key, instance_key)):
            # (always go through adata.obs: assigning to a view turns it into an actual AnnData in place)
            if region_key not in adata.obs.columns:
                if not isinstance(region, str):
                    raise ValidationError(
                        f"{label}: obs column {region_key!r} (region_key) is missing; with several regions it must "
                        "say which region each row belongs to"
                    )
                codes = np.zeros(adata.n_obs, dtype=np.int8)
                adata.obs[region_key] = pd.Categorical.from_codes(codes, categories=[region])
            elif not isinstance(adata.obs[region_key].dtype, pd.CategoricalDtype):
                adata.obs[region_key] = adata.obs[region_key].astype("category")
            if instance_key in adata.obs.columns:
                dtype = adata.obs[instance_key].dtype
                if isinstance(dtype, np.dtype) and dtype in _WIDEN_INT:
                    adata.obs[instance_key] = adata.obs[instance_key].astype(_WIDEN_INT[dtype])
            adata.uns[TABLE_ATTRS_KEY] = {
                REGION_KEY: region,
                REGION_KEY_KEY: region_key,
                INSTANCE_KEY: instance_key,
            }
            cls.validate(adata, name=name)
        return adata

    @classmethod
    def validate(cls, adata: ad.AnnData, name: str | None = None) -> None:
        """Check the annotation metadata and the naming rules of a table (vectorized over all rows).

        Annotation (when ``uns["spatialdata_attrs"]`` is present): the ``region_key`` column exists, is
        categorical and holds only names listed in ``region`` (regions without rows are allowed); the
        ``instance_key`` column exists, has no missing values and an integer, string or categorical dtype; each
        (region, instance id) pair occurs once.

        Names (docs/format.md §1.5): ``obs`` and ``var`` column names follow the element naming rule, are not
        ``_index`` and are unique ignoring case; keys of ``obsm``, ``obsp``, ``varm``, ``varp``, ``uns`` and
        ``layers`` follow the rule and are unique ignoring case within each slot.

        Raises
        ------
        ValidationError
            On the first problem found.
        """
        label = _label(name)
        if not isinstance(adata, ad.AnnData):
            raise ValidationError(f"{label}: expected an anndata.AnnData, got {type(adata).__name__}")
        _validate_annotation(adata, label)
        _validate_names(adata, label)


def set_table_annotates(
    adata: ad.AnnData,
    region: str | Sequence[str] | None,
    region_key: str | None,
    instance_key: str | None,
    name: str | None = None,
) -> None:
    """Retarget a table to other element(s), in place.

    Sets ``uns["spatialdata_attrs"]`` and validates. When the table annotates exactly one element, keeps its
    ``region_key`` column and ``region`` is a single new name, the values of that column are renamed to the new
    name (so ``set_table_annotates(t, "cells_v2", "region", "cell_id")`` follows a renamed element). With all
    three arguments ``None`` the table stops annotating anything (the ``uns`` entry is removed).

    Raises
    ------
    ValidationError
        If the new annotation is incomplete or invalid; ``adata`` is then left as it was.
    """
    label = _label(name)
    if not isinstance(adata, ad.AnnData):
        raise ValidationError(f"{label}: expected an anndata.AnnData, got {type(adata).__name__}")
    keys = _normalize_keys(region, region_key, instance_key, label)
    if keys is None:
        adata.uns.pop(TABLE_ATTRS_KEY, None)
        TableModel.validate(adata, name=name)
        return
    region, region_key, instance_key = keys
    old_regions, old_region_key, _ = get_table_keys(adata)
    new_regions = _regions_as_list(region)
    with _restore_on_error(adata, (region_key, instance_key)):
        if (
            old_regions is not None
            and len(old_regions) == 1
            and len(new_regions) == 1
            and new_regions[0] != old_regions[0]
            and region_key == old_region_key
            and region_key in adata.obs.columns
        ):
            adata.obs[region_key] = _rename_region(adata.obs[region_key], old_regions[0], new_regions[0])
        TableModel.parse(adata, region=region, region_key=region_key, instance_key=instance_key, name=name)


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------


@contextmanager
def _restore_on_error(adata: ad.AnnData, columns: Iterable[str]) -> Iterator[None]:
    """Snapshot ``uns[spatialdata_attrs]`` and some ``obs`` columns; put them back if the block raises."""
    columns = list(dict.fromkeys(columns))
    had_attrs = TABLE_ATTRS_KEY in adata.uns
    attrs = adata.uns.get(TABLE_ATTRS_KEY)
    saved = {c: adata.obs[c] for c in columns if c in adata.obs.columns}
    try:
        yield
    except BaseException:
        for column in columns:
            if column in saved:
                adata.obs[column] = saved[column]
            elif column in adata.obs.columns:
                del adata.obs[column]
        if had_attrs:
            adata.uns[TABLE_ATTRS_KEY] = attrs
        else:
            adata.uns.pop(TABLE_ATTRS_KEY, None)
        raise


def _rename_region(column: pd.Series, old: str, new: str) -> pd.Series:
    """Replace ``old`` by ``new`` in a region column (categorical: renames the category, no per-row work)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        categories = column.cat.categories
        if old not in categories:
            return column
        if new not in categories:
            return column.cat.rename_categories({old: new})
    values = column.astype(object).where(column != old, new)
    return values.astype("category")


def _is_int(dtype: Any) -> bool:
    return is_integer_dtype(dtype) and not is_bool_dtype(dtype) and not isinstance(dtype, pd.CategoricalDtype)


def _instance_dtype_problem(column: pd.Series) -> str | None:
    """Why the dtype of an instance id column is not allowed, or ``None``."""
    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        cats = dtype.categories
        if _is_int(cats.dtype):
            return None
        if is_object_dtype(cats.dtype) or is_string_dtype(cats.dtype):
            inferred = pd.api.types.infer_dtype(cats, skipna=True)
            return None if inferred in ("string", "empty") else f"categorical of {inferred} values"
        return f"categorical of {cats.dtype}"
    if _is_int(dtype):
        return None
    if is_object_dtype(dtype):
        inferred = pd.api.types.infer_dtype(column, skipna=True)
        return None if inferred in ("string", "empty") else f"object holding {inferred} values"
    if is_string_dtype(dtype) and not is_bool_dtype(dtype):
        return None
    return str(dtype)


def _validate_annotation(adata: ad.AnnData, label: str) -> None:
    if TABLE_ATTRS_KEY not in adata.uns:
        return
    attrs = adata.uns[TABLE_ATTRS_KEY]
    if not isinstance(attrs, Mapping):
        raise ValidationError(
            f"{label}: uns[{TABLE_ATTRS_KEY!r}] must be a dict with region, region_key and instance_key, got "
            f"{type(attrs).__name__}"
        )
    keys = _normalize_keys(
        attrs.get(REGION_KEY), attrs.get(REGION_KEY_KEY), attrs.get(INSTANCE_KEY), label, from_uns=True
    )
    if keys is None:  # all three null: the table annotates nothing
        return
    region, region_key, instance_key = keys
    regions = _regions_as_list(region)
    obs = adata.obs

    if region_key not in obs.columns:
        raise ValidationError(
            f"{label}: obs column {region_key!r} (region_key) is missing; expected a categorical column naming "
            f"the annotated element of each row, one of {regions}"
        )
    column = obs[region_key]
    if not isinstance(column.dtype, pd.CategoricalDtype):
        raise ValidationError(
            f"{label}: obs column {region_key!r} (region_key) has dtype {column.dtype}, expected categorical "
            "(TableModel.parse converts it)"
        )
    codes = column.cat.codes.to_numpy()
    n_null = int((codes < 0).sum())
    if n_null:
        raise ValidationError(
            f"{label}: obs column {region_key!r} (region_key) has {n_null} missing values; expected one of "
            f"{regions} in every row"
        )
    used = column.cat.categories[np.unique(codes)]
    unknown = used[~used.isin(regions)].tolist()
    if unknown:
        raise ValidationError(
            f"{label}: obs column {region_key!r} (region_key) has values {_shown(unknown[:_SHOW], len(unknown))} "
            f"that are not in region {regions}"
        )

    if instance_key not in obs.columns:
        raise ValidationError(
            f"{label}: obs column {instance_key!r} (instance_key) is missing; expected the instance id of each row"
        )
    ids = obs[instance_key]
    problem = _instance_dtype_problem(ids)
    if problem is not None:
        raise ValidationError(
            f"{label}: obs column {instance_key!r} (instance_key) has dtype {problem}, expected an integer or "
            "string dtype, or categorical of integers or strings"
        )
    nulls = ids.isna().to_numpy()
    if nulls.any():
        raise ValidationError(
            f"{label}: obs column {instance_key!r} (instance_key) has {int(nulls.sum())} missing values, at obs "
            f"{_shown(obs.index[nulls][:_SHOW].tolist(), int(nulls.sum()))}; expected an id in every row"
        )
    dup = obs.duplicated(subset=[region_key, instance_key], keep="first").to_numpy()
    if dup.any():
        pairs = obs.loc[dup, [region_key, instance_key]].drop_duplicates()
        shown = list(
            zip(pairs[region_key].tolist()[:_SHOW], pairs[instance_key].tolist()[:_SHOW], strict=True)
        )
        raise ValidationError(
            f"{label}: {int(dup.sum())} rows repeat a ({region_key}, {instance_key}) pair already seen, e.g. "
            f"{_shown(shown, len(pairs))}; expected each instance of each region at most once"
        )


def _validate_names(adata: ad.AnnData, label: str) -> None:
    for slot in ("obs", "var"):
        columns = list(getattr(adata, slot).columns)
        for column in columns:
            problem = name_problem(column)
            if problem is not None:
                raise ValidationError(f"{label}: {slot} column {column!r} is not a valid name: it {problem}")
            if column == "_index":
                raise ValidationError(
                    f"{label}: {slot} column '_index' is reserved by the AnnData on-disk format; rename it"
                )
        _check_case_unique(columns, f"{slot} column", label)
    for slot in _KEYED_SLOTS:
        keys = list(getattr(adata, slot).keys())
        for key in keys:
            problem = name_problem(key)
            if problem is not None:
                raise ValidationError(f"{label}: {slot} key {key!r} is not a valid name: it {problem}")
        _check_case_unique(keys, f"{slot} key", label)


def _check_case_unique(names: list[str], what: str, label: str) -> None:
    seen: dict[str, str] = {}
    for name in names:
        key = name.lower()
        if key in seen:
            raise ValidationError(
                f"{label}: {what}s {seen[key]!r} and {name!r} clash ignoring case; expected keys unique "
                "ignoring case (stores on case-insensitive file systems could not hold both)"
            )
        seen[key] = name


def table_rows(
    table: ad.AnnData, rows: np.ndarray, *, regions: Sequence[str] | None = None, name: str | None = None
) -> ad.AnnData:
    """A copy of some rows of an annotating table, linked to the regions it still annotates.

    ``rows`` is a boolean mask or positions (the copy follows their order). ``regions`` defaults to the regions
    of ``table`` that keep at least one row, in the table's order. Used by subsets, queries and joins.
    """
    region, region_key, instance_key = get_table_keys(table)
    if region is None:
        raise ValidationError(f"table {name!r} annotates nothing; it has no regions to keep")
    sub = table[rows].copy()
    values = sub.obs[region_key].astype(object)
    kept = list(regions) if regions is not None else [r for r in region if (values == r).any()]
    if not kept:
        raise ValidationError(f"table {name!r}: no row is left to annotate any region")
    sub.obs[region_key] = pd.Categorical(values, categories=kept)
    TableModel.parse(
        sub,
        region=kept if len(kept) > 1 else kept[0],
        region_key=region_key,
        instance_key=instance_key,
        name=name,
    )
    return sub
