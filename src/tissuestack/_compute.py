"""Which dask scheduler computations use."""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import os
import sys
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

import dask
import dask.system
import dask.threaded

__all__ = ["guard_distributed_config", "import_distributed", "numba_warming", "paused_gc", "rechunk", "scheduler", "warm_numba"]

_DISTRIBUTED_LOCK = threading.Lock()


def scheduler() -> Callable[..., Any] | None:
    """The scheduler for ``dask.compute(..., scheduler=...)``.

    ``None`` (dask decides) when a ``distributed`` Client is the default one, or when the user configured a
    scheduler; otherwise the local threaded scheduler. Without this, the first compute of a process imports
    ``distributed`` (0.2-0.9 s) only to find that no Client exists; and a process that merely imported
    ``distributed`` (the points reader does, for a dask workaround) keeps the fast local path.

    Safe from any thread: when another thread is importing ``distributed`` right now, this waits for that import
    to finish instead of looking into the half-initialised module.
    """
    if dask.config.get("scheduler", None) is not None:
        return None
    dist = _imported_distributed()
    if dist is not None:
        try:
            dist.default_client()
        except ValueError:  # imported, but no Client: dask would use the local scheduler anyway
            return _local_threaded()
        return None
    return _local_threaded()


def rechunk(array: Any, chunks: Any) -> Any:
    """``array.rechunk(chunks)`` without importing ``distributed`` just to learn that no Client exists.

    dask picks the rechunk method by asking ``distributed`` for a default Client (importing it costs 0.5-1 s on
    the first call of a process). A Client cannot exist unless ``distributed`` was imported, so until then the
    plain task-based method is what dask would choose anyway.
    """
    if "distributed" not in sys.modules and dask.config.get("array.rechunk.method", None) is None:
        return array.rechunk(chunks, method="tasks")
    return array.rechunk(chunks)


def _imported_distributed() -> types.ModuleType | None:
    """``distributed`` if some thread has imported it (or is importing it: then wait for that), else ``None``."""
    module = sys.modules.get("distributed")
    if module is None:
        return None
    if getattr(getattr(module, "__spec__", None), "_initializing", False):
        # another thread is running distributed's __init__: importing waits on the module's import lock
        module = importlib.import_module("distributed")
    return module


def import_distributed() -> types.ModuleType | None:
    """Import ``distributed`` once (when installed), safely from several threads at once.

    dask imports ``distributed`` lazily in places (dask-expr's Parquet statistics, the default scheduler lookup).
    Done for the first time inside a ``dask.config.set`` block, that block's exit drops distributed's
    configuration defaults (later computes fail with ``KeyError: 'distributed'``); done from several threads at
    once, the others see a half-initialised module. Code about to enter such a dask path calls this first: one
    thread imports, the others wait for it under a lock.
    """
    module = _imported_distributed()
    if module is not None:
        return module
    with _DISTRIBUTED_LOCK:
        module = sys.modules.get("distributed")
        if module is not None:
            return _imported_distributed()
        if importlib.util.find_spec("distributed") is None:
            return None
        return importlib.import_module("distributed")


#: the one ``distributed`` setting that dask-expr sets in a ``dask.config.set`` block (collecting Parquet
#: statistics), with distributed's own default
_DISTRIBUTED_NFRAMES = "distributed.diagnostics.computations.nframes"


def guard_distributed_config() -> None:
    """Make dask-expr's Parquet-statistics block safe for a later first import of ``distributed``, without
    importing it (0.4-0.8 s).

    dask-expr collects Parquet statistics inside ``dask.config.set({"distributed.diagnostics.computations.
    nframes": 0})``, and its ``dask.compute`` there imports ``distributed`` when nothing has yet. Where that key
    is absent, the block's exit deletes the whole ``distributed`` subtree that the import has just filled with
    its defaults (later computes fail with ``KeyError: 'distributed'``). With the key already set (to
    distributed's default), the exit restores only that value and the imported defaults stay. Importing
    ``distributed`` later merges its defaults under the existing value (the same one). Several threads about to
    compute at once still call :func:`import_distributed` first (the store's element writer does).
    """
    if "distributed" in sys.modules:
        return
    if dask.config.get(_DISTRIBUTED_NFRAMES, None) is None:
        dask.config.set({_DISTRIBUTED_NFRAMES: 0})


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


_NUMBA_WARMING: threading.Thread | None = None


def warm_numba() -> None:
    """Initialise numba's CPU target in a daemon thread, once per process, without waiting for it.

    The first call of any compiled kernel in a process (cached on disk or not) first sets up numba's typing and
    lowering registries: 0.4-0.6 s of imports (``numba.np.arraymath``, which imports ``scipy.linalg``) and
    registrations, whatever the kernel. Operations that will run kernels (``aggregate``, ``rasterize``) call this
    before they read their elements, so the set-up overlaps the reads (Parquet reads release the GIL); the kernel
    call then waits on numba's compiler lock only for what is left. Operations that may need no kernel (queries,
    plots: flat shapes coordinates are decoded with numpy) do not start it. Set ``TISSUESTACK_WARM_NUMBA=0`` to
    disable.
    """
    global _NUMBA_WARMING
    if _NUMBA_WARMING is not None or os.environ.get("TISSUESTACK_WARM_NUMBA", "1") == "0":
        return
    _NUMBA_WARMING = threading.Thread(target=_refresh_numba, name="tissuestack-warm-numba", daemon=True)
    # a process forked while the thread holds numba's compiler lock would inherit it locked (a DataLoader
    # worker's first kernel call would hang): forks wait for the set-up to finish
    os.register_at_fork(before=_finish_warming)
    _NUMBA_WARMING.start()


def numba_warming() -> bool:
    """Whether :func:`warm_numba` was started in this process (numba's set-up is paid, or being paid, anyway)."""
    return _NUMBA_WARMING is not None


def _finish_warming() -> None:
    thread = _NUMBA_WARMING
    if thread is not None and thread.is_alive() and thread is not threading.current_thread():
        thread.join()


def _refresh_numba() -> None:
    try:
        from numba.core.compiler_lock import global_compiler_lock
        from numba.core.registry import cpu_target

        with global_compiler_lock:  # the lock every compilation and cache load takes: no half-set-up registries
            cpu_target.target_context.refresh()
        from numba.core.entrypoints import init_all

        init_all()  # the scan of installed packages for numba extensions, done by the first compile otherwise
    except Exception:
        pass
