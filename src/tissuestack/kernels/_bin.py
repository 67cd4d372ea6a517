"""Point binning kernels: points onto a pixel grid (the static plots' raster path for points).

Pixel ``(row i, column j)`` covers ``[j, j + 1) x [i, i + 1)`` in the pixel coordinates given; a point exactly
on the grid's far edge (``x == width`` or ``y == height``) falls in the last pixel, as in datashader. Points with
NaN coordinates or outside the grid are skipped. Compiled with ``cache=True``, so a new process loads them
instead of compiling (datashader compiles its aggregations in every process).
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["bin_points_count", "bin_points_count_mapped", "bin_points_max", "count_points_in_pixels"]


@numba.njit(cache=True, nogil=True)
def _cell(x, y, height, width):  # pragma: no cover - numba
    if not (x >= 0.0 and y >= 0.0 and x <= width and y <= height):  # NaN fails every comparison
        return -1, -1
    j = min(math.floor(x), width - 1)
    i = min(math.floor(y), height - 1)
    return i, j


@numba.njit(cache=True, nogil=True)
def bin_points_count(px, py, codes, k, height, width):  # pragma: no cover - numba
    """``(height, width, k)`` int32: the number of points of each code ``0..k-1`` per pixel (codes < 0
    skipped)."""
    out = np.zeros((height, width, k), dtype=np.int32)
    for n in range(px.shape[0]):
        c = codes[n]
        if c < 0 or c >= k:
            continue
        i, j = _cell(px[n], py[n], height, width)
        if i >= 0:
            out[i, j, c] += 1
    return out


@numba.njit(cache=True, nogil=True)
def bin_points_max(px, py, values, empty, height, width):  # pragma: no cover - numba
    """``(height, width)`` float64: the largest of ``values`` per pixel (NaN values skipped), ``empty`` where
    no point falls."""
    out = np.full((height, width), -np.inf)
    for n in range(px.shape[0]):
        v = values[n]
        if v != v:
            continue
        i, j = _cell(px[n], py[n], height, width)
        if i >= 0 and v > out[i, j]:
            out[i, j] = v
    for i in range(height):
        for j in range(width):
            if out[i, j] == -np.inf:
                out[i, j] = empty
    return out


@numba.njit(cache=True, nogil=True)
def bin_points_count_mapped(x, y, m, ids, lut, k, height, width):  # pragma: no cover - numba
    """:func:`bin_points_count` of intrinsic ``x``, ``y`` mapped to pixels by ``m`` (2 x 3) and codes
    ``lut[ids]``, without temporary arrays (for 20M points they cost more than the binning: fresh memory)."""
    out = np.zeros((height, width, k), dtype=np.int32)
    m00, m01, m02 = m[0, 0], m[0, 1], m[0, 2]
    m10, m11, m12 = m[1, 0], m[1, 1], m[1, 2]
    for n in range(x.shape[0]):
        c = lut[ids[n]]
        if c < 0 or c >= k:
            continue
        xn = np.float64(x[n])
        yn = np.float64(y[n])
        i, j = _cell(m00 * xn + m01 * yn + m02, m10 * xn + m11 * yn + m12, height, width)
        if i >= 0:
            out[i, j, c] += 1
    return out


@numba.njit(cache=True, nogil=True)
def count_points_in_pixels(x, y, codes, lin, off, out):  # pragma: no cover - numba
    """Add 1 to ``out[code, row, col]`` for each point: ``col = floor(off[0] + lin[0, 0] * x + lin[0, 1] * y)``,
    ``row`` likewise from the second rows of ``lin`` and ``off``; points outside ``0 <= col < width``,
    ``0 <= row < height`` (NaN and infinite coordinates included) or with a code < 0 are skipped. ``codes``
    empty: every point counts in channel 0. (``rasterize``'s rule for points: half-open pixels, no far-edge
    exception; the sums are formed in the order ``(off + a * x) + b * y`` with zero terms left out, as its numpy
    path does.)"""
    n_c, height, width = out.shape
    a00, a01, a10, a11 = lin[0, 0], lin[0, 1], lin[1, 0], lin[1, 1]
    o0, o1 = off[0], off[1]
    use_codes = codes.shape[0] > 0
    for n in range(x.shape[0]):
        c = codes[n] if use_codes else 0
        if c < 0 or c >= n_c:
            continue
        xn = np.float64(x[n])
        yn = np.float64(y[n])
        u = o0
        if a00 != 0.0:
            u += a00 * xn
        if a01 != 0.0:
            u += a01 * yn
        v = o1
        if a10 != 0.0:
            v += a10 * xn
        if a11 != 0.0:
            v += a11 * yn
        # on the floats (NaN and infinities fail), then floor: floor(u) is in [0, width) exactly when u is
        if u >= 0.0 and u < width and v >= 0.0 and v < height:
            out[c, math.floor(v), math.floor(u)] += 1
