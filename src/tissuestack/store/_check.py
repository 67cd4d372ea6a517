"""File-level checks of a store: metadata documents, chunk files, Parquet files and leftover temporaries.

Everything here works from listings and small reads (metadata documents, Parquet footers); only the ``deep``
checks decode data. Each check returns :class:`StoreProblem` values instead of raising, so that one run of
``tissuestack validate`` lists every problem of a store.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq
import zarr

from tissuestack.elements import KINDS
from tissuestack.store._points_files import points_files, read_footer, relative_path
from tissuestack.store._root import ElementLocation, StoreRoot, quiet_zarr
from tissuestack.store._shapes import PARQUET_FILE

__all__ = [
    "StoreProblem",
    "element_files",
    "metadata_of_store",
    "metadata_problems",
    "points_parquet_problems",
    "raster_chunk_problems",
    "remove_stale_temporaries",
    "shapes_parquet_problems",
    "stale_temporaries",
    "stale_temporary_problems",
]

METADATA_FILES = ("zarr.json", ".zattrs", ".zarray", ".zgroup", ".zmetadata")
# hidden temporaries of our safe writes: ".<name>.tmp-<8 hex>" (being written) and ".<name>.old-<8 hex>"
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<tag>tmp|old)-[0-9a-f]{8}$")
_MAX_LISTED = 12


@dataclass(frozen=True)
class StoreProblem:
    """One problem found in a store.

    Attributes
    ----------
    element
        ``"kind/name"`` of the element concerned, or ``None`` for the store as a whole.
    file
        The file or folder concerned, relative to the store root (absolute for siblings of the store), or
        ``None``.
    what
        What is wrong.
    fix
        What to do about it.
    note
        ``True`` for findings that may be intended (for example chunk files that another writer omitted
        because they held only the fill value); notes do not make ``validate`` fail.
    """

    element: str | None
    file: str | None
    what: str
    fix: str = ""
    note: bool = False

    def __str__(self) -> str:
        text = f"{self.element or 'store'}: "
        if self.file and self.file not in self.what:
            text += f"{self.file}: "
        text += self.what
        if self.fix:
            text += f" -> {self.fix}"
        return text


def _relpath(root: StoreRoot, path: str) -> str:
    base = root.path.rstrip("/\\")
    return path[len(base) :].lstrip("/\\").replace("\\", "/") if path.startswith(base) else path


def element_files(loc: ElementLocation) -> list[str]:
    """Every file below an element folder, relative to the element folder ("/" separated)."""
    base = loc.fs_path
    try:
        found = loc.root.fs.find(base)
    except (FileNotFoundError, NotADirectoryError):
        return []
    prefix = base.rstrip("/\\")
    return sorted(f[len(prefix) :].lstrip("/\\").replace("\\", "/") for f in found if f.startswith(prefix))


# ------------------------------------------------------------------------------------------------ metadata


def _bad_json(data: Any) -> str | None:
    if isinstance(data, BaseException):
        return f"cannot be read ({type(data).__name__}: {data})"
    if not data:
        return "is empty"
    try:
        json.loads(data)
    except ValueError as err:
        return f"is truncated or not valid JSON ({err}; {len(data)} bytes)"
    return None


def metadata_problems(root: StoreRoot, paths: Iterable[str], element: str | None) -> list[StoreProblem]:
    """Every metadata document (``zarr.json``, ``.zattrs``, ...) among ``paths`` (relative to the root) that
    cannot be parsed. Parsed directly from the files, so consolidated metadata cannot hide a broken one."""
    wanted = [p for p in paths if posixpath.basename(p) in METADATA_FILES]
    if not wanted:
        return []
    full = [root.join(*p.split("/")) for p in wanted]
    try:
        contents = root.fs.cat(full, on_error="return")
    except Exception:  # the filesystem cannot read several files at once: one by one
        contents = {}
        for f in full:
            try:
                contents[f] = root.fs.cat_file(f)
            except Exception as one:
                contents[f] = one
    problems = []
    for rel, f in zip(wanted, full, strict=True):
        why = _bad_json(contents.get(f, FileNotFoundError(f)))
        if why is not None:
            problems.append(
                StoreProblem(
                    element,
                    rel,
                    f"metadata file {rel} {why}",
                    "restore the file from a copy, or rewrite the element from its source"
                    if element
                    else "restore the file from a copy",
                )
            )
    return problems


# ------------------------------------------------------------------------------------------------ rasters


def _expected_chunk_keys(arr: zarr.Array) -> list[str]:
    grid_shape = arr.metadata.chunk_grid.chunk_shape  # the stored (shard) grid of sharded arrays
    counts = [math.ceil(s / c) if c else 0 for s, c in zip(arr.shape, grid_shape, strict=True)]
    if arr.ndim == 0:
        return [arr.metadata.encode_chunk_key(())]
    return [arr.metadata.encode_chunk_key(c) for c in itertools.product(*(range(n) for n in counts))]


def _listed(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def raster_chunk_problems(
    loc: ElementLocation,
    group: zarr.Group,
    files: Iterable[str],
    *,
    strict: bool,
    deep: bool,
) -> list[StoreProblem]:
    """Chunk files that a raster's level arrays imply but the listing ``files`` (relative to the element
    folder) lacks; with ``deep``, chunks that fail to decode.

    ``strict=False`` reports missing chunks as notes: writers other than tissuestack omit chunks that hold only
    the fill value, which then read back correctly.
    """
    present = set(files)
    problems: list[StoreProblem] = []
    with quiet_zarr():
        arrays = sorted(group.arrays(), key=lambda item: item[0])
    for path, arr in arrays:
        prefix = f"{path}/"
        keys = _expected_chunk_keys(arr)
        missing = [prefix + k for k in keys if prefix + k not in present]
        if missing:
            fill = arr.metadata.fill_value
            problems.append(
                StoreProblem(
                    loc.key,
                    f"{loc.key}/{missing[0]}",
                    f"{len(missing)} of {len(keys)} chunk file(s) of level {path!r} missing: "
                    f"{_listed([f'{loc.key}/{m}' for m in missing])}; they read as the fill value {fill}",
                    "expected only if the writer skipped chunks holding only the fill value; otherwise "
                    "rewrite the element from its source"
                    if not strict
                    else "rewrite the element from its source (tissuestack writes every chunk)",
                    note=not strict,
                )
            )
        if deep:
            problems.extend(_undecodable_chunks(loc, path, arr, [k for k in keys if prefix + k in present]))
    return problems


def _undecodable_chunks(loc: ElementLocation, path: str, arr: zarr.Array, keys: Sequence[str]) -> list:
    grid_shape = arr.metadata.chunk_grid.chunk_shape
    coords = list(
        itertools.product(
            *(range(math.ceil(s / c) if c else 0) for s, c in zip(arr.shape, grid_shape, strict=True))
        )
    )
    wanted = set(keys)

    def decode(coord: tuple[int, ...]) -> StoreProblem | None:
        key = arr.metadata.encode_chunk_key(coord)
        if key not in wanted:
            return None
        region = tuple(
            slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(coord, grid_shape, arr.shape, strict=True)
        )
        try:
            arr[region]
        except Exception as err:
            return StoreProblem(
                loc.key,
                f"{loc.key}/{path}/{key}",
                f"chunk file {loc.key}/{path}/{key} cannot be decoded ({type(err).__name__}: {err})",
                "rewrite the element from its source",
            )
        return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        return [p for p in pool.map(decode, coords) if p is not None]


# ------------------------------------------------------------------------------------------------ Parquet


def points_parquet_problems(loc: ElementLocation, *, deep: bool) -> list[StoreProblem]:
    """Parquet files of a points element (a dataset of part files) whose footer (or, with ``deep``, any row
    group) cannot be read. Every file is checked, however many there are."""
    try:
        files = points_files(loc)
    except Exception as err:
        return [StoreProblem(loc.key, None, str(err), "rewrite the element from its source")]
    fs = loc.root.fs
    return _parquet_problems(
        loc, files, lambda path: relative_path(loc, path), lambda path: read_footer(loc, path, fs), deep=deep
    )


def shapes_parquet_problems(loc: ElementLocation, *, deep: bool) -> list[StoreProblem]:
    """The GeoParquet file of a shapes element, if its footer (or, with ``deep``, a row group) cannot be read."""
    return _parquet_problems(
        loc,
        [loc.file(PARQUET_FILE)],
        lambda _path: f"{loc.key}/{PARQUET_FILE}",
        lambda path: _footer(loc, path),
        deep=deep,
    )


def _parquet_problems(
    loc: ElementLocation,
    files: Iterable[str],
    label_of: Callable[[str], str],
    footer_of: Callable[[str], pq.FileMetaData],
    *,
    deep: bool,
) -> list[StoreProblem]:
    fs = loc.root.fs
    problems = []
    for path in files:
        label = label_of(path)
        try:
            footer = footer_of(path)
            if deep:
                with fs.open(path, "rb") as fh:
                    pf = pq.ParquetFile(fh)
                    for i in range(footer.num_row_groups):
                        pf.read_row_group(i)
        except Exception as err:
            what = str(err) if label in str(err) else f"{label} cannot be read ({type(err).__name__}: {err})"
            if what.startswith(f"{loc.key}: "):
                what = what[len(loc.key) + 2 :]
            problems.append(StoreProblem(loc.key, label, what, "rewrite the element from its source"))
    return problems


def _footer(loc: ElementLocation, path: str) -> pq.FileMetaData:
    with loc.root.fs.open(path, "rb") as fh:
        return pq.read_metadata(fh)


# ------------------------------------------------------------------------------------------------ temporaries


def _split(root: StoreRoot) -> tuple[str, str]:
    path = root.path.rstrip("/")
    return os.path.split(path) if root.is_local else posixpath.split(path)


def _names(fs: Any, folder: str) -> list[str]:
    try:
        entries = fs.ls(folder, detail=False)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    except OSError:
        return []
    return sorted(str(e).rstrip("/").replace("\\", "/").rsplit("/", 1)[-1] for e in entries)


def stale_temporaries(root: StoreRoot, kinds: Iterable[str] = KINDS) -> list[tuple[str, str]]:
    """Hidden temporaries left by interrupted writes, as ``(full path, label)``: siblings
    ``.<store>.tmp-*``/``.<store>.old-*`` beside the store, and ``<kind>/.<name>.tmp-*``/``.old-*`` inside it.
    """
    parent, base = _split(root)
    found = []
    if parent:
        for name in _names(root.fs, parent):
            m = _TEMP.match(name)
            if m and m.group("name") == base:
                found.append((_join(root, parent, name), name))
    for kind in kinds:
        for name in _names(root.fs, root.join(kind)):
            if _TEMP.match(name):
                found.append((root.join(kind, name), f"{kind}/{name}"))
    return found


def _join(root: StoreRoot, parent: str, name: str) -> str:
    return os.path.join(parent, name) if root.is_local else posixpath.join(parent, name)


def stale_temporary_problems(root: StoreRoot) -> list[StoreProblem]:
    problems = []
    for path, label in stale_temporaries(root):
        m = _TEMP.match(label.rsplit("/", 1)[-1])
        assert m is not None
        inside = "/" in label
        what = (
            f"hidden temporary folder {label} left by an interrupted write of element "
            f"{label.split('/', 1)[0]}/{m.group('name')}"
            if inside
            else f"hidden temporary sibling {path} left by an interrupted write of this store"
        )
        problems.append(
            StoreProblem(
                f"{label.split('/', 1)[0]}/{m.group('name')}" if inside else None,
                label if inside else path,
                what,
                f"delete it (rm -r '{path}') once no write of this store is running; the next write of "
                + ("that element" if inside else "this store")
                + " removes it",
            )
        )
    return problems


def remove_stale_temporaries(root: StoreRoot, *, kind: str | None = None, name: str | None = None) -> None:
    """Delete the hidden temporaries of interrupted writes: of the whole store (beside it) when ``kind`` is
    ``None``, else of element ``kind/name`` only. Called after a successful write, which owns the location."""
    for path, label in stale_temporaries(root, kinds=() if kind is None else (kind,)):
        if kind is not None:
            m = _TEMP.match(label.rsplit("/", 1)[-1])
            if m is None or m.group("name") != name or not label.startswith(f"{kind}/"):
                continue
        try:
            root.fs.rm(path, recursive=True)
        except (FileNotFoundError, OSError):
            pass  # removed meanwhile, or not ours to remove: validate still lists it


def metadata_of_store(root: StoreRoot) -> list[str]:
    """The store's own metadata documents (root and kind groups), relative to the root."""
    out = [name for name in METADATA_FILES if root.exists(name)]
    for kind in KINDS:
        out.extend(f"{kind}/{name}" for name in METADATA_FILES if root.exists(kind, name))
    return out
