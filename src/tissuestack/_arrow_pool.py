"""Arrow's memory pool for the large buffers that reading a store allocates.

pyarrow allocates through mimalloc by default. Reading a large Parquet file into fresh memory is then up to 2x
slower than through jemalloc, which pyarrow also ships: on the project's standard machine (a 2-core VM), the first
read of 1M polygons' GeoParquet (290 MB of WKB) in a process takes 1.7-2.2 s with mimalloc and 0.9-1.0 s with
jemalloc, and allocating and touching a fresh 300 MB buffer 0.72 s against 0.17 s (``benchmarks/RESULTS.md``,
"Arrow memory pool"). Later reads reuse memory either way.

:func:`choose_memory_pool` makes jemalloc the default pool once per process, when the store layer is first
imported, unless the user chose a pool (pyarrow's ``ARROW_DEFAULT_MEMORY_POOL`` environment variable) or set
``TISSUESTACK_ARROW_POOL=keep``; where pyarrow was built without jemalloc nothing changes. Buffers keep the pool
that allocated them, so switching is safe at any time.
"""

from __future__ import annotations

import os

__all__ = ["choose_memory_pool"]

_CHOSEN = False


def choose_memory_pool() -> None:
    """Use jemalloc for Arrow's default memory pool (see the module notes); once per process."""
    global _CHOSEN
    if _CHOSEN:
        return
    _CHOSEN = True
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL") or os.environ.get("TISSUESTACK_ARROW_POOL", "") == "keep":
        return
    import pyarrow as pa

    try:
        pool = pa.jemalloc_memory_pool()
    except (NotImplementedError, AttributeError):  # a pyarrow built without jemalloc
        return
    pa.set_memory_pool(pool)
