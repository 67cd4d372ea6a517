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

    ``None`` (dask decides) when ``distributed`` is imported, since a Client may then be active and must be
    used, or when the user configured a scheduler; otherwise the local threaded scheduler. Without this, the
    first compute of a process imports ``distributed`` (0.2-0.9 s) only to find that no Client exists.
    """
    if "distributed" in sys.modules or dask.config.get("scheduler", None) is not None:
        return None
    return dask.threaded.get
