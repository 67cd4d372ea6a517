"""Resolving the inputs of operations: elements or SpatialData objects, and their place in a coordinate system."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tissuestack._container import SpatialData
from tissuestack.elements import SPATIAL_KINDS, get_kind, get_meta
from tissuestack.errors import NoPathError, UnknownCoordinateSystemError, ValidationError
from tissuestack.transforms import BaseTransformation

__all__ = ["elements_in", "resolve_element", "transformation_to"]


def transformation_to(
    element: Any, target_coordinate_system: str, *, sdata: SpatialData | None = None, name: str | None = None
) -> BaseTransformation:
    """Transformation from the intrinsic coordinates of ``element`` to ``target_coordinate_system``.

    With ``sdata`` and ``name``, the path may go through the coordinate-system graph of that object (other
    elements and coordinate systems); otherwise the element must have a direct transformation to the target.
    Raises ``NoPathError`` when there is no path.
    """
    if sdata is not None and name is not None:
        return sdata.get_transformation_between(name, target_coordinate_system)
    transformations = get_meta(element).transformations
    if target_coordinate_system not in transformations:
        known = ", ".join(repr(c) for c in transformations)
        raise UnknownCoordinateSystemError(
            f"the element has no transformation to coordinate system {target_coordinate_system!r} "
            f"(it has {known}); pass the SpatialData object to search paths through other elements"
        )
    return transformations[target_coordinate_system]


def elements_in(
    sdata: SpatialData, target_coordinate_system: str
) -> Iterator[tuple[str, str, Any, BaseTransformation]]:
    """``(name, kind, element, transformation to the target)`` for every spatial element that can reach the
    target coordinate system through the graph; elements with no path are skipped (ambiguity still raises)."""
    if target_coordinate_system not in sdata.coordinate_systems:
        raise UnknownCoordinateSystemError(
            f"unknown coordinate system {target_coordinate_system!r}; known: {sdata.coordinate_systems}"
        )
    for name, element in sdata.spatial_items():
        try:
            t = sdata.get_transformation_between(name, target_coordinate_system)
        except NoPathError:
            continue
        yield name, get_kind(element), element, t


def _name_in(sdata: SpatialData, element: Any) -> str:
    for kind in SPATIAL_KINDS:
        for name in getattr(sdata, kind):
            if sdata.is_loaded(name) and sdata[name] is element:
                return name
    raise KeyError("the element is not an element of the given SpatialData object")


def resolve_element(
    element: Any, coordinate_system: str, sdata: SpatialData | None
) -> tuple[Any, BaseTransformation]:
    """``(element object, transformation to the coordinate system)``.

    ``element`` is an element object, or an element name when ``sdata`` is given. With ``sdata`` the path may
    go through the coordinate-system graph of that object.
    """
    if isinstance(element, str):
        if sdata is None:
            raise TypeError(
                f"element {element!r} is a name: pass sdata= (the SpatialData it belongs to) or the element object"
            )
        name = element
        if sdata.kind_of(name) == "tables":
            raise ValidationError(f"{name!r} is a table; tables have no coordinate systems")
        element = sdata[name]
    elif sdata is not None:
        name = _name_in(sdata, element)
    else:
        name = None
    if get_kind(element) == "tables":
        raise ValidationError(
            "a table has no coordinate systems; pass an image, labels, points or shapes element"
        )
    return element, transformation_to(element, coordinate_system, sdata=sdata, name=name)
