"""An element -> target transformation as one numeric affine map between named axes, applied fast."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tissuestack.transforms._base import BaseTransformation

__all__ = ["AffineMap", "affine_map", "apply_affine"]


@dataclass(frozen=True)
class AffineMap:
    """An element -> target affine restricted to some target axes.

    ``linear`` (k x d) and ``offset`` (k,) map intrinsic coordinates over ``in_axes`` (d) to target coordinates
    over ``out_axes`` (k). ``inverse`` is the (d x d, d) inverse over the full output when the map is a bijection
    between the intrinsic axes and its natural output axes, else ``None``; ``inv_axes`` are those natural output
    axes (the columns of the inverse).
    """

    in_axes: tuple[str, ...]
    out_axes: tuple[str, ...]
    linear: np.ndarray
    offset: np.ndarray
    inverse: tuple[np.ndarray, np.ndarray] | None
    inv_axes: tuple[str, ...]

    def apply(self, coords: np.ndarray) -> np.ndarray:
        """Target coordinates (float64, ``N x k``) of intrinsic coordinates ``N x d``."""
        coords = np.asarray(coords)
        return apply_affine([coords[:, j] for j in range(coords.shape[1])], self.linear, self.offset)

    def intrinsic_bounds(
        self, lo: Sequence[float], hi: Sequence[float], axes: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Bounding box in intrinsic coordinates of the target box ``lo <= t <= hi`` over ``axes``.

        Target axes not in ``axes`` are unconstrained (an intrinsic axis depending on them is unbounded: +-inf).
        Exact interval arithmetic on the inverse matrix (no corner enumeration). ``None`` when the map is not
        invertible (no pruning possible).
        """
        if self.inverse is None:
            return None
        inv, c = self.inverse
        box_lo = np.full(len(self.inv_axes), -np.inf)
        box_hi = np.full(len(self.inv_axes), np.inf)
        for a, lo_a, hi_a in zip(axes, lo, hi, strict=True):
            if a in self.inv_axes:
                j = self.inv_axes.index(a)
                box_lo[j], box_hi[j] = lo_a, hi_a
        with np.errstate(invalid="ignore"):
            p = inv * box_lo[None, :]
            q = inv * box_hi[None, :]
        p = np.where(inv == 0, 0.0, p)
        q = np.where(inv == 0, 0.0, q)
        out_lo = np.minimum(p, q).sum(axis=1) + c
        out_hi = np.maximum(p, q).sum(axis=1) + c
        return out_lo, out_hi

    @property
    def axis_aligned(self) -> bool:
        """Whether every output axis depends on at most one input axis (scale/translation/permutation)."""
        return bool(((self.linear != 0).sum(axis=1) <= 1).all())

    @property
    def is_similarity(self) -> bool:
        """Whether the map restricted to x/y is a uniform scale times a rotation/reflection (and a shift)."""
        if self.inverse is None or len(self.in_axes) != 2 or len(self.out_axes) != 2:
            return False
        m = self.linear
        g = m.T @ m
        s2 = g[0, 0]
        return bool(s2 > 0 and np.allclose(g, s2 * np.eye(2), rtol=1e-12, atol=1e-12 * s2))


def apply_affine(columns: Sequence[np.ndarray], linear: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``linear @ [columns] + offset`` as an ``N x k`` float64 array, column by column.

    (``coords @ matrix.T`` with a tiny matrix is a slow strided loop in numpy; this skips zero terms and unit
    factors.)
    """
    n = len(columns[0]) if len(columns) else 0
    out = np.empty((n, linear.shape[0]), dtype=np.float64)
    for i in range(linear.shape[0]):
        row = out[:, i]
        row[:] = offset[i]
        for j, col in enumerate(columns):
            f = linear[i, j]
            if f == 0.0:
                continue
            if f == 1.0:
                row += col
            else:
                row += f * np.asarray(col, dtype=np.float64)
    return out


def affine_map(
    transformation: BaseTransformation, in_axes: Sequence[str], out_axes: Sequence[str]
) -> AffineMap:
    """Build an :class:`AffineMap` of ``transformation`` from ``in_axes`` to ``out_axes`` (one matrix, once)."""
    in_axes = tuple(in_axes)
    out_axes = tuple(out_axes)
    m = transformation.to_affine_matrix(in_axes, out_axes)
    natural = tuple(transformation.output_axes(in_axes))
    inverse = None
    if len(natural) == len(in_axes) and set(out_axes) <= set(natural):
        full = transformation.to_affine_matrix(in_axes, natural)
        lin = full[:-1, :-1]
        if len(in_axes) and np.linalg.matrix_rank(lin) == len(in_axes):
            inv = np.linalg.inv(lin)
            inverse = (inv, -inv @ full[:-1, -1])
    return AffineMap(in_axes, out_axes, m[:-1, :-1].copy(), m[:-1, -1].copy(), inverse, natural)
