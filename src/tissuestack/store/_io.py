"""Reading and writing whole stores and single elements, safely.

Safety rules
------------
* A full write goes to a hidden temporary sibling (``.<name>.tmp-<id>``) and is swapped in only when complete;
  the old store is moved aside first and deleted last, so a failure at any point leaves it intact.
* A single element is written to ``<kind>/.<name>.tmp-<id>`` and swapped in the same way; readers skip names
  starting with ``.``.
* Nothing is replaced without ``overwrite=True``; files that lazily back the data being written are never
  replaced; a folder that is not a Zarr store is never replaced.
* Consolidated metadata is rewritten after every change of the store's structure or metadata.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import zarr

from tissuestack._compute import import_distributed
from tissuestack._version import __version__
from tissuestack.elements import KINDS, ElementKind, get_kind_protocol, get_meta, has_meta
from tissuestack.elements._deferred import Deferred
from tissuestack.elements._naming import check_name
from tissuestack.errors import FormatError, StoreError
from tissuestack.store import _points, _raster, _shapes, _tables  # noqa: F401 - registers the codecs
from tissuestack.store._check import remove_stale_temporaries
from tissuestack.store._registry import (
    CONTAINER_FOR_ZARR,
    CONTAINER_FORMATS,
    DEFAULT_ELEMENT_VERSIONS,
    ELEMENT_VERSIONS,
)
from tissuestack.store._root import ElementLocation, StoreRoot, quiet_zarr
from tissuestack.store._tables import StoredTable

__all__ = [
    "OpenedStore",
    "consolidate",
    "delete_element",
    "elements_on_disk",
    "labels_list",
    "open_store",
    "reconsolidate_if_needed",
    "update_element_metadata",
    "write_element",
    "write_root_attrs",
    "write_store",
]

OnBad = Literal["error", "warn"]
# elements written at the same time by a full write
ELEMENT_WORKERS = 2
SD_ATTRS = "spatialdata_attrs"


def software_version() -> str:
    return f"tissuestack-{__version__}"


# ------------------------------------------------------------------------------------------------ reading


@dataclass
class OpenedStore:
    """What opening a store found: its location, formats, user attributes and (deferred) elements."""

    root: StoreRoot
    zarr_format: int
    container_version: str
    attrs: dict[str, Any]
    elements: dict[str, dict[str, Deferred]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # "kind/name" -> element format version
    consolidated: bool = False
    broken: dict[str, str] = field(default_factory=dict)  # "kind/name" -> why it was skipped (mode "warn")


def _wanted(selection: Iterable[str] | None) -> tuple[set[str], set[str]]:
    if selection is None:
        return set(KINDS), set()
    items = [selection] if isinstance(selection, str) else list(selection)
    kinds = {s for s in items if s in KINDS}
    names = {s for s in items if s not in KINDS}
    return kinds, names


def _loader(protocol: ElementKind, version: str, root: StoreRoot, name: str, options: Mapping[str, Any]):
    def load() -> Any:
        group = root.open_group()
        with quiet_zarr():
            g = group[f"{protocol.name}/{name}"]
        loc = ElementLocation(root, protocol.name, name)
        try:
            # the metadata read when the store was opened is attached by the Deferred element
            return protocol.read(g, loc, g.attrs.asdict(), version, attach_meta=False, **options)
        except (StoreError, FormatError):
            raise
        except Exception as err:  # corrupt data surfaces as whatever the decoder raises
            raise StoreError(f"{loc}: cannot read the element: {type(err).__name__}: {err}") from err

    return load


def _children(root: StoreRoot, type_group: zarr.Group, kind: str) -> list[str]:
    """Element names in a kind group; from a listing of the folder when a child's metadata cannot be parsed
    (that child is then reported as broken by name, instead of hiding its siblings)."""
    try:
        return sorted(n for n, _ in type_group.groups() if not n.startswith("."))
    except Exception:
        names = []
        for entry in root.fs.ls(root.join(kind), detail=False):
            name = str(entry).rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]
            if not name.startswith(".") and any(root.exists(kind, name, m) for m in ("zarr.json", ".zgroup")):
                names.append(name)
        return sorted(names)


def _inside_store_hint(root: StoreRoot) -> str:
    """``"; it is <folder> inside the store <root>: ..."`` when ``root`` lies in a kind folder (``images``,
    ``shapes``, ...) of a Zarr store; ``""`` otherwise (and without any I/O when no parent is a kind folder)."""
    for parent, inside in _parents(root):
        if inside.split("/", 1)[0] not in KINDS:
            continue
        if parent.exists("zarr.json") or parent.exists(".zgroup"):
            return f"; it is the folder {inside!r} inside the store {parent.url}: open {parent.url} instead"
    return ""


def _parents(root: StoreRoot, depth: int = 4) -> list[tuple[StoreRoot, str]]:
    out = []
    path = root.path.rstrip("/\\")
    parts: list[str] = []
    for _ in range(depth):
        split = os.path.split if root.is_local else posixpath.split
        parent, base = split(path)
        if not parent or parent == path:
            break
        parts.insert(0, base)
        out.append((root.with_path(parent), "/".join(parts)))
        path = parent
    return out


def open_store(
    location: Any,
    *,
    selection: Iterable[str] | None = None,
    on_bad_elements: OnBad = "error",
    storage_options: Mapping[str, Any] | None = None,
    lazy_tables: bool = False,
) -> OpenedStore:
    """Open a store: read metadata only and return deferred elements.

    ``selection`` names element kinds and/or element names. ``on_bad_elements="warn"`` skips elements whose
    metadata or files are broken (with a warning naming them) instead of raising.
    """
    if on_bad_elements not in ("error", "warn"):
        raise ValueError(f"on_bad_elements must be 'error' or 'warn', got {on_bad_elements!r}")
    root = StoreRoot.open(location, storage_options=storage_options, read_only=True)
    try:
        group = root.open_group()
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError) as err:
        hint = _inside_store_hint(root)
        if hint:
            raise StoreError(f"{root.url} is not the root of a SpatialData store{hint}") from err
        raise StoreError(f"{root.url}: no Zarr store found there") from err
    except Exception as err:
        hint = _inside_store_hint(root)
        if hint:
            raise StoreError(f"{root.url} is not the root of a SpatialData store{hint}") from err
        raise StoreError(f"{root.url}: cannot open the store: {type(err).__name__}: {err}") from err
    zarr_format = group.metadata.zarr_format
    root_attrs = group.attrs.asdict()
    sd = root_attrs.get(SD_ATTRS)
    hint = _inside_store_hint(root)
    if hint:
        raise StoreError(f"{root.url} is not the root of a SpatialData store{hint}")
    container_version = str(sd.get("version", "0.1")) if isinstance(sd, Mapping) else "0.1"
    if container_version not in CONTAINER_FORMATS:
        msg = f"{root.url}: unknown SpatialData container version {container_version!r}; known {sorted(CONTAINER_FORMATS)}"
        if on_bad_elements == "error":
            raise FormatError(msg)
        warnings.warn(msg, stacklevel=3)
    user_attrs = {k: v for k, v in root_attrs.items() if k != SD_ATTRS} if isinstance(sd, Mapping) else {}
    consolidated = group.metadata.consolidated_metadata is not None
    opened = OpenedStore(root, zarr_format, container_version, user_attrs, consolidated=consolidated)

    kinds, names = _wanted(selection)
    found: set[str] = set()
    for kind in KINDS:
        opened.elements[kind] = {}
        protocol = get_kind_protocol(kind)
        if kind not in kinds and not names:
            continue
        with quiet_zarr():
            if kind not in group:
                continue
            type_group = group[kind]
            children = _children(root, type_group, kind)
        for name in children:
            if names and name not in names and kind not in kinds:
                continue
            if not names and kind not in kinds:
                continue
            found.add(name)
            loc = ElementLocation(root, kind, name)
            check_name(
                name, f"{kind} element name"
            )  # invalid names are refused in every mode, as by the reference
            try:
                with quiet_zarr():
                    g = type_group[name]
                attrs = g.attrs.asdict()
                version = protocol.read_version(attrs, g, loc)
                codec = protocol.codec(version)
                if codec.read is None:
                    raise FormatError(f"{loc}: reading {kind} format {version} is not supported")
                meta = protocol.read_meta(attrs, g, loc)
                description = codec.describe(g, loc, attrs) if codec.describe else None
            except Exception as err:
                if on_bad_elements == "error":
                    if isinstance(err, FormatError | StoreError):
                        raise
                    raise StoreError(f"{loc}: {type(err).__name__}: {err}") from err
                warnings.warn(f"skipping {kind}/{name}: {err}", stacklevel=3)
                opened.broken[loc.key] = str(err)
                continue
            opened.elements[kind][name] = Deferred(
                kind,
                meta,
                _loader(protocol, version, root, name, protocol.read_options(lazy_tables=lazy_tables)),
                (lambda d=description: d) if description is not None else None,
                (root.url, loc.key),
            )
            opened.versions[loc.key] = version
    missing = names - found
    if missing:
        raise KeyError(f"{root.url}: no element(s) named {sorted(missing)} in the store")
    return opened


def table_regions(root: StoreRoot) -> dict[str, list[str]]:
    """Table name -> the elements it annotates, for every table of a store (metadata only)."""
    from tissuestack.store._tables import _regions

    out: dict[str, list[str]] = {}
    with quiet_zarr():
        group = root.open_group()
        if "tables" not in group:
            return out
        for name, g in group["tables"].groups():
            if not name.startswith("."):
                out[name] = _regions(g, g.attrs.asdict()) or []
    return out


def stored_table(root: StoreRoot, name: str) -> StoredTable:
    """Parts of table ``name`` of a store, read on demand without loading the table."""
    group = root.open_group()
    with quiet_zarr():
        return StoredTable(group[f"tables/{name}"])


def open_element(root: StoreRoot, kind: str, name: str, *, lazy_tables: bool = False) -> Deferred:
    """Open one element of a store again (metadata only), e.g. after its files were replaced."""
    opened = open_store(
        root.url, selection=[name], storage_options=root.storage_options, lazy_tables=lazy_tables
    )
    element = opened.elements.get(kind, {}).get(name)
    if element is None:
        raise StoreError(f"{root.url}: {kind}/{name} is not in the store")
    return element


# ------------------------------------------------------------------------------------------------ writing


def _tmp_name(name: str, tag: str) -> str:
    return f".{name}.{tag}-{uuid.uuid4().hex[:8]}"


def _is_zarr_root(root: StoreRoot) -> bool:
    return root.exists("zarr.json") or root.exists(".zgroup")


def refuse_non_store(root: StoreRoot) -> None:
    """Raise when ``root`` exists and is a file or a non-empty folder that is not a Zarr store: such a location
    is never replaced, with or without ``overwrite``."""
    if not root.fs.isdir(root.path):
        raise StoreError(
            f"{root.url} exists and is a file, not a Zarr store; it is never replaced: write to another path"
        )
    if not _is_zarr_root(root) and root.fs.ls(root.path):
        raise StoreError(
            f"{root.url} exists and is a folder that is not a Zarr store; it is never replaced, even with "
            "overwrite=True: write to another path (or remove that folder yourself)"
        )


def _resolve_versions(zarr_format: int, formats: Mapping[str, str] | None) -> dict[str, str]:
    if zarr_format not in DEFAULT_ELEMENT_VERSIONS:
        raise FormatError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    versions = dict(DEFAULT_ELEMENT_VERSIONS[zarr_format])
    for kind, version in (formats or {}).items():
        if kind not in versions:
            raise FormatError(f"formats: unknown element kind {kind!r}; expected one of {list(versions)}")
        allowed = ELEMENT_VERSIONS[zarr_format][kind]
        if version not in allowed:
            raise FormatError(
                f"formats: {kind} format {version!r} cannot be written in a Zarr v{zarr_format} store; "
                f"allowed: {list(allowed)}"
            )
        versions[kind] = version
    return versions


def _check_user_attrs(attrs: Mapping[str, Any]) -> None:
    if SD_ATTRS in attrs:
        raise StoreError(
            f"user attrs may not contain the key {SD_ATTRS!r}: it is reserved for the format version"
        )


def _root_attrs(container_version: str, attrs: Mapping[str, Any]) -> dict[str, Any]:
    _check_user_attrs(attrs)
    return {
        SD_ATTRS: {"version": container_version, "spatialdata_software_version": software_version()},
        **attrs,
    }


def _sources_inside(root: StoreRoot, sources: Iterable[tuple[str, str]]) -> list[str]:
    return sorted({key for url, key in sources if url == root.url})


def _set_labels_list(labels_group: zarr.Group, names: list[str]) -> None:
    if labels_group.metadata.zarr_format == 3:
        labels_group.attrs.update({"ome": {"labels": names}})
    else:
        labels_group.attrs.update({"labels": names})


def labels_list(labels_group: zarr.Group) -> list[str]:
    attrs = labels_group.attrs.asdict()
    listed = attrs.get("ome", {}).get("labels") if "ome" in attrs else attrs.get("labels")
    return list(listed or [])


def consolidate(root: StoreRoot) -> None:
    """Rewrite the consolidated metadata of the whole store."""
    with quiet_zarr():
        g = zarr.open_group(root.zarr_store(read_only=False), mode="r+", use_consolidated=False)
        zarr.consolidate_metadata(root.zarr_store(read_only=False), zarr_format=g.metadata.zarr_format)


def write_store(
    elements: Mapping[str, Mapping[str, Any]],
    attrs: Mapping[str, Any],
    location: Any,
    *,
    overwrite: bool = False,
    zarr_format: int = 3,
    formats: Mapping[str, str] | None = None,
    consolidate_metadata: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    protected_sources: Iterable[tuple[str, str]] = (),
    element_options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
    fail_after: str | None = None,
) -> StoreRoot:
    """Write a whole store into a temporary sibling, then swap it into ``location``.

    ``elements`` maps kind -> name -> element (in memory, lazy, or :class:`Deferred`). ``protected_sources``
    are ``(store, element key)`` pairs that lazily back the data being written: replacing such a store is
    refused. ``element_options`` passes per-kind writer options (e.g. ``{"shapes": {"geometry_encoding":
    "geoarrow"}}``). ``fail_after`` is for tests: raise right after writing that element (``"kind/name"``), to
    prove that a failed write leaves the old store intact.
    """
    versions = _resolve_versions(zarr_format, formats)
    _check_user_attrs(attrs)
    root = StoreRoot.open(location, storage_options=storage_options, read_only=False)
    if root.fs.exists(root.path):
        refuse_non_store(root)
        if not overwrite:
            raise StoreError(f"{root.url} exists; pass overwrite=True to replace it")
        backing = _sources_inside(root, protected_sources)
        if backing:
            raise StoreError(
                f"{root.url} holds files that lazily back the data being written ({', '.join(backing)}); "
                "replacing the store would destroy that data. Write to another location, or load those "
                "elements into memory first"
            )
    tmp = root.sibling("tmp")
    note = progress or (lambda _what: None)

    def written(what: str) -> None:
        if fail_after is not None and what == fail_after:
            raise RuntimeError(f"injected failure after writing {what}")

    try:
        with quiet_zarr():
            group = zarr.open_group(tmp.zarr_store(read_only=False), mode="w", zarr_format=zarr_format)
        group.attrs.update(_root_attrs(CONTAINER_FOR_ZARR[zarr_format], attrs))
        jobs = []
        for kind in KINDS:
            items = elements.get(kind) or {}
            if not items:
                continue
            with quiet_zarr():
                type_group = group.require_group(kind)
            if get_kind_protocol(kind).listed_in_store:
                _set_labels_list(type_group, list(items))
            jobs.extend(
                (type_group, ElementLocation(tmp, kind, name), element) for name, element in items.items()
            )

        def write(job: tuple[zarr.Group, ElementLocation, Any]) -> None:
            type_group, loc, element = job
            _write_one(element, type_group, loc, versions[loc.kind], element_options)
            written(loc.key)
            note(loc.key)

        # elements are independent: write them concurrently, so that one element's Python-bound work (anndata,
        # geopandas) overlaps another's GIL-free work (compression, Parquet encoding, sorting)
        if len(jobs) > 1 and any(get_kind_protocol(job[1].kind).lazy_rows for job in jobs):
            import_distributed()  # dask-expr imports it on a points element's first compute: once, not per thread
        with ThreadPoolExecutor(max_workers=max(1, min(ELEMENT_WORKERS, len(jobs)))) as pool:
            for future in [pool.submit(write, job) for job in jobs]:
                future.result()
        if consolidate_metadata:
            consolidate(tmp)
        _swap(root, tmp)
    except BaseException:
        with contextlib.suppress(Exception):
            tmp.rm()
        raise
    remove_stale_temporaries(root)  # left beside the store by earlier interrupted writes
    return root


def _write_one(
    element: Any,
    type_group: zarr.Group,
    loc: ElementLocation,
    version: str,
    element_options: Mapping[str, Mapping[str, Any]] | None,
) -> None:
    options = dict((element_options or {}).get(loc.kind, {}))
    get_kind_protocol(loc.kind).write(element, type_group, loc, version, **options)


def _swap(target: StoreRoot, tmp: StoreRoot) -> None:
    """Move ``tmp`` into ``target``; an existing ``target`` is moved aside first and deleted last."""
    old = None
    if target.fs.exists(target.path):
        old = target.sibling("old")
        target.move(target.path, old.path)
    try:
        target.move(tmp.path, target.path)
    except BaseException:
        if old is not None:  # put the old store back
            target.move(old.path, target.path)
        raise
    if old is not None:
        old.rm()


def _open_existing(location: Any, storage_options: Mapping[str, Any] | None) -> tuple[StoreRoot, zarr.Group]:
    root = StoreRoot.open(location, storage_options=storage_options, read_only=False)
    if not _is_zarr_root(root):
        raise StoreError(f"{root.url}: no Zarr store there; write the whole object first")
    with quiet_zarr():
        group = zarr.open_group(root.zarr_store(read_only=False), mode="r+", use_consolidated=False)
    return root, group


def elements_on_disk(group: zarr.Group) -> dict[str, str]:
    """Lower-cased element name -> "kind/name" for every element in the store."""
    out = {}
    with quiet_zarr():
        for kind in KINDS:
            if kind in group:
                for name, _ in group[kind].groups():
                    if not name.startswith("."):
                        out[name.lower()] = f"{kind}/{name}"
    return out


def write_element(
    location: Any,
    kind: str,
    name: str,
    element: Any,
    *,
    overwrite: bool = False,
    formats: Mapping[str, str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    element_options: Mapping[str, Mapping[str, Any]] | None = None,
    fail_after_data: bool = False,
    replace_own_source: bool = False,
) -> None:
    """Write one element into an existing store (temporary name, then swapped in).

    An element read lazily from the very files it replaces is refused unless ``replace_own_source``: the new
    files are complete before the old ones are swapped away, so the write itself is safe, but the caller must
    then re-open the element from the new files (as :meth:`SpatialData.write_element` does).
    """
    check_name(name, f"{kind} element name")
    root, group = _open_existing(location, storage_options)
    zarr_format = group.metadata.zarr_format
    versions = _resolve_versions(zarr_format, formats)
    existing = elements_on_disk(group).get(name.lower())
    key = f"{kind}/{name}"
    if existing is not None and existing != key:
        raise StoreError(
            f"{root.url}: cannot write {key}: the store holds {existing} (names are unique ignoring case)"
        )
    if existing is not None and not overwrite:
        raise StoreError(f"{root.url}: {key} exists; pass overwrite=True to replace it")
    protocol = get_kind_protocol(kind)
    meta = get_meta(element) if protocol.is_spatial and has_meta(element) else None
    if meta is not None and meta.source == (root.url, key) and not replace_own_source:
        raise StoreError(
            f"{root.url}: {key} is read lazily from the very files it would replace; load it into memory first "
            "or write it under another name"
        )
    with quiet_zarr():
        type_group = group.require_group(kind)
    tmp_name = _tmp_name(name, "tmp")
    tmp_loc = ElementLocation(root, kind, tmp_name)
    try:
        _write_one(element, type_group, tmp_loc, versions[kind], element_options)
        if fail_after_data:
            raise RuntimeError(f"injected failure after writing the data of {key}")
        target = root.join(kind, name)
        old_path = None
        if root.fs.exists(target):
            old_path = root.join(kind, _tmp_name(name, "old"))
            root.move(target, old_path)
        try:
            root.move(root.join(kind, tmp_name), target)
        except BaseException:
            if old_path is not None:
                root.move(old_path, target)
            raise
        if old_path is not None:
            root.fs.rm(old_path, recursive=True)
    except BaseException:
        with contextlib.suppress(Exception):
            root.rm(kind, tmp_name)
        raise
    remove_stale_temporaries(root, kind=kind, name=name)  # left by earlier interrupted writes of this element
    if protocol.listed_in_store:
        with quiet_zarr():
            labels_group = zarr.open_group(root.zarr_store(read_only=False), mode="r+", path="labels")
        listed = labels_list(labels_group)
        if name not in listed:
            _set_labels_list(labels_group, [*listed, name])
    reconsolidate_if_needed(root)


def delete_element(
    location: Any, kind: str, name: str, *, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Delete ``<kind>/<name>`` from a store (and from the labels list), keeping consolidated metadata in sync."""
    root, _ = _open_existing(location, storage_options)
    if not root.exists(kind, name):
        raise KeyError(f"{root.url}: no element {kind}/{name} in the store")
    root.rm(kind, name)
    if get_kind_protocol(kind).listed_in_store:
        with quiet_zarr():
            labels_group = zarr.open_group(root.zarr_store(read_only=False), mode="r+", path="labels")
        _set_labels_list(labels_group, [n for n in labels_list(labels_group) if n != name])
    reconsolidate_if_needed(root)


def reconsolidate_if_needed(root: StoreRoot) -> None:
    with quiet_zarr():
        g = zarr.open_group(root.zarr_store(read_only=True), mode="r")
    if g.metadata.consolidated_metadata is not None:
        consolidate(root)


def update_element_metadata(
    location: Any,
    kind: str,
    name: str,
    element: Any,
    *,
    transformations: bool = True,
    channel_names: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    reconsolidate: bool = True,
) -> None:
    """Rewrite only the transformations (and, for images, channel names) of an element on disk."""
    root, group = _open_existing(location, storage_options)
    with quiet_zarr():
        try:
            g = group[f"{kind}/{name}"]
        except KeyError:
            raise KeyError(f"{root.url}: no element {kind}/{name} in the store") from None
    protocol = get_kind_protocol(kind)
    if protocol.is_spatial:
        meta = element.meta if isinstance(element, Deferred) else get_meta(element)
        protocol.write_metadata(
            g, element, meta, transformations=transformations, channel_names=channel_names
        )
    if reconsolidate:
        reconsolidate_if_needed(root)


def write_root_attrs(
    location: Any, attrs: Mapping[str, Any], *, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Replace the user attributes of a store, keeping its container version (unlike the reference)."""
    root, group = _open_existing(location, storage_options)
    with quiet_zarr():
        was_consolidated = root.open_group().metadata.consolidated_metadata is not None
    current = group.attrs.asdict().get(SD_ATTRS) or {}
    version = current.get("version") or CONTAINER_FOR_ZARR[group.metadata.zarr_format]
    group.attrs.put(_root_attrs(str(version), attrs))  # rewrites the root document: consolidate again below
    if was_consolidated:
        consolidate(root)
