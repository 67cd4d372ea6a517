"""Tables codec (docs/format.md §7): an AnnData in anndata's own Zarr encoding, plus spatialdata group
attributes.

Write
-----
``anndata.io.write_elem`` writes the table into ``tables/<name>`` in the Zarr format of the store (v3 arrays
sharded, as the reference writes them; nullable pandas strings allowed). ``uns["spatialdata_attrs"]`` (which
elements the table annotates) is written by anndata like any ``uns`` entry, except that an entry whose three
keys are all ``None`` is left out (docs/format.md §7.2: present with all three keys, or absent). Then the
table group gets, next to anndata's ``encoding-type`` / ``encoding-version``, the mirror read by non-AnnData
tools::

    {"spatialdata-encoding-type": "ngff:regions_table", "region": ..., "region_key": ..., "instance_key": ...,
     "version": "0.1" | "0.2"}

The two versions differ only in the Zarr format (0.1: v2, 0.2: v3).

Read
----
:func:`read_table` returns the AnnData; ``region`` stored as an array comes back as a list and missing keys of
``uns["spatialdata_attrs"]`` are filled with ``None``. With ``lazy_x=True``, ``X``, ``layers`` and ``raw.X`` are
dask arrays that read nothing until computed (``anndata.experimental.read_elem_lazy``), while ``obs``, ``var``,
``uns``, ``obsm``, ``varm``, ``obsp`` and ``varp`` are read. Both ``string-array`` and ``nullable-string-array``
indexes are accepted (anndata reads both). The authoritative annotation is ``uns``; the group-attribute mirror is
only used by :func:`describe_table`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import zarr

from tissuestack.elements import TABLE_ATTRS_KEY, table_keys_from_uns
from tissuestack.errors import FormatError, StoreError
from tissuestack.store._registry import register_codec
from tissuestack.store._root import ElementLocation
from tissuestack.store._spatial_attrs import metadata_file, where

__all__ = ["SD_ENCODING_TYPE", "TABLES_VERSIONS", "StoredTable", "describe_table", "read_table", "write_table"]

TABLES_VERSIONS: tuple[str, ...] = ("0.1", "0.2")
SD_ENCODING_TYPE = "ngff:regions_table"
_KEYS = ("region", "region_key", "instance_key")
_EAGER_SLOTS = ("obs", "var", "uns", "obsm", "varm", "obsp", "varp")
# anndata settings used while writing, when the installed anndata has them
_WRITE_SETTINGS = {"allow_write_nullable_strings": True, "auto_shard_zarr_v3": True}


# ------------------------------------------------------------------------------------------------ helpers


def _plain(value: Any) -> Any:
    """A JSON-able region / key value: ``str``, list of ``str`` or ``None``."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, np.ndarray):
        return [str(v) for v in value.ravel().tolist()] if value.ndim else str(value.item())
    if isinstance(value, Iterable):
        return [str(v) for v in value]
    return str(value)


def _annotation(adata: ad.AnnData) -> dict[str, Any] | None:
    """``uns["spatialdata_attrs"]`` as plain values (``None`` when absent)."""
    attrs = adata.uns.get(TABLE_ATTRS_KEY)
    if not isinstance(attrs, Mapping):
        return None
    return {key: _plain(attrs.get(key)) for key in _KEYS}


@contextmanager
def _anndata_settings(zarr_format: int) -> Iterator[None]:
    available = set(dir(ad.settings))
    overrides = {
        k: v for k, v in {"zarr_write_format": zarr_format, **_WRITE_SETTINGS}.items() if k in available
    }
    with ad.settings.override(**overrides), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*autosharding.*")
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        yield


def _failing_key(err: BaseException) -> str | None:
    """The anndata key being read when ``err`` was raised (anndata adds it as a note), with the group it was
    read from when the note says (``/tables/t/obs/cell_type`` + ``categories``)."""
    for note in getattr(err, "__notes__", None) or []:
        match = re.search(r"reading key '([^']*)'(?:.* from (/\S+))?", str(note))
        if match:
            key = match.group(1).strip("/")
            return f"{match.group(2).strip('/')}/{key}" if match.group(2) else key
    return None


def _read_error(loc: ElementLocation, err: BaseException) -> StoreError:
    slot = ""
    if isinstance(err, _SlotError):
        slot, err = err.slot, err.error
    inner = _failing_key(err) or ""
    if inner.startswith(f"{loc.key}/"):  # the full path inside the store
        inner, slot = inner[len(loc.key) + 1 :], ""
    if slot and inner and not inner.startswith(slot):
        inner = f"{slot}/{inner}"
    node = "/".join(p for p in (loc.key, inner or slot) if p)
    return StoreError(
        f"{loc.key}: cannot read the table: {node} is missing, truncated or corrupt ({type(err).__name__}: {err})"
    )


# ------------------------------------------------------------------------------------------------ write


def write_table(adata: ad.AnnData, parent: zarr.Group, loc: ElementLocation, version: str) -> None:
    """Write a table (format 0.1 or 0.2) into ``parent/loc.name``: anndata's encoding, then our attributes."""
    if version not in TABLES_VERSIONS:
        raise FormatError(
            f"{loc.key}: cannot write tables format version {version!r}; known: {TABLES_VERSIONS}"
        )
    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"{loc.key}: a table must be an anndata.AnnData, got {type(adata).__name__}")
    annotation = _annotation(adata)
    zarr_format = parent.metadata.zarr_format
    try:
        with _anndata_settings(zarr_format):
            ad.io.write_elem(parent, loc.name, adata)
    except (OSError, StoreError):
        raise
    except Exception as err:  # anndata cannot encode something in the table
        raise StoreError(f"{loc.key}: cannot write the table: {type(err).__name__}: {err}") from err
    group = parent[loc.name]
    if annotation is not None and all(v is None for v in annotation.values()):
        # all-null annotation: the format has "absent" for that (docs/format.md §7.2)
        uns = group["uns"]
        if TABLE_ATTRS_KEY in uns:
            del uns[TABLE_ATTRS_KEY]
    mirror = annotation or dict.fromkeys(_KEYS)
    group.attrs.update(
        {
            "spatialdata-encoding-type": SD_ENCODING_TYPE,
            "region": mirror["region"],
            "region_key": mirror["region_key"],
            "instance_key": mirror["instance_key"],
            "version": version,
        }
    )


# ------------------------------------------------------------------------------------------------ read


def _read_lazy_array(node: Any) -> Any:
    """A dask array over a dense or sparse array node; other encodings are read."""
    encoding = node.attrs.get("encoding-type") if hasattr(node, "attrs") else None
    if isinstance(node, zarr.Array) and encoding in (None, "array"):
        return ad.experimental.read_elem_lazy(node)
    if encoding in ("csr_matrix", "csc_matrix"):
        return ad.experimental.read_elem_lazy(node)
    return ad.io.read_elem(node)


def _is_null(node: Any) -> bool:
    return node.attrs.get("encoding-type") == "null"


class _SlotError(Exception):
    """Reading one slot of the table failed."""

    def __init__(self, slot: str, error: BaseException) -> None:
        super().__init__(slot, error)
        self.slot = slot
        self.error = error


@contextmanager
def _slot(name: str) -> Iterator[None]:
    try:
        yield
    except Exception as err:
        raise _SlotError(name, err) from err


def _child(group: zarr.Group, name: str) -> Any:
    """The child node ``name`` of ``group``, or ``None``; a corrupt child raises a :class:`_SlotError`."""
    with _slot(name):
        try:
            return group[name]
        except KeyError:
            return None


def _has_child(group: zarr.Group, name: str) -> bool:
    """Whether ``group`` has a child ``name`` (a corrupt child counts: reading it reports the damage)."""
    try:
        return _child(group, name) is not None
    except _SlotError:
        return True


def _read_parts(group: zarr.Group, *, lazy: bool) -> ad.AnnData:
    """Assemble an AnnData slot by slot (X, layers and raw.X as dask arrays when ``lazy``).

    Errors name the slot that failed (:class:`_SlotError`).
    """
    read_array = _read_lazy_array if lazy else ad.io.read_elem
    parts: dict[str, Any] = {}
    for slot in _EAGER_SLOTS:
        node = _child(group, slot)
        if node is not None:
            with _slot(slot):
                parts[slot] = ad.io.read_elem(node)
    node = _child(group, "X")
    if node is not None and not _is_null(node):
        with _slot("X"):
            parts["X"] = read_array(node)
    node = _child(group, "layers")
    if node is not None:
        with _slot("layers"):
            parts["layers"] = {key: read_array(node[key]) for key in sorted(node.keys())}
    node = _child(group, "raw")
    if isinstance(node, zarr.Group) and not _is_null(node):
        with _slot("raw"):
            raw_parts: dict[str, Any] = {}
            if "X" in node:
                raw_parts["X"] = read_array(node["X"])
            for name in ("var", "varm"):
                if name in node:
                    raw_parts[name] = ad.io.read_elem(node[name])
            parts["raw"] = raw_parts
    with _slot(""):
        return ad.AnnData(**parts)


def _fill_annotation(uns: MutableMapping[str, Any]) -> None:
    """``spatialdata_attrs`` keys as plain values (arrays of strings read from Zarr become lists)."""
    attrs = uns.get(TABLE_ATTRS_KEY)
    if not isinstance(attrs, Mapping):
        return
    fixed = dict(attrs)
    for key in _KEYS:
        value = fixed.get(key)
        if isinstance(value, np.ndarray):
            value = value.tolist() if value.ndim else value.item()
        fixed[key] = value
    uns[TABLE_ATTRS_KEY] = fixed


def read_table(
    group: zarr.Group, loc: ElementLocation, attrs: Mapping[str, Any], *, lazy_x: bool = False
) -> ad.AnnData:
    """Read a table element.

    Parameters
    ----------
    group, loc, attrs
        The table group, its location and its attributes.
    lazy_x
        Return ``X``, ``layers`` and ``raw.X`` as dask arrays that read nothing until computed; the other slots
        are read.

    Raises
    ------
    FormatError
        If the group is not an AnnData group.
    StoreError
        If a part of the table is missing, truncated or corrupt (the message names it).
    """
    encoding = attrs.get("encoding-type")
    if encoding is not None and encoding != "anndata":
        raise FormatError(f"{where(group, loc)}: encoding-type is {encoding!r}, expected 'anndata'")
    if encoding is None and not _has_child(group, "obs"):
        raise FormatError(
            f"{where(group, loc)}: not an AnnData group (no encoding-type 'anndata' and no obs); "
            f"cannot read table {loc.key!r}"
        )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            # slot by slot (not read_elem of the group) to name a failing slot, to read X lazily, and to read
            # groups that lost their encoding-type (a short-lived reference bug)
            adata = _read_parts(group, lazy=lazy_x)
    except (StoreError, FormatError):
        raise
    except Exception as err:
        raise _read_error(loc, err) from err
    _fill_annotation(adata.uns)
    return adata


# ------------------------------------------------------------------------------------------------ metadata only


def _length(node: Any) -> int | None:
    """Length of a dataframe column / index node from metadata only."""
    if isinstance(node, zarr.Array):
        return int(node.shape[0]) if node.ndim else None
    encoding = node.attrs.get("encoding-type")
    for child in ("values", "codes"):
        if encoding and child in node:
            return _length(node[child])
    return None


def _index_length(group: zarr.Group, slot: str) -> int | None:
    if slot not in group:
        return None
    frame = group[slot]
    index_key = frame.attrs.get("_index", "_index")
    if index_key not in frame:
        return None
    return _length(frame[index_key])


def _shape(group: zarr.Group) -> tuple[int | None, int | None]:
    if "X" in group and not _is_null(group["X"]):
        x = group["X"]
        shape = x.attrs.get("shape") if isinstance(x, zarr.Group) else x.shape
        if shape is not None and len(shape) == 2:
            return int(shape[0]), int(shape[1])
    return _index_length(group, "obs"), _index_length(group, "var")


def _regions(group: zarr.Group, attrs: Mapping[str, Any]) -> list[str] | None:
    if "region" in attrs:
        region = attrs["region"]
    else:  # stores without the mirror: the (tiny) uns entry
        path = f"uns/{TABLE_ATTRS_KEY}/region"
        if path not in group:
            return None
        region = ad.io.read_elem(group[path])
    region = _plain(region)
    if region is None:
        return None
    return [region] if isinstance(region, str) else list(region)


def describe_table(group: zarr.Group, loc: ElementLocation, attrs: Mapping[str, Any]) -> str:
    """``table 26 x 3, annotating ['blobs_labels']`` from metadata only (X and obs are not read)."""
    try:
        n_obs, n_vars = _shape(group)
        regions = _regions(group, attrs)
    except Exception as err:
        raise StoreError(
            f"{loc.key}: cannot read the table metadata ({loc.key}/{metadata_file(group)} and its children): "
            f"{type(err).__name__}: {err}"
        ) from err
    shape = f"{'?' if n_obs is None else f'{n_obs:,}'} x {'?' if n_vars is None else f'{n_vars:,}'}"
    link = f"annotating {regions}" if regions else "annotating nothing"
    return f"table {shape}, {link}"


for _version in TABLES_VERSIONS:
    register_codec("tables", _version, read=read_table, write=write_table, describe=describe_table)


# ------------------------------------------------------------------------------------------------ parts of a table
# Parts of a table that is not loaded yet, read straight from its store.
#
# Loading a table reads every slot: its obs index (one Python string per row), every obs column, X, ... and checks
# the index for uniqueness: about 1 s for 1M rows. Colouring a plot by an obs column needs only that column, the
# region and instance columns, the table's ``uns`` and the names of its columns and genes.
# :class:`StoredTable` reads exactly those, each once, for a table the container still holds as
# :class:`~tissuestack.elements._deferred.Deferred`. Its ``uns`` is a plain dict that callers may write to (scanpy's
# ``{key}_colors``); the container merges it into the table when the table is loaded, and loads such tables before
# writing them, so nothing written there is lost.


class StoredTable:
    """One not-yet-loaded table of a store (see the module notes). Any failure to read a part raises; callers
    then load the whole table, which reports the damage precisely."""

    def __init__(self, group: Any):
        self._group = group
        self._uns: dict | None = None
        self._obs_columns: list[str] | None = None
        self._var_names: pd.Index | None = None
        self._columns: dict[str, Any] = {}

    @property
    def uns_read(self) -> bool:
        """Whether :attr:`uns` was read (and so may hold changes to merge)."""
        return self._uns is not None

    @property
    def uns(self) -> dict:
        if self._uns is None:
            node = self._group["uns"] if "uns" in self._group else None
            uns = dict(ad.io.read_elem(node)) if node is not None else {}
            _fill_annotation(uns)  # as the table reader does
            self._uns = uns
        return self._uns

    def keys(self) -> tuple[list[str] | None, str | None, str | None]:
        """``(regions, region_key, instance_key)`` as :func:`tissuestack.elements.get_table_keys` gives them."""
        return table_keys_from_uns(self.uns)

    @property
    def obs_columns(self) -> list[str]:
        if self._obs_columns is None:
            order = self._group["obs"].attrs.get("column-order", [])
            self._obs_columns = [str(c) for c in (order.tolist() if hasattr(order, "tolist") else order)]
        return self._obs_columns

    @property
    def var_names(self) -> pd.Index:
        if self._var_names is None:
            var = self._group["var"]
            index_key = var.attrs.get("_index", "_index")
            self._var_names = pd.Index(ad.io.read_elem(var[index_key]))
        return self._var_names

    def has(self, key: str) -> bool:
        """Whether ``key`` is an obs column or a var name."""
        return key in self.obs_columns or key in self.var_names

    def obs_column(self, key: str) -> Any:
        """One obs column (an array, or a ``pandas.Categorical``)."""
        if key not in self._columns:
            if key not in self.obs_columns:
                raise KeyError(f"no obs column {key!r}")
            self._columns[key] = ad.io.read_elem(self._group["obs"][key])
        return self._columns[key]
