"""Text tree of a SpatialData object. Describes shapes and row counts without computing any data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tissuestack.elements import KINDS, Deferred, get_kind_protocol

if TYPE_CHECKING:
    from tissuestack._container.spatialdata import SpatialData

__all__ = ["describe_element", "format_spatialdata"]


def describe_element(kind: str, element: Any) -> str:
    """One line describing an element; reads only metadata (dtypes, shapes, partition counts)."""
    if isinstance(element, Deferred):
        text = element.describe() if element.describe is not None else kind
        return f"{text} (not loaded)"
    return get_kind_protocol(kind).describe(element)


def format_spatialdata(sdata: SpatialData) -> str:
    lines: list[str] = []
    n_spatial = sum(len(sdata._store[k]) for k in KINDS if get_kind_protocol(k).is_spatial)
    n_tables = sum(len(sdata._store[k]) for k in KINDS if not get_kind_protocol(k).is_spatial)
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
