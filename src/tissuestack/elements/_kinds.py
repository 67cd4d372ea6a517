"""The five element kinds by name, and thin functional wrappers over their protocols (``_protocol``).

``get_kind``, ``get_axes``, ``parse_as`` and ``validate_as`` are kept for their many callers; new code asks the
kind's protocol object directly (:func:`kind_of`, :func:`get_kind_protocol`).
"""

from __future__ import annotations

from typing import Any, Literal

from tissuestack.elements._protocol import (
    IMAGES,
    LABELS,
    POINTS,
    SHAPES,
    TABLES,
    ElementKind,
    ImagesKind,
    LabelsKind,
    PointsKind,
    ShapesKind,
    TablesKind,
    get_kind_protocol,
    kind_of,
    kind_protocols,
    register_kind,
)

__all__ = [
    "IMAGES",
    "KINDS",
    "LABELS",
    "POINTS",
    "SHAPES",
    "SPATIAL_KINDS",
    "TABLES",
    "ElementKind",
    "ImagesKind",
    "Kind",
    "LabelsKind",
    "PointsKind",
    "ShapesKind",
    "TablesKind",
    "get_axes",
    "get_kind",
    "get_kind_protocol",
    "kind_of",
    "kind_protocols",
    "parse_as",
    "register_kind",
    "validate_as",
]

Kind = Literal["images", "labels", "points", "shapes", "tables"]
KINDS: tuple[Kind, ...] = ("images", "labels", "points", "shapes", "tables")
SPATIAL_KINDS: tuple[Kind, ...] = tuple(k for k in KINDS if get_kind_protocol(k).is_spatial)  # type: ignore[assignment]


def get_kind(element: Any) -> Kind:
    """The kind of an element object, from its type (and, for rasters, its dims)."""
    return kind_of(element).name  # type: ignore[return-value]


def get_axes(element: Any) -> tuple[str, ...]:
    """Intrinsic axes of a spatial element, in its canonical order."""
    try:
        protocol = kind_of(element)
    except TypeError:
        raise TypeError(f"a {type(element).__name__} has no spatial axes") from None
    return protocol.axes(element)


def parse_as(kind: Kind, element: Any, name: str | None = None) -> Any:
    """Bring ``element`` into the canonical form of ``kind``.

    Objects that already carry spatial metadata (parsed before, or taken from a SpatialData object) are only
    validated; raw data (numpy arrays, pandas frames, shapely arrays, ...) is parsed with the kind's default
    options.
    """
    return get_kind_protocol(kind).parse(element, name)


def validate_as(kind: Kind, element: Any, name: str | None = None) -> None:
    """Validate an element of a known kind."""
    get_kind_protocol(kind).validate(element, name)
