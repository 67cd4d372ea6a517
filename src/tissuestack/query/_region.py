"""The region of a query (boxes or a polygon in the target coordinate system) and the checks of query inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely

from tissuestack.transforms import AffineMap

_SPATIAL = ("x", "y", "z")
_BOX_COLUMN = "__tissuestack_box__"
_WIDEN = 1e-9  # relative widening of back-transformed bounds used for pruning only
_SNAP = 1e-9  # pixel bounds this close to an integer are snapped to it before floor/ceil


# ================================================================================================ input checks
def check_box(
    axes: Sequence[str], min_coordinate: Any, max_coordinate: Any
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, bool]:
    """Validate a box (or ``n`` boxes): ``(axes, lo (n, d), hi (n, d), many)``."""
    if isinstance(axes, str) or not isinstance(axes, Sequence):
        raise ValueError(f"axes must be a sequence of axis names such as ('x', 'y'), got {axes!r}")
    axes = tuple(axes)
    unknown = [a for a in axes if a not in _SPATIAL]
    if unknown:
        raise ValueError(f"unknown axis {unknown[0]!r} in axes {axes!r}; expected axes among 'x', 'y', 'z'")
    if not axes or len(set(axes)) != len(axes):
        raise ValueError(f"axes must name each of 'x', 'y', 'z' at most once, and at least one; got {axes!r}")
    try:
        lo = np.asarray(min_coordinate, dtype=np.float64)
        hi = np.asarray(max_coordinate, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("min_coordinate and max_coordinate must be numbers, one per axis") from None
    if lo.shape != hi.shape:
        raise ValueError(
            f"min_coordinate has shape {lo.shape} but max_coordinate has shape {hi.shape}; they must match"
        )
    many = lo.ndim == 2
    if lo.ndim not in (1, 2) or lo.shape[-1] != len(axes):
        raise ValueError(
            f"min_coordinate/max_coordinate must have shape ({len(axes)},) for one box or (n, {len(axes)}) for "
            f"n boxes over axes {axes!r}; got shape {lo.shape}"
        )
    lo2, hi2 = np.atleast_2d(lo), np.atleast_2d(hi)
    if np.isnan(lo2).any() or np.isnan(hi2).any():
        raise ValueError("min_coordinate and max_coordinate must not contain NaN")
    bad = np.argwhere(lo2 > hi2)
    if len(bad):
        i, j = bad[0]
        where = f"box {i}: " if many else ""
        raise ValueError(
            f"{where}min_coordinate {lo2[i, j]} > max_coordinate {hi2[i, j]} on axis {axes[j]!r}; "
            "each minimum must be <= its maximum"
        )
    return axes, lo2, hi2, many


# ================================================================================================ regions
@dataclass(frozen=True)
class Region:
    """A query region in target coordinates: ``n`` boxes over ``axes``, or one polygon over ``("x", "y")``."""

    axes: tuple[str, ...]
    lo: np.ndarray  # (n, len(axes)); for a polygon, its bounds
    hi: np.ndarray
    polygon: Any = None  # tissuestack.kernels._pip.PreparedPolygon for polygon queries
    clip: bool = False

    @property
    def n(self) -> int:
        return self.lo.shape[0]

    def restricted(self, available: Sequence[str]) -> Region:
        """The region over the axes an element reaches (box axes it does not have are unconstrained)."""
        keep = [j for j, a in enumerate(self.axes) if a in available]
        return Region(
            tuple(self.axes[j] for j in keep), self.lo[:, keep], self.hi[:, keep], self.polygon, self.clip
        )

    def geometries(self, finite_lo: np.ndarray, finite_hi: np.ndarray) -> np.ndarray:
        """The region as shapely geometries in target x/y (boxes clamped to the given finite bounds)."""
        if self.polygon is not None:
            return np.array([self.polygon.geometry], dtype=object)
        lo = np.tile(finite_lo, (self.n, 1))
        hi = np.tile(finite_hi, (self.n, 1))
        for j, a in enumerate(self.axes):
            if a in ("x", "y"):
                k = 0 if a == "x" else 1
                lo[:, k] = np.maximum(lo[:, k], self.lo[:, j])
                hi[:, k] = np.minimum(hi[:, k], self.hi[:, j])
        return shapely.box(lo[:, 0], lo[:, 1], hi[:, 0], hi[:, 1])


def widened(
    bounds: tuple[np.ndarray, np.ndarray] | None, sign: float = 1.0
) -> tuple[np.ndarray, np.ndarray] | None:
    """Bounds moved outward by a tiny relative margin (``sign=-1``: inward)."""
    if bounds is None:
        return None
    lo, hi = bounds
    mag = np.where(np.isfinite(lo), np.abs(lo), 0.0) + np.where(np.isfinite(hi), np.abs(hi), 0.0)
    margin = sign * (_WIDEN * mag + 1e-300)
    return lo - margin, hi + margin


def prune_bounds(amap: AffineMap, region: Region) -> tuple[np.ndarray, np.ndarray] | None:
    """Widened intrinsic bounds ``(n, d)`` of every box of the region, or ``None`` without an inverse."""
    if amap.inverse is None:
        return None
    los, his = [], []
    for i in range(region.n):
        b = widened(amap.intrinsic_bounds(region.lo[i], region.hi[i], region.axes))
        los.append(b[0])
        his.append(b[1])
    return np.array(los), np.array(his)
