"""The Parquet files of a points element: listing in natural order, footers (read once, with a local cache for
servers without byte ranges) and a pyarrow filesystem over fsspec for remote stores."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.implementations.cached import SimpleCacheFileSystem

from tissuestack.errors import StoreError
from tissuestack.store._points_layout import DATASET, FOOTER_KEY, PARQUET_SUFFIXES
from tissuestack.store._root import ElementLocation

# ------------------------------------------------------------------------------------------------ files


def _natural_key(path: str) -> list[Any]:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def relative_path(loc: ElementLocation, path: str) -> str:
    """``points/<name>/points.parquet/part.0.parquet`` for messages."""
    base = loc.file(DATASET)
    tail = path[len(base) :].lstrip("/\\") if path.startswith(base) else path.rstrip("/").rsplit("/", 1)[-1]
    return f"{loc.key}/{DATASET}" + (f"/{tail}" if tail else "")


def points_files(loc: ElementLocation) -> list[str]:
    """Filesystem paths of the Parquet files of a points element, in natural order (``part.2`` < ``part.10``).

    ``points.parquet`` may be a folder of files or a single file. Raises ``StoreError`` when it is missing or
    holds no Parquet file.
    """
    fs = loc.root.fs
    path = loc.file(DATASET)
    try:
        entries = fs.ls(path, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        entries = None
    except OSError as err:
        raise StoreError(f"{loc.key}: cannot list {loc.key}/{DATASET}: {err}") from err
    if entries:
        files = [
            e["name"]
            for e in entries
            if e.get("type") != "directory"
            and e["name"].rstrip("/").endswith(PARQUET_SUFFIXES)
            and not e["name"].rstrip("/").rsplit("/", 1)[-1].startswith((".", "_"))
        ]
        if files:
            return sorted(files, key=_natural_key)
    try:
        is_file = fs.isfile(path)
    except OSError:
        is_file = False
    if is_file:
        return [path]
    if entries:
        raise StoreError(f"{loc.key}: {loc.key}/{DATASET} holds no Parquet file (expected part.<i>.parquet)")
    raise StoreError(
        f"{loc.key}: missing {loc.key}/{DATASET} (the points data; expected a Parquet dataset at {path})"
    )


class _NoRangeRequests(Exception):
    """The server cannot serve byte ranges (e.g. Python's ``http.server``): read whole files instead."""


def read_footer(loc: ElementLocation, path: str, fs: fsspec.AbstractFileSystem) -> pq.FileMetaData:
    try:
        if loc.root.is_local:
            return pq.read_metadata(path)
        with fs.open(path, "rb") as fh:
            return pq.read_metadata(fh)
    except FileNotFoundError as err:
        raise StoreError(f"{loc.key}: missing file {relative_path(loc, path)}") from err
    except Exception as err:  # ArrowInvalid (truncated, not Parquet), OSError
        if isinstance(err, ValueError) and "range requests" in str(err):
            raise _NoRangeRequests(str(err)) from err
        raise StoreError(
            f"{loc.key}: cannot read the Parquet footer of {relative_path(loc, path)} (truncated or corrupt?): {err}"
        ) from err


def _footers_with(
    loc: ElementLocation, files: Sequence[str], fs: fsspec.AbstractFileSystem
) -> list[pq.FileMetaData]:
    if loc.root.is_local or len(files) <= 2:
        return [read_footer(loc, f, fs) for f in files]
    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:  # remote: hide latency
        return list(pool.map(lambda f: read_footer(loc, f, fs), files))


def _url_scheme(loc: ElementLocation) -> str:
    return loc.root.url.split("://", 1)[0] if "://" in loc.root.url else ""


def _serves_byte_ranges(loc: ElementLocation, fs: fsspec.AbstractFileSystem, url: str) -> bool:
    """Whether an HTTP store's server answers range requests (probed once per opened store, 4 bytes)."""
    if loc.root.byte_ranges is None:
        try:
            loc.root.byte_ranges = len(fs.cat_file(url, start=0, end=4)) == 4
        except Exception:  # let the footer read report the problem
            return True
    return loc.root.byte_ranges


def read_footers(
    loc: ElementLocation, files: Sequence[str]
) -> tuple[list[pq.FileMetaData], fsspec.AbstractFileSystem]:
    """Footers of ``files`` and the filesystem to read the files through.

    That is the store's filesystem, except on servers without byte-range support, where whole files are
    downloaded once into a local cache and read from there.
    """
    fs = loc.root.fs
    if _url_scheme(loc) in ("http", "https") and not _serves_byte_ranges(loc, fs, files[0]):
        fs = SimpleCacheFileSystem(fs=fs)
    try:
        return _footers_with(loc, files, fs), fs
    except _NoRangeRequests:
        cached = SimpleCacheFileSystem(fs=fs)
        return _footers_with(loc, files, cached), cached


def footer_info(md: pq.FileMetaData) -> dict[str, Any]:
    raw = (md.metadata or {}).get(FOOTER_KEY)
    if not raw:
        return {}
    try:
        info = json.loads(raw)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


class _URLHandler(pafs.FSSpecHandler):
    """``FSSpecHandler`` for filesystems that need full URLs (HTTP): dask strips the protocol from paths."""

    def __init__(self, fs: fsspec.AbstractFileSystem, scheme: str) -> None:
        super().__init__(fs)
        self._prefix = f"{scheme}://"

    def _url(self, path: str) -> str:
        return path if "://" in path else self._prefix + path.lstrip("/")

    def _path(self, url: str) -> str:
        return url[len(self._prefix) :] if url.startswith(self._prefix) else url

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        infos = super().get_file_info([self._url(p) for p in paths])
        return [
            pafs.FileInfo(p, i.type, mtime=i.mtime, size=i.size) for p, i in zip(paths, infos, strict=True)
        ]

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        url_selector = pafs.FileSelector(
            self._url(selector.base_dir), selector.allow_not_found, selector.recursive
        )
        try:
            infos = super().get_file_info_selector(url_selector)
        except (FileNotFoundError, NotADirectoryError) as err:
            raise type(err)(selector.base_dir) from err
        return [pafs.FileInfo(self._path(i.path), i.type, mtime=i.mtime, size=i.size) for i in infos]

    def open_input_file(self, path: str) -> Any:
        return super().open_input_file(self._url(path))

    def open_input_stream(self, path: str) -> Any:
        return super().open_input_stream(self._url(path))


def arrow_filesystem(loc: ElementLocation, fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """A pyarrow filesystem over the element's files (dask-expr pushes filters down only through these)."""
    if loc.root.is_local:
        return pafs.LocalFileSystem()
    scheme = _url_scheme(loc)
    if scheme in ("http", "https"):
        return pafs.PyFileSystem(_URLHandler(fs, scheme))
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))
