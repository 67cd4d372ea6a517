"""Concatenate several SpatialData objects into one.

Semantics
---------
* Names. Element names must be unique (ignoring case) in the result.

  - A **dict** ``{key: sdata}`` with ``rename=True`` (default) renames every spatial element of ``sdata`` to
    ``f"{name}-{key}"``, whether or not it clashes.
  - A **list** with ``rename=True`` renames only the names that occur in more than one object (compared ignoring
    case), to ``f"{name}-{i}"`` with ``i`` the object's position in the list; other names are kept.
  - ``rename=False`` keeps every name and raises a ``ValidationError`` listing the clashing names.

  A renamed name that still clashes with another name raises as well.
* Tables. With ``concatenate_tables=True`` (default) tables keep their names and tables with the same name are
  concatenated (``anndata.concat``, outer join on ``var``: values of variables missing from a table are 0 in
  sparse matrices and missing (NaN) in dense ones; ``uns`` keys: the first value seen). Their ``region`` lists
  are merged. With ``concatenate_tables=False`` tables are named like the spatial elements.
  Every table that annotates a renamed element follows the rename: its ``region`` list and the values of its
  region column are updated (in a new AnnData sharing the data arrays of the original; ``obs`` is copied).
  Regions that are not elements of the table's own object are not renamed. Rows of tables merged together keep
  their obs names, suffixed with ``-{key}`` / ``-{i}`` when the names would repeat.
  Because clashing element names are renamed per object, each (region, instance id) pair of a merged table
  stays unique; this is checked and a ``ValidationError`` is raised when it does not hold (e.g. two tables
  annotate one element that is not in either object).
* Tables merged together must use the same ``region_key`` and ``instance_key`` obs columns, or the
  ``region_key``/``instance_key`` arguments name the columns of the result (each table's own columns are renamed
  to them). Tables that annotate nothing can only be merged with tables that annotate nothing.
* Coordinate systems are kept as they are (equal names merge). ``attrs`` are merged, later objects winning.
* Element objects are shared with the inputs, not copied (a renamed element is the same object under a new
  name; its metadata, such as transformations, is shared with the input too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from tissuestack._container import SpatialData
from tissuestack.elements import SPATIAL_KINDS, TableModel, get_table_keys
from tissuestack.elements._tables import TABLE_ATTRS_KEY
from tissuestack.errors import ValidationError

__all__ = ["concatenate"]


def _clashes(names_per_object: list[list[str]]) -> dict[str, list[str]]:
    """Lower-cased name -> the spellings of it, for names used by more than one object."""
    owners: dict[str, set[int]] = {}
    spellings: dict[str, list[str]] = {}
    for i, names in enumerate(names_per_object):
        for name in names:
            low = name.lower()
            owners.setdefault(low, set()).add(i)
            spellings.setdefault(low, [])
            if name not in spellings[low]:
                spellings[low].append(name)
    return {low: spellings[low] for low, who in owners.items() if len(who) > 1}


def _rename_maps(
    names_per_object: list[list[str]], suffixes: list[str], by_key: bool, rename: bool
) -> list[dict[str, str]]:
    if by_key and rename:
        return [{n: f"{n}-{s}" for n in names} for names, s in zip(names_per_object, suffixes, strict=True)]
    clashes = _clashes(names_per_object)
    if clashes and not rename:
        shown = sorted(name for spellings in clashes.values() for name in spellings)
        raise ValidationError(
            f"cannot concatenate: element names {shown} occur in more than one SpatialData object; pass "
            "rename=True (or a dict of objects) to rename them, or rename them first"
        )
    return [
        {n: f"{n}-{s}" for n in names if n.lower() in clashes}
        for names, s in zip(names_per_object, suffixes, strict=True)
    ]


def _retarget(table: ad.AnnData, mapping: Mapping[str, str]) -> ad.AnnData:
    """``table`` with its annotated regions renamed by ``mapping`` (a new AnnData sharing the arrays)."""
    regions, region_key, instance_key = get_table_keys(table)
    if not regions or not any(r in mapping for r in regions):
        return table
    obs = table.obs.copy()
    column = obs[region_key]
    if isinstance(column.dtype, pd.CategoricalDtype):
        cats = column.cat.categories
        obs[region_key] = column.cat.rename_categories([mapping.get(c, c) for c in cats])
    else:
        obs[region_key] = column.map(lambda v: mapping.get(v, v))
    new = ad.AnnData(
        X=table.X,
        obs=obs,
        var=table.var,
        uns=dict(table.uns),
        obsm=dict(table.obsm),
        varm=dict(table.varm),
        obsp=dict(table.obsp),
        varp=dict(table.varp),
        layers=dict(table.layers),
    )
    if table.raw is not None:
        new.raw = table.raw.to_adata()
    was_single = isinstance(table.uns[TABLE_ATTRS_KEY].get("region"), str)
    new_regions = [mapping.get(r, r) for r in regions]
    TableModel.parse(
        new,
        region=new_regions[0] if was_single else new_regions,
        region_key=region_key,
        instance_key=instance_key,
    )
    return new


def _with_keys(table: ad.AnnData, region_key: str, instance_key: str, name: str) -> ad.AnnData:
    """``table`` whose region/instance columns are called ``region_key``/``instance_key``."""
    _, rk, ik = get_table_keys(table)
    renames = {old: new for old, new in ((rk, region_key), (ik, instance_key)) if old != new}
    if not renames:
        return table
    taken = [new for new in renames.values() if new in table.obs.columns]
    if taken:
        raise ValidationError(
            f"cannot merge tables {name!r}: obs column(s) {taken} exist already in a table whose region/instance "
            "columns would be renamed to them"
        )
    new = table.copy()
    new.obs = new.obs.rename(columns=renames)
    regions, _, _ = get_table_keys(table)
    TableModel.parse(new, region=regions, region_key=region_key, instance_key=instance_key)
    return new


def _merge_tables(
    name: str,
    tables: list[ad.AnnData],
    suffixes: list[str],
    region_key: str | None,
    instance_key: str | None,
) -> ad.AnnData:
    if len(tables) == 1:
        return tables[0]
    keys = [get_table_keys(t) for t in tables]
    annotating = [k[0] is not None for k in keys]
    if any(annotating) and not all(annotating):
        raise ValidationError(
            f"cannot merge tables named {name!r}: some annotate elements and some annotate nothing"
        )
    index_unique = None
    all_names = pd.Index(np.concatenate([np.asarray(t.obs_names) for t in tables]))
    if all_names.has_duplicates:
        index_unique = "-"
    if not all(annotating):
        return ad.concat(tables, join="outer", uns_merge="first", keys=suffixes, index_unique=index_unique)
    rk = region_key or keys[0][1]
    ik = instance_key or keys[0][2]
    differing = sorted({f"{k[1]}/{k[2]}" for k in keys if (k[1], k[2]) != (rk, ik)})
    if differing and (region_key is None or instance_key is None):
        raise ValidationError(
            f"cannot merge tables named {name!r}: they use different region_key/instance_key columns "
            f"({rk}/{ik} and {', '.join(differing)}); pass region_key= and instance_key= to name the columns of "
            "the result"
        )
    tables = [_with_keys(t, rk, ik, name) for t in tables]
    regions = list(dict.fromkeys(r for k in keys for r in (k[0] or [])))
    merged = ad.concat(tables, join="outer", uns_merge="first", keys=suffixes, index_unique=index_unique)
    merged.obs[rk] = pd.Categorical(np.asarray(merged.obs[rk], dtype=object), categories=regions)
    try:
        TableModel.parse(merged, region=regions, region_key=rk, instance_key=ik, name=name)
    except ValidationError as err:
        raise ValidationError(
            f"concatenated table {name!r} is invalid (are (region, instance) pairs unique across the objects?): "
            f"{err}"
        ) from None
    return merged


def concatenate(
    objects: Sequence[SpatialData] | Mapping[str, SpatialData],
    *,
    rename: bool = True,
    concatenate_tables: bool = True,
    region_key: str | None = None,
    instance_key: str | None = None,
) -> SpatialData:
    """Combine several SpatialData objects into a new one (see the module notes for the rules).

    Parameters
    ----------
    objects
        A list of SpatialData objects, or a dict ``{key: SpatialData}`` whose keys suffix the element names.
    rename
        Rename elements so names stay unique (dict: every element gets ``-{key}``; list: clashing names get
        ``-{position}``). ``False``: clashing names raise.
    concatenate_tables
        Concatenate tables that have the same name (default); otherwise tables are renamed like elements.
    region_key, instance_key
        obs columns of merged tables, when the tables being merged use different ones.

    Returns
    -------
    SpatialData
        A new object sharing the element objects of the inputs.

    Raises
    ------
    ValidationError
        On clashing names (``rename=False`` or still clashing after renaming), tables that cannot be merged, or
        a merged table whose (region, instance) pairs are not unique.
    """
    if isinstance(objects, SpatialData):
        raise TypeError("concatenate expects a list or dict of SpatialData objects, got a single SpatialData")
    by_key = isinstance(objects, Mapping)
    if by_key:
        suffixes = [str(k) for k in objects]
        sdatas = list(objects.values())
    elif isinstance(objects, Sequence):
        sdatas = list(objects)
        suffixes = [str(i) for i in range(len(sdatas))]
    else:
        raise TypeError(
            f"concatenate expects a list or dict of SpatialData objects, got {type(objects).__name__}"
        )
    if not sdatas:
        raise ValueError("concatenate needs at least one SpatialData object")
    for i, (s, sd) in enumerate(zip(suffixes, sdatas, strict=True)):
        if not isinstance(sd, SpatialData):
            where = f"key {s!r}" if by_key else f"position {i}"
            raise TypeError(f"the object at {where} is a {type(sd).__name__}, not a SpatialData")

    spatial_names = [[n for n in sd if sd.kind_of(n) != "tables"] for sd in sdatas]
    table_names = [[n for n in sd if sd.kind_of(n) == "tables"] for sd in sdatas]
    maps = _rename_maps(spatial_names, suffixes, by_key, rename)
    if concatenate_tables:
        table_maps: list[dict[str, str]] = [{} for _ in sdatas]
    else:
        table_maps = _rename_maps(table_names, suffixes, by_key, rename)

    parts: dict[str, dict[str, Any]] = {k: {} for k in SPATIAL_KINDS}
    final: list[str] = []
    for sd, mapping in zip(sdatas, maps, strict=True):
        for name, element in sd.spatial_items():
            new = mapping.get(name, name)
            parts[sd.kind_of(name)][new] = element
            final.append(new)

    grouped: dict[str, list[tuple[str, ad.AnnData]]] = {}
    for sd, s, mapping, tmap in zip(sdatas, suffixes, maps, table_maps, strict=True):
        for name, table in sd.items(["tables"]):
            grouped.setdefault(tmap.get(name, name), []).append((s, _retarget(table, mapping)))
    final.extend(grouped)

    seen: dict[str, list[str]] = {}
    for name in final:
        seen.setdefault(name.lower(), []).append(name)
    still = sorted({n for names in seen.values() if len(names) > 1 for n in names})
    if still:
        raise ValidationError(
            f"cannot concatenate: names {still} would occur more than once in the result (after renaming); "
            "rename the elements first"
        )

    tables = {
        name: _merge_tables(name, [t for _, t in items], [s for s, _ in items], region_key, instance_key)
        for name, items in grouped.items()
    }
    attrs: dict[str, Any] = {}
    for sd in sdatas:
        attrs.update(sd.attrs)
    return SpatialData(**parts, tables=tables, attrs=attrs)
