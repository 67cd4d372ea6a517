"""Where a store lives: a local directory or any fsspec URL, seen both as a Zarr store and as files.

Zarr nodes (groups, arrays) are accessed through zarr-python; Parquet files (points, shapes) through the
fsspec filesystem of the same location. ``StoreRoot`` keeps the two views together.
"""

from __future__ import annotations

import os
import posixpath
import uuid
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import zarr
from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
from fsspec.implementations.local import LocalFileSystem
from zarr.storage import FsspecStore, LocalStore

__all__ = ["LOCAL_READ_BUFFER", "ElementLocation", "StoreRoot", "open_local_parquet", "quiet_zarr"]

#: bytes per read of a local Parquet file: streamed in reads of this size rather than one buffer per column chunk
#: (fresh memory is the largest cost of a read on the project's machine: 1M rows of x, y, gene 14 -> 9 ms; 1M
#: polygons 1.6-2.6 s -> 0.6-1.0 s)
LOCAL_READ_BUFFER = 1 << 20


def open_local_parquet(path: str, **kwargs: Any) -> Any:
    """``pyarrow.parquet.ParquetFile`` of a local file, read in :data:`LOCAL_READ_BUFFER`-byte reads."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, pre_buffer=False, buffer_size=LOCAL_READ_BUFFER, **kwargs)


@contextmanager
def quiet_zarr() -> Iterator[None]:
    """Silence zarr-python's notices about consolidated metadata and non-Zarr folders (Parquet) in a store."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        warnings.filterwarnings("ignore", message=".*is not recognized as a component of a Zarr hierarchy.*")
        warnings.filterwarnings("ignore", message=".*Object at .* is not recognized.*")
        yield


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


@dataclass
class StoreRoot:
    """A store location.

    Attributes
    ----------
    url
        The location as given, normalised: an absolute local path, or a URL.
    fs
        fsspec filesystem of the location.
    path
        Root path inside ``fs`` (no trailing slash).
    storage_options
        Options passed to fsspec (credentials, endpoint, ...).
    read_only
        Whether the store was opened for reading only.
    """

    url: str
    fs: fsspec.AbstractFileSystem
    path: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    read_only: bool = True
    #: whether the server answers byte-range requests (HTTP stores; probed once, on the first points read)
    byte_ranges: bool | None = field(default=None, compare=False, repr=False)

    @classmethod
    def open(
        cls,
        location: str | os.PathLike,
        *,
        storage_options: Mapping[str, Any] | None = None,
        read_only: bool = True,
    ) -> StoreRoot:
        options = dict(storage_options or {})
        text = os.fspath(location)
        if text.startswith("file://"):
            text = text[len("file://") :]
        if _is_url(text):
            fs, path = fsspec.url_to_fs(text, **options)
            return cls(
                url=text.rstrip("/"),
                fs=fs,
                path=path.rstrip("/"),
                storage_options=options,
                read_only=read_only,
            )
        local = str(Path(text).expanduser().resolve())
        return cls(url=local, fs=LocalFileSystem(), path=local, storage_options=options, read_only=read_only)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def with_path(self, path: str) -> StoreRoot:
        """The same filesystem rooted at another path (e.g. a temporary sibling)."""
        if self.is_local:
            url = path
        else:
            protocol = self.fs.protocol[0] if isinstance(self.fs.protocol, tuple) else self.fs.protocol
            url = f"{protocol}://{path}" if not path.startswith(f"{protocol}://") else path
            if self.url.startswith(("http://", "https://")):
                url = path
        return StoreRoot(
            url=url, fs=self.fs, path=path, storage_options=self.storage_options, read_only=self.read_only
        )

    def sibling(self, tag: str) -> StoreRoot:
        """A hidden, unique sibling location ``.<name>.<tag>-<id>`` in the same parent folder."""
        split, join = (os.path.split, os.path.join) if self.is_local else (posixpath.split, posixpath.join)
        parent, base = split(self.path.rstrip("/"))
        return self.with_path(join(parent, f".{base}.{tag}-{uuid.uuid4().hex[:8]}"))

    # ----------------------------------------------------------------------------------- zarr side
    def zarr_store(self, read_only: bool | None = None) -> zarr.abc.store.Store:
        ro = self.read_only if read_only is None else read_only
        if self.is_local:
            return LocalStore(self.path, read_only=ro)
        if getattr(self.fs, "async_impl", False):
            # zarr needs the filesystem in asynchronous mode: let it build its own instance from the URL
            return FsspecStore.from_url(self.url, storage_options=self.storage_options, read_only=ro)
        return FsspecStore(AsyncFileSystemWrapper(self.fs, asynchronous=True), path=self.path, read_only=ro)

    def open_group(self, *, use_consolidated: bool | None = None) -> zarr.Group:
        with quiet_zarr():
            return zarr.open_group(
                self.zarr_store(), mode="r" if self.read_only else "r+", use_consolidated=use_consolidated
            )

    # ----------------------------------------------------------------------------------- file side
    def join(self, *parts: str) -> str:
        """Filesystem path of ``parts`` below the root."""
        return posixpath.join(self.path, *parts) if not self.is_local else os.path.join(self.path, *parts)

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.join(*parts))

    def rm(self, *parts: str) -> None:
        """Remove a file or folder below the root (the root itself without ``parts``), if it exists."""
        target = self.join(*parts)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)

    def move(self, source: str, target: str) -> None:
        """Move ``source`` to a ``target`` that does not exist (full filesystem paths); a rename on local disks."""
        if self.is_local:
            os.rename(source, target)
        else:
            # object stores have no rename: copy every object (server side), then delete the originals.
            # Other clients (zarr's own fsspec instance, pyarrow) wrote there, so cached listings are stale.
            self.fs.invalidate_cache()
            files = self.fs.find(source)
            if files:
                prefix = source.rstrip("/") + "/"
                targets = [target.rstrip("/") + "/" + f[len(prefix) :] for f in files]
                self.fs.copy(files, targets)
            self.fs.rm(source, recursive=True)
            self.fs.invalidate_cache()


@dataclass(frozen=True)
class ElementLocation:
    """Where one element lives inside a store: ``<root>/<kind>/<name>``."""

    root: StoreRoot
    kind: str
    name: str

    @property
    def key(self) -> str:
        """Zarr node path relative to the root, e.g. ``points/transcripts``."""
        return f"{self.kind}/{self.name}"

    @property
    def fs_path(self) -> str:
        """Filesystem path of the element folder."""
        return self.root.join(self.kind, self.name)

    def file(self, *parts: str) -> str:
        """Filesystem path of a file inside the element folder (e.g. ``points.parquet``)."""
        return self.root.join(self.kind, self.name, *parts)

    def __str__(self) -> str:
        return f"{self.key} in {self.root.url}"
