"""Reading a store into a SpatialData object."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from tissuestack._container.spatialdata import SpatialData
from tissuestack.store import _io as store_io

__all__ = ["from_opened", "read_zarr"]


def read_zarr(
    path: str | os.PathLike,
    selection: Iterable[str] | None = None,
    *,
    on_bad_elements: Literal["error", "warn"] = "error",
    storage_options: Mapping[str, Any] | None = None,
    lazy_tables: bool = False,
) -> SpatialData:
    """Open a SpatialData Zarr store (any format version, local path or fsspec URL). Reads metadata only.

    Elements are loaded on first access: rasters as dask arrays over the Zarr arrays, points as dask frames
    that read only the columns and row groups a computation asks for, shapes as a GeoDataFrame, tables as an
    AnnData (with ``lazy_tables=True`` its X and layers stay dask arrays over the store).

    Parameters
    ----------
    path
        Local path or URL (``s3://``, ``https://``, ``gs://``, ... through fsspec).
    selection
        Element kinds (``"images"``, ``"points"``, ...) and/or element names to read; default everything.
    on_bad_elements
        ``"error"`` (default) raises on the first broken element, naming it and the file; ``"warn"`` skips
        broken elements with a warning and returns everything else.
    storage_options
        fsspec options for remote stores (credentials, endpoint_url, anon, ...).
    lazy_tables
        Keep table X/layers on disk as dask arrays.
    """
    opened = store_io.open_store(
        path,
        selection=selection,
        on_bad_elements=on_bad_elements,
        storage_options=storage_options,
        lazy_tables=lazy_tables,
    )
    sdata = from_opened(opened)
    sdata._open_options = {"lazy_tables": lazy_tables}
    return sdata


def from_opened(opened: store_io.OpenedStore) -> SpatialData:
    """The SpatialData object over an opened store (its elements still deferred)."""
    sdata = SpatialData(attrs=opened.attrs)
    for kind, elements in opened.elements.items():
        for name, deferred in elements.items():
            sdata._set(name, deferred, kind=kind, check_regions=False)
    sdata._root = opened.root
    sdata._store_info = {
        "zarr_format": opened.zarr_format,
        "container_version": opened.container_version,
        "consolidated": opened.consolidated,
        "element_versions": dict(opened.versions),
        "broken": dict(opened.broken),
    }
    return sdata
