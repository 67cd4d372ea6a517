"""The ``SpatialData`` container: named elements of five kinds, their coordinate systems and table links."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any, Literal

import dask.array as da
import numpy as np
from tqdm.auto import tqdm

from tissuestack._container._graph import Node, transformation_between
from tissuestack._container._repr import format_spatialdata
from tissuestack.elements import (
    DEFAULT_COORDINATE_SYSTEM,
    KINDS,
    SPATIAL_KINDS,
    Deferred,
    ElementMeta,
    Kind,
    check_name,
    get_kind_protocol,
    get_meta,
    get_table_keys,
    has_meta,
    kind_of,
    meta_transformation,
    remove_meta_transformation,
    set_meta_transformation,
    set_table_annotates,
    table_rows,
)
from tissuestack.elements._instances import table_id_mismatch
from tissuestack.errors import StoreError, UnknownCoordinateSystemError, ValidationError
from tissuestack.store import StoreRoot
from tissuestack.store import _io as store_io
from tissuestack.transforms import BaseTransformation

__all__ = ["ElementsView", "SpatialData"]

_ANNOTATABLE: tuple[Kind, ...] = ("labels", "shapes", "points")


class ElementsView(MutableMapping):
    """Dict-like view of the elements of one kind; assigning parses the value as that kind."""

    def __init__(self, sdata: SpatialData, kind: Kind):
        self._sdata = sdata
        self._kind = kind

    def __getitem__(self, name: str) -> Any:
        if name not in self._sdata._store[self._kind]:
            raise KeyError(f"no {self._kind} element named {name!r}")
        return self._sdata._get(self._kind, name)

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
        self._root: StoreRoot | None = None  # the store this object was read from or last written to
        self._table_sources: dict[str, tuple[str, str]] = {}  # tables whose X is read lazily from a store
        self._stored_tables: dict[str, Any] = {}  # parts of tables not loaded yet (StoredTable), read on demand
        self._store_info: dict[str, Any] = {}  # formats found when read from a store
        # dask graph layer of every lazy table array read from a store -> (store, element key): tables derived
        # from them (sliced, copied) still read those files
        self._lazy_array_sources: dict[str, tuple[str, str]] = {}
        self._open_options: dict[str, Any] = {}  # how the store was opened (lazy_tables), to re-open elements
        for kind, elements in zip(KINDS, (images, labels, points, shapes, tables), strict=True):
            for name, element in (elements or {}).items():
                self._set(name, element, kind=kind, check_regions=False)
        for name, table in self._store["tables"].items():
            self._warn_missing_regions(name, table)
            self._check_table_ids(name, table, kinds=("shapes",))

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

    @property
    def pl(self) -> Any:
        """Static plots (a :class:`tissuestack.pl.PlotAccessor`): ``sdata.pl.render_shapes(...).pl.show()``.

        The plotting front end sits above the container; it is imported on first use, which also keeps
        ``import tissuestack`` from importing it (matplotlib itself is imported only when drawing).
        """
        return importlib.import_module("tissuestack.pl").PlotAccessor(self)

    # ------------------------------------------------------------------------------ dict-like access
    def __getitem__(self, name: str) -> Any:
        kind = self._kind_of.get(name)
        if kind is None:
            hint = self._case_clash(name)
            extra = f"; did you mean {hint!r}?" if hint else ""
            raise KeyError(f"no element named {name!r}{extra}")
        return self._get(kind, name)

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
        """``(name, element)`` pairs, kinds in the order images, labels, points, shapes, tables.

        Elements not loaded yet are loaded (lazily, where the kind allows) as they are reached.
        """
        chosen = KINDS if kinds is None else tuple(kinds)
        for kind in KINDS:
            if kind in chosen:
                for name in list(self._store[kind]):
                    yield name, self._get(kind, name)

    def _get(self, kind: Kind, name: str) -> Any:
        element = self._store[kind][name]
        if isinstance(element, Deferred):
            loaded = element.load()
            # elements without spatial metadata (tables) have the source of their lazy arrays tracked here
            if (
                not get_kind_protocol(kind).is_spatial
                and element.source is not None
                and _has_lazy_arrays(loaded)
            ):
                self._table_sources[name] = element.source
                for array in _lazy_arrays(loaded):
                    self._lazy_array_sources[array.name] = element.source
            stored = self._stored_tables.pop(name, None)
            if stored is not None and stored.uns_read:
                loaded.uns.update(stored.uns)  # what was written there while the table was not loaded
            self._store[kind][name] = loaded
            element = loaded
        return element

    def _stored_table(self, name: str) -> Any:
        """Parts of table ``name`` read straight from the store (a
        :class:`~tissuestack.store._tables.StoredTable`) while the table is not loaded, else ``None``
        (then use the table itself)."""
        element = self._store["tables"].get(name)
        if not isinstance(element, Deferred) or element.source is None or self._root is None:
            return None
        stored = self._stored_tables.get(name)
        if stored is None:
            try:
                stored = store_io.stored_table(self._root, name)
            except Exception:
                return None
            self._stored_tables[name] = stored
        return stored

    def is_loaded(self, name: str) -> bool:
        """Whether element ``name`` has been read (a loaded raster or points frame is still lazy dask)."""
        return not isinstance(self._store[self.kind_of(name)][name], Deferred)

    def _meta_of(self, name: str) -> ElementMeta:
        """Spatial metadata of an element, without loading it."""
        kind = self.kind_of(name)
        if not get_kind_protocol(kind).is_spatial:
            raise ValidationError(f"{name!r} is a table; tables have no coordinate transformations")
        element = self._store[kind][name]
        return element.meta if isinstance(element, Deferred) else get_meta(element)

    def _spatial_metas(self) -> Iterator[tuple[str, ElementMeta]]:
        for kind in SPATIAL_KINDS:
            for name in list(self._store[kind]):
                yield name, self._meta_of(name)

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
        protocol = kind_of(value) if kind is None else get_kind_protocol(kind)
        kind = protocol.name  # type: ignore[assignment]
        existing = self._kind_of.get(name)
        if existing is not None and existing != kind:
            raise ValidationError(
                f"cannot store {kind} element {name!r}: an element of kind {existing} has that name; delete it first"
            )
        element = value if isinstance(value, Deferred) else protocol.parse(value, name)
        if protocol.annotates_regions and check_regions:
            self._warn_missing_regions(name, element)
            self._check_table_ids(name, element, kinds=("shapes",))
        self._store[kind][name] = element
        self._kind_of[name] = kind
        self._table_sources.pop(name, None)
        self._stored_tables.pop(name, None)

    def _delete(self, name: str) -> None:
        kind = self._kind_of.pop(name)
        del self._store[kind][name]
        self._table_sources.pop(name, None)
        self._stored_tables.pop(name, None)

    # ---------------------------------------------------------------------------- coordinate systems
    @property
    def coordinate_systems(self) -> list[str]:
        """Names of every coordinate system, in order of first appearance."""
        seen: dict[str, None] = {}
        for _, meta in self._spatial_metas():
            for cs in meta.transformations:
                seen.setdefault(cs, None)
        return list(seen)

    def elements_in_coordinate_system(self, coordinate_system: str) -> list[str]:
        """Names of the spatial elements that have a transformation to ``coordinate_system``."""
        return [n for n, meta in self._spatial_metas() if coordinate_system in meta.transformations]

    def get_transformation(
        self, name: str, to_coordinate_system: str | None = None, *, get_all: bool = False
    ) -> BaseTransformation | dict[str, BaseTransformation]:
        """Transformation of element ``name`` to one coordinate system (default ``"global"``), or all of them."""
        meta = self._meta_of(name)
        try:
            return meta_transformation(meta, to_coordinate_system, get_all=get_all)
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
        set_meta_transformation(self._meta_of(name), transformation, to_coordinate_system, set_all=set_all)

    def remove_transformation(self, name: str, to_coordinate_system: str) -> None:
        """Remove the transformation of element ``name`` to ``to_coordinate_system``."""
        meta = self._meta_of(name)
        try:
            remove_meta_transformation(meta, to_coordinate_system)
        except (KeyError, ValidationError) as err:
            msg = err.args[0] if err.args else str(err)
            raise type(err)(f"element {name!r}: {msg}") from None

    def _node(self, ref: str | Any, role: str) -> Node:
        if not isinstance(ref, str):
            for kind in SPATIAL_KINDS:
                for n, e in self._store[kind].items():
                    if e is ref:
                        return Node("element", n)
            raise KeyError(f"the {role} object is not an element of this SpatialData")
        is_element = ref in self._kind_of and get_kind_protocol(self._kind_of[ref]).is_spatial
        is_cs = ref in self.coordinate_systems
        if is_element and is_cs:
            # vendor readers name an element and a coordinate system alike (Visium: both '<dataset_id>'): a source
            # is what gets transformed, so the element; a target or waypoint is where it goes, so the system
            if role == "via":
                raise ValueError(
                    f"via {ref!r} names both an element and a coordinate system; pass the element object to mean "
                    "the element"
                )
            return Node("element", ref) if role == "source" else Node("cs", ref)
        if is_element:
            return Node("element", ref)
        if is_cs:
            return Node("cs", ref)
        if ref in self._kind_of:
            raise ValidationError(f"{role} {ref!r} is a table; tables have no coordinate systems")
        raise UnknownCoordinateSystemError(
            f"{role} {ref!r} is neither an element nor a coordinate system; coordinate systems: "
            f"{self.coordinate_systems}"
        )

    def get_transformation_between(
        self, source: str | Any, target: str | Any, *, via: str | Any | None = None
    ) -> BaseTransformation:
        """The transformation from ``source`` to ``target``, each an element or a coordinate system.

        The path is found through the graph of coordinate systems, walking transformations backwards where
        they are invertible. A name that is both an element and a coordinate system (the Visium reader names
        both after the dataset) means the element as ``source`` and the coordinate system as ``target``; pass the
        element object to mean the element as a target. Several shortest paths that disagree raise an ``AmbiguousPathError`` listing them;
        pass ``via`` (an element or coordinate system on the wanted path) to choose.
        """
        graph = {n: meta.transformations for n, meta in self._spatial_metas()}
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
            raise UnknownCoordinateSystemError(
                f"unknown coordinate system(s) {unknown}; known: {sorted(known)}"
            )
        for new in mapping.values():
            if not isinstance(new, str) or not new:
                raise ValidationError(f"new coordinate system name must be a non-empty string, got {new!r}")
        final = [mapping.get(cs, cs) for cs in self.coordinate_systems]
        if len(set(final)) != len(final):
            dup = sorted({c for c in final if final.count(c) > 1})
            raise ValidationError(
                f"renaming would merge coordinate systems into {dup}; choose distinct names"
            )
        for _, meta in self._spatial_metas():
            meta.transformations = {mapping.get(cs, cs): t for cs, t in meta.transformations.items()}

    # ----------------------------------------------------------------------------------- tables
    def get_annotating_tables(self, name: str) -> list[str]:
        """Names of the tables that annotate element ``name``."""
        self.kind_of(name)
        out = []
        for table_name in list(self._store["tables"]):
            stored = self._stored_table(table_name)  # a table not loaded yet: its uns only
            try:
                region = stored.keys()[0] if stored is not None else None
            except Exception:  # unreadable uns: the loaded table reports it
                stored = None
            if stored is None:
                region, _, _ = get_table_keys(self._get("tables", table_name))
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
        return self._get("tables", name)

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

    def _check_table_ids(self, name: str, table: Any, *, kinds: tuple[str, ...], load: bool = False) -> None:
        """Refuse a table none of whose rows for an annotated element match an instance of it; warn when only
        some do. Only elements of ``kinds`` are compared (shapes cost nothing; points and labels need a pass
        over their data), and only loaded ones unless ``load``."""
        if isinstance(table, Deferred):
            return
        region, region_key, instance_key = get_table_keys(table)
        if not region or region_key not in table.obs or instance_key not in table.obs:
            return
        for r in region:
            kind = self._kind_of.get(r)
            if kind not in kinds or (not load and isinstance(self._store[kind][r], Deferred)):
                continue
            mismatch = table_id_mismatch(table, r, self._get(kind, r))
            if mismatch is None:
                continue
            n_rows, n_bad, message = mismatch
            text = f"table {name!r}: {message}"
            if n_bad == n_rows:
                raise ValidationError(
                    f"{text}. Check the instance ids (obs[{instance_key!r}]) and the region column "
                    f"(obs[{region_key!r}]); ts.match_table_to_element keeps the matching rows"
                )
            warnings.warn(f"{text}; joins and plots leave those rows out", stacklevel=4)

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
        kept = {n for n in wanted if get_kind_protocol(self._kind_of[n]).is_spatial}
        out = SpatialData(attrs=self.attrs)
        for kind in SPATIAL_KINDS:
            for name, element in self._store[kind].items():
                if name in kept:
                    out._store[kind][name] = element  # shared, loaded or not
                    out._kind_of[name] = kind
        for name, table in self.items(["tables"]):
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
            raise UnknownCoordinateSystemError(
                f"unknown coordinate system(s) {unknown}; known: {self.coordinate_systems}"
            )
        names = [n for n, meta in self._spatial_metas() if any(cs in meta.transformations for cs in wanted)]
        return self.subset(names, filter_tables=filter_tables, include_orphan_tables=include_orphan_tables)

    # ---------------------------------------------------------------------------------- storage
    @property
    def path(self) -> str | None:
        """The store this object was read from or last written to (local path or URL), if any."""
        return self._root.url if self._root is not None else None

    def _source_of(self, kind: Kind, name: str) -> tuple[str, str] | None:
        """``(store, element key)`` of the file set that lazily backs element ``name``, if any."""
        element = self._store[kind][name]
        if isinstance(element, Deferred):
            return element.source
        protocol = get_kind_protocol(kind)
        if protocol.in_memory:
            return None  # a GeoDataFrame is held in memory, whatever files it was read from
        if protocol.is_spatial:
            return get_meta(element).source if has_meta(element) else None
        if name in self._table_sources:
            return self._table_sources[name]
        for array in _lazy_arrays(element) if self._lazy_array_sources else ():
            layers = array.__dask_graph__().layers
            for layer, source in self._lazy_array_sources.items():
                if layer in layers:
                    return source
        return None

    def _sources(self) -> set[tuple[str, str]]:
        """``(store, element key)`` of every file set that lazily backs an element of this object."""
        out: set[tuple[str, str]] = set()
        for kind in KINDS:
            for name in self._store[kind]:
                src = self._source_of(kind, name)
                if src is not None:
                    out.add(src)
        return out

    def _backed_by(self, source: tuple[str, str]) -> list[str]:
        """Names of the elements of this object read lazily from ``source``."""
        return [name for name, kind in self._kind_of.items() if self._source_of(kind, name) == source]

    def _reopen(self, kind: Kind, name: str) -> None:
        """Replace element ``name`` by the element on disk now (deferred: read on first access)."""
        root = self._require_store()
        # lazy_tables applies to tables only (the readers of the other kinds take no such option)
        lazy = name in self._table_sources or self._open_options.get("lazy_tables", False)
        self._store[kind][name] = store_io.open_element(root, kind, name, lazy_tables=lazy)
        self._table_sources.pop(name, None)
        self._stored_tables.pop(name, None)

    def write(
        self,
        path: str | os.PathLike,
        *,
        overwrite: bool = False,
        zarr_format: int = 3,
        formats: Mapping[str, str] | None = None,
        consolidate_metadata: bool = True,
        storage_options: Mapping[str, Any] | None = None,
        shapes_geometry_encoding: str = "WKB",
        progress: bool | None = None,
    ) -> None:
        """Write every element to a SpatialData Zarr store at ``path`` (a local path or fsspec URL).

        The store is written to a hidden temporary sibling and swapped in when complete, so a failure never
        leaves a half-written store, nor destroys the one it was replacing.

        Parameters
        ----------
        path
            Target location. It must not exist unless ``overwrite=True``.
        overwrite
            Replace an existing store. Refused when that store lazily backs data of this object.
        zarr_format
            3 (default; SpatialData >= 0.6 reads it) or 2 (container 0.1; SpatialData >= 0.4 reads it).
        formats
            Element format versions by kind, e.g. ``{"shapes": "0.1"}`` in a v2 store for very old readers.
        consolidate_metadata
            Write consolidated metadata (fast opening; on by default).
        storage_options
            fsspec options for remote locations (credentials, endpoint_url, ...).
        shapes_geometry_encoding
            ``"WKB"`` (default) or ``"geoarrow"`` for shapes GeoParquet files.
        progress
            Show a progress bar (default: when writing to a terminal).
        """
        for name in [n for n, t in self._stored_tables.items() if t.uns_read]:
            self._get("tables", name)  # changes written to a not-loaded table's uns go into the table
        for name, table in self._store["tables"].items():
            self._check_table_ids(name, table, kinds=("shapes",), load=True)
        with _progress(self._kind_of, progress) as report:
            root = store_io.write_store(
                {k: dict(self._store[k]) for k in KINDS},
                self.attrs,
                path,
                overwrite=overwrite,
                zarr_format=zarr_format,
                formats=formats,
                consolidate_metadata=consolidate_metadata,
                storage_options=storage_options,
                protected_sources=self._sources(),
                element_options={"shapes": {"geometry_encoding": shapes_geometry_encoding}},
                progress=report,
            )
        self._root = root

    def _require_store(self) -> StoreRoot:
        if self._root is None:
            raise StoreError(
                "this SpatialData is not backed by a store: call write(path) or read_zarr(path) first"
            )
        return self._root

    def write_element(
        self,
        name: str | Iterable[str],
        *,
        overwrite: bool = False,
        formats: Mapping[str, str] | None = None,
        shapes_geometry_encoding: str = "WKB",
    ) -> None:
        """Write element(s) ``name`` into the backing store (swapped in only when completely written).

        An element derived lazily from its own files (``sdata["tx"] = tx[tx.qv > 20]`` on a store-backed
        ``tx``) may replace them: the new files are written completely before the old ones are swapped away,
        and the element is then re-opened from the new files, so the object keeps working. Frames you still
        hold in variables from before the write read the old files and no longer work. Refused when another
        element of this object still reads those files (write or load it first).
        """
        root = self._require_store()
        for one in [name] if isinstance(name, str) else list(name):
            kind = self.kind_of(one)
            element = self._store[kind][one]
            key = (root.url, f"{kind}/{one}")
            if isinstance(element, Deferred) and element.source == key:
                # unchanged on disk: only its metadata may have changed
                store_io.update_element_metadata(
                    root.url, kind, one, element, storage_options=root.storage_options
                )
                continue
            source = self._source_of(kind, one)
            others = [n for n in self._backed_by(key) if n != one]
            if others and overwrite:
                raise StoreError(
                    f"{root.url}: cannot replace {key[1]}: element(s) {others} of this object still read its files; "
                    "write them first, load them into memory, or delete them from the object"
                )
            store_io.write_element(
                root.url,
                kind,
                one,
                self._get(kind, one),
                overwrite=overwrite,
                formats=formats,
                storage_options=root.storage_options,
                element_options={"shapes": {"geometry_encoding": shapes_geometry_encoding}},
                replace_own_source=True,  # checked above: nothing else of this object reads those files
            )
            if source is not None and source[0] == root.url:
                # read lazily from this store's files (its own, replaced now, or another element's): read the
                # files just written instead, so that the object does not depend on files that may change
                self._reopen(kind, one)

    def delete_element(self, name: str, *, tables: Literal["error", "update"] = "error") -> None:
        """Delete element ``name`` from the backing store.

        An element held in memory is kept in the object; one read lazily from the deleted files is removed
        from the object too (it cannot be read any more). Refused while another element of the object reads
        those files.

        Parameters
        ----------
        name
            The element to delete.
        tables
            What to do when tables annotate the element: ``"error"`` (default) refuses, naming them;
            ``"update"`` drops their rows that annotate it (in the object and in the store; a table left
            without rows is deleted).
        """
        if tables not in ("error", "update"):
            raise ValueError(f"tables must be 'error' or 'update', got {tables!r}")
        root = self._require_store()
        kind = self._kind_of.get(name)
        if kind is None:
            kind = _kind_on_disk(root, name)
        key = f"{kind}/{name}"
        backed = self._backed_by((root.url, key))
        others = [n for n in backed if n != name]
        if others:
            raise StoreError(
                f"{root.url}: element(s) {others} of this object are read lazily from {key}; delete them from the "
                "object (del sdata[name]) or load them into memory before deleting its files"
            )
        annotating = self._tables_annotating(name, root) if kind in _ANNOTATABLE else []
        if annotating and tables == "error":
            raise StoreError(
                f"{root.url}: table(s) {annotating} annotate {name!r}; deleting it would leave them pointing at "
                "nothing. Delete or update those tables first, or pass tables='update' to drop their rows for "
                f"{name!r}"
            )
        if not root.exists(kind, name):
            raise KeyError(f"{root.url}: no element {key} in the store")
        for table_name in annotating:
            self._drop_table_region(table_name, name, root)
        store_io.delete_element(root.url, kind, name, storage_options=root.storage_options)
        if name in backed:
            self._delete(name)

    def _tables_annotating(self, name: str, root: StoreRoot) -> list[str]:
        """Tables (of this object, or only in the store) whose region list includes ``name``."""
        on_disk = store_io.table_regions(root)
        out = []
        for table_name, element in self._store["tables"].items():
            if isinstance(element, Deferred):
                region = (
                    on_disk.get(table_name, [])
                    if element.source == (root.url, f"tables/{table_name}")
                    else (get_table_keys(element.load())[0])
                )
            else:
                region = get_table_keys(element)[0]
            if name in (region or []):
                out.append(table_name)
        out.extend(t for t, region in on_disk.items() if t not in self._kind_of and name in region)
        return out

    def _drop_table_region(self, table_name: str, region_name: str, root: StoreRoot) -> None:
        """Drop the rows of ``table_name`` annotating ``region_name``, in the object and in the store."""
        in_object = table_name in self._kind_of
        table = (
            self._get("tables", table_name)
            if in_object
            else store_io.open_element(root, "tables", table_name).load()
        )
        region, _, _ = get_table_keys(table)
        rest = [r for r in region if r != region_name]
        kept = _filter_table_to_regions(table, rest, table_name)
        on_disk = root.exists("tables", table_name)
        if kept is None:
            if on_disk:
                store_io.delete_element(root.url, "tables", table_name, storage_options=root.storage_options)
            if in_object:
                self._delete(table_name)
            return
        if in_object:
            self._set(table_name, kept, kind="tables", check_regions=False)
        if on_disk:
            store_io.write_element(
                root.url,
                "tables",
                table_name,
                kept,
                overwrite=True,
                storage_options=root.storage_options,
                replace_own_source=True,
            )
            if in_object:
                self._reopen("tables", table_name)

    def write_metadata(
        self,
        names: str | Iterable[str] | None = None,
        *,
        transformations: bool = True,
        channel_names: bool = True,
        attrs: bool = True,
    ) -> None:
        """Write only metadata to the backing store: transformations, channel names and the root attrs.

        Consolidated metadata is kept in sync. Elements that are not in the store are skipped.
        """
        root = self._require_store()
        chosen = list(self) if names is None else ([names] if isinstance(names, str) else list(names))
        for name in chosen:
            kind = self.kind_of(name)
            if not get_kind_protocol(kind).is_spatial or not root.exists(kind, name):
                continue
            store_io.update_element_metadata(
                root.url,
                kind,
                name,
                self._store[kind][name],
                transformations=transformations,
                channel_names=channel_names,
                storage_options=root.storage_options,
                reconsolidate=False,
            )
        if attrs:
            store_io.write_root_attrs(root.url, self.attrs, storage_options=root.storage_options)
        else:
            store_io.reconsolidate_if_needed(root)

    # ---------------------------------------------------------------------------------- checks
    def validate(self) -> None:
        """Validate every element and every table link; raise on the first problem."""
        for name, element in self.items():
            get_kind_protocol(self._kind_of[name]).parse(element, name)
        for name, table in self.items(["tables"]):
            region, _, _ = get_table_keys(table)
            for r in region or []:
                if r in self._kind_of and self._kind_of[r] not in _ANNOTATABLE:
                    raise ValidationError(
                        f"table {name!r} annotates {r!r}, a {self._kind_of[r]} element; tables annotate labels, "
                        "shapes or points"
                    )
            self._check_table_ids(name, table, kinds=_ANNOTATABLE, load=True)

    def __repr__(self) -> str:
        return format_spatialdata(self)

    def _repr_pretty_(self, p, cycle) -> None:  # IPython
        p.text(repr(self))


def _filter_table_to_regions(table: Any, regions: list[str], name: str) -> Any:
    """Rows of ``table`` that annotate ``regions``, with the region list updated; ``None`` if none remain."""
    if not regions:
        return None
    region, region_key, _ = get_table_keys(table)
    if set(regions) == set(region):
        return table
    mask = np.asarray(table.obs[region_key].isin(regions))
    return table_rows(table, mask, regions=regions, name=name)


def _lazy_arrays(table: Any) -> list[da.Array]:
    arrays = [table.X, *table.layers.values()]
    return [a for a in arrays if isinstance(a, da.Array)]


def _has_lazy_arrays(table: Any) -> bool:
    return bool(_lazy_arrays(table))


def _kind_on_disk(root: StoreRoot, name: str) -> Kind:
    for kind in KINDS:
        if root.exists(kind, name):
            return kind
    raise KeyError(f"{root.url}: no element named {name!r} in the store")


@contextlib.contextmanager
def _progress(kind_of: Mapping[str, str], enabled: bool | None):
    """A callback counting written elements (a tqdm bar when enabled; by default when stderr is a terminal)."""
    show = sys.stderr.isatty() if enabled is None else enabled
    if not show or not kind_of:
        yield lambda _what: None
        return
    with tqdm(total=len(kind_of), desc="writing", unit="element") as bar:

        def report(what: str) -> None:
            bar.set_postfix_str(what)
            bar.update(1)

        yield report
