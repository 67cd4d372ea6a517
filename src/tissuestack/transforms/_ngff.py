"""JSON encoding of coordinate transformations (docs/format.md §3).

The encoding is the early-draft NGFF one used by SpatialData: every transformation object carries inline
``input`` and ``output`` coordinate-system objects. Writing re-expresses scale/translation/affine over the
element's axes (§3.6); reading accepts what the reference library accepts (§3.5).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tissuestack.errors import TransformationError
from tissuestack.transforms._base import (
    Affine,
    Axes,
    BaseTransformation,
    Identity,
    MapAxis,
    Scale,
    Sequence,
    Translation,
    _validate_axes,
)

__all__ = [
    "coordinate_system_units",
    "from_ngff_dict",
    "to_ngff_dict",
    "transformations_from_ngff",
    "transformations_to_ngff",
]

#: Placeholder unit written for every space axis without a known unit (the reference writes it for every axis;
#: on read it means "no unit").
_UNIT = "unit"
#: Name of the output system of every member of a sequence (a quirk of the reference writer).
_SEQUENCE_MEMBER_OUTPUT = "global"
_SUPPORTED = ("identity", "scale", "translation", "affine", "mapAxis", "sequence")
_NOT_CONVERTIBLE = ("rotation", "byDimension")


# ---------------------------------------------------------------------------------------------------------------
# writing


def _axis_object(axis: str, unit: str | None = None) -> dict[str, str]:
    if axis == "c":
        return {"name": "c", "type": "channel"}
    return {"name": axis, "type": "space", "unit": unit or _UNIT}


def _cs_object(name: str, axes: Axes, units: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {"name": name, "axes": [_axis_object(a, (units or {}).get(a)) for a in axes]}


def _encode(
    t: BaseTransformation, axes: Axes, output_name: str, units: Mapping[str, str] | None = None
) -> dict[str, Any]:
    out_axes = t.output_axes(axes)
    d: dict[str, Any]
    if isinstance(t, Identity):
        d = {"type": "identity"}
    elif isinstance(t, Scale):
        factors = dict(zip(t.axes, t.scale, strict=True))
        d = {"type": "scale", "scale": [float(factors.get(a, 1.0)) for a in axes]}
    elif isinstance(t, Translation):
        offsets = dict(zip(t.axes, t.translation, strict=True))
        d = {"type": "translation", "translation": [float(offsets.get(a, 0.0)) for a in axes]}
    elif isinstance(t, Affine):
        m = t.to_affine_matrix(axes, out_axes)[:-1]
        d = {"type": "affine", "affine": [[float(v) for v in row] for row in m.tolist()]}
    elif isinstance(t, MapAxis):
        d = {"type": "mapAxis", "mapAxis": t.map_axis}
    elif isinstance(t, Sequence):
        members = []
        member_axes = axes
        for member in t.transformations:
            members.append(_encode(member, member_axes, _SEQUENCE_MEMBER_OUTPUT))
            member_axes = member.output_axes(member_axes)
        d = {"type": "sequence", "transformations": members}
    else:
        raise TransformationError(f"cannot encode transformation of type {type(t).__name__} as NGFF JSON")
    d["input"] = _cs_object("".join(axes), axes)
    d["output"] = _cs_object(output_name, out_axes, units)
    return d


def to_ngff_dict(
    transformation: BaseTransformation,
    input_axes: Iterable[str],
    output_cs_name: str,
    units: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Encode one transformation as a JSON-ready dict (docs/format.md §3.6).

    Parameters
    ----------
    transformation
        The in-memory transformation.
    input_axes
        The element's intrinsic axes, e.g. ``("c", "y", "x")``; they name the input coordinate system.
    output_cs_name
        Name of the target coordinate system (the ``output`` object's ``name``).
    units
        Axis name -> unit (e.g. ``{"x": "micrometer", "y": "micrometer"}``) of the output coordinate system's
        space axes; other space axes get the placeholder ``"unit"``, as the reference writes for all.

    Returns
    -------
    dict
        Plain ``dict``/``list``/``str``/``float`` structure; ``json.dumps`` of it reproduces the reference bytes.

    Raises
    ------
    TransformationError
        On invalid axes, or a transformation that cannot be applied to ``input_axes``.
    """
    if not isinstance(transformation, BaseTransformation):
        raise TypeError(f"expected a transformation, got {type(transformation).__name__}")
    if not isinstance(output_cs_name, str) or not output_cs_name:
        raise TransformationError(
            f"output_cs_name must be a non-empty string naming a coordinate system, got {output_cs_name!r}"
        )
    axes = _validate_axes(input_axes, "input_axes")
    return _encode(transformation, axes, output_cs_name, units)


def transformations_to_ngff(
    mapping: Mapping[str, BaseTransformation],
    input_axes: Iterable[str],
    units: Mapping[str, Mapping[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """Encode an element's transformations, one list entry per target coordinate system.

    Parameters
    ----------
    mapping
        Target coordinate-system name -> transformation; entries are written in insertion order.
    input_axes
        The element's intrinsic axes.
    units
        Coordinate-system name -> (axis -> unit) of the output systems (see :func:`to_ngff_dict`).

    Returns
    -------
    list of dict

    Raises
    ------
    TransformationError
        If ``mapping`` is empty (an element needs at least one transformation) or an entry cannot be encoded.
    """
    if not isinstance(mapping, Mapping):
        raise TypeError(
            f"expected a mapping of coordinate system -> transformation, got {type(mapping).__name__}"
        )
    if not mapping:
        raise TransformationError("an element needs at least one transformation; got an empty mapping")
    axes = _validate_axes(input_axes, "input_axes")
    units = units or {}
    return [to_ngff_dict(t, axes, name, units.get(name)) for name, t in mapping.items()]


# ---------------------------------------------------------------------------------------------------------------
# reading


def _parse_cs(d: Mapping[str, Any], key: str, where: str) -> tuple[str, Axes]:
    """Parse and validate the coordinate-system object ``d[key]``; return its name and axis names."""
    if key not in d:
        raise TransformationError(f"{where} has no {key!r} coordinate system")
    cs = d[key]
    if not isinstance(cs, Mapping):
        raise TransformationError(
            f"{where}: {key!r} must be a coordinate-system object {{'name': ..., 'axes': [...]}}, "
            f"got {type(cs).__name__} {cs!r}"
        )
    name = cs.get("name")
    if not isinstance(name, str):
        raise TransformationError(f"{where}: the {key!r} coordinate system has no 'name' string")
    axes = cs.get("axes")
    if not isinstance(axes, list):
        raise TransformationError(f"{where}: the {key!r} coordinate system {name!r} has no 'axes' list")
    axis_names = []
    for i, ax in enumerate(axes):
        if not isinstance(ax, Mapping):
            raise TransformationError(
                f"{where}: axis {i} of coordinate system {name!r} must be an object, got {type(ax).__name__}"
            )
        if "name" not in ax:
            raise TransformationError(f"{where}: axis {i} of coordinate system {name!r} has no 'name'")
        if "type" not in ax:
            raise TransformationError(
                f"{where}: axis {ax['name']!r} of coordinate system {name!r} has no 'type'"
            )
        if ax["type"] not in ("channel", "array") and "unit" not in ax:
            raise TransformationError(
                f"{where}: axis {ax['name']!r} of coordinate system {name!r} has type {ax['type']!r} but no "
                "'unit'; each axis is either of type channel (or array) or MUST have a unit"
            )
        axis_names.append(ax["name"])
    return name, _validate_axes(axis_names, f"{where}: axes of coordinate system {name!r}")


def _payload(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise TransformationError(f"{where} of type {d['type']!r} has no {key!r} key")
    return d[key]


def _number_list(values: Any, key: str, where: str) -> list[float]:
    if not isinstance(values, list):
        raise TransformationError(f"{where}: {key!r} must be a list of numbers, got {type(values).__name__}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise TransformationError(f"{where}: {key!r} must be a list of numbers, got {v!r} in it")
    return [float(v) for v in values]


def _decode(d: Any, where: str) -> BaseTransformation:
    if not isinstance(d, Mapping):
        raise TransformationError(f"{where} must be a JSON object, got {type(d).__name__}")
    if "type" not in d:
        raise TransformationError(f"{where} has no 'type' key")
    ttype = d["type"]
    if ttype in _NOT_CONVERTIBLE:
        raise TransformationError(
            f"{where}: Conversion from {ttype!r} to BaseTransformation is not supported"
        )
    if ttype not in _SUPPORTED:
        raise TransformationError(
            f"{where}: transformation type {ttype!r} is not supported (supported: {', '.join(_SUPPORTED)})"
        )
    # validate whichever coordinate systems are present; some types require them
    needs_cs = ttype in ("scale", "translation", "affine")
    input_cs = _parse_cs(d, "input", where) if needs_cs or "input" in d else None
    output_cs = _parse_cs(d, "output", where) if needs_cs or "output" in d else None

    if ttype == "sequence":
        members = _payload(d, "transformations", where)
        if not isinstance(members, list):
            raise TransformationError(
                f"{where}: 'transformations' must be a list, got {type(members).__name__}"
            )
        return Sequence([_decode(m, f"{where}.transformations[{i}]") for i, m in enumerate(members)])
    try:
        return _build(d, ttype, input_cs, output_cs, where)
    except TransformationError as e:  # add where the problem is to constructor errors
        msg = str(e)
        raise TransformationError(msg if msg.startswith(where) else f"{where}: {msg}") from None


def _build(
    d: Mapping[str, Any],
    ttype: str,
    input_cs: tuple[str, Axes] | None,
    output_cs: tuple[str, Axes] | None,
    where: str,
) -> BaseTransformation:
    """Build a non-sequence transformation from a validated object."""
    if ttype == "identity":
        return Identity()
    if ttype == "mapAxis":
        mapping = _payload(d, "mapAxis", where)
        if not isinstance(mapping, Mapping):
            raise TransformationError(
                f"'mapAxis' must be an object of output axis -> input axis, got {type(mapping).__name__}"
            )
        return MapAxis(mapping)
    assert input_cs is not None and output_cs is not None  # required for these types, checked by the caller
    in_axes, out_axes = input_cs[1], output_cs[1]
    if ttype in ("scale", "translation"):
        if in_axes != out_axes:
            raise TransformationError(
                f"a {ttype} must have the same input and output axes, got {in_axes!r} and {out_axes!r}"
            )
        vec = _number_list(_payload(d, ttype, where), ttype, where)
        return Scale(vec, in_axes) if ttype == "scale" else Translation(vec, in_axes)
    rows = _payload(d, "affine", where)
    if not isinstance(rows, list):
        raise TransformationError(f"'affine' must be a list of rows, got {type(rows).__name__}")
    return Affine([_number_list(r, "affine", where) for r in rows], in_axes, out_axes)


def from_ngff_dict(d: Mapping[str, Any]) -> BaseTransformation:
    """Decode one JSON transformation object (docs/format.md §3.5).

    Parameters
    ----------
    d
        A transformation object as parsed from JSON.

    Returns
    -------
    BaseTransformation
        Scale/translation come back over the axes of the ``input`` system, affines between the ``input`` and
        ``output`` systems (so the form may differ from what was written; compare with
        :meth:`BaseTransformation.equivalent`).

    Raises
    ------
    TransformationError
        On unsupported types (``rotation``, ``byDimension``, unknown), missing keys, malformed coordinate
        systems (e.g. a space axis without ``unit``) or invalid values.
    """
    return _decode(d, "transformation")


def transformations_from_ngff(lst: list[dict[str, Any]]) -> dict[str, BaseTransformation]:
    """Decode an element's stored list of transformations.

    Parameters
    ----------
    lst
        The stored ``coordinateTransformations`` list.

    Returns
    -------
    dict
        Target coordinate-system name (``entry["output"]["name"]``) -> transformation, in list order; on
        duplicate names the last entry wins.

    Raises
    ------
    TransformationError
        If the list is empty, an entry has no ``output`` object, or an entry cannot be decoded.
    """
    if not isinstance(lst, list | tuple):
        raise TransformationError(f"coordinateTransformations must be a list, got {type(lst).__name__}")
    if not lst:
        raise TransformationError(
            "coordinateTransformations must contain at least one transformation; got an empty list"
        )
    result: dict[str, BaseTransformation] = {}
    for i, entry in enumerate(lst):
        where = f"coordinateTransformations[{i}]"
        if not isinstance(entry, Mapping):
            raise TransformationError(f"{where} must be a JSON object, got {type(entry).__name__}")
        name, _ = _parse_cs(entry, "output", where)
        result[name] = _decode(entry, where)
    return result


def coordinate_system_units(lst: Any) -> dict[str, dict[str, str]]:
    """The units of the output coordinate systems' space axes in a stored ``coordinateTransformations`` list:
    coordinate-system name -> (axis -> unit), only for axes with a real unit (not the placeholder ``"unit"``).

    Lenient: entries that are not well formed are skipped (decoding them is
    :func:`transformations_from_ngff`'s job, with its errors).
    """
    out: dict[str, dict[str, str]] = {}
    for entry in lst if isinstance(lst, list | tuple) else ():
        cs = entry.get("output") if isinstance(entry, Mapping) else None
        if not isinstance(cs, Mapping) or not isinstance(cs.get("name"), str):
            continue
        units = {
            str(ax["name"]): str(ax["unit"])
            for ax in cs.get("axes") or ()
            if isinstance(ax, Mapping)
            and ax.get("type") == "space"
            and isinstance(ax.get("unit"), str)
            and ax["unit"] not in ("", _UNIT)
            and "name" in ax
        }
        if units:
            out[cs["name"]] = units
    return out
