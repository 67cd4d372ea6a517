"""Which dask scheduler computations use."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import dask
import dask.threaded

__all__ = ["scheduler"]


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
            return dask.threaded.get
        return None
    return dask.threaded.get
