"""Statistics from accumulated moments (numpy only): the one place that turns per-region counts, sums,
extremes and sums of squared deviations into ``sum``/``mean``/``min``/``max``/``count``/``std``.

Shared by the points and raster aggregations, whose kernels accumulate the moments in different layouts.
"""

from __future__ import annotations

import numpy as np

__all__ = ["STATISTICS", "statistic_from_moments"]

STATISTICS = ("sum", "mean", "min", "max", "count", "std")


def statistic_from_moments(
    agg_func: str,
    count: np.ndarray,
    total: np.ndarray,
    minimum: np.ndarray,
    maximum: np.ndarray,
    m2: np.ndarray | None,
) -> np.ndarray:
    """One statistic from moments of equal shape (float64 result, same shape).

    Entries without values (``count == 0``) get ``0`` for ``sum`` and ``count`` and NaN for the others; ``std`` is
    the sample standard deviation (``ddof=1``, NaN below two values), from ``m2`` (the sum of squared deviations
    from the mean).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        if agg_func == "sum":
            return np.asarray(total, dtype=np.float64)
        if agg_func == "count":
            return np.asarray(count, dtype=np.float64)
        if agg_func == "mean":
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)
        if agg_func == "min":
            return np.where(count > 0, minimum, np.nan)
        if agg_func == "max":
            return np.where(count > 0, maximum, np.nan)
        if agg_func == "std":
            if m2 is None:
                raise ValueError("std needs the sums of squared deviations (m2)")
            return np.where(count > 1, np.sqrt(np.maximum(m2, 0.0) / np.maximum(count - 1, 1)), np.nan)
    raise ValueError(f"unknown statistic {agg_func!r}; expected one of {STATISTICS}")
