"""Spatial metadata of elements: transformations, feature key and instance key.

Where it lives
--------------
Elements are plain ecosystem objects (xarray, dask, geopandas). Their own ``.attrs`` cannot be trusted as the
only home of our metadata: dask DataFrames have no ``attrs`` at all, and pandas drops or deep-copies ``attrs``
through many operations. We therefore keep the metadata in one registry owned by this module, keyed by the
identity of the element object (entries disappear with the object), and mirror it into ``attrs`` where the type
has them, so that objects *derived* from an element (a filtered GeoDataFrame, a sliced DataArray) still carry
it. Lookup order: registry (exact object), then the ``attrs`` mirror, then "no metadata".

Tables (AnnData) are not in the registry: their annotation metadata lives in ``uns["spatialdata_attrs"]``,
which AnnData persists natively.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tissuestack.errors import ValidationError
from tissuestack.transforms import BaseTransformation, Identity

__all__ = [
    "ATTRS_KEY",
    "DEFAULT_COORDINATE_SYSTEM",
    "ElementMeta",
    "get_meta",
    "get_transformation",
    "has_meta",
    "meta_transformation",
    "remove_meta_transformation",
    "remove_transformation",
    "set_meta",
    "set_meta_transformation",
    "set_transformation",
]

ATTRS_KEY = "tissuestack"
DEFAULT_COORDINATE_SYSTEM = "global"


@dataclass
class ElementMeta:
    """Spatial metadata of one spatial element.

    Attributes
    ----------
    transformations
        Target coordinate-system name -> transformation from the element's intrinsic coordinates. Insertion
        order is kept (it is the order written to disk).
    feature_key
        Points only: the categorical column holding the feature (gene) identity.
    instance_key
        Points only: the column holding the id of the instance (cell) each point belongs to.
    n_rows
        Points only: the number of rows when known without computing (from the source frame or file
        metadata). It describes one exact object, so copies made for derived objects drop it.
    source
        ``(store location, element key)`` when the element's data is read lazily from a store. Derived objects
        keep it: they still read those files, so a write must not replace them.
    """

    transformations: dict[str, BaseTransformation] = field(default_factory=dict)
    feature_key: str | None = None
    instance_key: str | None = None
    n_rows: int | None = None
    source: tuple[str, str] | None = None

    def copy(self) -> ElementMeta:
        """A copy for a derived object: same transformations, keys and source; row count unknown."""
        return ElementMeta(
            dict(self.transformations), self.feature_key, self.instance_key, source=self.source
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> ElementMeta:
        # transformations are immutable values: a new dict is a full copy
        return self.copy()


_REGISTRY: dict[int, tuple[weakref.ref, ElementMeta]] = {}


def _forget(key: int) -> None:
    _REGISTRY.pop(key, None)


def _registry_lookup(element: Any) -> ElementMeta | None:
    entry = _REGISTRY.get(id(element))
    if entry is None:
        return None
    ref, meta = entry
    if ref() is not element:  # stale id reused by another object
        return None
    return meta


def _attrs_of(element: Any) -> dict | None:
    try:
        attrs = element.attrs
    except (AttributeError, NotImplementedError):
        return None
    return attrs if isinstance(attrs, dict) else None


def set_meta(element: Any, meta: ElementMeta) -> None:
    """Attach ``meta`` to ``element`` (registry + ``attrs`` mirror where the type has ``attrs``)."""
    key = id(element)
    try:
        ref = weakref.ref(element, lambda _r, key=key: _forget(key))
    except TypeError as err:  # pragma: no cover - all supported element types are weak-referenceable
        raise TypeError(
            f"cannot attach spatial metadata to an object of type {type(element).__name__}"
        ) from err
    _REGISTRY[key] = (ref, meta)
    attrs = _attrs_of(element)
    if attrs is not None:
        attrs[ATTRS_KEY] = meta


def has_meta(element: Any) -> bool:
    """Whether spatial metadata is known for ``element``."""
    if _registry_lookup(element) is not None:
        return True
    attrs = _attrs_of(element)
    return attrs is not None and isinstance(attrs.get(ATTRS_KEY), ElementMeta)


def get_meta(element: Any, *, create: bool = False) -> ElementMeta:
    """Return the metadata object of ``element``.

    Metadata found only in the ``attrs`` mirror (an object derived from an element) is adopted: a copy is
    registered for this object, so that later changes do not leak back into the object it came from.
    With ``create=True`` an element without metadata gets an empty one; otherwise a ``ValidationError``.
    """
    meta = _registry_lookup(element)
    if meta is not None:
        return meta
    attrs = _attrs_of(element)
    if attrs is not None and isinstance(attrs.get(ATTRS_KEY), ElementMeta):
        meta = attrs[ATTRS_KEY].copy()
        set_meta(element, meta)
        return meta
    if create:
        meta = ElementMeta()
        set_meta(element, meta)
        return meta
    raise ValidationError(
        f"no spatial metadata is attached to this {type(element).__name__}: parse it with the model of its kind "
        "(e.g. tissuestack.PointsModel.parse) or take it from a SpatialData object; objects derived from a dask "
        "points frame do not inherit it"
    )


# --------------------------------------------------------------------------------------------------------------
# transformations of one element
# --------------------------------------------------------------------------------------------------------------


def get_transformation(
    element: Any, to_coordinate_system: str | None = None, *, get_all: bool = False
) -> BaseTransformation | dict[str, BaseTransformation]:
    """Transformation(s) from the intrinsic coordinates of ``element``.

    Parameters
    ----------
    element
        An image, labels, points or shapes element.
    to_coordinate_system
        Name of the target coordinate system. ``None`` means ``"global"`` unless ``get_all`` is set.
    get_all
        Return a dict of every coordinate system -> transformation.
    """
    return meta_transformation(get_meta(element), to_coordinate_system, get_all=get_all)


def meta_transformation(
    meta: ElementMeta, to_coordinate_system: str | None = None, *, get_all: bool = False
) -> BaseTransformation | dict[str, BaseTransformation]:
    """``get_transformation`` on a metadata object."""
    if get_all:
        if to_coordinate_system is not None:
            raise ValueError("pass either to_coordinate_system or get_all=True, not both")
        return dict(meta.transformations)
    cs = DEFAULT_COORDINATE_SYSTEM if to_coordinate_system is None else to_coordinate_system
    try:
        return meta.transformations[cs]
    except KeyError:
        known = ", ".join(repr(k) for k in meta.transformations) or "none"
        raise KeyError(
            f"element has no transformation to coordinate system {cs!r}; it has: {known}"
        ) from None


def set_transformation(
    element: Any,
    transformation: BaseTransformation | Mapping[str, BaseTransformation],
    to_coordinate_system: str | None = None,
    *,
    set_all: bool = False,
) -> None:
    """Set the transformation of ``element`` to one coordinate system, or (``set_all``) replace all of them."""
    set_meta_transformation(
        get_meta(element, create=True), transformation, to_coordinate_system, set_all=set_all
    )


def set_meta_transformation(
    meta: ElementMeta,
    transformation: BaseTransformation | Mapping[str, BaseTransformation],
    to_coordinate_system: str | None = None,
    *,
    set_all: bool = False,
) -> None:
    """``set_transformation`` on a metadata object (elements not loaded yet have only that)."""
    if set_all:
        if not isinstance(transformation, Mapping):
            raise TypeError("set_all=True expects a mapping of coordinate system name -> transformation")
        new = _check_transformations(transformation)
        if not new:
            raise ValidationError("an element needs at least one transformation; got an empty mapping")
        meta.transformations = new
        return
    if not isinstance(transformation, BaseTransformation):
        raise TypeError(
            f"expected a tissuestack transformation, got {type(transformation).__name__}; "
            "use set_all=True to pass a mapping"
        )
    cs = DEFAULT_COORDINATE_SYSTEM if to_coordinate_system is None else to_coordinate_system
    _check_cs_name(cs)
    meta.transformations[cs] = transformation


def remove_transformation(element: Any, to_coordinate_system: str) -> None:
    """Remove the transformation of ``element`` to one coordinate system (an element keeps at least one)."""
    remove_meta_transformation(get_meta(element), to_coordinate_system)


def remove_meta_transformation(meta: ElementMeta, to_coordinate_system: str) -> None:
    """``remove_transformation`` on a metadata object."""
    if to_coordinate_system not in meta.transformations:
        raise KeyError(f"element has no transformation to coordinate system {to_coordinate_system!r}")
    if len(meta.transformations) == 1:
        raise ValidationError(
            f"cannot remove the transformation to {to_coordinate_system!r}: it is the element's only one and "
            "every element must belong to at least one coordinate system"
        )
    del meta.transformations[to_coordinate_system]


def _check_cs_name(name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise ValidationError(f"a coordinate system name must be a non-empty string, got {name!r}")


def _check_transformations(transformations: Mapping[str, Any]) -> dict[str, BaseTransformation]:
    out: dict[str, BaseTransformation] = {}
    for cs, t in transformations.items():
        _check_cs_name(cs)
        if not isinstance(t, BaseTransformation):
            raise TypeError(
                f"transformation to {cs!r} must be a tissuestack transformation, got {type(t).__name__}"
            )
        out[cs] = t
    return out


def normalize_transformations(
    transformations: BaseTransformation | Mapping[str, BaseTransformation] | None,
    existing: ElementMeta | None = None,
) -> dict[str, BaseTransformation]:
    """Transformations for a parsed element: the given ones, else the existing ones, else identity to global."""
    if transformations is None:
        if existing is not None and existing.transformations:
            return dict(existing.transformations)
        return {DEFAULT_COORDINATE_SYSTEM: Identity()}
    if isinstance(transformations, BaseTransformation):
        return {DEFAULT_COORDINATE_SYSTEM: transformations}
    if not isinstance(transformations, Mapping):
        raise TypeError(
            "transformations must be a transformation or a mapping of coordinate system name -> transformation, "
            f"got {type(transformations).__name__}"
        )
    out = _check_transformations(transformations)
    if not out:
        raise ValidationError("an element needs at least one transformation; got an empty mapping")
    return out


def copy_meta(source: Any, target: Any) -> None:
    """Give ``target`` a copy of the metadata of ``source`` (used when an operation derives a new object)."""
    set_meta(target, copy.deepcopy(get_meta(source)))
