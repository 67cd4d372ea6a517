"""Spatial metadata of elements: transformations, units, feature key and instance key.

Where it lives
--------------
In the element's own ``attrs``, under ``attrs["tissuestack"]``, as plain JSON values only (transformations in the
lossless form of :mod:`tissuestack.transforms._json`)::

    {"transformations": {"global": {"type": "scale", "scale": [0.5, 0.5], "axes": ["x", "y"]}},
     "feature_key": "gene", "instance_key": "cell_id", "source": ["file:///data/exp.zarr", "points/tx"]}

So everything that copies attrs keeps it: ``pickle`` (dask.distributed ships elements that way),
``copy.deepcopy``, xarray serialisation, and objects *derived* from an element (a filtered GeoDataFrame, a sliced
DataArray, ``points[points.x > 1]`` or ``points[["x", "y"]]``). A dask DataFrame keeps attrs on its ``_meta``
(the empty pandas frame that every derived frame computes from its parent's), which pandas carries through its
operations. The stored dict is never changed in place: every change stores a new dict, so objects whose attrs
were copied shallowly (xarray does) never see each other's changes.

What belongs to one exact object and not to objects derived from it (the row count, where the rows are read from,
caches) lives in its :class:`~tissuestack.elements._record.ElementRecord`.

Tables (AnnData) carry no such metadata: their annotation metadata lives in ``uns["spatialdata_attrs"]``,
which AnnData persists natively.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from tissuestack.elements._record import ElementRecord, record_of
from tissuestack.errors import ValidationError
from tissuestack.transforms import BaseTransformation, Identity
from tissuestack.transforms._json import transformation_from_json, transformation_to_json

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

_FIELDS = ("transformations", "units", "feature_key", "instance_key", "source")


class ElementMeta:
    """Spatial metadata of one spatial element.

    Either bound to an element (what :func:`get_meta` returns: reads and writes go to the element's
    ``attrs["tissuestack"]`` and its record) or free-standing (elements not loaded yet, metadata being built).

    Attributes
    ----------
    transformations
        Target coordinate-system name -> transformation from the element's intrinsic coordinates. Insertion
        order is kept (it is the order written to disk). Reading gives a new dict: assign to change it.
    units
        Coordinate-system name -> (axis -> unit, e.g. ``{"x": "micrometer", "y": "micrometer"}``): the units of
        the coordinate systems' space axes, as stored with the transformations (NGFF ``output`` axes); empty
        when unknown (the reference writes the placeholder ``"unit"``). Plots draw a scale bar from them.
    feature_key
        Points only: the categorical column holding the feature (gene) identity.
    instance_key
        Points only: the column holding the id of the instance (cell) each point belongs to.
    n_rows
        Points only: the number of rows when known without computing (from the source frame or file
        metadata). It describes one exact object (its record), so derived objects do not have it.
    source
        ``(store location, element key)`` when the element's data is read lazily from a store. Derived objects
        keep it: they still read those files, so a write must not replace them.
    """

    __slots__ = ("_attrs", "_data", "_record")

    def __init__(
        self,
        transformations: Mapping[str, BaseTransformation] | None = None,
        feature_key: str | None = None,
        instance_key: str | None = None,
        n_rows: int | None = None,
        source: tuple[str, str] | None = None,
        units: Mapping[str, Mapping[str, str]] | None = None,
    ):
        self._attrs: dict | None = None  # the bound element's attrs
        self._data: dict[str, Any] = {"transformations": {}}
        self._record = ElementRecord()
        if transformations:
            self.transformations = dict(transformations)
        if units:
            self.units = units
        self.feature_key = feature_key
        self.instance_key = instance_key
        self.source = source
        self._record.n_rows = n_rows

    @classmethod
    def _bound(cls, attrs: dict, record: ElementRecord | None) -> ElementMeta:
        meta = cls.__new__(cls)
        meta._attrs = attrs
        meta._data = attrs[ATTRS_KEY]
        meta._record = record if record is not None else ElementRecord()
        return meta

    # -- the JSON dict, replaced (never changed in place) on every write -----------------------------------------
    def _current(self) -> dict[str, Any]:
        """The stored dict: the bound element's latest one (another view may have replaced it), else our own."""
        return self._attrs.get(ATTRS_KEY, self._data) if self._attrs is not None else self._data

    def _get(self, key: str) -> Any:
        return self._current().get(key)

    def _put(self, key: str, value: Any) -> None:
        data = {k: v for k, v in self._current().items() if k != key}
        if value is not None or key == "transformations":
            data[key] = value
        self._data = data
        if self._attrs is not None:
            self._attrs[ATTRS_KEY] = data

    def to_json(self) -> dict[str, Any]:
        """The metadata as stored in ``attrs`` (a deep copy)."""
        return copy.deepcopy(self._current())

    @property
    def transformations(self) -> dict[str, BaseTransformation]:
        return {cs: transformation_from_json(t) for cs, t in (self._get("transformations") or {}).items()}

    @transformations.setter
    def transformations(self, value: Mapping[str, BaseTransformation]) -> None:
        self._put("transformations", {str(cs): transformation_to_json(t) for cs, t in value.items()})

    @property
    def units(self) -> dict[str, dict[str, str]]:
        return {cs: dict(u) for cs, u in (self._get("units") or {}).items()}

    @units.setter
    def units(self, value: Mapping[str, Mapping[str, str]] | None) -> None:
        clean = {
            str(cs): {str(a): str(u) for a, u in axes.items()} for cs, axes in (value or {}).items() if axes
        }
        self._put("units", clean or None)

    @property
    def feature_key(self) -> str | None:
        return self._get("feature_key")

    @feature_key.setter
    def feature_key(self, value: str | None) -> None:
        self._put("feature_key", value)

    @property
    def instance_key(self) -> str | None:
        return self._get("instance_key")

    @instance_key.setter
    def instance_key(self, value: str | None) -> None:
        self._put("instance_key", value)

    @property
    def source(self) -> tuple[str, str] | None:
        value = self._get("source")
        return None if value is None else (str(value[0]), str(value[1]))

    @source.setter
    def source(self, value: tuple[str, str] | None) -> None:
        self._put("source", None if value is None else [str(value[0]), str(value[1])])

    @property
    def n_rows(self) -> int | None:
        return self._record.n_rows

    @n_rows.setter
    def n_rows(self, value: int | None) -> None:
        self._record.n_rows = value

    def copy(self) -> ElementMeta:
        """A free-standing copy for a derived object: same transformations, keys and source; row count unknown."""
        out = ElementMeta()
        out._data = self.to_json()
        return out

    def __deepcopy__(self, memo: dict[int, Any]) -> ElementMeta:
        return self.copy()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ElementMeta):
            return NotImplemented
        return self.to_json() == other.to_json() and self.n_rows == other.n_rows

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in (*_FIELDS, "n_rows"))
        return f"ElementMeta({fields})"


def _attrs_of(element: Any) -> dict | None:
    """The attrs dict that holds an element's metadata: ``.attrs``, or the ``_meta.attrs`` of a dask frame."""
    try:
        attrs = element.attrs
    except (AttributeError, NotImplementedError):
        attrs = None
    if not isinstance(attrs, dict) and hasattr(type(element), "__dask_graph__"):
        # dask collections: the meta frame, carried by derivations (also when another library, e.g. spatialdata
        # imported by squidpy, registers an ``attrs`` accessor of its own on dask frames)
        attrs = getattr(getattr(element, "_meta", None), "attrs", None)
    return attrs if isinstance(attrs, dict) else None


def _is_meta(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("transformations"), dict)


def set_meta(element: Any, meta: ElementMeta) -> None:
    """Store ``meta`` in ``element``'s attrs (a copy of its JSON) and its row count in the element's record."""
    attrs = _attrs_of(element)
    if attrs is None:
        raise TypeError(
            f"cannot attach spatial metadata to an object of type {type(element).__name__} (it has no attrs)"
        )
    attrs[ATTRS_KEY] = meta.to_json()
    record = record_of(element)
    if record is not None:
        record.n_rows = meta.n_rows


def has_meta(element: Any) -> bool:
    """Whether spatial metadata is attached to ``element``."""
    attrs = _attrs_of(element)
    return attrs is not None and _is_meta(attrs.get(ATTRS_KEY))


def get_meta(element: Any, *, create: bool = False) -> ElementMeta:
    """The metadata of ``element``, bound to it (changes are stored in the element's attrs).

    With ``create=True`` an element without metadata gets an empty one; otherwise a ``ValidationError``.
    """
    attrs = _attrs_of(element)
    if attrs is not None and _is_meta(attrs.get(ATTRS_KEY)):
        return ElementMeta._bound(attrs, record_of(element))
    if create and attrs is not None:
        attrs[ATTRS_KEY] = {"transformations": {}}
        return ElementMeta._bound(attrs, record_of(element))
    kind_name = type(element).__name__
    if kind_name in ("DataArray", "DataTree", "Dataset"):
        model, lost = (
            "tissuestack.Image2DModel.parse (or Labels2DModel, the 3D models)",
            "xarray arithmetic drops attrs unless xr.set_options(keep_attrs=True)",
        )
    elif kind_name == "GeoDataFrame":
        model, lost = "tissuestack.ShapesModel.parse", "a frame built anew from computed data has none"
    else:
        model, lost = "tissuestack.PointsModel.parse", "a frame built anew from computed data has none"
    raise ValidationError(
        f"no spatial metadata is attached to this {kind_name}: parse it with {model} or take it from a "
        f"SpatialData object ({lost}); the model's parse(..., transformations=...) attaches it again"
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
    meta.transformations = {**meta.transformations, cs: transformation}


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
    meta.transformations = {k: v for k, v in meta.transformations.items() if k != to_coordinate_system}


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
    set_meta(target, get_meta(source).copy())
