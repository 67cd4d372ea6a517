"""A lossless plain-JSON form of transformations, for element metadata kept in ``.attrs``.

The NGFF encoding (:mod:`tissuestack.transforms._ngff`) needs the element's axes and gives scales and
translations back over all of them; this form keeps each transformation exactly as it was built (type, axes,
values), so ``from_json(to_json(t)) == t``. Values are plain ``dict``/``list``/``str``/``float``: ``json``,
``pickle``, ``copy.deepcopy`` and xarray serialise them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tissuestack.errors import TransformationError
from tissuestack.transforms._base import (
    Affine,
    BaseTransformation,
    Identity,
    MapAxis,
    Scale,
    Sequence,
    Translation,
)

__all__ = ["transformation_from_json", "transformation_to_json"]


def transformation_to_json(t: BaseTransformation) -> dict[str, Any]:
    """``t`` as a plain JSON value (see the module notes)."""
    if isinstance(t, Identity):
        return {"type": "identity"}
    if isinstance(t, Scale):
        return {"type": "scale", "scale": list(t.scale), "axes": list(t.axes)}
    if isinstance(t, Translation):
        return {"type": "translation", "translation": list(t.translation), "axes": list(t.axes)}
    if isinstance(t, Affine):
        return {
            "type": "affine",
            "affine": [list(row) for row in t.matrix.tolist()],
            "input_axes": list(t.in_axes),
            "output_axes": list(t.out_axes),
        }
    if isinstance(t, MapAxis):
        return {"type": "mapAxis", "mapAxis": [[k, v] for k, v in t.map_axis.items()]}
    if isinstance(t, Sequence):
        return {"type": "sequence", "transformations": [transformation_to_json(m) for m in t.transformations]}
    raise TypeError(f"expected a tissuestack transformation, got {type(t).__name__}")


def transformation_from_json(d: Any) -> BaseTransformation:
    """The transformation encoded by :func:`transformation_to_json`."""
    if not isinstance(d, Mapping) or "type" not in d:
        raise TransformationError(f"expected a JSON transformation object with a 'type', got {d!r}")
    kind = d["type"]
    try:
        if kind == "identity":
            return Identity()
        if kind == "scale":
            return Scale(d["scale"], d["axes"])
        if kind == "translation":
            return Translation(d["translation"], d["axes"])
        if kind == "affine":
            return Affine(d["affine"], d["input_axes"], d["output_axes"])
        if kind == "mapAxis":
            return MapAxis(dict(d["mapAxis"]))
        if kind == "sequence":
            return Sequence([transformation_from_json(m) for m in d["transformations"]])
    except KeyError as err:
        raise TransformationError(f"JSON transformation of type {kind!r} has no {err.args[0]!r}") from None
    raise TransformationError(f"unknown JSON transformation type {kind!r}")
