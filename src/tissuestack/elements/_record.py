"""Element records: what tissuestack knows about one exact element object beyond its JSON metadata.

A record holds the element's row count when known without computing, the *source* that reads its data (a
store's Parquet row groups, the pandas partitions of an in-memory frame, ...) and caches built from it (an STRtree,
a region grid). All of these describe exactly one object: a frame derived from it (``points[points.x > 1]``) has
other rows, so it gets a new, empty record — while its JSON metadata (transformations, keys) is inherited through
``attrs`` (see :mod:`tissuestack.elements._meta`).

The record is attached to the object itself, through the accessor mechanism that pandas, dask and xarray offer
for exactly this (an accessor is created once per object and cached on it), so it lives and dies with the
object: no table keyed by object identity, nothing that leaks or survives a reused ``id``. Pickling or copying an
object gives a new object and so a new record (metadata survives, caches are rebuilt).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ElementRecord", "record_of"]

#: name of the accessor that holds the record; private (not meant to be used directly)
RECORD_ACCESSOR = "_tissuestack_record"


class ElementRecord:
    """Row count, source and caches of one element object (see the module notes).

    Attributes
    ----------
    n_rows
        The number of rows when known without computing (points).
    source
        The object that reads the element's data for queries and aggregation, or ``None`` (then the element
        itself is the only way to its data).
    """

    __slots__ = ("__weakref__", "_caches", "_lock", "n_rows", "source")

    def __init__(self, obj: Any = None):  # accessor signature: the object is not kept (no reference cycle)
        self.n_rows: int | None = None
        self.source: Any = None
        self._caches: dict[Any, tuple[tuple[Any, ...], Any, Any]] = {}
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        # a pickled or copied element is another object: it gets an empty record (caches are rebuilt); xarray
        # pickles its accessor cache along with the object
        return (ElementRecord, ())

    def cached(
        self, key: Any, build: Callable[[], Any], *, depends_on: tuple[Any, ...] = (), params: Any = None
    ) -> Any:
        """The value cached under ``key``, built by ``build()`` when absent, when any object in ``depends_on`` is
        not the very object it was built from (e.g. a geometry array replaced in place on the element), or when
        ``params`` differ (compared by equality). One value per key: a rebuild replaces it."""
        with self._lock:
            entry = self._caches.get(key)
        if entry is not None:
            deps, old_params, value = entry
            if (
                len(deps) == len(depends_on)
                and all(a is b for a, b in zip(deps, depends_on, strict=True))
                and old_params == params
            ):
                return value
        value = build()
        with self._lock:
            self._caches[key] = (depends_on, params, value)
        return value

    def peek(self, key: Any) -> Any:
        """The value cached under ``key`` without building it (``None`` when absent)."""
        with self._lock:
            entry = self._caches.get(key)
        return None if entry is None else entry[2]

    def drop(self, key: Any = None) -> None:
        """Forget one cached value, or all of them."""
        with self._lock:
            if key is None:
                self._caches.clear()
            else:
                self._caches.pop(key, None)

    def __repr__(self) -> str:
        return f"ElementRecord(n_rows={self.n_rows!r}, source={self.source!r}, caches={list(self._caches)})"


_registered = False
_register_lock = threading.Lock()


def _register() -> None:
    """Register the record accessor on the element types (once, when the first record is asked for)."""
    global _registered
    with _register_lock:
        if _registered:
            return
        import dask.dataframe.extensions as dd_ext
        import pandas as pd
        import xarray as xr

        pd.api.extensions.register_dataframe_accessor(RECORD_ACCESSOR)(ElementRecord)  # also GeoDataFrame
        dd_ext.register_dataframe_accessor(RECORD_ACCESSOR)(ElementRecord)
        xr.register_dataarray_accessor(RECORD_ACCESSOR)(ElementRecord)
        xr.register_datatree_accessor(RECORD_ACCESSOR)(ElementRecord)
        _registered = True


def record_of(element: Any) -> ElementRecord | None:
    """The record of ``element`` (created on first use), or ``None`` for types that carry none (tables)."""
    if not _registered:
        _register()
    record = getattr(element, RECORD_ACCESSOR, None)
    return record if isinstance(record, ElementRecord) else None
