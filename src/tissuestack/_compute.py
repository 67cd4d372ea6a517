"""Which dask scheduler computations use."""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import dask
import dask.system
import dask.threaded

__all__ = ["paused_gc", "scheduler"]


def scheduler() -> Callable[..., Any] | None:
    """The scheduler for ``dask.compute(..., scheduler=...)``.

    ``None`` (dask decides) when a ``distributed`` Client is the default one, or when the user configured a
    scheduler; otherwise the local threaded scheduler. Without this, the first compute of a process imports
    ``distributed`` (0.2-0.9 s) only to find that no Client exists; and a process that merely imported
    ``distributed`` (the points reader does, for a dask workaround) keeps the fast local path.
    """
    if dask.config.get("scheduler", None) is not None:
        return None
    dist = sys.modules.get("distributed")
    if dist is not None:
        try:
            dist.default_client()
        except ValueError:  # imported, but no Client: dask would use the local scheduler anyway
            return _local_threaded()
        return None
    return _local_threaded()


def _local_threaded() -> Callable[..., Any]:
    # from a worker thread (e.g. an element written concurrently with others) dask.threaded.get would build a
    # pool of min(32, cores + 4) threads: oversubscribed cores and that many partitions in memory at once
    if threading.current_thread() is threading.main_thread():
        return dask.threaded.get
    return _threaded_get_per_core


def _threaded_get_per_core(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    """dask's threaded scheduler with one thread per core (or ``num_workers``), from any thread."""
    if kwargs.get("num_workers") is None:
        kwargs["num_workers"] = dask.config.get("num_workers", None) or dask.system.CPU_COUNT
    return dask.threaded.get(dsk, keys, **kwargs)


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a block creates millions of objects that form no cycles
    (shapely geometries: GC-tracked, so every 700 allocations start a collection and the surviving ones are
    traversed again and again; 0.3 s of 1.4 s when transforming 1M polygons). Collection resumes afterwards;
    nesting and a collector already disabled by the caller are respected."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
