"""Text tree of a SpatialData object. Describes shapes and row counts without computing any data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tissuestack.elements import (
    KINDS,
    Deferred,
    get_axes,
    get_meta,
    get_table_keys,
    has_meta,
    raster_levels,
    shapes_type,
)

if TYPE_CHECKING:
    from tissuestack._container.spatialdata import SpatialData

__all__ = ["describe_element", "format_spatialdata"]


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def describe_element(kind: str, element: Any) -> str:
    """One line describing an element; reads only metadata (dtypes, shapes, partition counts)."""
    if isinstance(element, Deferred):
        text = element.describe() if element.describe is not None else kind
        return f"{text} (not loaded)"
    if kind in ("images", "labels"):
        levels = raster_levels(element)
        axes = "".join(str(d) for d in levels[0].dims)
        shapes = ", ".join(_shape(lvl.shape) for lvl in levels)
        typ = "DataTree" if len(levels) > 1 else "DataArray"
        return f"{typ}[{axes}] {shapes} {levels[0].dtype}"
    if kind == "points":
        axes = "".join(get_axes(element))
        meta = get_meta(element) if has_meta(element) else None
        rows = f"{meta.n_rows:,} rows" if meta is not None and meta.n_rows is not None else "rows not counted"
        cols = ", ".join(str(c) for c in element.columns)
        keys = []
        if meta is not None and meta.feature_key:
            keys.append(f"feature_key={meta.feature_key!r}")
        if meta is not None and meta.instance_key:
            keys.append(f"instance_key={meta.instance_key!r}")
        extra = f", {', '.join(keys)}" if keys else ""
        return f"dask DataFrame[{axes}] {rows}, {element.npartitions} partitions, columns ({cols}){extra}"
    if kind == "shapes":
        axes = "".join(get_axes(element))
        return f"GeoDataFrame[{axes}] {len(element):,} {shapes_type(element)}"
    region, region_key, instance_key = get_table_keys(element)
    link = (
        f", annotating {region} by ({region_key!r}, {instance_key!r})" if region else ", annotating nothing"
    )
    return f"AnnData {element.n_obs:,} x {element.n_vars:,}{link}"


def format_spatialdata(sdata: SpatialData) -> str:
    lines: list[str] = []
    n_spatial = sum(len(sdata._store[k]) for k in KINDS if k != "tables")
    n_tables = len(sdata._store["tables"])
    where = f", backed by {sdata.path}" if sdata.path else ""
    lines.append(f"SpatialData object: {n_spatial} spatial element(s), {n_tables} table(s){where}")
    present = [k for k in KINDS if sdata._store[k]]
    for i, kind in enumerate(present):
        last_kind = i == len(present) - 1
        lines.append(("└── " if last_kind else "├── ") + kind)
        names = list(sdata._store[kind])
        for j, name in enumerate(names):
            last = j == len(names) - 1
            prefix = ("    " if last_kind else "│   ") + ("└── " if last else "├── ")
            lines.append(f"{prefix}{name!r}: {describe_element(kind, sdata._store[kind][name])}")
    cs_names = sdata.coordinate_systems
    if cs_names:
        lines.append("coordinate systems:")
        for cs in cs_names:
            members = ", ".join(f"{n} ({sdata.kind_of(n)})" for n in sdata.elements_in_coordinate_system(cs))
            lines.append(f"  ▸ {cs!r}: {members}")
    return "\n".join(lines)
