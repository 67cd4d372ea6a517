"""Group attributes shared by the points and shapes codecs (docs/format.md §5.2, §6.1)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import zarr

from tissuestack.elements import ElementMeta
from tissuestack.errors import FormatError, TransformationError
from tissuestack.store._root import ElementLocation
from tissuestack.transforms import (
    BaseTransformation,
    coordinate_system_units,
    transformations_from_ngff,
    transformations_to_ngff,
)

__all__ = [
    "decode_transformations",
    "encode_spatial_attrs",
    "meta_from_attrs",
    "metadata_file",
    "read_version",
    "source_of",
    "where",
]


def metadata_file(group: zarr.Group) -> str:
    """Name of the file holding a group's attributes: ``zarr.json`` (v3) or ``.zattrs`` (v2)."""
    return "zarr.json" if group.metadata.zarr_format == 3 else ".zattrs"


def where(group: zarr.Group, loc: ElementLocation) -> str:
    """``points/transcripts/zarr.json``-style location for error messages."""
    return f"{loc.key}/{metadata_file(group)}"


def encode_spatial_attrs(
    *,
    encoding_type: str,
    axes: tuple[str, ...],
    transformations: Mapping[str, BaseTransformation],
    version: str,
    sd_attrs: Mapping[str, Any] | None = None,
    units: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """Group attributes of a points (``ngff:points``) or shapes (``ngff:shapes``) element."""
    return {
        "encoding-type": encoding_type,
        "axes": sorted(axes),
        "coordinateTransformations": transformations_to_ngff(dict(transformations), tuple(axes), units),
        "spatialdata_attrs": {**dict(sd_attrs or {}), "version": version},
    }


def read_version(attrs: Mapping[str, Any], group: zarr.Group, loc: ElementLocation) -> str:
    """``spatialdata_attrs.version`` of a points/shapes group, or a ``FormatError`` naming the file."""
    sd = attrs.get("spatialdata_attrs")
    if not isinstance(sd, Mapping) or "version" not in sd:
        raise FormatError(
            f"{where(group, loc)}: missing spatialdata_attrs.version (the element format version)"
        )
    return str(sd["version"])


def decode_transformations(
    attrs: Mapping[str, Any], group: zarr.Group, loc: ElementLocation, key: str = "coordinateTransformations"
) -> dict[str, BaseTransformation]:
    """Decode the transformation list of an element, naming the element and file on failure."""
    if key not in attrs:
        raise FormatError(f"{where(group, loc)}: missing {key!r} (the element's coordinate transformations)")
    try:
        return transformations_from_ngff(attrs[key])
    except TransformationError as err:
        raise FormatError(f"{where(group, loc)}: invalid {key}: {err}") from err


def source_of(loc: ElementLocation) -> tuple[str, str]:
    return (loc.root.url, loc.key)


def meta_from_attrs(
    attrs: Mapping[str, Any], group: zarr.Group, loc: ElementLocation, *, n_rows: int | None = None
) -> ElementMeta:
    """Metadata of a points/shapes element from its group attributes."""
    sd = attrs.get("spatialdata_attrs") or {}
    return ElementMeta(
        transformations=decode_transformations(attrs, group, loc),
        feature_key=sd.get("feature_key"),
        instance_key=sd.get("instance_key"),
        n_rows=n_rows,
        source=source_of(loc),
        units=coordinate_system_units(attrs.get("coordinateTransformations")),
    )
