"""Raster burn kernels: write per-shape values into a raster along pixel runs.

Runs are ``(shape, row, col_start, col_stop)`` as produced by :func:`tissuestack.kernels._zonal.polygon_runs`
and :func:`~tissuestack.kernels._zonal.circle_runs` (half-open columns, sorted by shape). Overlapping shapes are
combined by one of the reductions in :data:`BURN_OPS`; ``first`` keeps the value of the first shape (in run
order, i.e. element row order) that covers a pixel. NaN values are skipped (the shape burns nothing).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["BURN_OPS", "burn_category_counts", "burn_pixel", "burn_runs"]

#: reduction name -> code used by :func:`burn_runs`
BURN_OPS: dict[str, int] = {"first": 0, "last": 1, "sum": 2, "count": 3, "max": 4, "min": 5}


@numba.njit(cache=True, nogil=True, inline="always")
def burn_pixel(out, seen, r, j, v, op):  # pragma: no cover - numba
    """Combine value ``v`` into pixel ``(r, j)`` by reduction ``op`` (a code of :data:`BURN_OPS`)."""
    if op == 0:
        if not seen[r, j]:
            out[r, j] = v
    elif op == 1:
        out[r, j] = v
    elif op == 2:
        out[r, j] += v
    elif op == 3:
        out[r, j] += 1
    elif op == 4:
        if not seen[r, j] or v > out[r, j]:
            out[r, j] = v
    else:
        if not seen[r, j] or v < out[r, j]:
            out[r, j] = v
    seen[r, j] = True


@numba.njit(cache=True, nogil=True)
def burn_runs(shape, row, c0, c1, values, out, seen, op):  # pragma: no cover - numba
    """Burn ``values[shape[k]]`` into ``out[row[k], c0[k]:c1[k]]`` for every run ``k``.

    ``seen`` (bool, like ``out``) marks pixels already written (used by first/max/min; updated by all).
    ``op`` is a code of :data:`BURN_OPS`; ``count`` adds 1 per covering shape (``values`` only decides which
    shapes are skipped: NaN).
    """
    for k in range(shape.shape[0]):
        v = values[shape[k]]
        if v != v:
            continue
        r = row[k]
        for j in range(c0[k], c1[k]):
            burn_pixel(out, seen, r, j, v, op)


@numba.njit(cache=True, nogil=True)
def burn_category_counts(shape, row, c0, c1, codes, out):  # pragma: no cover - numba
    """Add 1 to ``out[codes[shape[k]], row[k], c0[k]:c1[k]]`` for every run (codes < 0 are skipped)."""
    for k in range(shape.shape[0]):
        c = codes[shape[k]]
        if c < 0:
            continue
        r = row[k]
        for j in range(c0[k], c1[k]):
            out[c, r, j] += 1


def new_canvas(height: int, width: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """A zeroed ``(height, width)`` raster of ``dtype`` and its ``seen`` mask."""
    return np.zeros((height, width), dtype=dtype), np.zeros((height, width), dtype=np.bool_)
