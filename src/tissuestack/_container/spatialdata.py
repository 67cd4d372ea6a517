"""The ``SpatialData`` container: named elements of five kinds, their coordinate systems and table links."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import numpy as np

from tissuestack._container._graph import Node, transformation_between
from tissuestack._container._repr import format_spatialdata
from tissuestack.elements import (
    DEFAULT_COORDINATE_SYSTEM,
    KINDS,
    SPATIAL_KINDS,
    Kind,
    TableModel,
    check_name,
    get_kind,
    get_meta,
    get_table_keys,
    parse_as,
    set_table_annotates,
)
from tissuestack.elements import get_transformation as _element_get_transformation
from tissuestack.elements import remove_transformation as _element_remove_transformation
from tissuestack.elements import set_transformation as _element_set_transformation
from tissuestack.errors import ValidationError
from tissuestack.transforms import BaseTransformation

__all__ = ["ElementsView", "SpatialData"]

_ANNOTATABLE: tuple[Kind, ...] = ("labels", "shapes", "points")


class ElementsView(MutableMapping):
    """Dict-like view of the elements of one kind; assigning parses the value as that kind."""

    def __init__(self, sdata: SpatialData, kind: Kind):
        self._sdata = sdata
        self._kind = kind

    def __getitem__(self, name: str) -> Any:
        return self._sdata._store[self._kind][name]

    def __setitem__(self, name: str, value: Any) -> None:
        self._sdata._set(name, value, kind=self._kind)

    def __delitem__(self, name: str) -> None:
        if name not in self._sdata._store[self._kind]:
            raise KeyError(f"no {self._kind} element named {name!r}")
        self._sdata._delete(name)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._sdata._store[self._kind]))

    def __len__(self) -> int:
        return len(self._sdata._store[self._kind])

    def __repr__(self) -> str:
        return f"<{self._kind}: {', '.join(self) or 'empty'}>"


class SpatialData:
    """One experiment: images, labels, points, shapes and tables in shared coordinate systems.

    Elements are addressed by name across all kinds (``sdata["cells"]``); the views ``images``, ``labels``,
    ``points``, ``shapes`` and ``tables`` hold one kind each. Names are unique case-insensitively across kinds.

    Parameters
    ----------
    images, labels, points, shapes, tables
        Mappings of name -> element. Raw data is parsed with the kind's default options; elements that were
        parsed before keep their metadata.
    attrs
        Free user metadata, saved as root attributes of a store.
    """

    def __init__(
        self,
        images: Mapping[str, Any] | None = None,
        labels: Mapping[str, Any] | None = None,
        points: Mapping[str, Any] | None = None,
        shapes: Mapping[str, Any] | None = None,
        tables: Mapping[str, Any] | None = None,
        attrs: Mapping[str, Any] | None = None,
    ):
        self._store: dict[Kind, dict[str, Any]] = {k: {} for k in KINDS}
        self._kind_of: dict[str, Kind] = {}
        self.attrs: dict[str, Any] = dict(attrs or {})
        for kind, elements in zip(KINDS, (images, labels, points, shapes, tables), strict=True):
            for name, element in (elements or {}).items():
                self._set(name, element, kind=kind, check_regions=False)
        for name, table in self._store["tables"].items():
            self._warn_missing_regions(name, table)

    # ------------------------------------------------------------------------------------------- views
    @property
    def images(self) -> ElementsView:
        return ElementsView(self, "images")

    @property
    def labels(self) -> ElementsView:
        return ElementsView(self, "labels")

    @property
    def points(self) -> ElementsView:
        return ElementsView(self, "points")

    @property
    def shapes(self) -> ElementsView:
        return ElementsView(self, "shapes")

    @property
    def tables(self) -> ElementsView:
        return ElementsView(self, "tables")

    # ------------------------------------------------------------------------------ dict-like access
    def __getitem__(self, name: str) -> Any:
        kind = self._kind_of.get(name)
        if kind is None:
            hint = self._case_clash(name)
            extra = f"; did you mean {hint!r}?" if hint else ""
            raise KeyError(f"no element named {name!r}{extra}")
        return self._store[kind][name]

    def __setitem__(self, name: str, value: Any) -> None:
        self._set(name, value, kind=None)

    def __delitem__(self, name: str) -> None:
        if name not in self._kind_of:
            raise KeyError(f"no element named {name!r}")
        self._delete(name)

    def __contains__(self, name: object) -> bool:
        return name in self._kind_of

    def __iter__(self) -> Iterator[str]:
        for kind in KINDS:
            yield from list(self._store[kind])

    def __len__(self) -> int:
        return len(self._kind_of)

    def keys(self) -> list[str]:
        return list(self)

    def items(self, kinds: Iterable[Kind] | None = None) -> Iterator[tuple[str, Any]]:
        """``(name, element)`` pairs, kinds in the order images, labels, points, shapes, tables."""
        chosen = KINDS if kinds is None else tuple(kinds)
        for kind in KINDS:
            if kind in chosen:
                yield from list(self._store[kind].items())

    def spatial_items(self) -> Iterator[tuple[str, Any]]:
        """``(name, element)`` for every image, labels, points and shapes element."""
        return self.items(SPATIAL_KINDS)

    def kind_of(self, name: str) -> Kind:
        """The kind of the element called ``name``."""
        try:
            return self._kind_of[name]
        except KeyError:
            raise KeyError(f"no element named {name!r}") from None

    def add(self, name: str, element: Any, *, kind: Kind | None = None) -> None:
        """Add a new element; unlike item assignment, refuses to replace an existing one."""
        if name in self._kind_of:
            raise KeyError(
                f"an element named {name!r} exists already ({self._kind_of[name]}); delete it first"
            )
        self._set(name, element, kind=kind)

    def replace(self, name: str, element: Any) -> None:
        """Replace an existing element by one of the same kind."""
        if name not in self._kind_of:
            raise KeyError(f"no element named {name!r} to replace")
        self._set(name, element, kind=self._kind_of[name])

    def _case_clash(self, name: str) -> str | None:
        low = name.lower()
        for other in self._kind_of:
            if other.lower() == low and other != name:
                return other
        return None

    def _set(self, name: str, value: Any, *, kind: Kind | None, check_regions: bool = True) -> None:
        check_name(name, "element name")
        clash = self._case_clash(name)
        if clash is not None:
            raise ValidationError(
                f"element name {name!r} clashes with existing element {clash!r}: names must be unique ignoring case"
            )
        if kind is None:
            kind = get_kind(value)
        existing = self._kind_of.get(name)
        if existing is not None and existing != kind:
            raise ValidationError(
                f"cannot store {kind} element {name!r}: an element of kind {existing} has that name; delete it first"
            )
        element = parse_as(kind, value, name=name)
        if kind == "tables" and check_regions:
            self._warn_missing_regions(name, element)
        self._store[kind][name] = element
        self._kind_of[name] = kind

    def _delete(self, name: str) -> None:
        kind = self._kind_of.pop(name)
        del self._store[kind][name]

    # ---------------------------------------------------------------------------- coordinate systems
    @property
    def coordinate_systems(self) -> list[str]:
        """Names of every coordinate system, in order of first appearance."""
        seen: dict[str, None] = {}
        for _, element in self.spatial_items():
            for cs in get_meta(element).transformations:
                seen.setdefault(cs, None)
        return list(seen)

    def elements_in_coordinate_system(self, coordinate_system: str) -> list[str]:
        """Names of the spatial elements that have a transformation to ``coordinate_system``."""
        return [n for n, e in self.spatial_items() if coordinate_system in get_meta(e).transformations]

    def _spatial(self, name: str) -> Any:
        kind = self.kind_of(name)
        if kind == "tables":
            raise ValidationError(f"{name!r} is a table; tables have no coordinate transformations")
        return self._store[kind][name]

    def get_transformation(
        self, name: str, to_coordinate_system: str | None = None, *, get_all: bool = False
    ) -> BaseTransformation | dict[str, BaseTransformation]:
        """Transformation of element ``name`` to one coordinate system (default ``"global"``), or all of them."""
        element = self._spatial(name)
        try:
            return _element_get_transformation(element, to_coordinate_system, get_all=get_all)
        except KeyError as err:
            raise KeyError(f"element {name!r}: {err.args[0]}") from None

    def set_transformation(
        self,
        name: str,
        transformation: BaseTransformation | Mapping[str, BaseTransformation],
        to_coordinate_system: str = DEFAULT_COORDINATE_SYSTEM,
        *,
        set_all: bool = False,
    ) -> None:
        """Set the transformation of element ``name`` to a coordinate system (or replace all with ``set_all``)."""
        _element_set_transformation(
            self._spatial(name), transformation, to_coordinate_system, set_all=set_all
        )

    def remove_transformation(self, name: str, to_coordinate_system: str) -> None:
        """Remove the transformation of element ``name`` to ``to_coordinate_system``."""
        element = self._spatial(name)
        try:
            _element_remove_transformation(element, to_coordinate_system)
        except (KeyError, ValidationError) as err:
            msg = err.args[0] if err.args else str(err)
            raise type(err)(f"element {name!r}: {msg}") from None

    def _node(self, ref: str | Any, role: str) -> Node:
        if not isinstance(ref, str):
            for n, e in self.spatial_items():
                if e is ref:
                    return Node("element", n)
            raise KeyError(f"the {role} object is not an element of this SpatialData")
        is_element = ref in self._kind_of and self._kind_of[ref] != "tables"
        is_cs = ref in self.coordinate_systems
        if is_element and is_cs:
            raise ValueError(
                f"{role} {ref!r} names both an element and a coordinate system; pass the element object to mean "
                "the element"
            )
        if is_element:
            return Node("element", ref)
        if is_cs:
            return Node("cs", ref)
        if ref in self._kind_of:
            raise ValidationError(f"{role} {ref!r} is a table; tables have no coordinate systems")
        raise KeyError(f"{role} {ref!r} is neither an element nor a coordinate system")

    def get_transformation_between(
        self, source: str | Any, target: str | Any, *, via: str | Any | None = None
    ) -> BaseTransformation:
        """The transformation from ``source`` to ``target``, each an element or a coordinate system.

        The path is found through the graph of coordinate systems, walking transformations backwards where
        they are invertible. Several shortest paths that disagree raise an ``AmbiguousPathError`` listing them;
        pass ``via`` (an element or coordinate system on the wanted path) to choose.
        """
        graph = {n: get_meta(e).transformations for n, e in self.spatial_items()}
        return transformation_between(
            graph,
            self._node(source, "source"),
            self._node(target, "target"),
            None if via is None else self._node(via, "via"),
        )

    def rename_coordinate_systems(self, mapping: Mapping[str, str]) -> None:
        """Rename coordinate systems everywhere (``{"old": "new"}``); renaming onto a used name is refused."""
        known = set(self.coordinate_systems)
        unknown = [old for old in mapping if old not in known]
        if unknown:
            raise KeyError(f"unknown coordinate system(s) {unknown}; known: {sorted(known)}")
        for new in mapping.values():
            if not isinstance(new, str) or not new:
                raise ValidationError(f"new coordinate system name must be a non-empty string, got {new!r}")
        final = [mapping.get(cs, cs) for cs in self.coordinate_systems]
        if len(set(final)) != len(final):
            dup = sorted({c for c in final if final.count(c) > 1})
            raise ValidationError(
                f"renaming would merge coordinate systems into {dup}; choose distinct names"
            )
        for _, element in self.spatial_items():
            meta = get_meta(element)
            meta.transformations = {mapping.get(cs, cs): t for cs, t in meta.transformations.items()}

    # ----------------------------------------------------------------------------------- tables
    def get_annotating_tables(self, name: str) -> list[str]:
        """Names of the tables that annotate element ``name``."""
        self.kind_of(name)
        out = []
        for table_name, table in self._store["tables"].items():
            region, _, _ = get_table_keys(table)
            if region is not None and name in region:
                out.append(table_name)
        return out

    def get_annotated_elements(self, table_name: str) -> list[str]:
        """Names of the elements that table ``table_name`` annotates (may include names not present)."""
        region, _, _ = get_table_keys(self._table(table_name))
        return list(region or [])

    def _table(self, name: str):
        if self._kind_of.get(name) != "tables":
            raise KeyError(f"no table named {name!r}")
        return self._store["tables"][name]

    def set_table_annotates(
        self,
        table_name: str,
        region: str | list[str],
        *,
        region_key: str | None = None,
        instance_key: str | None = None,
    ) -> None:
        """Retarget table ``table_name`` to annotate ``region`` (one element name or several).

        ``region_key``/``instance_key`` default to the table's current keys. A table that annotates one element
        and is retargeted to one other element has its region column renamed accordingly.
        """
        table = self._table(table_name)
        _, old_rk, old_ik = get_table_keys(table)
        region_key = region_key or old_rk
        instance_key = instance_key or old_ik
        if region_key is None or instance_key is None:
            raise ValidationError(
                f"table {table_name!r} annotates nothing yet: pass region_key and instance_key (obs columns)"
            )
        regions = [region] if isinstance(region, str) else list(region)
        for r in regions:
            if r not in self._kind_of:
                raise KeyError(f"table {table_name!r} cannot annotate {r!r}: no such element")
            if self._kind_of[r] not in _ANNOTATABLE:
                raise ValidationError(
                    f"table {table_name!r} cannot annotate {r!r}: it is a {self._kind_of[r]} element; tables "
                    "annotate labels, shapes or points"
                )
        set_table_annotates(table, region, region_key, instance_key, name=table_name)

    def _warn_missing_regions(self, name: str, table: Any) -> None:
        region, _, _ = get_table_keys(table)
        missing = [r for r in region or [] if r not in self._kind_of]
        if missing:
            warnings.warn(
                f"table {name!r} annotates {missing}, which are not elements of this SpatialData",
                stacklevel=4,
            )

    # ----------------------------------------------------------------------------------- subsets
    def subset(
        self, names: Iterable[str], *, filter_tables: bool = True, include_orphan_tables: bool = False
    ) -> SpatialData:
        """A new SpatialData with the named elements (sharing the element objects).

        Tables named explicitly are kept whole. With ``filter_tables`` (default), tables annotating any kept
        element are kept too, restricted to the rows of kept elements and with their ``region`` updated.
        ``include_orphan_tables`` also keeps tables that annotate nothing.
        """
        wanted = list(dict.fromkeys([names] if isinstance(names, str) else names))
        unknown = [n for n in wanted if n not in self._kind_of]
        if unknown:
            raise KeyError(f"unknown element(s) {unknown}")
        kept = {n for n in wanted if self._kind_of[n] != "tables"}
        out = SpatialData(attrs=self.attrs)
        for name, element in self.items(SPATIAL_KINDS):
            if name in kept:
                out._store[self._kind_of[name]][name] = element
                out._kind_of[name] = self._kind_of[name]
        for name, table in self._store["tables"].items():
            region, _, _ = get_table_keys(table)
            if name in wanted:
                new = table
            elif region is None:
                new = table if include_orphan_tables else None
            elif filter_tables:
                new = _filter_table_to_regions(table, [r for r in region if r in kept], name)
            else:
                new = None
            if new is not None:
                out._store["tables"][name] = new
                out._kind_of[name] = "tables"
        return out

    def filter_by_coordinate_system(
        self,
        coordinate_system: str | Iterable[str],
        *,
        filter_tables: bool = True,
        include_orphan_tables: bool = False,
    ) -> SpatialData:
        """The elements that have a transformation to any of the given coordinate systems (see ``subset``)."""
        wanted = [coordinate_system] if isinstance(coordinate_system, str) else list(coordinate_system)
        unknown = [cs for cs in wanted if cs not in self.coordinate_systems]
        if unknown:
            raise KeyError(f"unknown coordinate system(s) {unknown}; known: {self.coordinate_systems}")
        names = [
            n for n, e in self.spatial_items() if any(cs in get_meta(e).transformations for cs in wanted)
        ]
        return self.subset(names, filter_tables=filter_tables, include_orphan_tables=include_orphan_tables)

    # ---------------------------------------------------------------------------------- checks
    def validate(self) -> None:
        """Validate every element and every table link; raise on the first problem."""
        for name, element in self.items():
            parse_as(self._kind_of[name], element, name=name)
        for name, table in self._store["tables"].items():
            region, _, _ = get_table_keys(table)
            for r in region or []:
                if r in self._kind_of and self._kind_of[r] not in _ANNOTATABLE:
                    raise ValidationError(
                        f"table {name!r} annotates {r!r}, a {self._kind_of[r]} element; tables annotate labels, "
                        "shapes or points"
                    )

    def __repr__(self) -> str:
        return format_spatialdata(self)

    def _repr_pretty_(self, p, cycle) -> None:  # IPython
        p.text(repr(self))


def _filter_table_to_regions(table: Any, regions: list[str], name: str) -> Any:
    """Rows of ``table`` that annotate ``regions``, with the region list updated; ``None`` if none remain."""
    if not regions:
        return None
    region, region_key, instance_key = get_table_keys(table)
    if set(regions) == set(region):
        return table
    mask = np.asarray(table.obs[region_key].isin(regions))
    sub = table[mask].copy()
    sub.obs[region_key] = sub.obs[region_key].cat.remove_unused_categories()
    TableModel.parse(
        sub,
        region=regions if len(regions) > 1 else regions[0],
        region_key=region_key,
        instance_key=instance_key,
        name=name,
    )
    return sub
